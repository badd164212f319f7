"""AUTOMATIC1111's web UI API (/sdapi/v1/...): its request bodies, its answers, and their
translation onto the image service's protobuf. A thin translation: every value still goes to the
image service, which validates it (the gateway checks only types and what protobuf cannot carry).

Where A1111 and Fabula differ:
- sizes, steps, guidance and sampler left out take the model's defaults (A1111's schema says 512,
  512, 50, 7 and Euler; its web UI fills in its own settings the same way);
- a seed of -1 (or none) is random; n_iter x batch_size images are made in one call;
- features Fabula does not have (hires fix, face restoration, tiling, scripts, subseeds) are
  accepted and ignored, as A1111 ignores fields it does not know.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import AfterValidator, BaseModel, Field, PlainValidator, WithJsonSchema, field_validator

from fabula.image.v1 import image_pb2
from gateway.errors import ApiError
from gateway.schemas.common import ImageSide, RequestBody, Text, Uint32, float32_between

# The service names "params.width", "img2img.strength"; A1111's body is flat.
FIELD_PREFIXES = ("params.", "img2img.", "inpaint.")

# Shown wherever a picture of the built-in test model travels: those weights are untrained, so
# the picture is noise, whatever its prompt said (the PNG's "fabula" chunk says builtin_model).
NOISE_NOTE = ("Made by Fabula's built-in image model, an untrained test model: this picture is noise, "
              "not a drawing of the prompt.")

# A1111's schedulers Fabula has, by their label and their name (A1111 takes both, exactly as
# spelt); Automatic (or none) leaves the schedule to the sampler's name, else the sampler's own.
SCHEDULERS = {"": image_pb2.NOISE_SCHEDULE_UNSPECIFIED,
              "Automatic": image_pb2.NOISE_SCHEDULE_UNSPECIFIED, "automatic": image_pb2.NOISE_SCHEDULE_UNSPECIFIED,
              "Karras": image_pb2.NOISE_SCHEDULE_KARRAS, "karras": image_pb2.NOISE_SCHEDULE_KARRAS,
              "Exponential": image_pb2.NOISE_SCHEDULE_EXPONENTIAL, "exponential": image_pb2.NOISE_SCHEDULE_EXPONENTIAL,
              "Polyexponential": image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL,
              "polyexponential": image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL}
# The schedules older A1111 sampler names carry ("DPM++ 2M Karras").
_LEGACY_SUFFIXES = {image_pb2.NOISE_SCHEDULE_KARRAS: "Karras", image_pb2.NOISE_SCHEDULE_EXPONENTIAL: "Exponential"}
# A1111's latent upscalers for the hires fix; Fabula's latent upscale is one of them all.
LATENT_UPSCALERS = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                    "Latent (nearest)", "Latent (nearest-exact)")
# A1111's inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
_FILLS = (image_pb2.MASKED_CONTENT_FILL, image_pb2.MASKED_CONTENT_ORIGINAL, image_pb2.MASKED_CONTENT_LATENT_NOISE,
          image_pb2.MASKED_CONTENT_LATENT_NOTHING)
_DATA_URL = re.compile(r"data:[\w/+.-]*;base64,")


def _decode_image(value: Any) -> bytes:
    """A1111 clients send images as base64, often as a data URL ("data:image/png;base64,...")."""
    if not isinstance(value, str):
        raise ValueError("must be a base64 string (optionally a data: URL)")
    match = _DATA_URL.match(value)
    try:
        return base64.b64decode(value[match.end():] if match else value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64 (optionally a data: URL)") from None


ImageData = Annotated[bytes, PlainValidator(_decode_image),
                      WithJsonSchema({"type": "string", "description": "base64 PNG/JPEG/WebP, or a data: URL"})]
Seed = Annotated[int, Field(ge=-1, le=2**32 - 1, description="-1 = random")]
# The image service's ranges, as the 32-bit floats that reach it (common.float32_between).
Guidance = float32_between(0, 50)
Strength = float32_between(0, 1, low_open=True)
HIRES_SCALES = (1.0, 4.0)


def _hires_scale(value: float) -> float:
    if value and not HIRES_SCALES[0] <= value <= HIRES_SCALES[1]:
        raise ValueError(f"must be 0 (the default, 2) or between {HIRES_SCALES[0]:g} and {HIRES_SCALES[1]:g}")
    return value


HiresScale = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_hires_scale), WithJsonSchema({"anyOf": [
    {"type": "number", "const": 0}, {"type": "number", "minimum": HIRES_SCALES[0], "maximum": HIRES_SCALES[1]}]})]


@dataclass(frozen=True)
class Catalogue:
    """What ListModels says, in the shape the A1111 routes need."""

    models: image_pb2.ListModelsResponse

    def checkpoints(self) -> dict[str, str]:
        """What override_settings.sd_model_checkpoint takes, and the Fabula model each names:
        A1111's title "name [hash]", the name, the hash."""
        names: dict[str, str] = {}
        for model in self.models.models:
            names.update({spelling: model.name for spelling in (model_title(model), model.name, model.hash)
                          if spelling})
        return names

    def model_for(self, checkpoint: str) -> str:
        if not checkpoint:
            return ""
        model = self.checkpoints().get(checkpoint)
        if model is None:
            raise ApiError(400, f"override_settings.sd_model_checkpoint: {checkpoint!r} is not one of "
                                f"{', '.join(self.checkpoints())}", field="override_settings.sd_model_checkpoint")
        return model

    def display_name(self, sampler: str) -> str:
        return next((s.display_name for s in self.models.samplers if s.name == sampler), sampler)

    def model_hash(self, name: str) -> str:
        return next((m.hash for m in self.models.models if m.name == name), "")

    def sampler_names(self) -> dict[str, tuple[str, int]]:
        """What sampler_name (and sampler_index) takes, exactly as spelt, and the Fabula sampler and
        the noise schedule each names: A1111's display names from /sdapi/v1/samplers, Fabula's
        names (its aliases there), and the older names with the schedule in them ("DPM++ 2M
        Karras"), for the schedules the sampler offers."""
        names: dict[str, tuple[str, int]] = {}
        for sampler in self.models.samplers:
            names[sampler.display_name] = names[sampler.name] = (sampler.name, image_pb2.NOISE_SCHEDULE_UNSPECIFIED)
            for schedule in sampler.noise_schedules:
                if schedule in _LEGACY_SUFFIXES:
                    names[f"{sampler.display_name} {_LEGACY_SUFFIXES[schedule]}"] = (sampler.name, schedule)
        return names

    def sampler_for(self, sampler_name: str | None, sampler_index: str | None, scheduler: str) -> tuple[str, int]:
        """A1111's sampler name ("DPM++ 2M", or the older "DPM++ 2M Karras"; sampler_index is the
        older field, used when sampler_name is not given) and scheduler, as Fabula's sampler name
        and noise schedule. Matched exactly, as A1111 matches them; both fields are checked."""
        schedule = SCHEDULERS.get(scheduler)
        if schedule is None:
            raise ApiError(400, f"scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}", field="scheduler")
        known = self.sampler_names()
        for field, name in (("sampler_name", sampler_name), ("sampler_index", sampler_index)):
            if name and name not in known:
                raise ApiError(400, f"{field}: {name!r} is not one of {', '.join(known)}", field=field)
        name = sampler_name or sampler_index
        if not name:
            return "", schedule
        sampler, implied = known[name]
        return sampler, schedule or implied

    def hires_upscalers(self) -> dict[str, str]:
        """What hr_upscaler takes, exactly as spelt, and the Fabula upscaler each names: A1111's
        latent upscalers, "None" (the pixels enlarged as they are) and Lanczos, and the image
        service's upscalers by their own names."""
        names = {"": "latent", **{name: "latent" for name in LATENT_UPSCALERS}, "None": "lanczos",
                 "Lanczos": "lanczos"}
        names.update({name: name for name in self.models.upscalers})
        return names

    def hires_upscaler(self, name: str) -> str:
        known = self.hires_upscalers()
        if name not in known:
            raise ApiError(400, f"hr_upscaler: {name!r} is not one of {', '.join(known)}", field="hr_upscaler")
        return known[name]


class GenerationBody(RequestBody):
    """The fields txt2img and img2img share (A1111's StableDiffusionProcessing) that Fabula honours."""

    prompt: Text = ""
    negative_prompt: Text = ""
    seed: Seed = -1
    sampler_name: Text | None = Field(None, description="A1111's name, e.g. 'Euler a', 'DPM++ 2M Karras'")
    sampler_index: Text | None = Field(None, description="older name of sampler_name")
    scheduler: Text = Field("Automatic", description="Automatic, Karras or Exponential")
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=64)
    steps: Uint32 | None = Field(None, description="absent or 0: the model's default")
    cfg_scale: Guidance | None = Field(None, description="absent: the model's default")
    width: ImageSide | None = Field(None, description="multiple of 64; absent or 0: the model's default")
    height: ImageSide | None = Field(None, description="multiple of 64; absent or 0: the model's default")
    override_settings: dict[str, Any] = Field(
        default_factory=dict, description="only sd_model_checkpoint is used (a title /sdapi/v1/sd-models lists)",
        json_schema_extra={"properties": {"sd_model_checkpoint": {"type": "string"}}})
    send_images: bool = True

    @field_validator("override_settings")
    @classmethod
    def _checkpoint_is_text(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("sd_model_checkpoint", ""), str):
            raise ValueError("sd_model_checkpoint must be a string (a title /sdapi/v1/sd-models lists)")
        return value

    def _params(self, catalogue: Catalogue) -> image_pb2.GenerationParams:
        sampler, schedule = catalogue.sampler_for(self.sampler_name, self.sampler_index, self.scheduler)
        params = image_pb2.GenerationParams(
            model=catalogue.model_for(self.override_settings.get("sd_model_checkpoint", "")),
            prompt=self.prompt, negative_prompt=self.negative_prompt, negative_preset="none", quality_tags=False,
            width=self.width or 0, height=self.height or 0, steps=self.steps or 0, sampler=sampler,
            noise_schedule=schedule, n_images=self.batch_size * self.n_iter, preview_every=1,
            dialect=image_pb2.PROMPT_DIALECT_A1111)
        if self.cfg_scale is not None:
            params.guidance_scale = self.cfg_scale
        if self.seed >= 0:
            params.seed = self.seed
        return params


class Txt2ImgBody(GenerationBody):
    """The fields of A1111's StableDiffusionProcessingTxt2Img that Fabula honours."""

    enable_hr: bool = Field(False, description="hires fix: a second pass at hr_scale (or hr_resize_x/y)")
    hr_scale: HiresScale = Field(2.0, description="hires fix: enlargement factor, 1 to 4 (0: 2)")
    hr_upscaler: Text = Field("Latent", description="Latent (any of A1111's 'Latent (...)'), None, Lanczos, or an "
                                                    "upscaler model")
    hr_second_pass_steps: Uint32 = Field(0, description="0: the first pass's steps")
    hr_resize_x: ImageSide = Field(0, description="hires fix: final width, a multiple of 64 (0: from hr_scale)")
    hr_resize_y: ImageSide = Field(0, description="hires fix: final height, a multiple of 64 (0: from hr_scale)")
    denoising_strength: Strength | None = Field(None, description="hires fix: the second pass's strength (0.7)")

    def _params(self, catalogue: Catalogue) -> image_pb2.GenerationParams:
        params = super()._params(catalogue)
        upscaler = catalogue.hires_upscaler(self.hr_upscaler)  # checked even when the hires fix is off
        if self.enable_hr:
            resized = self.hr_resize_x or self.hr_resize_y
            params.hires.CopyFrom(image_pb2.HiresFix(
                scale=0 if resized else self.hr_scale, width=self.hr_resize_x, height=self.hr_resize_y,
                steps=self.hr_second_pass_steps, upscaler=upscaler,
                strength=0.7 if self.denoising_strength is None else self.denoising_strength))
        return params

    def to_pb(self, catalogue: Catalogue) -> image_pb2.GenerateRequest:
        request = image_pb2.GenerateRequest(params=self._params(catalogue))
        request.txt2img.SetInParent()
        return request


class Img2ImgBody(GenerationBody):
    """A1111's StableDiffusionProcessingImg2Img: with `mask` it inpaints. It has no hires fix."""

    init_images: list[ImageData] = Field(min_length=1, max_length=1, description="the starting image")
    mask: ImageData | None = Field(None, description="inpainting: white = redraw (the image's size)")
    denoising_strength: Strength = 0.75
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(1, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(False, description="inpaint only the masked area, at full resolution")
    inpaint_full_res_padding: int = Field(32, ge=0, le=1024)
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: black = redraw")

    def to_pb(self, catalogue: Catalogue) -> image_pb2.GenerateRequest:
        request = image_pb2.GenerateRequest(params=self._params(catalogue))
        image = self.init_images[0]
        if self.mask is None:
            request.img2img.image, request.img2img.strength = image, self.denoising_strength
            return request
        inpaint = request.inpaint
        inpaint.image, inpaint.mask = image, _inverted(self.mask) if self.inpainting_mask_invert else self.mask
        inpaint.strength, inpaint.mask_blur = self.denoising_strength, self.mask_blur
        inpaint.masked_content = _FILLS[self.inpainting_fill]
        inpaint.only_masked, inpaint.only_masked_padding = self.inpaint_full_res, self.inpaint_full_res_padding
        return request


def _inverted(mask: bytes) -> bytes:
    try:
        with Image.open(io.BytesIO(mask)) as image:
            inverted = ImageOps.invert(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(400, "mask: not a PNG, JPEG or WebP image", field="mask") from None
    out = io.BytesIO()
    inverted.save(out, format="PNG")
    return out.getvalue()


def fabula_facts(png: bytes) -> dict[str, Any]:
    """The JSON the image service writes into its PNGs' "fabula" chunk ({} if absent)."""
    text = png_text(png)
    try:
        facts = json.loads(text.get("fabula", "{}"))
    except ValueError:
        return {}
    return facts if isinstance(facts, dict) else {}


def png_text(png: bytes) -> dict[str, str]:
    try:
        with Image.open(io.BytesIO(png)) as image:
            return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(400, "image: not a PNG, JPEG or WebP image", field="image") from None


class GenerationAnswer(BaseModel):
    """A1111's answer to txt2img and img2img: `info` is a JSON string, as A1111 sends it."""

    images: list[str] = Field(description="base64 PNGs with their parameters in the 'parameters' chunk")
    parameters: dict[str, Any] = Field(description="the request, as received")
    info: str = Field(description="JSON: seeds, size, sampler, model, infotexts and Fabula's note on the model")


def generation_answer(body: GenerationBody, catalogue: Catalogue, accepted: image_pb2.Accepted | None,
                      images: list[image_pb2.Image], interrupted: bool) -> GenerationAnswer:
    images = sorted(images, key=lambda item: item.index)
    builtin = any(fabula_facts(item.png).get("builtin_model") for item in images[:1])
    seeds = list(accepted.seeds) if accepted else []
    info: dict[str, Any] = {
        "prompt": body.prompt, "all_prompts": [body.prompt] * len(seeds), "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * len(seeds),
        "seed": seeds[0] if seeds else body.seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds),
        "width": accepted.width if accepted else body.width, "height": accepted.height if accepted else body.height,
        "sampler_name": catalogue.display_name(accepted.sampler) if accepted else "",
        "steps": accepted.steps if accepted else body.steps,
        "cfg_scale": body.cfg_scale, "batch_size": body.batch_size, "n_iter": body.n_iter,
        "sd_model_name": accepted.model if accepted else "",
        "sd_model_hash": catalogue.model_hash(accepted.model) if accepted else "",
        "infotexts": [item.parameters for item in images], "interrupted": interrupted,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "builtin_model": builtin,
        "fabula_note": NOISE_NOTE if builtin else "",
    }
    return GenerationAnswer(images=[base64.b64encode(item.png).decode("ascii") for item in images]
                            if body.send_images else [],
                            parameters=body.model_dump(mode="json", exclude={"init_images", "mask"}),
                            info=json.dumps(info))


# Catalogue answers ------------------------------------------------------------------------------


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


def samplers_answer(catalogue: Catalogue) -> list[SamplerItem]:
    return [SamplerItem(name=s.display_name, aliases=[s.name], options={}) for s in catalogue.models.samplers]


class ModelItem(BaseModel):
    title: str = Field(description="'name [hash]', what sd_model_checkpoint takes")
    model_name: str
    hash: str
    sha256: str | None
    filename: str
    config: str | None


def model_title(model: image_pb2.ModelInfo) -> str:
    return f"{model.name} [{model.hash}]" if model.hash else model.name


def models_answer(catalogue: Catalogue) -> list[ModelItem]:
    return [ModelItem(title=model_title(m), model_name=m.name, hash=m.hash, sha256=None, filename=m.name,
                      config=None) for m in catalogue.models.models]


class OptionsAnswer(BaseModel):
    """The A1111 settings clients read; Fabula's server settings are not changed over this API."""

    sd_model_checkpoint: str
    sd_checkpoint_hash: str
    samples_format: str = "png"
    CLIP_stop_at_last_layers: int = 1
    eta_noise_seed_delta: int = 0


def options_answer(catalogue: Catalogue) -> OptionsAnswer:
    default = next((m for m in catalogue.models.models if m.is_default), None)
    return OptionsAnswer(sd_model_checkpoint=model_title(default) if default else "",
                         sd_checkpoint_hash=default.hash if default else "")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressAnswer(BaseModel):
    progress: float = Field(ge=0, le=1)
    eta_relative: float = Field(ge=0)
    state: ProgressState
    current_image: str | None = Field(description="base64 PNG preview of the first image (1/8 size), if any yet")
    textinfo: str | None


# PNG info ---------------------------------------------------------------------------------------


class PngInfoBody(RequestBody):
    image: ImageData = Field(description="a PNG (base64 or data: URL)")


def is_png(data: bytes) -> bool:
    """Only PNGs carry Fabula's signature; other formats skip the check."""
    return data.startswith(b"\x89PNG\r\n\x1a\n")


_VERDICT_NAMES = {image_pb2.SIGNATURE_STATUS_ABSENT: "absent", image_pb2.SIGNATURE_STATUS_VALID: "valid",
                  image_pb2.SIGNATURE_STATUS_INVALID: "invalid", image_pb2.SIGNATURE_STATUS_UNKNOWN_KEY: "unknown key"}


def with_signature(answer: PngInfoAnswer, reply: image_pb2.ReadMetadataResponse) -> PngInfoAnswer:
    """png-info's answer with the image service's verdict on the PNG's signature."""
    answer.parameters["Fabula signature"] = _VERDICT_NAMES.get(reply.signature, "absent")
    return answer


class PngInfoAnswer(BaseModel):
    info: str = Field(description="the 'parameters' text (A1111's infotext), empty if none")
    items: dict[str, str] = Field(description="the PNG's other text chunks (Fabula's 'fabula' JSON among them)")
    parameters: dict[str, Any] = Field(description="the infotext parsed: Prompt, Negative prompt, Steps, Seed, ...")


_FIELD = re.compile(r'\s*([\w][\w \-/+.]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """A1111's infotext: the prompt, an optional "Negative prompt:" part, then one line of
    "Key: value" pairs (values with commas are JSON-quoted)."""
    if not text.strip():
        return {}
    *lines, last = text.strip().split("\n")
    if len(_FIELD.findall(last)) < 3:  # no settings line (a bare prompt)
        lines, last = [*lines, last], ""
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        if line.startswith("Negative prompt:"):
            target, line = negative, line.removeprefix("Negative prompt:").strip()
        target.append(line)
    parsed: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _FIELD.findall(last):
        value = value.strip()
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        parsed[key.strip()] = value
    return parsed


def png_info_answer(png: bytes) -> PngInfoAnswer:
    text = png_text(png)
    infotext = text.pop("parameters", "")
    parameters = parse_infotext(infotext)
    facts = text.get("fabula")
    if facts is not None:
        try:
            if json.loads(facts).get("builtin_model"):
                parameters["Fabula note"] = NOISE_NOTE
        except (ValueError, AttributeError):
            pass
    return PngInfoAnswer(info=infotext, items=text, parameters=parameters)
