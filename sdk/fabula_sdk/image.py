"""Image generation through the gateway: images at once, or progress (with previews) as they are
denoised (Server-Sent Events), plus tokenizing prompts and listing models and samplers.

    with ImageClient("http://127.0.0.1:8000", token) as ai:
        for event in ai.stream(prompt="a lighthouse in a storm", seed=1, preview_every=5):
            if isinstance(event, ImageProgress):
                print(f"step {event.step}/{event.total_steps}")
            elif isinstance(event, GeneratedImage):
                open(f"out-{event.seed}.png", "wb").write(event.png)

Options are the gateway's JSON body fields (its OpenAPI page, /docs): `action` (generate, img2img,
inpaint, outpaint), `prompt`, `negative_prompt`, `negative_preset`, `quality_tags`, `width`,
`height`, `steps`, `guidance_scale`, `guidance_rescale`, `sampler`, `noise_schedule`, `seed`,
`n_images`, `preview_every`, `dialect` (novelai or a1111); for image actions `image` and `mask` as bytes (encoded here),
`strength`, `extra_noise`, `mask_blur`, `masked_content`, `only_masked`, `only_masked_padding`,
`left`/`right`/`top`/`bottom`; with any action `references` (dicts of `image` bytes, `strength`,
`information_extracted`), `controls` (`kind`, `image` bytes or `pose_json`, `strength`, ...) and
`characters` (`prompt`, `negative_prompt`, region `x`/`y`/`width`/`height` fractions or `center`
A1..E5); `action` upscale, enhance and variations with `image`, `scale`, `upscaler`; `hires` (a
dict: scale, width, height, steps, strength, upscaler) for a two-pass generation;
`dynamic_thresholding`, `dynamic_thresholding_max`, `schedule_rho`. Failures raise the SDK's
`ApiError` subclasses, also mid-stream.

`metadata(png)` reads the parameters back (a body `generate` takes again) and whether the
server's signature verifies; `signing_key()` is the server's public key; `tags(q)` suggests tags.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fabula_sdk.ai_http import AiHttpClient


@dataclass(frozen=True)
class ImageAccepted:
    """What the server will make: the seeds (the random one included), size, steps, and how the
    prompt was read (token counts, chunks, any dropped words)."""

    seeds: list[int]
    width: int
    height: int
    steps: int
    sampler: str
    model: str
    prompt: dict[str, Any]
    negative_prompt: dict[str, Any]
    queue_position: int = 0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ImageAccepted:
        return cls(**{key: body[key] for key in cls.__dataclass_fields__ if key in body})


@dataclass(frozen=True)
class ImageProgress:
    step: int
    total_steps: int
    previews: list[bytes] = field(default_factory=list)  # low-resolution PNGs, when asked for


@dataclass(frozen=True)
class GeneratedImage:
    index: int
    seed: int
    width: int
    height: int
    png: bytes  # with the generation parameters in its "parameters" text chunk
    parameters: str

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GeneratedImage:
        return cls(index=body["index"], seed=body["seed"], width=body["width"], height=body["height"],
                   png=base64.b64decode(body["png"]), parameters=body["parameters"])


@dataclass(frozen=True)
class ImageFinished:
    queue_seconds: float
    generation_seconds: float


@dataclass(frozen=True)
class ImageResult:
    accepted: ImageAccepted
    images: list[GeneratedImage]
    queue_seconds: float
    generation_seconds: float


ImageEvent = ImageAccepted | ImageProgress | GeneratedImage | ImageFinished


def _encoded(item: dict[str, Any], keys: tuple[str, ...] = ("image", "mask")) -> dict[str, Any]:
    body = dict(item)
    for key in keys:
        if isinstance(body.get(key), bytes | bytearray):
            body[key] = base64.b64encode(body[key]).decode("ascii")
    return body


def _body(options: dict[str, Any]) -> dict[str, Any]:
    body = _encoded(options)
    for key in ("references", "controls"):
        if key in body:
            body[key] = [_encoded(item) for item in body[key]]
    return body


class ImageClient(AiHttpClient):
    def generate(self, **options: Any) -> ImageResult:
        """All images at once."""
        body = self._request("POST", "/ai/generate-image", _body({**options, "response_format": "json"})).json()
        return ImageResult(ImageAccepted.from_json(body["accepted"]),
                           [GeneratedImage.from_json(item) for item in body["images"]],
                           body["queue_seconds"], body["generation_seconds"])

    def generate_zip(self, **options: Any) -> bytes:
        """All images as one zip archive (image_<index>_<seed>.png each)."""
        return self._request("POST", "/ai/generate-image", _body({**options, "response_format": "zip"})).content

    def stream(self, **options: Any) -> Iterator[ImageEvent]:
        """ImageAccepted, then ImageProgress per step, then a GeneratedImage per image, then
        ImageFinished. Stopping the iteration closes the connection, which stops the denoising."""
        for kind, body in self._events("/ai/generate-image-stream", _body(options)):
            if kind == "accepted":
                yield ImageAccepted.from_json(body)
            elif kind == "progress":
                yield ImageProgress(body["step"], body["total_steps"],
                                    [base64.b64decode(p) for p in body.get("previews", [])])
            elif kind == "image":
                yield GeneratedImage.from_json(body)
            elif kind == "finished":
                yield ImageFinished(body["queue_seconds"], body["generation_seconds"])
                return

    def tokenize(self, prompt: str, model: str = "", quality_tags: bool = False, dialect: str = "novelai",
                 steps: int = 0) -> dict[str, Any]:
        """How the model reads `prompt` in `dialect`: token count, segments and chunks (tokens and
        weights), the prompt-editing stages over `steps` (0 = the model's default), dropped words."""
        return self._request("POST", "/ai/image/tokenize",
                             {"prompt": prompt, "model": model, "quality_tags": quality_tags, "dialect": dialect,
                              "steps": steps}).json()

    def control_preview(self, kind: str, image: bytes = b"", *, width: int = 0, height: int = 0,
                        **options: Any) -> bytes:
        """The control image (PNG) a generation with this control would be steered by."""
        body = _encoded({"kind": kind, "image": image, "width": width, "height": height, **options})
        return base64.b64decode(self._request("POST", "/ai/image/control-preview", body).json()["png"])

    def models(self) -> dict[str, Any]:
        """The models (defaults, quality tags, presets), the samplers, the upscalers and the limits."""
        return self._request("GET", "/ai/image/models").json()

    def metadata(self, png: bytes) -> dict[str, Any]:
        """What `png` says about how it was made: `source` (fabula, a1111 or none), `request` (options
        `generate(**request)` takes again; image actions need their input image added),
        `signature` (valid, invalid, unknown_key or absent), `builtin_model`, the text chunks."""
        return self._request("POST", "/ai/image/metadata",
                             {"image": base64.b64encode(png).decode("ascii")}).json()

    def signing_key(self) -> dict[str, Any]:
        """The server's Ed25519 public key (base64), its id and the signed scheme."""
        return self._request("GET", "/ai/image/signing-key").json()

    def tags(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Tag suggestions for what has been typed: name, text, category, post_count, aliases, match."""
        return self._request("GET", "/ai/image/tags", params={"q": query, "limit": limit}).json()["tags"]
