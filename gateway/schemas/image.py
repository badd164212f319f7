"""The JSON bodies of /ai/generate-image, /ai/generate-image-stream, /ai/image/tokenize and
/ai/image/models, and their conversion to and from the image service's protobuf.

Every value is validated by the image service (one place for the rules); the gateway checks only
what protobuf cannot carry (types, integer ranges, base64).
"""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from fabula.image.v1 import image_pb2
from gateway.schemas.common import (
    Base64Bytes,
    ImageSide,
    NonEmptyBase64Bytes,
    RequestBody,
    Text,
    Uint32,
    float32_between,
)

# The service names fields of its request ("params.width", "inpaint.mask"); the HTTP body is
# flat, so the field the client sees is "width", "mask" (errors.py applies this).
FIELD_PREFIXES = ("params.", "img2img.", "inpaint.", "outpaint.", "upscale.", "enhance.", "variations.")
# The preview's body is the control itself: "control.image" is "image" there.
PREVIEW_FIELD_PREFIXES = ("control.",)

Schedule = Literal["native", "karras", "exponential", "polyexponential"]
Content = Literal["original", "fill", "latent_noise", "latent_nothing"]
_SCHEDULES = {"native": image_pb2.NOISE_SCHEDULE_NATIVE, "karras": image_pb2.NOISE_SCHEDULE_KARRAS,
              "exponential": image_pb2.NOISE_SCHEDULE_EXPONENTIAL,
              "polyexponential": image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL}
_SCHEDULE_NAMES = {value: name for name, value in _SCHEDULES.items()}
_CONTENT_NAMES_PB = {image_pb2.MASKED_CONTENT_ORIGINAL: "original", image_pb2.MASKED_CONTENT_FILL: "fill",
                     image_pb2.MASKED_CONTENT_LATENT_NOISE: "latent_noise",
                     image_pb2.MASKED_CONTENT_LATENT_NOTHING: "latent_nothing"}
_CONTENTS = {"original": image_pb2.MASKED_CONTENT_ORIGINAL, "fill": image_pb2.MASKED_CONTENT_FILL,
             "latent_noise": image_pb2.MASKED_CONTENT_LATENT_NOISE,
             "latent_nothing": image_pb2.MASKED_CONTENT_LATENT_NOTHING}
Dialect = Literal["novelai", "a1111"]
_DIALECTS = {"novelai": image_pb2.PROMPT_DIALECT_NOVELAI, "a1111": image_pb2.PROMPT_DIALECT_A1111}
_DIALECT_NAMES = {value: name for name, value in _DIALECTS.items()}


ControlKindName = Literal["canny", "lineart", "scribble", "pose", "depth", "background_removal", "raw"]
_CONTROL_KINDS = {"canny": image_pb2.CONTROL_KIND_CANNY, "lineart": image_pb2.CONTROL_KIND_LINEART,
                  "scribble": image_pb2.CONTROL_KIND_SCRIBBLE, "pose": image_pb2.CONTROL_KIND_POSE,
                  "depth": image_pb2.CONTROL_KIND_DEPTH, "background_removal": image_pb2.CONTROL_KIND_BACKGROUND_REMOVAL,
                  "raw": image_pb2.CONTROL_KIND_RAW}
# The image service's ranges, as the 32-bit floats that reach it (common.float32_between).
Fraction = float32_between(0, 1)
OpenFraction = float32_between(0, 1, low_open=True)
GuidanceStrength = float32_between(0, 2)
Threshold = Annotated[int, Field(ge=0, le=255)]


def _zero_or_between(low: float, high: float) -> Any:
    """0 (the default) or a number in [low, high] (bounds 32-bit floats carry exactly)."""
    def check(value: float) -> float:
        if value and not low <= value <= high:
            raise ValueError(f"must be 0 (the default) or between {low:g} and {high:g}")
        return value
    return Annotated[float, Field(allow_inf_nan=False), AfterValidator(check), WithJsonSchema({"anyOf": [
        {"type": "number", "const": 0}, {"type": "number", "minimum": low, "maximum": high}]})]


# The lists' lengths are capped by the service (ListModels' max_references, ...); this bound only
# stops a body of thousands of entries before it is converted.
MAX_LIST = 64


class ReferenceBody(RequestBody):
    """A reference image (NovelAI's vibe transfer)."""

    image: NonEmptyBase64Bytes = Field(description="base64 PNG/JPEG/WebP")
    strength: GuidanceStrength | None = Field(None, description="0 to 2; default 0.6")
    information_extracted: OpenFraction | None = Field(None, description="how much of the image is used, (0, 1]; "
                                                                        "default 1")

    def to_pb(self) -> image_pb2.ReferenceImage:
        message = image_pb2.ReferenceImage(image=self.image)
        if self.strength is not None:
            message.strength = self.strength
        if self.information_extracted is not None:
            message.information_extracted = self.information_extracted
        return message


# A pose control is drawn from its keypoints JSON; every other kind from its source image.
_CONTROL_SOURCE = {"allOf": [{"anyOf": [
    {"properties": {"kind": {"const": "pose"}, "pose_json": {"minLength": 1}}, "required": ["kind", "pose_json"]},
    {"properties": {"kind": {"not": {"const": "pose"}}, "image": {"minLength": 4}}, "required": ["kind", "image"]}]}]}


class ControlBody(RequestBody):
    """A control image steering the composition through a ControlNet. low_threshold must not
    exceed high_threshold (defaults 100 and 200), nor start end (defaults 0 and 1): relations
    the service checks, naming the field."""

    model_config = ConfigDict(json_schema_extra=_CONTROL_SOURCE)

    kind: ControlKindName = Field(description="canny, lineart, scribble, pose, depth, background_removal or raw")
    image: Base64Bytes = Field(b"", description="base64 source image (not needed for pose)")
    strength: GuidanceStrength | None = Field(None, description="ControlNet scale, 0 to 2; default 1")
    pose_json: Text = Field("", max_length=262144, description="pose: OpenPose keypoints JSON")
    low_threshold: Threshold | None = Field(None, description="canny: low threshold, 0 to 255 (default 100)")
    high_threshold: Threshold | None = Field(None, description="canny: high threshold, 0 to 255 (default 200)")
    start: float32_between(0, 1, high_open=True) | None = Field(
        None, description="fraction of the steps where it starts acting, [0, 1) (default 0)")
    end: OpenFraction | None = Field(None, description="fraction of the steps where it stops, (start, 1] (default 1)")
    controlnet: Text = Field("", max_length=200, description="the model's ControlNet to use; default: the kind's")

    def to_pb(self) -> image_pb2.Control:
        message = image_pb2.Control(kind=_CONTROL_KINDS[self.kind], image=self.image, pose_json=self.pose_json,
                                    controlnet=self.controlnet)
        for name in ("strength", "low_threshold", "high_threshold", "start", "end"):
            value = getattr(self, name)
            if value is not None:
                setattr(message, name, value)
        return message


class CharacterBody(RequestBody):
    """A character prompt steering only its region (NovelAI V4's character prompts)."""

    prompt: Text = Field(description="the character's prompt (not blank)", pattern=r"\S")
    negative_prompt: Text = Field("", description="its undesired content")
    x: Fraction = Field(0.0, description="region left, as a fraction of the width (0 to 1)")
    y: Fraction = Field(0.0, description="region top, as a fraction of the height")
    width: Fraction = Field(0.0, description="region width as a fraction (all four 0 = whole canvas); x + width "
                                             "at most 1")
    height: Fraction = Field(0.0, description="region height as a fraction; y + height at most 1")
    center: Text = Field("", pattern=r"^([A-Ea-e][1-5])?$",
                         description="or a grid position A1..E5 (C3 = centre), without a rectangle")

    def to_pb(self) -> image_pb2.CharacterPrompt:
        return image_pb2.CharacterPrompt(prompt=self.prompt, negative_prompt=self.negative_prompt, x=self.x, y=self.y,
                                         width=self.width, height=self.height, center=self.center)


def _dialect_field():
    return Field("novelai", description="prompt language: novelai ({tag} x1.05, (tag:1.3)) or a1111 "
                                        "((tag) x1.1, BREAK, [from:to:when] prompt editing)")


class HiresBody(BaseModel):
    """Hires fix: a second pass at a larger size (generate only)."""

    model_config = ConfigDict(extra="forbid")

    scale: _zero_or_between(1, 4) = Field(0.0, description="enlargement factor, 1 to 4; 0 = 2 unless width/height "
                                                           "are given")
    width: ImageSide = Field(0, description="final width, a multiple of 64; 0 = from scale")
    height: ImageSide = Field(0, description="final height, a multiple of 64; 0 = from scale")
    steps: Uint32 = Field(0, description="second-pass steps; 0 = the first pass's")
    strength: OpenFraction | None = Field(None, description="how much the second pass redraws, (0, 1]; default 0.55")
    upscaler: Text = Field("", max_length=200, description="latent (default), lanczos, or an upscaler model "
                                                           "(GET /ai/image/models: upscalers)")

    def to_pb(self) -> image_pb2.HiresFix:
        hires = image_pb2.HiresFix(scale=self.scale, width=self.width, height=self.height, steps=self.steps,
                                   upscaler=self.upscaler)
        if self.strength is not None:
            hires.strength = self.strength
        return hires

    @classmethod
    def from_pb(cls, pb: image_pb2.HiresFix) -> HiresBody:
        # Not validated: a PNG's parameters (an A1111 picture's "Hires upscale: 6") are reported
        # as they are, even where this server's ranges would refuse them.
        return cls.model_construct(scale=round(pb.scale, 6), width=pb.width, height=pb.height, steps=pb.steps,
                                   strength=round(pb.strength, 6) if pb.HasField("strength") else None,
                                   upscaler=pb.upscaler)


# What each action needs beyond the fields' own ranges (the service refuses the rest, naming the
# field): an input image for every action but generate, a mask to inpaint; enhance enlarges at
# most 4 times; the hires fix is for generate alone; upscale does not denoise, so it takes no
# references, controls or characters. One branch per action (a discriminator on `action`).
# Two rules are left to the service, which names the field: an outpaint grows at least one side,
# and the hires fix takes no references, controls or characters. Each would be a choice between
# branches, multiplying with this one and the run-time relations (gateway/image_contract.py)
# into more branches than schema-driven generators follow.
_NO_GUIDANCE = {"references": {"maxItems": 0}, "controls": {"maxItems": 0}, "characters": {"maxItems": 0}}
_NO_HIRES = {"hires": {"type": "null"}}


def _action(actions: list[str], *, required: tuple[str, ...] = ("image",), **properties: Any) -> dict[str, Any]:
    return {"properties": {"action": {"enum": actions}, **_NO_HIRES, "image": {"minLength": 4}, **properties},
            "required": ["action", *required]}


_ACTION_NEEDS = {"allOf": [{"anyOf": [
    {"properties": {"action": {"const": "generate"}}},
    _action(["img2img", "variations", "outpaint"]),
    _action(["enhance"], scale={"maximum": 4}),
    _action(["upscale"], **_NO_GUIDANCE),
    _action(["inpaint"], required=("image", "mask"), mask={"minLength": 4}),
]}]}


class GenerateImageBody(RequestBody):
    """One action with NovelAI's controls. Omitted values take the model's defaults."""

    model_config = ConfigDict(json_schema_extra=_ACTION_NEEDS)

    action: Literal["generate", "img2img", "inpaint", "outpaint", "upscale", "enhance", "variations"] = Field(
        "generate", description="generate (text to image), img2img, inpaint, outpaint, upscale (no denoising), "
                                "enhance (upscale + light img2img) or variations (new seeds, light img2img; the "
                                "prompt from the image's metadata when empty)")
    model: Text = Field("", max_length=200, description="model name (GET /ai/image/models); empty = default")
    prompt: Text = Field("", description="novelai: {tag} x1.05 per brace, [tag] /1.05, (tag:1.3) explicit weight")
    dialect: Dialect = _dialect_field()
    negative_prompt: Text = Field("", description="undesired content, in the same language")
    negative_preset: Text = Field("", max_length=100, description="undesired-content preset; 'none' for none")
    quality_tags: bool | None = Field(None, description="add the model's quality tags (default yes)")
    width: ImageSide = Field(0, description="multiple of 64; 0 = model default (or the input image's)")
    height: ImageSide = Field(0, description="multiple of 64; 0 = model default (or the input image's)")
    steps: Uint32 = Field(0, description="0 = model default")
    guidance_scale: float32_between(0, 50) | None = Field(None, description="classifier-free guidance, 0 to 50; "
                                                                           "default per model")
    guidance_rescale: Fraction = Field(0.0, description="0 to 1")
    sampler: Text = Field("", max_length=100, description="euler, euler_ancestral, dpmpp_2m, dpmpp_2s_ancestral, "
                                                        "dpmpp_sde, dpmpp_2m_sde, ddim")
    noise_schedule: Schedule | None = Field(None, description="native, karras or exponential")
    seed: Uint32 | None = Field(None, description="seed of the first image; image i uses seed + i; absent = random")
    n_images: Uint32 = Field(0, description="how many images (0 = 1)")
    preview_every: Uint32 = Field(0, description="streaming only: a preview every this many steps")
    image: Base64Bytes = Field(b"", description="every action but generate: the input image (base64 PNG/JPEG/WebP)")
    mask: Base64Bytes = Field(b"", description="inpaint: the mask, the image's size, white = redraw")
    strength: OpenFraction | None = Field(None, description="how much is redrawn, (0, 1]")
    extra_noise: float32_between(0, 0.99) = Field(0.0, description="img2img, enhance: extra noise, 0 to 0.99")
    mask_blur: Annotated[int, Field(ge=0, le=64)] | None = Field(None, description="inpaint/outpaint: seam blur in "
                                                                                   "pixels, 0 to 64")
    masked_content: Content | None = Field(None, description="what the masked area starts from")
    only_masked: bool = Field(False, description="inpaint: only the masked region, at full resolution")
    only_masked_padding: Annotated[int, Field(ge=0, le=1024)] | None = Field(
        None, description="inpaint: padding around the region, 0 to 1024")
    left: OutpaintSide = Field(0, description="outpaint: pixels added on the left")
    right: OutpaintSide = Field(0, description="outpaint: pixels added on the right")
    top: OutpaintSide = Field(0, description="outpaint: pixels added at the top")
    bottom: OutpaintSide = Field(0, description="outpaint: pixels added at the bottom")
    hires: HiresBody | None = Field(None, description="generate: hires fix (a second pass at a larger size)")
    scale: _zero_or_between(1, 8) = Field(0.0, description="upscale: factor 1 to 8 (0 = 2; or give width/height, any size); "
                                          "enhance: factor 1 to 4 (0 = 1.5)")
    upscaler: Text = Field("", max_length=200, description="upscale, enhance: lanczos (default) or an upscaler model")
    dynamic_thresholding: float32_between(0, 1, high_open=True) = Field(
        0.0, description="percentile in (0, 1) the predicted latents are clamped at each step; 0 = off")
    dynamic_thresholding_max: float32_between(0, 100, low_open=True) | None = Field(
        None, description="dynamic thresholding's range, (0, 100] (default 4)")
    schedule_rho: float32_between(0.1, 10) | None = Field(None, description="polyexponential schedule's rho, 0.1 to "
                                                                            "10 (default 1)")
    response_format: Literal["json", "zip"] = Field(
        "json", description="json (base64 PNGs) or zip (the PNGs); Accept: application/zip also asks for zip")
    references: list[ReferenceBody] = Field(default_factory=list, max_length=MAX_LIST,
                                            description="reference images (vibe transfer), any action")
    controls: list[ControlBody] = Field(default_factory=list, max_length=MAX_LIST,
                                        description="control images (ControlNet), any action")
    characters: list[CharacterBody] = Field(default_factory=list, max_length=MAX_LIST,
                                            description="character prompts with regions, any action")

    def to_pb(self) -> image_pb2.GenerateRequest:
        params = image_pb2.GenerationParams(
            model=self.model, prompt=self.prompt, negative_prompt=self.negative_prompt,
            negative_preset=self.negative_preset, width=self.width, height=self.height, steps=self.steps,
            guidance_rescale=self.guidance_rescale, sampler=self.sampler, n_images=self.n_images,
            preview_every=self.preview_every, dialect=_DIALECTS[self.dialect])
        if self.quality_tags is not None:
            params.quality_tags = self.quality_tags
        if self.guidance_scale is not None:
            params.guidance_scale = self.guidance_scale
        if self.noise_schedule is not None:
            params.noise_schedule = _SCHEDULES[self.noise_schedule]
        if self.seed is not None:
            params.seed = self.seed
        params.dynamic_thresholding = self.dynamic_thresholding
        if self.dynamic_thresholding_max is not None:
            params.dynamic_thresholding_max = self.dynamic_thresholding_max
        if self.schedule_rho is not None:
            params.schedule_rho = self.schedule_rho
        if self.hires is not None:
            params.hires.CopyFrom(self.hires.to_pb())
        request = image_pb2.GenerateRequest(params=params, references=[r.to_pb() for r in self.references],
                                            controls=[c.to_pb() for c in self.controls],
                                            characters=[c.to_pb() for c in self.characters])
        content = _CONTENTS[self.masked_content] if self.masked_content else 0
        if self.action == "generate":
            request.txt2img.SetInParent()
        elif self.action == "upscale":
            # The size is the upscaled image's (any size), not a generation size.
            params.width = params.height = 0
            request.upscale.CopyFrom(image_pb2.Upscale(image=self.image, scale=self.scale, width=self.width,
                                                       height=self.height, upscaler=self.upscaler))
        elif self.action == "enhance":
            request.enhance.CopyFrom(image_pb2.Enhance(image=self.image, scale=self.scale,
                                                       extra_noise=self.extra_noise, upscaler=self.upscaler))
            if self.strength is not None:
                request.enhance.strength = self.strength
        elif self.action == "variations":
            request.variations.image = self.image
            if self.strength is not None:
                request.variations.strength = self.strength
        elif self.action == "img2img":
            request.img2img.image, request.img2img.extra_noise = self.image, self.extra_noise
            if self.strength is not None:
                request.img2img.strength = self.strength
        elif self.action == "inpaint":
            inpaint = request.inpaint
            inpaint.image, inpaint.mask, inpaint.mask_blur = self.image, self.mask, self.mask_blur or 0
            inpaint.masked_content, inpaint.only_masked = content, self.only_masked
            if self.strength is not None:
                inpaint.strength = self.strength
            if self.only_masked_padding is not None:
                inpaint.only_masked_padding = self.only_masked_padding
        else:
            outpaint = request.outpaint
            outpaint.image, outpaint.masked_content = self.image, content
            outpaint.left, outpaint.right, outpaint.top, outpaint.bottom = self.left, self.right, self.top, self.bottom
            if self.strength is not None:
                outpaint.strength = self.strength
            if self.mask_blur is not None:
                outpaint.mask_blur = self.mask_blur
        return request

    @classmethod
    def from_pb(cls, request: image_pb2.GenerateRequest) -> GenerateImageBody:
        """The body that sends `request` again (images left out: the caller supplies them)."""
        p = request.params
        values: dict[str, Any] = dict(
            model=p.model, prompt=p.prompt, negative_prompt=p.negative_prompt, negative_preset=p.negative_preset,
            width=p.width, height=p.height, steps=p.steps, guidance_rescale=round(p.guidance_rescale, 6),
            sampler=p.sampler, n_images=p.n_images, dialect=_DIALECT_NAMES.get(p.dialect, "novelai"),
            noise_schedule=_SCHEDULE_NAMES.get(p.noise_schedule),
            dynamic_thresholding=round(p.dynamic_thresholding, 6))
        for name in ("quality_tags", "seed"):
            if p.HasField(name):
                values[name] = getattr(p, name)
        for name in ("guidance_scale", "dynamic_thresholding_max", "schedule_rho"):
            if p.HasField(name):
                values[name] = round(getattr(p, name), 6)
        if p.HasField("hires"):
            values["hires"] = HiresBody.from_pb(p.hires)
        action = request.WhichOneof("action") or "txt2img"
        values["action"] = {"txt2img": "generate"}.get(action, action)
        source = getattr(request, action)
        if action in ("img2img", "inpaint", "outpaint", "enhance", "variations") and source.HasField("strength"):
            values["strength"] = round(source.strength, 6)
        if action in ("img2img", "enhance"):
            values["extra_noise"] = round(source.extra_noise, 6)
        if action in ("upscale", "enhance"):
            values.update(scale=round(source.scale, 6), upscaler=source.upscaler)
        if action == "upscale":
            values.update(width=source.width, height=source.height)
        if action in ("inpaint", "outpaint"):
            values["masked_content"] = _CONTENT_NAMES_PB.get(source.masked_content)
            if action == "inpaint" or source.HasField("mask_blur"):
                values["mask_blur"] = source.mask_blur
        if action == "inpaint":
            values["only_masked"] = source.only_masked
            if source.HasField("only_masked_padding"):
                values["only_masked_padding"] = source.only_masked_padding
        if action == "outpaint":
            values.update(left=source.left, right=source.right, top=source.top, bottom=source.bottom)
        # Not validated, as HiresBody.from_pb: what the PNG says, even outside this server's ranges.
        return cls.model_construct(**values)


OutpaintSide = Annotated[int, Field(ge=0, le=1024)]


class ControlPreviewBody(ControlBody):
    """A control to preprocess, and the size to render it at."""

    width: ImageSide = Field(0, description="multiple of 64; 0 = the source's size fitted to max_pixels")
    height: ImageSide = Field(0, description="multiple of 64; 0 = the source's size fitted to max_pixels")

    def to_preview_pb(self) -> image_pb2.PreprocessControlRequest:
        return image_pb2.PreprocessControlRequest(control=self.to_pb(), width=self.width, height=self.height)


class ControlPreview(BaseModel):
    png: str = Field(description="base64 PNG: the control image as the ControlNet sees it")
    width: int
    height: int

    @classmethod
    def from_pb(cls, reply: image_pb2.PreprocessControlResponse) -> ControlPreview:
        return cls(png=base64.b64encode(reply.png).decode("ascii"), width=reply.width, height=reply.height)


class PromptChunk(BaseModel):
    token_ids: list[int]
    tokens: list[str]
    weights: list[float]
    text: str


def _chunks_from_pb(chunks) -> list[PromptChunk]:
    return [PromptChunk(token_ids=list(c.token_ids), tokens=list(c.tokens), weights=[round(w, 6) for w in c.weights],
                        text=c.text) for c in chunks]


class PromptSegment(BaseModel):
    text: str
    weight: float
    chunk_break: bool = Field(description="a1111's BREAK: the next token starts a new chunk")

    @classmethod
    def from_pb(cls, pb: image_pb2.PromptSegment) -> PromptSegment:
        return cls(text=pb.text, weight=round(pb.weight, 6), chunk_break=pb.chunk_break)


class PromptStage(BaseModel):
    until_step: int = Field(description="used while the step counter (from 0, as A1111 counts) is at most this")
    text: str
    token_count: int
    segments: list[PromptSegment]
    chunks: list[PromptChunk]

    @classmethod
    def from_pb(cls, pb: image_pb2.PromptStage) -> PromptStage:
        return cls(until_step=pb.until_step, text=pb.text, token_count=pb.token_count,
                   segments=[PromptSegment.from_pb(s) for s in pb.segments], chunks=_chunks_from_pb(pb.chunks))


class PromptReport(BaseModel):
    token_count: int
    chunks: list[PromptChunk]
    dropped_words: list[str] = Field(description="words beyond the hard limit (empty when none were dropped)")
    effective_prompt: str
    dialect: Dialect
    segments: list[PromptSegment] = Field(description="the first stage's text runs with their weights")
    stages: list[PromptStage] = Field(description="prompt-editing stages in order (one without edits)")

    @classmethod
    def from_pb(cls, pb: image_pb2.PromptReport) -> PromptReport:
        return cls(token_count=pb.token_count, dropped_words=list(pb.dropped_words),
                   effective_prompt=pb.effective_prompt, chunks=_chunks_from_pb(pb.chunks),
                   dialect=_DIALECT_NAMES.get(pb.dialect, "novelai"),
                   segments=[PromptSegment.from_pb(s) for s in pb.segments],
                   stages=[PromptStage.from_pb(s) for s in pb.stages])


class AcceptedInfo(BaseModel):
    seeds: list[int]
    width: int
    height: int
    steps: int
    sampler: str
    model: str
    prompt: PromptReport
    negative_prompt: PromptReport
    queue_position: int

    @classmethod
    def from_pb(cls, pb: image_pb2.Accepted) -> AcceptedInfo:
        return cls(seeds=list(pb.seeds), width=pb.width, height=pb.height, steps=pb.steps, sampler=pb.sampler,
                   model=pb.model, prompt=PromptReport.from_pb(pb.prompt),
                   negative_prompt=PromptReport.from_pb(pb.negative_prompt), queue_position=pb.queue_position)


class GeneratedImage(BaseModel):
    index: int
    seed: int
    width: int
    height: int
    png: str = Field(description="base64 PNG with the parameters in its 'parameters' text chunk")
    parameters: str = Field(description="the generation parameters in AUTOMATIC1111's format")

    @classmethod
    def from_pb(cls, pb: image_pb2.Image) -> GeneratedImage:
        return cls(index=pb.index, seed=pb.seed, width=pb.width, height=pb.height,
                   png=base64.b64encode(pb.png).decode("ascii"), parameters=pb.parameters)


class GenerateImageResult(BaseModel):
    accepted: AcceptedInfo
    images: list[GeneratedImage]
    queue_seconds: float
    generation_seconds: float


@dataclass
class GenerateStream:
    """What a whole Generate stream carried, for the route that answers once it has ended."""

    accepted: image_pb2.Accepted | None
    images: list[image_pb2.Image]
    finished: image_pb2.Finished

    @classmethod
    def from_pb(cls, messages: list[image_pb2.GenerateResponse]) -> GenerateStream:
        stream = cls(accepted=None, images=[], finished=image_pb2.Finished())
        for message in messages:
            kind = message.WhichOneof("event")
            if kind == "accepted":
                stream.accepted = message.accepted
            elif kind == "image":
                stream.images.append(message.image)
            elif kind == "finished":
                stream.finished = message.finished
        return stream

    def to_result(self) -> GenerateImageResult:
        """The JSON answer; only for a stream that carried its `accepted` message."""
        assert self.accepted is not None
        return GenerateImageResult(accepted=AcceptedInfo.from_pb(self.accepted),
                                   images=[GeneratedImage.from_pb(item) for item in self.images],
                                   queue_seconds=self.finished.queue_seconds,
                                   generation_seconds=self.finished.generation_seconds)

    def to_zip(self) -> bytes:
        """The PNGs, stored uncompressed (PNG is compressed already)."""
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
            for item in self.images:
                out.writestr(f"image_{item.index}_{item.seed}.png", item.png)
        return archive.getvalue()


def stream_event_from_pb(message: image_pb2.GenerateResponse) -> tuple[str, Any]:
    """A message of Generate as an SSE event: `accepted`, `progress`, `image` or `finished`, and its data."""
    kind = message.WhichOneof("event")
    if kind == "accepted":
        return kind, AcceptedInfo.from_pb(message.accepted).model_dump()
    if kind == "progress":
        return kind, {"step": message.progress.step, "total_steps": message.progress.total_steps,
                      "previews": [base64.b64encode(p).decode("ascii") for p in message.progress.previews]}
    if kind == "image":
        return kind, GeneratedImage.from_pb(message.image).model_dump()
    return kind, {"queue_seconds": message.finished.queue_seconds,
                  "generation_seconds": message.finished.generation_seconds}


class TokenizeImageBody(RequestBody):
    model: Text = Field("", max_length=200)
    prompt: Text = Field(description="the prompt, in the prompt language")
    quality_tags: bool = Field(False, description="count the model's quality tags too")
    dialect: Dialect = _dialect_field()
    steps: Uint32 = Field(0, description="steps to work the prompt-editing schedule out for; 0 = model default")

    def to_pb(self) -> image_pb2.TokenizeRequest:
        return image_pb2.TokenizeRequest(model=self.model, prompt=self.prompt, quality_tags=self.quality_tags,
                                         dialect=_DIALECTS[self.dialect], steps=self.steps)


class TokenizeImageResult(BaseModel):
    prompt: PromptReport
    chunk_tokens: int = Field(description="prompt tokens per chunk (the encoder's 77 minus start and end)")
    max_chunks: int = Field(description="chunks a prompt may use before words are dropped")

    @classmethod
    def from_pb(cls, reply: image_pb2.TokenizeResponse) -> TokenizeImageResult:
        return cls(prompt=PromptReport.from_pb(reply.prompt), chunk_tokens=reply.chunk_tokens,
                   max_chunks=reply.max_chunks)


class NegativePreset(BaseModel):
    name: str
    text: str


class ImageModelInfo(BaseModel):
    name: str
    family: str
    is_default: bool
    default_width: int
    default_height: int
    default_steps: int
    default_guidance_scale: float
    default_sampler: str
    quality_tags: str
    quality_tags_position: str
    negative_presets: list[NegativePreset]
    default_negative_preset: str
    inpainting_unet: bool
    engine: str
    hash: str
    references: bool = Field(description="whether it takes reference images (an IP-Adapter is configured)")
    controlnets: list[str] = Field(description="its ControlNets by name")
    builtin: bool = Field(description="a built-in untrained test model: its pictures are noise (docs/image.md)")


class SamplerInfo(BaseModel):
    name: str
    display_name: str
    noise_schedules: list[str]


class ImageModels(BaseModel):
    models: list[ImageModelInfo]
    samplers: list[SamplerInfo]
    max_pixels: int
    max_steps: int
    max_images: int
    max_references: int
    max_controls: int
    max_characters: int
    upscalers: list[str] = Field(description="what hires.upscaler, upscale and enhance take (and 'latent' for "
                                             "hires)")

    @classmethod
    def from_pb(cls, reply: image_pb2.ListModelsResponse) -> ImageModels:
        return cls(
            models=[ImageModelInfo(
                name=m.name, family=m.family, is_default=m.is_default, default_width=m.default_width,
                default_height=m.default_height, default_steps=m.default_steps,
                default_guidance_scale=m.default_guidance_scale, default_sampler=m.default_sampler,
                quality_tags=m.quality_tags, quality_tags_position=m.quality_tags_position,
                negative_presets=[NegativePreset(name=p.name, text=p.text) for p in m.negative_presets],
                default_negative_preset=m.default_negative_preset, inpainting_unet=m.inpainting_unet,
                engine=m.engine, hash=m.hash, references=m.references, controlnets=list(m.controlnets),
                builtin=m.builtin)
                for m in reply.models],
            samplers=[SamplerInfo(name=s.name, display_name=s.display_name,
                                  noise_schedules=[_SCHEDULE_NAMES[v] for v in s.noise_schedules
                                                   if v in _SCHEDULE_NAMES])
                      for s in reply.samplers],
            max_pixels=reply.max_pixels, max_steps=reply.max_steps, max_images=reply.max_images,
            max_references=reply.max_references, max_controls=reply.max_controls,
            max_characters=reply.max_characters,
            upscalers=list(reply.upscalers))


class MetadataBody(RequestBody):
    image: Base64Bytes = Field(description="a PNG (base64)")

    def to_pb(self) -> image_pb2.ReadMetadataRequest:
        return image_pb2.ReadMetadataRequest(image=self.image)


_VERDICTS = {image_pb2.SIGNATURE_STATUS_ABSENT: "absent", image_pb2.SIGNATURE_STATUS_VALID: "valid",
             image_pb2.SIGNATURE_STATUS_INVALID: "invalid", image_pb2.SIGNATURE_STATUS_UNKNOWN_KEY: "unknown_key"}


class MetadataResult(BaseModel):
    source: Literal["fabula", "a1111", "none"] = Field(description="where the parameters came from")
    request: dict[str, Any] | None = Field(description="a body for POST /ai/generate-image that makes the image "
                                                       "again (image actions: add the input image)")
    parameters: str = Field(description="the 'parameters' text (A1111's infotext), empty if none")
    signature: Literal["absent", "valid", "invalid", "unknown_key"] = Field(
        description="valid: signed by this server and unchanged since; invalid: pixels or metadata changed")
    signing_key_id: str
    builtin_model: bool = Field(description="made by a built-in untrained test model: its pictures are noise "
                                            "(docs/image.md)")
    text_chunks: dict[str, str]
    unmapped: dict[str, str] = Field(description="A1111 fields with no counterpart in Fabula's request")

    @classmethod
    def from_pb(cls, reply: image_pb2.ReadMetadataResponse) -> MetadataResult:
        request = None
        if reply.HasField("request"):
            request = GenerateImageBody.from_pb(reply.request).model_dump(
                mode="json", exclude={"image", "mask", "response_format"}, exclude_none=True)
        return cls(source=reply.source if reply.source in ("fabula", "a1111") else "none", request=request,
                   parameters=reply.parameters, signature=_VERDICTS.get(reply.signature, "absent"),
                   signing_key_id=reply.signing_key_id, builtin_model=reply.builtin_model,
                   text_chunks=dict(reply.text_chunks), unmapped=dict(reply.unmapped))


class SigningKeyResult(BaseModel):
    algorithm: str
    public_key: str = Field(description="the raw 32-byte Ed25519 public key, base64")
    key_id: str = Field(description="as signatures name it: the first 16 hex digits of its SHA-256")
    scheme: str = Field(description="what is signed, for verifiers outside Fabula")

    @classmethod
    def from_pb(cls, reply: image_pb2.SigningKey) -> SigningKeyResult:
        return cls(algorithm=reply.algorithm, public_key=base64.b64encode(reply.public_key).decode("ascii"),
                   key_id=reply.key_id, scheme=reply.scheme)


class TagSuggestion(BaseModel):
    name: str = Field(description="as the vocabulary spells it (underscores)")
    text: str = Field(description="as prompt text (spaces)")
    category: str
    post_count: int
    aliases: list[str]
    matched_alias: str
    match: Literal["prefix", "fuzzy"]
    score: float


class TagSuggestions(BaseModel):
    tags: list[TagSuggestion]

    @classmethod
    def from_pb(cls, reply: image_pb2.SuggestTagsResponse) -> TagSuggestions:
        return cls(tags=[TagSuggestion(name=t.name, text=t.text, category=t.category, post_count=t.post_count,
                                       aliases=list(t.aliases), matched_alias=t.matched_alias,
                                       match=t.match if t.match in ("prefix", "fuzzy") else "fuzzy",
                                       score=round(t.score, 2)) for t in reply.tags])


def suggest_tags_request(q: str, limit: int) -> image_pb2.SuggestTagsRequest:
    return image_pb2.SuggestTagsRequest(query=q, limit=limit)

