"""NovelAI's image API (POST {prefix}/ai/generate-image, prefix /novelai): its request body, and
its translation onto the image service's protobuf. The answer is a ZIP of PNGs, as NovelAI's.

NovelAI's body is `{"input": prompt, "model": ..., "action": ..., "parameters": {...}}`; the
parameters below are the ones NovelAI's clients send (SillyTavern's src/endpoints/novelai.js
sends `sm`, `sm_dyn`, `legacy`, `dynamic_thresholding`, `controlnet_strength`, `uncond_scale` and
`add_original_image` too: accepted and ignored, Fabula has no such controls).
"""

from __future__ import annotations

import io
import zipfile
from typing import Annotated, Literal

from pydantic import Field

from fabula.image.v1 import image_pb2
from gateway.schemas.a1111 import NOISE_NOTE, ImageData, fabula_facts
from gateway.schemas.common import RequestBody, Text

# The service names "params.width", "img2img.strength", "inpaint.mask"; NovelAI's body has them
# under "parameters".
FIELD_PREFIXES = ("params.", "img2img.", "inpaint.")

# NovelAI's sampler names and the Fabula sampler each one is.
SAMPLERS = {"k_euler": "euler", "k_euler_ancestral": "euler_ancestral", "k_dpmpp_2m": "dpmpp_2m",
            "k_dpmpp_2s_ancestral": "dpmpp_2s_ancestral", "k_dpmpp_sde": "dpmpp_sde",
            "k_dpmpp_2m_sde": "dpmpp_2m_sde", "ddim": "ddim", "ddim_v3": "ddim"}
NovelAISampler = Literal["k_euler", "k_euler_ancestral", "k_dpmpp_2m", "k_dpmpp_2s_ancestral", "k_dpmpp_sde",
                         "k_dpmpp_2m_sde", "ddim", "ddim_v3"]
_SCHEDULES = {"native": image_pb2.NOISE_SCHEDULE_NATIVE, "karras": image_pb2.NOISE_SCHEDULE_KARRAS,
              "exponential": image_pb2.NOISE_SCHEDULE_EXPONENTIAL}
# NovelAI's ucPreset numbers: 0 Heavy, 1 Light, then model-specific focus presets and None; Fabula
# has heavy, light and none.
UC_PRESETS = {0: "heavy", 1: "light", 2: "none", 3: "none"}
# SillyTavern draws seeds below 9999999999 (beyond 32 bits); the image service's seeds are 32-bit.
SEED_MAX = 9_999_999_999
Size = Annotated[int, Field(ge=64, le=4096, multiple_of=64)]


class ImageParameters(RequestBody):
    width: Size | None = Field(None, description="multiple of 64; absent: the model's default")
    height: Size | None = Field(None, description="multiple of 64; absent: the model's default")
    scale: float | None = Field(None, ge=0, le=50, description="guidance; absent: the model's default")
    sampler: NovelAISampler | None = Field(None, description="absent: the model's default")
    steps: int | None = Field(None, ge=1, le=1000, description="absent: the model's default")
    n_samples: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="taken modulo 2^32; absent: random")
    negative_prompt: Text = ""
    ucPreset: int = Field(0, ge=0, le=3, description="0 heavy, 1 light, 2 and 3 none")
    qualityToggle: bool = Field(True, description="add the model's quality tags")
    cfg_rescale: float = Field(0.0, ge=0, le=1)
    noise_schedule: Literal["native", "karras", "exponential"] | None = None
    strength: float | None = Field(None, gt=0, le=1, description="img2img, infill: how much is redrawn")
    noise: float = Field(0.0, ge=0, le=0.99, description="img2img: extra noise")
    image: ImageData | None = Field(None, description="img2img, infill: the input image (base64)")
    mask: ImageData | None = Field(None, description="infill: white = redraw, the image's size (base64)")


class GenerateImageBody(RequestBody):
    input: Text = Field(description="the prompt, in NovelAI's prompt language")
    model: Text = Field("", max_length=200, description="a Fabula model; NovelAI's model names (nai-*) and "
                                                        "unknown ones take the default model")
    action: Literal["generate", "img2img", "infill"] = "generate"
    parameters: ImageParameters = Field(default_factory=ImageParameters)

    def to_pb(self, model_names: set[str]) -> image_pb2.GenerateRequest:
        p = self.parameters
        params = image_pb2.GenerationParams(
            model=self.model if self.model in model_names else "", prompt=self.input,
            negative_prompt=p.negative_prompt, negative_preset=UC_PRESETS[p.ucPreset], quality_tags=p.qualityToggle,
            width=p.width or 0, height=p.height or 0, steps=p.steps or 0, guidance_rescale=p.cfg_rescale,
            sampler=SAMPLERS[p.sampler] if p.sampler else "", n_images=p.n_samples,
            dialect=image_pb2.PROMPT_DIALECT_NOVELAI)
        if p.scale is not None:
            params.guidance_scale = p.scale
        if p.noise_schedule is not None:
            params.noise_schedule = _SCHEDULES[p.noise_schedule]
        if p.seed is not None:
            params.seed = p.seed % 2**32
        request = image_pb2.GenerateRequest(params=params)
        if self.action == "generate":
            request.txt2img.SetInParent()
        elif self.action == "img2img":
            request.img2img.image, request.img2img.extra_noise = p.image or b"", p.noise
            if p.strength is not None:
                request.img2img.strength = p.strength
        else:
            request.inpaint.image, request.inpaint.mask = p.image or b"", p.mask or b""
            if p.strength is not None:
                request.inpaint.strength = p.strength
        return request


def images_zip(images: list[image_pb2.Image]) -> bytes:
    """NovelAI's answer: image_0.png, image_1.png, ... stored uncompressed (PNG is compressed)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
        for item in sorted(images, key=lambda image: image.index):
            out.writestr(f"image_{item.index}.png", item.png)
    return archive.getvalue()


def honesty_headers(images: list[image_pb2.Image]) -> dict[str, str]:
    """Response headers saying that the built-in model's pictures are noise (NovelAI's ZIP has no
    other place for it; each PNG's "fabula" chunk says builtin_model too)."""
    if images and fabula_facts(images[0].png).get("builtin_model"):
        return {"X-Fabula-Builtin-Model": "true", "X-Fabula-Note": NOISE_NOTE}
    return {}
