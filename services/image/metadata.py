"""Generation metadata in PNGs: the fields of the new actions and options as Fabula writes them,
and reading a PNG's metadata back into a request that can be run again.

Two sources are read: Fabula's own `fabula` JSON chunk (every parameter, exactly), and
AUTOMATIC1111's `parameters` text (`prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: ...`), which
A1111, its forks and the tools that follow it write. The A1111 fields with a counterpart in
Fabula's request are mapped (the sampler by its A1111 name, old names such as "DPM++ 2M Karras"
included; the size; hires fix; denoising strength); the rest are returned as `unmapped`. Images
made from an input image (img2img, inpaint, ...) give a request without that image: the caller
supplies it again.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from services.image import images as pixels
from services.image.params import Action, RawRequest, Request
from services.image.samplers import SAMPLERS, find_sampler
from services.image.signing import ImageSigner, Verdict, Verification
from services.toolkit.errors import InvalidArgument

SCHEDULE_NAMES = {"native": "Automatic", "karras": "Karras", "exponential": "Exponential",
                  "polyexponential": "Polyexponential"}
_SCHEDULES_BY_NAME = {name.lower(): schedule for schedule, name in SCHEDULE_NAMES.items()}
_SAMPLERS_BY_DISPLAY = {spec.display_name.lower(): spec.name for spec in SAMPLERS.values()}
# The A1111 fields read into the request (the others are reported as unmapped).
_MAPPED = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model", "Model hash",
           "Denoising strength", "CFG Rescale", "CFG Rescale phi", "Hires upscale", "Hires resize", "Hires steps",
           "Hires upscaler", "Version", "Mask blur", "Extra noise", "Dynamic thresholding", "Schedule rho"}


# --- writing ---

def extra_json(request: Request) -> dict[str, Any]:
    """The `fabula` chunk's fields for hires fix, upscale, enhance and the sampling options."""
    values: dict[str, Any] = {}
    plan = request.hires
    if plan is not None:
        values.update(width=plan.base_width, height=plan.base_height, steps=plan.base_steps,
                      hires={"width": plan.width, "height": plan.height, "steps": plan.steps,
                             "strength": plan.strength, "upscaler": plan.upscaler})
    if request.action in (Action.UPSCALE, Action.ENHANCE):
        values.update(scale=round(request.scale, 4), upscaler=request.upscaler)
    if request.action == Action.ENHANCE:
        values.update(extra_noise=request.extra_noise)
    if request.dynamic_thresholding:
        values.update(dynamic_thresholding=request.dynamic_thresholding,
                      dynamic_thresholding_max=request.dynamic_thresholding_max)
    if request.noise_schedule == "polyexponential":
        values.update(schedule_rho=request.schedule_rho)
    return values


def extra_text(request: Request) -> dict[str, Any]:
    """The `parameters` text's fields for the same, in A1111's names where it has them."""
    fields: dict[str, Any] = {}
    plan = request.hires
    if plan is not None:
        # A1111 writes the first pass's size and steps, then the hires fields.
        fields.update({"Steps": plan.base_steps, "Size": f"{plan.base_width}x{plan.base_height}",
                       "Denoising strength": _number(plan.strength),
                       "Hires resize": f"{plan.width}x{plan.height}", "Hires steps": plan.steps,
                       "Hires upscaler": "Latent" if plan.upscaler == "latent" else plan.upscaler})
    if request.action in (Action.UPSCALE, Action.ENHANCE):
        fields.update({"Upscaler": request.upscaler, "Upscale by": _number(round(request.scale, 4))})
    if request.action == Action.UPSCALE:
        fields.update({"Fabula action": "upscale"})
    if request.action in (Action.ENHANCE, Action.VARIATIONS):
        fields.update({"Fabula action": request.action.value})
    if request.dynamic_thresholding:
        fields["Dynamic thresholding"] = (f"{_number(request.dynamic_thresholding)} max "
                                          f"{_number(request.dynamic_thresholding_max)}")
    if request.noise_schedule == "polyexponential":
        fields["Schedule rho"] = _number(request.schedule_rho)
    return fields


def _number(value: float) -> str:
    return f"{value:g}"


# --- reading ---

@dataclass
class Metadata:
    source: str  # "fabula", "a1111" or "none"
    request: RawRequest | None
    parameters: str
    verification: Verification
    builtin_model: bool
    text_chunks: dict[str, str]
    unmapped: dict[str, str] = field(default_factory=dict)


def read(png: bytes, signer: ImageSigner | None, served_models: set[str], *, max_pixels: int) -> Metadata:
    """The metadata of `png` (InvalidArgument naming `image` when it is not a readable PNG)."""
    if not png:
        raise InvalidArgument("image", "<empty>", "a PNG is required")
    try:
        image = Image.open(io.BytesIO(png), formats=("PNG",))
    except (Image.UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidArgument("image", f"<{len(png)} bytes>", f"not a PNG ({error})") from None
    with image:
        if image.width * image.height > max_pixels:
            raise InvalidArgument("image", f"{image.width}x{image.height}", f"must be at most {max_pixels} pixels")
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise InvalidArgument("image", f"<{len(png)} bytes>", f"the PNG could not be decoded ({error})") from None
        text = {key: value for key, value in getattr(image, "text", {}).items() if isinstance(value, str)}
        verification = signer.verify(image, text) if signer is not None else Verification(Verdict.ABSENT)
    parameters = text.get("parameters", "")
    facts = _json_chunk(text.get("fabula", ""))
    builtin = bool(facts.get("builtin_model")) if facts else False
    if facts:
        return Metadata("fabula", _from_fabula(facts, served_models), parameters, verification, builtin, text)
    if parameters.strip():
        request, unmapped = _from_a1111(parameters, served_models)
        return Metadata("a1111", request, parameters, verification, builtin, text, unmapped)
    return Metadata("none", None, parameters, verification, builtin, text)


def prompt_source(image: bytes, served_models: set[str], *, max_pixels: int) -> RawRequest | None:
    """The request recorded in an image, for variations of it; None when it records none."""
    try:
        found = read(image, None, served_models, max_pixels=max_pixels)
    except InvalidArgument:
        return None
    return found.request


def _json_chunk(value: str) -> dict[str, Any]:
    try:
        facts = json.loads(value) if value else {}
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) else {}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _from_fabula(facts: dict[str, Any], served_models: set[str]) -> RawRequest:
    try:
        action = Action(facts.get("action", "txt2img"))
    except ValueError:
        action = Action.TXT2IMG
    raw = RawRequest(
        action=action, model=facts.get("model", "") if facts.get("model") in served_models else "",
        prompt=str(facts.get("prompt", "")), negative_prompt=str(facts.get("negative_prompt", "")),
        negative_preset=str(facts.get("negative_preset", "")), quality_tags=facts.get("quality_tags"),
        steps=_int(facts.get("steps")), guidance_scale=_float(facts.get("guidance_scale")),
        guidance_rescale=_float(facts.get("guidance_rescale")) or 0.0, sampler=str(facts.get("sampler", "")),
        noise_schedule=str(facts.get("noise_schedule", "")), seed=_int(facts.get("seed"), -1),
        dialect=str(facts.get("dialect", "")),
        dynamic_thresholding=_float(facts.get("dynamic_thresholding")) or 0.0,
        dynamic_thresholding_max=_float(facts.get("dynamic_thresholding_max")),
        schedule_rho=_float(facts.get("schedule_rho")))
    if raw.seed is not None and raw.seed < 0:
        raw.seed = None
    if action == Action.UPSCALE:
        raw.target_width, raw.target_height = _int(facts.get("width")), _int(facts.get("height"))
        raw.upscaler = str(facts.get("upscaler", ""))
        return raw
    raw.width, raw.height = _int(facts.get("width")), _int(facts.get("height"))
    if action != Action.TXT2IMG:
        raw.strength = _float(facts.get("strength"))
        raw.extra_noise = _float(facts.get("extra_noise")) or 0.0
    if action == Action.ENHANCE:
        raw.scale, raw.upscaler = _float(facts.get("scale")) or 0.0, str(facts.get("upscaler", ""))
        raw.width = raw.height = 0
    if action in (Action.INPAINT, Action.OUTPAINT):
        raw.mask_blur = _int(facts.get("mask_blur")) if "mask_blur" in facts else None
        raw.masked_content = str(facts.get("masked_content", ""))
    if action == Action.INPAINT:
        raw.only_masked = bool(facts.get("only_masked"))
        raw.only_masked_padding = _int(facts.get("only_masked_padding")) if "only_masked_padding" in facts else None
    if action == Action.OUTPAINT:
        raw.left, raw.right, raw.top, raw.bottom = (_int(facts.get(side)) for side in ("left", "right", "top",
                                                                                        "bottom"))
        raw.width = raw.height = 0
    plan = facts.get("hires")
    if isinstance(plan, dict):
        raw.hires = True
        raw.hires_width, raw.hires_height = _int(plan.get("width")), _int(plan.get("height"))
        raw.hires_steps, raw.hires_strength = _int(plan.get("steps")), _float(plan.get("strength"))
        raw.hires_upscaler = str(plan.get("upscaler", ""))
    return raw


def _a1111_sampler(name: str) -> tuple[str, str]:
    """(sampler, schedule) for an A1111 sampler name; before A1111 1.9 the schedule was part of it
    ("DPM++ 2M Karras")."""
    lowered = name.strip().lower()
    for suffix, schedule in ((" karras", "karras"), (" exponential", "exponential"),
                             (" polyexponential", "polyexponential")):
        if lowered.endswith(suffix) and lowered[:-len(suffix)] in _SAMPLERS_BY_DISPLAY:
            return _SAMPLERS_BY_DISPLAY[lowered[:-len(suffix)]], schedule
    if lowered in _SAMPLERS_BY_DISPLAY:
        return _SAMPLERS_BY_DISPLAY[lowered], ""
    spec = find_sampler(lowered)
    return (spec.name if spec else name.strip()), ""


def _size(value: str) -> tuple[int, int]:
    width, _, height = value.partition("x")
    return _int(width), _int(height)


def _from_a1111(text: str, served_models: set[str]) -> tuple[RawRequest, dict[str, str]]:
    prompt, negative, fields = pixels.parse_parameters(text)
    raw = RawRequest(prompt=prompt, negative_prompt=negative, dialect="a1111", quality_tags=False,
                     negative_preset="none")
    raw.steps = _int(fields.get("Steps"))
    if "Sampler" in fields:
        raw.sampler, raw.noise_schedule = _a1111_sampler(fields["Sampler"])
    if "Schedule type" in fields:
        raw.noise_schedule = _SCHEDULES_BY_NAME.get(fields["Schedule type"].strip().lower(), "")
    raw.guidance_scale = _float(fields.get("CFG scale"))
    rescale = _float(fields.get("CFG Rescale", fields.get("CFG Rescale phi")))
    raw.guidance_rescale = rescale or 0.0
    seed = _int(fields.get("Seed"), -1)
    raw.seed = seed if seed >= 0 else None
    raw.width, raw.height = _size(fields.get("Size", ""))
    if fields.get("Model") in served_models:
        raw.model = fields["Model"]
    if "Schedule rho" in fields:
        raw.schedule_rho = _float(fields["Schedule rho"])
    if "Hires upscale" in fields or "Hires resize" in fields or "Hires steps" in fields:
        raw.hires = True
        raw.hires_scale = _float(fields.get("Hires upscale")) or 0.0
        if "Hires resize" in fields:
            raw.hires_width, raw.hires_height = _size(fields["Hires resize"])
        raw.hires_steps = _int(fields.get("Hires steps"))
        raw.hires_strength = _float(fields.get("Denoising strength"))
        upscaler = fields.get("Hires upscaler", "")
        # A1111's latent upscalers are all "Latent (...)" variants of one idea.
        raw.hires_upscaler = "latent" if upscaler.lower().startswith("latent") or not upscaler else (
            "lanczos" if upscaler.lower() == "lanczos" else upscaler)
    elif "Denoising strength" in fields:
        # An img2img picture: the request needs its input image again.
        raw.action, raw.strength = Action.IMG2IMG, _float(fields["Denoising strength"])
    unmapped = {key: value for key, value in fields.items() if key not in _MAPPED}
    if "Model" in fields and fields["Model"] not in served_models:
        unmapped["Model"] = fields["Model"]
    return raw, unmapped
