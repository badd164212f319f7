"""Control images through ControlNets (diffusers' ControlNetModel).

A model's ControlNets come from its `controlnets` option (name → a local diffusers folder); a
control of kind K uses the one named K unless it names another. `builtin:tiny-controlnet` is a
random ControlNet made from the model's own UNet (diffusers' `ControlNetModel.from_unet`, its
zero convolutions given small random weights so that it steers at all), saved and loaded like a
real one. Built-in models get it for every kind when none is configured.

Per denoising step, every control of a job runs its ControlNet on the job's rows (the unguided
rows too, as diffusers does outside guess mode) with the base prompt's text states, while the
step is within the control's [start, end] share of the steps; the residuals of all its controls
are summed and added to the UNet's skip connections.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from services.image import images as pixels
from services.image.models import BUILTIN_PREFIX
from services.image.tiny import build_stamped
from services.image.preprocessors import ControlKind, ControlSource, Pose, parse_pose
from services.toolkit.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from services.image.models import LoadedModel

log = logging.getLogger(__name__)

TINY_CONTROLNET = "builtin:tiny-controlnet"
TINY_RECIPE = 1
MAX_STRENGTH = 2.0


@dataclass
class RawControl:
    kind: str = ""
    image: bytes = b""
    strength: float | None = None
    pose_json: str = ""
    low_threshold: int | None = None
    high_threshold: int | None = None
    start: float | None = None
    end: float | None = None
    controlnet: str = ""


@dataclass
class Control:
    source: ControlSource
    strength: float
    start: float
    end: float
    controlnet: str  # the model's ControlNet name


def _kind(field: str, raw: str) -> ControlKind:
    try:
        return ControlKind(raw)
    except ValueError:
        raise InvalidArgument(field, raw or "<unset>",
                              f"must be one of {', '.join(k.value for k in ControlKind)}") from None


def check_source(raw: RawControl, where: str, *, max_input_pixels: int) -> ControlSource:
    """The preprocessor's input, validated (kind, image or pose, thresholds)."""
    kind = _kind(f"{where}.kind", raw.kind)
    pose: Pose | None = None
    image: Image.Image | None = None
    if kind == ControlKind.POSE:
        pose = parse_pose(f"{where}.pose_json", raw.pose_json)
    else:
        mode = "RGBA" if kind == ControlKind.SCRIBBLE else "RGB"
        image = pixels.decode_image(raw.image, f"{where}.image", max_pixels=max_input_pixels, mode=mode)
    low = 100 if raw.low_threshold is None else raw.low_threshold
    high = 200 if raw.high_threshold is None else raw.high_threshold
    for name, value in (("low_threshold", low), ("high_threshold", high)):
        if not 0 <= value <= 255:
            raise InvalidArgument(f"{where}.{name}", value, "must be between 0 and 255")
    if low > high:
        raise InvalidArgument(f"{where}.low_threshold", low, f"must be at most high_threshold ({high})")
    return ControlSource(kind, image, pose, low, high)


def check_controls(raw: list[RawControl], *, max_controls: int, max_input_pixels: int,
                   model: LoadedModel, available: set[str]) -> list[Control]:
    """Validate the controls (InvalidArgument naming `controls[i].field`; the count first)."""
    if len(raw) > max_controls:
        raise InvalidArgument("controls", f"<{len(raw)} controls>", f"at most {max_controls} are allowed")
    controls = []
    for index, item in enumerate(raw):
        where = f"controls[{index}]"
        strength = 1.0 if item.strength is None else item.strength
        if not math.isfinite(strength) or not 0.0 <= strength <= MAX_STRENGTH:
            raise InvalidArgument(f"{where}.strength", strength, f"must be a number in [0, {MAX_STRENGTH}]")
        start = 0.0 if item.start is None else item.start
        end = 1.0 if item.end is None else item.end
        if not math.isfinite(start) or not 0.0 <= start < 1.0:
            raise InvalidArgument(f"{where}.start", start, "must be a fraction of the steps in [0, 1)")
        if not math.isfinite(end) or not start < end <= 1.0:
            raise InvalidArgument(f"{where}.end", end, f"must be in ({start:g}, 1]")
        kind = _kind(f"{where}.kind", item.kind)
        name = item.controlnet or kind.value
        if kind == ControlKind.RAW and not item.controlnet:
            raise InvalidArgument(f"{where}.controlnet", "", "a raw control image must name the ControlNet to use")
        if name not in available:
            raise FailedPrecondition(
                f"{where}.controlnet: model {model.name} has no ControlNet {name!r}; configured: "
                f"{', '.join(sorted(available)) or 'none'} (the model's `controlnets` in FABULA_IMAGE_MODELS)",
                field=f"{where}.controlnet")
        source = check_source(item, where, max_input_pixels=max_input_pixels)
        controls.append(Control(source, float(strength), float(start), float(end), name))
    return controls


def controlnet_sources(model: LoadedModel) -> dict[str, str]:
    """The model's ControlNets by name (built-in models get the tiny one for every kind)."""
    configured = model.options.controlnets
    if configured is not None:
        return dict(configured)
    if model.source.startswith(BUILTIN_PREFIX):
        return {kind.value: TINY_CONTROLNET for kind in ControlKind if kind != ControlKind.RAW}
    return {}


def load_controlnets(model: LoadedModel, cache_dir: Path) -> dict[str, torch.nn.Module]:
    """Every ControlNet of the model (a source shared by several names is loaded once)."""
    from diffusers import ControlNetModel

    loaded: dict[str, torch.nn.Module] = {}
    by_source: dict[str, torch.nn.Module] = {}
    for name, source in controlnet_sources(model).items():
        if source not in by_source:
            if source.startswith(BUILTIN_PREFIX):
                if source != TINY_CONTROLNET:
                    raise FailedPrecondition(f"model {model.name}: unknown built-in ControlNet {source!r}; the "
                                             f"built-in one is {TINY_CONTROLNET}")
                path = build_tiny_controlnet(cache_dir / "models" / f"tiny-controlnet-{model.family}-"
                                                                    f"{model.short_hash}", model.unet)
            else:
                path = Path(source).expanduser()
                if not (path / "config.json").is_file():
                    raise FailedPrecondition(f"model {model.name}: controlnets.{name} {source!r} is not a diffusers "
                                             "ControlNetModel folder (config.json and weights)")
            try:
                network = ControlNetModel.from_pretrained(str(path), local_files_only=True, torch_dtype=model.unet.dtype)
            except (OSError, ValueError) as error:
                raise FailedPrecondition(f"model {model.name}: could not load ControlNet {source!r} ({error})") \
                    from error
            if network.config.cross_attention_dim != model.unet.config.cross_attention_dim:
                raise FailedPrecondition(f"model {model.name}: ControlNet {source!r} is for another model family "
                                         f"(cross-attention width {network.config.cross_attention_dim}, the model's "
                                         f"{model.unet.config.cross_attention_dim})")
            by_source[source] = network.to(model.unet.device).eval().requires_grad_(False)
            log.info("model %s: ControlNet %s from %s", model.name, name, source)
        loaded[name] = by_source[source]
    return loaded


def build_tiny_controlnet(folder: Path, unet: torch.nn.Module, seed: int = 20240503) -> Path:
    """A ControlNet made from `unet` with random (small) zero convolutions, saved in diffusers format."""
    from diffusers import ControlNetModel

    def write(scratch: Path) -> None:
        source = unet if unet.dtype == torch.float32 else copy.deepcopy(unet).float()
        network = ControlNetModel.from_unet(source, conditioning_embedding_out_channels=(16, 32, 64, 64))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in [*network.controlnet_down_blocks, network.controlnet_mid_block,
                           network.controlnet_cond_embedding.conv_out]:
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.05)
        network.save_pretrained(scratch, safe_serialization=True)

    return build_stamped(folder, {"recipe": TINY_RECIPE, "seed": seed}, write)


def control_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, 3, H, W] in [0, 1], as diffusers' ControlNet pipelines feed the control image."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].to(device, dtype)
