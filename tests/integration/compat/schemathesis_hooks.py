"""Schemathesis hooks for the OpenAPI contract run (tests/integration/compat/test_openapi_contract.py),
loaded by `st` through SCHEMATHESIS_HOOKS.

Authentication: every request carries a live session token. The run may sign its own session out
(`POST /user/logout` with a valid body is a valid request), so before each request the provider
checks the token and signs a new user up when it no longer works: no later request is refused
for a reason its data has nothing to do with.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import regex
import schemathesis
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from schemathesis.core.parameters import ParameterLocation

from services.editor import validation
from services.text.story_context import LorebookLimits
from services.toolkit.errors import InvalidArgument
from tests.integration.gateway.harness import registration

BASE_URL = os.environ["FABULA_CONTRACT_BASE_URL"]

# /user/import takes an export archive (a tar file) as it is: sent as the bytes generated.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schemathesis.auth(refresh_interval=None)
class LiveSession:
    latest = os.environ["FABULA_CONTRACT_TOKEN"]

    def __init__(self) -> None:
        self._client = httpx.Client(base_url=BASE_URL, timeout=30)
        self._token = os.environ["FABULA_CONTRACT_TOKEN"]

    def get(self, case, ctx) -> str:
        if self._client.get("/user/me", headers={"Authorization": f"Bearer {self._token}"}).status_code == 401:
            reply = self._client.post("/user/register", json=registration(f"contract-{uuid.uuid4().hex[:12]}"))
            reply.raise_for_status()
            self._token = reply.json()["token"]
        LiveSession.latest = self._token
        return self._token

    def set(self, case, data: str, ctx) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# --- contents the document cannot describe ------------------------------------------------------
# Each entry below makes a positive case (one valid by the document) valid in one named field the
# document cannot fully describe, by drawing or fixing only that field: the rest of the body stays
# as generated, and negative cases are left alone. docs/compatible-apis.md, "Contract checks",
# lists them with their reasons.

def _png() -> str:
    # With A1111's parameters chunk: variations without a prompt take it from the image's
    # metadata, and need an image that records one.
    picture, chunks = io.BytesIO(), PngInfo()
    chunks.add_text("parameters", "a lighthouse at dusk\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
    Image.new("RGB", (64, 64), (200, 120, 40)).save(picture, format="PNG", pnginfo=chunks)
    return base64.b64encode(picture.getvalue()).decode()


def _valid_username(value: Any) -> Any:
    # Unicode categories and NFC normalisation: JSON Schema patterns can name neither.
    try:
        validation.username(value)
    except InvalidArgument:
        return f"contract-{uuid.uuid4().hex[:12]}"
    return value


def _valid_kdf(value: Any) -> Any:
    # The KDF floor and ceiling are the editor's settings, which the gateway is not told.
    opslimit, memlimit = (int(part) for part in os.environ["FABULA_CONTRACT_KDF"].split(","))
    return {"opslimit": opslimit, "memlimit": memlimit}


def _export() -> bytes:
    token = LiveSession.latest
    return httpx.get(f"{BASE_URL}/user/export", headers={"Authorization": f"Bearer {token}"}, timeout=60).content


def _page_token(value: Any, case) -> Any:
    # page_token is opaque: only a token that a listing of the same type returned is taken (it is
    # not tied to the account). Ask a real ListObjects for one: list an account that holds two
    # objects of that type one object per page.
    kind = (case.path_parameters or {}).get("type")
    if not value or not isinstance(kind, str):
        return value  # the first page; or a negative path, where the token does not matter
    with httpx.Client(base_url=BASE_URL, headers={"Authorization": f"Bearer {_lister_token()}"},
                      timeout=30) as client:
        for name in ("page-a", "page-b"):  # 409 once they exist
            client.put(f"/user/objects/{kind}/{name}", json={"data": "AAAA", "expected_change_index": 0})
        listing = client.get(f"/user/objects/{kind}", params={"page_size": 1})
    return listing.json()["next_page_token"] if listing.status_code == 200 else value


_LISTER: list[str] = []


def _lister_token() -> str:
    """A session of an account of its own for `_page_token` (the run may sign its own session out
    at any time)."""
    if not _LISTER:
        reply = httpx.post(f"{BASE_URL}/user/register", json=registration(f"contract-{uuid.uuid4().hex[:12]}"),
                           timeout=60)
        reply.raise_for_status()
        _LISTER.append(reply.json()["token"])
    return _LISTER[0]


def _png_field(_: Any) -> str:
    return _png()


def _mask(value: Any) -> Any:
    # A mask must decode, be the image's size (_png's) and select pixels to redraw, inverted too
    # (A1111's inpainting_mask_invert): the left half white, the right half black.
    if value is None:
        return None
    picture = Image.new("L", (64, 64), 0)
    picture.paste(255, (0, 0, 32, 64))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _png_list(_: Any) -> list[str]:
    return [_png()]


IMAGES = (_png_field, _png_list)


def _future(value: Any) -> Any:
    # "In the future" depends on the clock when the request arrives: JSON Schema has no "now".
    return None if value is None else (datetime.now(UTC) + timedelta(days=1)).isoformat()


def _page_size(value: Any) -> Any:
    # The largest page is the editor's setting (max_page_size), which the gateway is not told.
    return value if not isinstance(value, int) or value <= EDITOR_MAX_PAGE_SIZE else EDITOR_MAX_PAGE_SIZE


def _pixels(body: Any, default: Any = 0) -> Any:
    # width × height within the image service's max_pixels: a product of two fields, which JSON
    # Schema cannot bound. A side that breaks it becomes `default` (the model's default size).
    if not isinstance(body, dict):
        return body
    width, height = body.get("width") or 0, body.get("height") or 0
    if width and height and width * height > IMAGE_MAX_PIXELS:
        return {**body, "width": default, "height": default}
    if width * IMAGE_MAX_SIDE > IMAGE_MAX_PIXELS or height * IMAGE_MAX_SIDE > IMAGE_MAX_PIXELS:
        return {**body, "width": default, "height": default}
    return body


def _pose(value: Any) -> Any:
    # OpenPose keypoints JSON, parsed by the service: one person of 18 joints on the canvas.
    if not isinstance(value, str):
        return value
    points = [coordinate for joint in range(18) for coordinate in (20 + joint * 4, 30 + joint * 3, 1.0)]
    return json.dumps({"canvas_width": 128, "canvas_height": 128, "people": [{"pose_keypoints_2d": points}]})


def _number_or(value: Any, default: float) -> float:
    """`value` if it is a number (JSON's one number type: 199.0 for an integer too), else `default`."""
    return value if _number(value) else default


def _control(control: Any) -> Any:
    # A control's source must decode (an image, or a pose's keypoints); low_threshold at most
    # high_threshold, start below end, each against the other's default when left out: relations
    # between two fields.
    if not isinstance(control, dict):
        return control
    control = {**control, "image": _png()}
    if isinstance(control.get("pose_json"), str):
        control["pose_json"] = _pose(control["pose_json"])
    if _number_or(control.get("low_threshold"), 100) > _number_or(control.get("high_threshold"), 200):
        control = {**control, "low_threshold": None, "high_threshold": None}
    if _number_or(control.get("start"), 0.0) >= _number_or(control.get("end"), 1.0):
        control = {**control, "start": None, "end": None}
    return control


def _float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _character(character: Any) -> Any:
    # A character takes a grid position or a rectangle, not both; a rectangle's width and height
    # are above 0 and it stays on the canvas (x + width, y + height at most 1).
    if not isinstance(character, dict):
        return character
    sides = ("x", "y", "width", "height")
    if character.get("center"):
        return {**character, **dict.fromkeys(sides, 0.0)}
    # As the service sees them: 32-bit floats (1e-46 arrives as 0).
    values = [_float32(_number_or(character.get(side), 0.0)) for side in sides]
    if not any(values):
        return {**character, **dict.fromkeys(sides, 0.0)}
    x, y, width, height = values
    if not (width > 0 and height > 0 and x + width <= 1 and y + height <= 1):
        return {**character, "x": 0.0, "y": 0.0, "width": 0.5, "height": 0.5}
    return character


def _native_image(body: Any) -> Any:
    # Fabula's own body: the input image of each reference and control (hooks draw the body's own
    # image and mask), the lists' relations above, and the sizes the action works out from the
    # input image (_png's 64 x 64) against max_pixels: relations between fields and the image.
    if not isinstance(body, dict):
        return body
    body = dict(_pixels(body))
    for name, valid in (("references", lambda item: {**item, "image": _png()} if isinstance(item, dict) else item),
                        ("controls", _control), ("characters", _character)):
        if isinstance(body.get(name), list):
            body[name] = [valid(item) for item in body[name]]
    action = body.get("action", "generate")
    scale = body.get("scale") or 0
    if action == "upscale":
        width, height = body.get("width") or 0, body.get("height") or 0
        if width or height:
            width, height = width or height, height or width  # the input image is square
        else:
            width = height = round(64 * (scale or 2.0))
        if width < 64 or height < 64 or width * height > IMAGE_MAX_PIXELS:
            body.update(width=0, height=0, scale=0.0)
    if action == "enhance" and (max(64, round(64 * (scale or 1.5) / 64) * 64)) ** 2 > IMAGE_MAX_PIXELS:
        body["scale"] = 0.0
    if isinstance(body.get("hires"), dict):
        body["hires"] = _hires_fix(body["hires"], body.get("width") or IMAGE_MAX_SIDE,
                                   body.get("height") or IMAGE_MAX_SIDE)
        # The hires fix takes no references, controls or characters (schemas/image.py says why
        # the document leaves this rule out).
        body.update({name: [] for name in ("references", "controls", "characters") if body.get(name)})
    if action == "outpaint" and not any(body.get(side) for side in ("left", "right", "top", "bottom")):
        body["right"] = 64  # an outpaint grows at least one side (left out of the document likewise)
    return body


def _hires_fix(hires: dict, base_w: int, base_h: int) -> dict:
    width, height = _hires_size(hires.get("scale") or 0, hires.get("width") or 0, hires.get("height") or 0,
                                base_w, base_h)
    if width < base_w or height < base_h or width * height > IMAGE_MAX_PIXELS or max(width, height) > 4096:
        return {**hires, "scale": 1.0, "width": 0, "height": 0}
    return hires


def _hires_size(scale: float, x: int, y: int, base_w: int, base_h: int) -> tuple[int, int]:
    """The hires fix's final size, worked out as the image service does."""
    if x or y:
        width = x or max(64, round(y * base_w / base_h / 64) * 64)
        return width, y or max(64, round(width * base_h / base_w / 64) * 64)
    scale = scale or 2.0
    return max(64, round(base_w * scale / 64) * 64), max(64, round(base_h * scale / 64) * 64)


def _control_preview(body: Any) -> Any:
    return _pixels(_control(body)) if isinstance(body, dict) else body


def _batch(body: Any) -> Any:
    # batch_size × n_iter images within the image service's max_images: a product again.
    if not isinstance(body, dict):
        return body
    batch, rounds = _number_or(body.get("batch_size"), 1), _number_or(body.get("n_iter"), 1)
    if batch * rounds > IMAGE_MAX_IMAGES:
        return {**body, "n_iter": max(1, IMAGE_MAX_IMAGES // int(batch))}
    return body


def _a1111_hires(body: Any) -> Any:
    # The hires fix's final size, worked out from hr_scale or hr_resize_x/y and the first pass's
    # size as the image service does, must be at least the first pass's and within max_pixels:
    # relations between four fields. One that breaks them becomes the first pass's size (scale 1).
    if not isinstance(body, dict) or body.get("enable_hr") is not True:
        return body
    base_w, base_h = body.get("width") or IMAGE_MAX_SIDE, body.get("height") or IMAGE_MAX_SIDE
    width, height = _hires_size(body.get("hr_scale", 2.0), body.get("hr_resize_x") or 0,
                                body.get("hr_resize_y") or 0, base_w, base_h)
    if width < base_w or height < base_h or width * height > IMAGE_MAX_PIXELS or max(width, height) > 4096:
        return {**body, "hr_scale": 1.0, "hr_resize_x": 0, "hr_resize_y": 0}
    return body


def _change_indexes(body: Any) -> Any:
    # Change indexes run up to 2**63 - 1; the generator, drawing near that bound through floats,
    # may send 2**63 for a value the document allows.
    if not isinstance(body, dict):
        return body
    return {name: min(value, MAX_CHANGE_INDEX) if name.endswith("change_index") and isinstance(value, int) else value
            for name, value in body.items()}


def _fewest_tokens(body: Any) -> Any:
    # min_new_tokens must not exceed max_new_tokens (or its default): a relation between two
    # fields, which JSON Schema cannot state.
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("min_new_tokens"), (int, float)):
        most = body.get("max_new_tokens")
        most = most if isinstance(most, (int, float)) else min(TEXT_DEFAULT_MAX_NEW_TOKENS, TEXT_MAX_NEW_TOKENS)
        body = {**body, "min_new_tokens": min(body["min_new_tokens"], most)}
    # A story's max_context_tokens must leave room for the new tokens in the model's context
    # window: a relation between two fields and the model.
    context = body.get("context")
    if isinstance(context, dict) and isinstance(context.get("max_context_tokens"), (int, float)):
        most = body.get("max_new_tokens")
        most = most if isinstance(most, (int, float)) else min(TEXT_DEFAULT_MAX_NEW_TOKENS, TEXT_MAX_NEW_TOKENS)
        room = max(TEXT_CONTEXT_WINDOW - most, 0)
        body = {**body, "context": {**context, "max_context_tokens": min(context["max_context_tokens"], room)}}
    # sampler_order names every sampler exactly once, or is empty: a permutation, which JSON
    # Schema cannot state (uniqueItems compares whole steps, "enabled" included).
    sampling = body.get("sampling")
    if isinstance(sampling, dict) and isinstance(sampling.get("sampler_order"), list):
        names = [step.get("sampler") for step in sampling["sampler_order"] if isinstance(step, dict)]
        if sorted(map(str, names)) != sorted(SAMPLERS):
            body = {**body, "sampling": {**sampling, "sampler_order": []}}
    return body


def _story_context(body: Any) -> Any:
    """The lorebook's references and keys as the text service checks them: entry and category ids
    unique, an entry's category one of the categories, a category's defaults its own, regular
    expressions that compile, keys for every entry that is not always on (its category's defaults
    count), and the keys together within the service's lorebook settings (which the gateway is
    not told). JSON Schema can state none of these: they relate values across the lorebook."""
    body = _fewest_tokens(body)
    context = body.get("context") if isinstance(body, dict) else None
    if not isinstance(context, dict):
        return body
    categories, seen = [], set()
    for category in context.get("lorebook_categories") or []:
        if not isinstance(category, dict) or category.get("id") in seen:
            continue
        seen.add(category.get("id"))
        defaults = category.get("category_defaults")
        if isinstance(defaults, dict):
            if defaults.get("category") not in ("", None, category.get("id")):
                defaults = {**defaults, "category": ""}
            category = {**category, "category_defaults": _compilable(defaults)}
        categories.append(category)
    default_keys = {category["id"]: category["category_defaults"].get("keys") or []
                    for category in categories
                    if category.get("use_category_defaults") and isinstance(category.get("category_defaults"), dict)}
    entries, ids = [], set()
    for entry in context.get("lorebook") or []:
        if not isinstance(entry, dict):
            continue
        if entry.get("id"):
            entry = {**entry, "id": ""} if entry["id"] in ids else entry
            ids.add(entry["id"])
        if entry.get("category") and entry["category"] not in seen:
            entry = {**entry, "category": ""}
        entry = _compilable(entry)
        if not entry.get("keys") and not default_keys.get(entry.get("category") or "") \
                and not entry.get("always_on") and not entry.get("disabled"):
            entry = {**entry, "always_on": True}
        entries.append(entry)
    keys = [key for entry in entries for key in entry.get("keys") or []]
    if len(keys) > LOREBOOK.max_keys or sum(map(len, keys)) > LOREBOOK.max_key_chars:
        entries = [{**entry, "keys": [], "always_on": True} for entry in entries]
    story = len(context.get("story") or "")
    texts = sum(len(entry.get("text") or "") + 2 for entry in entries)
    scanned = sum((2 * story + texts) * len(entry.get("keys") or []) for entry in entries if entry.get("regex_keys"))
    if scanned > LOREBOOK.max_regex_scan_chars:
        entries = [{**entry, "regex_keys": False} for entry in entries]
    return {**body, "context": {**context, "lorebook": entries, "lorebook_categories": categories}}


def _compilable(entry: dict) -> dict:
    # Regular-expression keys that compile, as the text service compiles them (the `regex`
    # package, VERSION0); a key that does not is taken literally instead.
    if not entry.get("regex_keys"):
        return entry
    try:
        for key in entry.get("keys") or []:
            regex.compile(key, regex.VERSION0)
    except (regex.error, TypeError, ValueError, OverflowError, RecursionError):
        return {**entry, "regex_keys": False}
    return entry


def _number(value: Any) -> bool:
    # JSON has one number type: an integer field may come as 80.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _within(most: Any, fallback: int) -> Any:
    return most if _number(most) else fallback


def _kobold(body: Any) -> Any:
    # memory is put before the prompt: the two together within max_prompt_chars, and within the
    # context window.
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        return body
    memory = body.get("memory") if isinstance(body.get("memory"), str) else ""
    if len(memory) + len(body["prompt"]) > TEXT_MAX_PROMPT_CHARS:
        body = {**body, "memory": ""}
    return _prompt_fitted("prompt", before="memory")(body)


def _openai_tokens(default: int) -> Callable[[Any], Any]:
    def valid(body: Any) -> Any:
        # min_tokens at most the tokens asked for (max_completion_tokens, max_tokens or the default).
        if not isinstance(body, dict) or not _number(body.get("min_tokens")):
            return body
        most = body.get("max_completion_tokens") or body.get("max_tokens")
        most = _within(most, default)
        return {**body, "min_tokens": min(body["min_tokens"], most)}
    return valid


def _completion(body: Any) -> Any:
    return _prompt_fitted("prompt")(_openai_tokens(OPENAI_COMPLETION_MAX_TOKENS)(body))


def _tokens(text: str) -> int:
    reply = httpx.post(f"{BASE_URL}/ai/tokenize", json={"text": text}, timeout=30,
                       headers={"Authorization": f"Bearer {LiveSession.latest}"})
    reply.raise_for_status()
    return len(reply.json()["token_ids"])


def _fitted(text: str, overhead: str = "") -> str:
    # A prompt's length in tokens within the model's context window (one token left for the
    # continuation): the model's tokenizer decides it, which the document cannot state (it bounds
    # the characters). Halved until it fits.
    while text and _tokens(overhead + text) > TEXT_CONTEXT_WINDOW - 1:
        text = text[:len(text) // 2]
    return text


def _prompt_fitted(field: str, before: str = "") -> Callable[[Any], Any]:
    """`before`: a field whose text the API puts before the prompt (KoboldCpp's memory)."""
    def valid(body: Any) -> Any:
        if isinstance(body, dict) and isinstance(body.get(field), str):
            head = body.get(before) if before and isinstance(body.get(before), str) else ""
            body = {**body, field: _fitted(body[field], head)}
        elif isinstance(body, dict) and isinstance(body.get(field), list) and body[field] \
                and isinstance(body[field][0], str):
            body = {**body, field: [_fitted(body[field][0])]}
        return body
    return valid


def _chatml(messages: list[Any]) -> str:
    # The run's chat template (ChatML, tests/integration/compat/conftest.py), as the model renders it.
    def text(message: dict) -> str:
        content = message.get("content")
        return content if isinstance(content, str) else "".join(
            part.get("text", "") for part in content or [] if isinstance(part, dict))
    turns = "".join(f"<|im_start|>{message.get('role')}\n{text(message)}<|im_end|>\n"
                    for message in messages if isinstance(message, dict))
    return turns + "<|im_start|>assistant\n"


def _chat(body: Any) -> Any:
    # The messages' roles and contents together within max_prompt_chars (the chat template's
    # input, a sum over the list), and the rendered conversation within the context window.
    body = _openai_tokens(min(OPENAI_CHAT_MAX_TOKENS, TEXT_MAX_NEW_TOKENS))(body)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return body
    messages = body["messages"]
    while len(messages) > 1 and (len(_chatml(messages)) > TEXT_MAX_PROMPT_CHARS
                                 or _tokens(_chatml(messages)) > TEXT_CONTEXT_WINDOW - 1):
        messages = messages[:-1]
    if _tokens(_chatml(messages)) > TEXT_CONTEXT_WINDOW - 1 and isinstance(messages[0], dict):
        messages = [{**messages[0], "content": ""}]
    return {**body, "messages": messages}


_STOP_IDS: list[int] = []


def _stop_ids() -> list[int]:
    # Token ids that decode to a stop sequence the text service takes: those of a short word.
    if not _STOP_IDS:
        reply = httpx.post(f"{BASE_URL}/ai/tokenize", json={"text": " stop"}, timeout=30,
                           headers={"Authorization": f"Bearer {LiveSession.latest}"})
        reply.raise_for_status()
        _STOP_IDS.extend(reply.json()["token_ids"])
    return list(_STOP_IDS)


def _novelai_text(parameters: Any) -> Any:
    # min_length at most max_length; token-id stop sequences decode (with the model's tokenizer)
    # to 1 to MAX_STRING_CHARS characters.
    if not isinstance(parameters, dict):
        return parameters
    if _number(parameters.get("min_length")):
        most = _within(parameters.get("max_length"), min(NOVELAI_DEFAULT_MAX_LENGTH, TEXT_MAX_NEW_TOKENS))
        parameters = {**parameters, "min_length": min(parameters["min_length"], most)}
    stops = parameters.get("stop_sequences")
    if isinstance(stops, list) and any(isinstance(stop, list) for stop in stops):
        parameters = {**parameters, "stop_sequences": [_stop_ids() if isinstance(stop, list) else stop
                                                       for stop in stops]}
    return parameters


EDITOR_MAX_PAGE_SIZE = 1000
TEXT_DEFAULT_MAX_NEW_TOKENS = 40
TEXT_CONTEXT_WINDOW = int(os.environ.get("FABULA_CONTRACT_CONTEXT_WINDOW", "0"))
MAX_CHANGE_INDEX = 2**63 - 1
SAMPLERS = ("temperature", "top_k", "top_p", "top_a", "typical_p", "tail_free", "min_p")
TEXT_MAX_NEW_TOKENS = int(os.environ.get("FABULA_CONTRACT_MAX_NEW_TOKENS", "0"))
TEXT_MAX_PROMPT_CHARS = int(os.environ.get("FABULA_CONTRACT_MAX_PROMPT_CHARS", "0"))
OPENAI_CHAT_MAX_TOKENS = int(os.environ.get("FABULA_CONTRACT_OPENAI_CHAT_MAX_TOKENS", "0"))
OPENAI_COMPLETION_MAX_TOKENS = 16  # OpenAI's default max_tokens for a completion
NOVELAI_DEFAULT_MAX_LENGTH = 40
LOREBOOK = LorebookLimits()  # the text service's lorebook_* settings, as the run starts it
IMAGE_MAX_PIXELS = int(os.environ.get("FABULA_CONTRACT_MAX_PIXELS", "0"))
IMAGE_MAX_SIDE = int(os.environ.get("FABULA_CONTRACT_DEFAULT_SIDE", "0"))
IMAGE_MAX_IMAGES = int(os.environ.get("FABULA_CONTRACT_MAX_IMAGES", "1"))

# Where: (operation, field path in the body, dotted, or "" for the whole body) → the valid value
# for what was generated.
POSITIVE_CONTENTS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("POST /user/register", "username"): _valid_username,
    ("POST /user/register", "kdf"): _valid_kdf,
    ("POST /user/login", "username"): _valid_username,
    ("POST /user/salt", "username"): _valid_username,
    ("POST /user/change-password", "new_kdf"): _valid_kdf,
    ("POST /user/tokens", "name"): _valid_username,
    ("POST /user/tokens", "expires_at"): _future,
    ("POST /sdapi/v1/png-info", "image"): _png_field,
    ("POST /ai/image/metadata", "image"): _png_field,
    ("POST /sdapi/v1/img2img", "init_images"): _png_list,
    ("POST /novelai/ai/generate-image", "parameters.image"): _png_field,
    ("POST /sdapi/v1/img2img", "mask"): _mask,
    ("POST /novelai/ai/generate-image", "parameters.mask"): _mask,
    ("POST /novelai/ai/generate-image", "parameters"): lambda parameters: _pixels(parameters, None),
    ("POST /sdapi/v1/txt2img", ""): lambda body: _a1111_hires(_batch(_pixels(body))),
    ("POST /sdapi/v1/img2img", ""): lambda body: _batch(_pixels(body)),
    ("POST /user/change-password", ""): _change_indexes,
    ("PUT /user/keystore", ""): _change_indexes,
    ("PUT /user/objects/{type}/{id}", ""): _change_indexes,
    ("POST /ai/generate", ""): _story_context,
    ("POST /ai/generate-stream", ""): _story_context,
    ("POST /api/v1/generate", ""): _kobold,
    ("POST /api/extra/generate/stream", ""): _kobold,
    ("POST /v1/completions", ""): _completion,
    ("POST /v1/chat/completions", ""): _chat,
    ("POST /novelai/ai/generate", "parameters"): _novelai_text,
    ("POST /novelai/ai/generate-stream", "parameters"): _novelai_text,
    ("POST /novelai/ai/generate", ""): _prompt_fitted("input"),
    ("POST /novelai/ai/generate-stream", ""): _prompt_fitted("input"),
    ("POST /ai/generate-image", "image"): _png_field,
    ("POST /ai/generate-image", "mask"): _mask,
    ("POST /ai/generate-image", ""): _native_image,
    ("POST /ai/generate-image-stream", "image"): _png_field,
    ("POST /ai/generate-image-stream", "mask"): _mask,
    ("POST /ai/generate-image-stream", ""): _native_image,
    ("POST /ai/image/control-preview", ""): _control_preview,
}
# Where: (operation, query parameter) → the valid value for what was generated, given the case.
POSITIVE_QUERIES: dict[tuple[str, str], Callable[[Any, Any], Any]] = {
    ("GET /user/objects/{type}", "page_size"): lambda value, case: _page_size(value),
    ("GET /user/objects/{type}", "page_token"): _page_token,
}


def _positive(case, location: ParameterLocation) -> bool:
    info = case.meta.components.get(location) if case.meta is not None else None
    return info is not None and info.mode.value == "positive"


def _replace(container: Any, path: list[str], valid: Callable[[Any], Any]) -> Any:
    if not path:
        return valid(container)
    if not isinstance(container, dict):
        return container
    if path[0] not in container:
        # An image left out is still one the operation may need (an img2img, a control).
        if len(path) > 1 or valid not in IMAGES:
            return container
        return {**container, path[0]: valid(None)}
    return {**container, path[0]: _replace(container[path[0]], path[1:], valid)}


@schemathesis.hook
def map_case(ctx, case):
    label = ctx.operation.label
    if _positive(case, ParameterLocation.BODY):
        for (operation, name), valid in POSITIVE_CONTENTS.items():
            if operation == label:
                case.body = _replace(case.body, name.split(".") if name else [], valid)
    if _positive(case, ParameterLocation.QUERY) and case.query:
        for (operation, name), valid in POSITIVE_QUERIES.items():
            if operation == label and name in case.query:
                case.query = {**case.query, name: valid(case.query[name], case)}
    return case


# An export archive (a tar file with the account's objects) is not JSON Schema: a positive case
# sends the session's own export. It is sent as the request's body, not written into the case:
# schemathesis cannot judge bytes by a schema and would take any body a hook wrote for an
# invalid one. A negative case sends the body drawn against the document (not a string), which
# the import must refuse.
POSITIVE_BODIES: dict[str, Callable[[], bytes]] = {"POST /user/import": _export}


@schemathesis.hook
def before_call(ctx, case, kwargs):
    body = POSITIVE_BODIES.get(ctx.operation.label)
    if body is not None and _positive(case, ParameterLocation.BODY):
        kwargs["data"] = body()
