"""A generation request as domain values, and `check_inputs`: every field validated, with the
field and its value named, before any model work. Defaults come from the model."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from enum import Enum

from PIL import Image

from services.image import images as pixels
from services.image.guidance import Guidance, RawGuidance, check_guidance
from services.image.models import LoadedModel
from services.image.prompts import Dialect, join_tags
from services.image.samplers import NATIVE, SAMPLERS, SCHEDULES, SamplerSpec, find_sampler
from services.image.upscale import Upscalers
from services.image.settings import ImageSettings
from services.toolkit.errors import InvalidArgument

SEED_MAX = 2**32 - 1
MAX_SIDE = 4096
MAX_MASK_BLUR = 64
MAX_PADDING = 1024
MAX_OUTPAINT = 1024


class Action(str, Enum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    OUTPAINT = "outpaint"
    UPSCALE = "upscale"
    ENHANCE = "enhance"
    VARIATIONS = "variations"


# Actions that start from an uploaded image and denoise it from `strength`.
FROM_IMAGE = (Action.IMG2IMG, Action.ENHANCE, Action.VARIATIONS)
MAX_HIRES_SCALE = 4.0
MAX_UPSCALE = 8.0
MAX_ENHANCE_SCALE = 4.0
MAX_RHO = 10.0
MAX_THRESHOLD = 100.0


class MaskedContent(str, Enum):
    ORIGINAL = "original"
    FILL = "fill"
    LATENT_NOISE = "latent_noise"
    LATENT_NOTHING = "latent_nothing"


@dataclass
class RawRequest:
    """What the caller sent, unvalidated (None = not given)."""

    action: Action = Action.TXT2IMG
    model: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    negative_preset: str = ""
    quality_tags: bool | None = None
    width: int = 0
    height: int = 0
    steps: int = 0
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0
    sampler: str = ""
    noise_schedule: str = ""
    seed: int | None = None
    n_images: int = 0
    preview_every: int = 0
    dialect: str = ""
    image: bytes = b""
    mask: bytes = b""
    strength: float | None = None
    extra_noise: float = 0.0
    mask_blur: int | None = None
    masked_content: str = ""
    only_masked: bool = False
    only_masked_padding: int | None = None
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    # Reference images, control images, character prompts (any action).
    guidance: RawGuidance = field(default_factory=RawGuidance)
    # Hires fix (hires is False: one pass).
    hires: bool = False
    hires_scale: float = 0.0
    hires_width: int = 0
    hires_height: int = 0
    hires_steps: int = 0
    hires_strength: float | None = None
    hires_upscaler: str = ""
    # Upscale and enhance.
    scale: float = 0.0
    target_width: int = 0
    target_height: int = 0
    upscaler: str = ""
    # Sampling options.
    dynamic_thresholding: float = 0.0
    dynamic_thresholding_max: float | None = None
    schedule_rho: float | None = None


@dataclass
class HiresPlan:
    """The second pass of a hires fix: its size, steps, strength and how the first is enlarged."""

    base_width: int
    base_height: int
    base_steps: int
    width: int
    height: int
    steps: int
    strength: float
    upscaler: str


@dataclass
class Request:
    """A validated request with every default resolved."""

    action: Action
    model: LoadedModel
    prompt: str  # as the model sees it (quality tags added)
    negative_prompt: str  # preset text added
    user_prompt: str
    user_negative_prompt: str
    negative_preset: str
    quality_tags: bool
    width: int  # generation size
    height: int
    steps: int
    guidance_scale: float
    guidance_rescale: float
    sampler: SamplerSpec
    noise_schedule: str
    seeds: list[int]
    preview_every: int
    dialect: Dialect = Dialect.NOVELAI
    strength: float = 1.0
    extra_noise: float = 0.0
    # Image actions: the (possibly extended) input and the mask of what is redrawn, at its own size.
    image: Image.Image | None = None
    mask: Image.Image | None = None
    mask_blur: int = 0
    masked_content: MaskedContent = MaskedContent.ORIGINAL
    only_masked: bool = False
    only_masked_padding: int = 32
    outpaint: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, right, top, bottom
    guidance: Guidance = field(default_factory=Guidance)
    hires: HiresPlan | None = None
    upscaler: str = ""  # upscale and enhance
    scale: float = 0.0
    dynamic_thresholding: float = 0.0
    dynamic_thresholding_max: float = 4.0
    schedule_rho: float = 1.0
    extras: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.seeds)


def _finite(field_name: str, value: float, low: float, high: float, *, low_open: bool = False) -> float:
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise InvalidArgument(field_name, value, f"must be a number in {bound}")
    return float(value)


def _side(field_name: str, value: int) -> int:
    if value < 64 or value > MAX_SIDE or value % 64:
        raise InvalidArgument(field_name, value, f"must be a multiple of 64 between 64 and {MAX_SIDE}")
    return value


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """A generation size for an input image: its size scaled to fit max_pixels, in multiples of 64."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    fit_w = max(64, int(width * scale) // 64 * 64)
    fit_h = max(64, int(height * scale) // 64 * 64)
    # A side raised to the 64 floor (a long, thin image: 1088 x 64 at 16384 pixels) pushes the
    # area past max_pixels; the other side gives up the excess.
    if fit_w * fit_h > max_pixels:
        if fit_w > fit_h:
            fit_w = max(64, max_pixels // fit_h // 64 * 64)
        else:
            fit_h = max(64, max_pixels // fit_w // 64 * 64)
    return fit_w, fit_h


def _schedule(raw: str, sampler: SamplerSpec) -> str:
    name = raw or NATIVE
    if name not in SCHEDULES:
        raise InvalidArgument("params.noise_schedule", raw, f"must be one of {', '.join(SCHEDULES)}")
    if name not in sampler.schedules:
        raise InvalidArgument("params.noise_schedule", name,
                              f"sampler {sampler.name} offers only {', '.join(sampler.schedules)}")
    return name


def check_dialect(field_name: str, raw: str) -> Dialect:
    try:
        return Dialect(raw or Dialect.NOVELAI.value)
    except ValueError:
        raise InvalidArgument(field_name, raw, f"must be one of {', '.join(d.value for d in Dialect)}") from None


def check_inputs(raw: RawRequest, models: dict[str, LoadedModel], default_model: str,
                 settings: ImageSettings, upscalers: Upscalers | None = None) -> Request:
    """Validate and resolve `raw` (raising InvalidArgument naming the field and its value)."""
    model = models.get(raw.model or default_model)
    if model is None:
        raise InvalidArgument("params.model", raw.model, f"unknown model; choose from {', '.join(sorted(models))}")
    for name, text in (("params.prompt", raw.prompt), ("params.negative_prompt", raw.negative_prompt)):
        if len(text) > settings.max_prompt_chars:
            raise InvalidArgument(name, text, f"must be at most {settings.max_prompt_chars} characters")
    preset_name = raw.negative_preset or model.default_negative_preset
    if preset_name not in model.negative_presets:
        raise InvalidArgument("params.negative_preset", raw.negative_preset,
                              f"unknown preset; model {model.name} has {', '.join(sorted(model.negative_presets))}")
    quality = True if raw.quality_tags is None else raw.quality_tags
    prompt = raw.prompt
    if quality and model.quality_tags:
        prompt = (join_tags(model.quality_tags, raw.prompt) if model.quality_tags_position == "prepend"
                  else join_tags(raw.prompt, model.quality_tags))
    negative = join_tags(model.negative_presets[preset_name], raw.negative_prompt)

    steps = raw.steps or model.defaults.steps
    if not 1 <= steps <= settings.max_steps:
        raise InvalidArgument("params.steps", raw.steps, f"must be between 1 and {settings.max_steps}")
    guidance = model.defaults.guidance_scale if raw.guidance_scale is None else raw.guidance_scale
    guidance = _finite("params.guidance_scale", guidance, 0.0, 50.0)
    rescale = _finite("params.guidance_rescale", raw.guidance_rescale, 0.0, 1.0)
    sampler = find_sampler(raw.sampler or model.defaults.sampler)
    if sampler is None:
        raise InvalidArgument("params.sampler", raw.sampler, f"unknown sampler; choose from {', '.join(SAMPLERS)}")
    schedule = _schedule(raw.noise_schedule, sampler)
    if raw.seed is not None and not 0 <= raw.seed <= SEED_MAX:
        raise InvalidArgument("params.seed", raw.seed, f"must be between 0 and {SEED_MAX}")
    seed = raw.seed if raw.seed is not None else secrets.randbelow(SEED_MAX + 1)
    n_images = raw.n_images or 1
    if not 1 <= n_images <= settings.max_images:
        raise InvalidArgument("params.n_images", raw.n_images, f"must be between 1 and {settings.max_images}")
    if raw.preview_every < 0 or raw.preview_every > settings.max_steps:
        raise InvalidArgument("params.preview_every", raw.preview_every, f"must be between 0 and {settings.max_steps}")
    dialect = check_dialect("params.dialect", raw.dialect)
    threshold = _finite("params.dynamic_thresholding", raw.dynamic_thresholding, 0.0, 1.0)
    if threshold == 1.0:
        raise InvalidArgument("params.dynamic_thresholding", threshold, "must be below 1 (a percentile); 0 is off")
    threshold_max = _finite("params.dynamic_thresholding_max", 4.0 if raw.dynamic_thresholding_max is None
                            else raw.dynamic_thresholding_max, 0.0, MAX_THRESHOLD, low_open=True)
    if threshold and model.scheduler_config.get("prediction_type", "epsilon") != "epsilon":
        raise InvalidArgument("params.dynamic_thresholding", threshold,
                              f"needs an epsilon-prediction model; {model.name} predicts "
                              f"{model.scheduler_config.get('prediction_type')}")
    rho = _finite("params.schedule_rho", 1.0 if raw.schedule_rho is None else raw.schedule_rho, 0.1, MAX_RHO)

    request = Request(
        action=raw.action, model=model, prompt=prompt, negative_prompt=negative, user_prompt=raw.prompt,
        user_negative_prompt=raw.negative_prompt, negative_preset=preset_name, quality_tags=quality,
        width=0, height=0, steps=steps, guidance_scale=guidance, guidance_rescale=rescale, sampler=sampler,
        noise_schedule=schedule, seeds=[(seed + i) % (SEED_MAX + 1) for i in range(n_images)],
        preview_every=raw.preview_every, dialect=dialect, dynamic_thresholding=threshold,
        dynamic_thresholding_max=threshold_max, schedule_rho=rho)
    request.guidance = check_guidance(raw.guidance, model, settings)
    upscalers = upscalers or Upscalers()
    _CHECK_ACTION[raw.action](raw, request, settings, upscalers)
    if request.width * request.height > settings.max_pixels:
        raise InvalidArgument("params.width", f"{request.width}x{request.height}",
                              f"width x height must be at most {settings.max_pixels} pixels")
    if raw.action == Action.UPSCALE and request.guidance:
        raise InvalidArgument("upscale", "references, controls or characters",
                              "upscaling does not denoise; it takes no references, controls or characters")
    if raw.hires:
        if raw.action != Action.TXT2IMG:
            raise InvalidArgument("params.hires", raw.action.value, "hires fix is for text to image only")
        if request.guidance:
            # Controls and regions are laid out at the first pass's size.
            raise InvalidArgument("params.hires", "with references, controls or characters",
                                  "hires fix does not combine with references, controls or characters yet")
        request.hires = _hires(raw, request, settings, upscalers)
    return request


def _hires(raw: RawRequest, request: Request, settings: ImageSettings, upscalers: Upscalers) -> HiresPlan:
    base_w, base_h = request.width, request.height
    scale = raw.hires_scale
    if scale and not (math.isfinite(scale) and 1.0 <= scale <= MAX_HIRES_SCALE):
        raise InvalidArgument("params.hires.scale", scale, f"must be between 1 and {MAX_HIRES_SCALE}")
    if raw.hires_width or raw.hires_height:
        width = _side("params.hires.width", raw.hires_width) if raw.hires_width else 0
        height = _side("params.hires.height", raw.hires_height) if raw.hires_height else 0
        # One side given: the other keeps the first pass's aspect, as in AUTOMATIC1111.
        width = width or max(64, round(height * base_w / base_h / 64) * 64)
        height = height or max(64, round(width * base_h / base_w / 64) * 64)
    else:
        scale = scale or 2.0
        width, height = max(64, round(base_w * scale / 64) * 64), max(64, round(base_h * scale / 64) * 64)
    if width < base_w or height < base_h:
        raise InvalidArgument("params.hires.width", f"{width}x{height}",
                              f"must be at least the first pass's size, {base_w}x{base_h}")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > settings.max_pixels:
        raise InvalidArgument("params.hires.width", f"{width}x{height}",
                              f"width x height must be at most {settings.max_pixels} pixels")
    steps = raw.hires_steps or request.steps
    if not 1 <= steps <= settings.max_steps:
        raise InvalidArgument("params.hires.steps", raw.hires_steps, f"must be between 1 and {settings.max_steps}")
    strength = _finite("params.hires.strength", 0.55 if raw.hires_strength is None else raw.hires_strength,
                       0.0, 1.0, low_open=True)
    upscaler = upscalers.check("params.hires.upscaler", raw.hires_upscaler, latent=True)
    return HiresPlan(base_w, base_h, request.steps, width, height, steps, strength, upscaler)


def _size(raw: RawRequest, request: Request, settings: ImageSettings, image: Image.Image | None) -> None:
    if image is not None and not raw.width and not raw.height:
        request.width, request.height = fit_size(*image.size, settings.max_pixels)
        return
    request.width = _side("params.width", raw.width) if raw.width else request.model.defaults.width
    request.height = _side("params.height", raw.height) if raw.height else request.model.defaults.height


def _strength(raw: RawRequest, default: float, field_name: str) -> float:
    return _finite(field_name, default if raw.strength is None else raw.strength, 0.0, 1.0, low_open=True)


def _check_txt2img(raw: RawRequest, request: Request, settings: ImageSettings, upscalers: Upscalers) -> None:
    _size(raw, request, settings, None)


def _check_img2img(raw: RawRequest, request: Request, settings: ImageSettings, upscalers: Upscalers) -> None:
    request.image = pixels.decode_image(raw.image, "img2img.image", max_pixels=settings.max_input_pixels)
    request.strength = _strength(raw, 0.7, "img2img.strength")
    request.extra_noise = _finite("img2img.extra_noise", raw.extra_noise, 0.0, 0.99)
    _size(raw, request, settings, request.image)


def _masked_content(raw: RawRequest, field_name: str, default: MaskedContent) -> MaskedContent:
    if not raw.masked_content:
        return default
    try:
        return MaskedContent(raw.masked_content)
    except ValueError:
        raise InvalidArgument(field_name, raw.masked_content,
                              f"must be one of {', '.join(m.value for m in MaskedContent)}") from None


def _mask_blur(value: int | None, default: int, field_name: str) -> int:
    blur = default if value is None else value
    if not 0 <= blur <= MAX_MASK_BLUR:
        raise InvalidArgument(field_name, blur, f"must be between 0 and {MAX_MASK_BLUR}")
    return blur


def _check_inpaint(raw: RawRequest, request: Request, settings: ImageSettings, upscalers: Upscalers) -> None:
    request.image = pixels.decode_image(raw.image, "inpaint.image", max_pixels=settings.max_input_pixels)
    mask = pixels.decode_image(raw.mask, "inpaint.mask", max_pixels=settings.max_input_pixels, mode="L")
    if mask.size != request.image.size:
        raise InvalidArgument("inpaint.mask", f"{mask.size[0]}x{mask.size[1]}",
                              f"must be the image's size, {request.image.size[0]}x{request.image.size[1]}")
    request.mask = pixels.binary_mask(mask)
    if request.mask.getbbox() is None:
        raise InvalidArgument("inpaint.mask", "all black", "selects no pixels to redraw (white is redrawn)")
    request.strength = _strength(raw, 1.0, "inpaint.strength")
    request.mask_blur = _mask_blur(raw.mask_blur, 0, "inpaint.mask_blur")
    request.masked_content = _masked_content(raw, "inpaint.masked_content", MaskedContent.ORIGINAL)
    request.only_masked = raw.only_masked
    padding = 32 if raw.only_masked_padding is None else raw.only_masked_padding
    if not 0 <= padding <= MAX_PADDING:
        raise InvalidArgument("inpaint.only_masked_padding", padding, f"must be between 0 and {MAX_PADDING}")
    request.only_masked_padding = padding
    # Only-masked regions are generated at the full requested (or default) size.
    _size(raw, request, settings, None if raw.only_masked else request.image)


def _check_outpaint(raw: RawRequest, request: Request, settings: ImageSettings, upscalers: Upscalers) -> None:
    image = pixels.decode_image(raw.image, "outpaint.image", max_pixels=settings.max_input_pixels)
    sides = {"left": raw.left, "right": raw.right, "top": raw.top, "bottom": raw.bottom}
    for name, value in sides.items():
        if not 0 <= value <= MAX_OUTPAINT:
            raise InvalidArgument(f"outpaint.{name}", value, f"must be between 0 and {MAX_OUTPAINT} pixels")
    if not any(sides.values()):
        raise InvalidArgument("outpaint.left", 0, "at least one side must grow (left, right, top or bottom)")
    width, height = image.size[0] + raw.left + raw.right, image.size[1] + raw.top + raw.bottom
    if width * height > settings.max_input_pixels:
        raise InvalidArgument("outpaint", f"{width}x{height}", f"the canvas must be at most "
                                                                f"{settings.max_input_pixels} pixels")
    request.mask_blur = _mask_blur(raw.mask_blur, 16, "outpaint.mask_blur")
    canvas = pixels.outpaint_canvas(image, raw.left, raw.right, raw.top, raw.bottom, overlap=request.mask_blur)
    request.image, request.mask = canvas.image, canvas.mask
    request.outpaint = (raw.left, raw.right, raw.top, raw.bottom)
    request.strength = _strength(raw, 1.0, "outpaint.strength")
    request.masked_content = _masked_content(raw, "outpaint.masked_content", MaskedContent.FILL)
    _size(raw, request, settings, request.image)


def _check_upscale(raw: RawRequest, request: Request, settings: ImageSettings, upscalers: Upscalers) -> None:
    image = pixels.decode_image(raw.image, "upscale.image", max_pixels=settings.max_input_pixels)
    scale = raw.scale
    if scale and not (math.isfinite(scale) and 1.0 <= scale <= MAX_UPSCALE):
        raise InvalidArgument("upscale.scale", scale, f"must be between 1 and {MAX_UPSCALE}")
    for name, value in (("upscale.width", raw.target_width), ("upscale.height", raw.target_height)):
        if value > MAX_SIDE * 2:
            raise InvalidArgument(name, value, f"must be at most {MAX_SIDE * 2}")
    width, height = raw.target_width, raw.target_height
    if width or height:
        width = width or max(1, round(height * image.width / image.height))
        height = height or max(1, round(width * image.height / image.width))
    else:
        scale = scale or 2.0
        width, height = round(image.width * scale), round(image.height * scale)
    if width < image.width or height < image.height:
        raise InvalidArgument("upscale.width", f"{width}x{height}",
                              f"must be at least the image's size, {image.width}x{image.height}")
    if width * height > settings.max_pixels:
        raise InvalidArgument("upscale.width", f"{width}x{height}",
                              f"width x height must be at most {settings.max_pixels} pixels")
    request.image, request.width, request.height = image, width, height
    request.scale = width / image.width
    request.seeds = request.seeds[:1]  # one image in, one out
    request.steps = 0
    request.upscaler = upscalers.check("upscale.upscaler", raw.upscaler)


def _check_enhance(raw: RawRequest, request: Request, settings: ImageSettings, upscalers: Upscalers) -> None:
    image = pixels.decode_image(raw.image, "enhance.image", max_pixels=settings.max_input_pixels)
    scale = raw.scale or 1.5
    if not (math.isfinite(scale) and 1.0 <= scale <= MAX_ENHANCE_SCALE):
        raise InvalidArgument("enhance.scale", raw.scale, f"must be between 1 and {MAX_ENHANCE_SCALE}")
    width, height = max(64, round(image.width * scale / 64) * 64), max(64, round(image.height * scale / 64) * 64)
    if width * height > settings.max_pixels:
        raise InvalidArgument("enhance.scale", scale, f"the enhanced size {width}x{height} must be at most "
                                                      f"{settings.max_pixels} pixels")
    request.image, request.width, request.height, request.scale = image, width, height, scale
    request.strength = _strength(raw, 0.4, "enhance.strength")
    request.extra_noise = _finite("enhance.extra_noise", raw.extra_noise, 0.0, 0.99)
    request.upscaler = upscalers.check("enhance.upscaler", raw.upscaler)


def _check_variations(raw: RawRequest, request: Request, settings: ImageSettings, upscalers: Upscalers) -> None:
    request.image = pixels.decode_image(raw.image, "variations.image", max_pixels=settings.max_input_pixels)
    request.strength = _strength(raw, 0.35, "variations.strength")
    _size(raw, request, settings, request.image)


_CHECK_ACTION = {
    Action.TXT2IMG: _check_txt2img,
    Action.IMG2IMG: _check_img2img,
    Action.INPAINT: _check_inpaint,
    Action.OUTPAINT: _check_outpaint,
    Action.UPSCALE: _check_upscale,
    Action.ENHANCE: _check_enhance,
    Action.VARIATIONS: _check_variations,
}
