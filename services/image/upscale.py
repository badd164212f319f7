"""Enlarging images: Lanczos resampling, or an upscaler model of the ESRGAN family (and the other
single-image super-resolution architectures spandrel recognises) loaded from a local file.

An upscaler model enlarges by its own fixed factor (x2, x4, ...); the result is then resampled
with Lanczos to the exact size asked for, as AUTOMATIC1111 does. Models work on tiles with an
overlap, so a large image does not need memory for its whole activation maps at once.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.toolkit.errors import InvalidArgument

log = logging.getLogger(__name__)

LANCZOS = "lanczos"
# Hires fix only: enlarge the latents themselves (bilinear), without decoding.
LATENT = "latent"
_OVERLAP = 16
# Weights only: .pth/.ckpt through spandrel's restricted unpickler (tensors and containers), or
# .safetensors.
_EXTENSIONS = (".pth", ".ckpt", ".safetensors")


class UpscalerError(ValueError):
    """An upscaler file that cannot be served (raised at start-up)."""


@dataclass
class UpscalerModel:
    name: str
    path: Path
    scale: int
    architecture: str
    descriptor: object  # spandrel.ImageModelDescriptor
    lock: threading.Lock


def _import_spandrel():
    """spandrel, imported on first use (processes without an upscaler never pay for it).

    spandrel imports torchvision for two architectures that are not upscalers (LaMa inpainting,
    RestoreFormer face restoration). torchvision's Linux wheels on PyPI are CUDA builds, which
    fail to import beside the CPU build of torch; there, those two functions are replaced by
    stand-ins that refuse to run, and every super-resolution architecture loads as usual."""
    try:
        import spandrel
    except (ImportError, OSError, RuntimeError) as error:
        log.info("torchvision does not import here (%s); spandrel's LaMa and RestoreFormer are unavailable", error)
        for module in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[module]
        for module in [name for name in sys.modules if name == "spandrel" or name.startswith("spandrel.")]:
            del sys.modules[module]
        sys.modules.update(_torchvision_stand_in())
        import spandrel
    return spandrel


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is not usable in this environment (a CUDA build beside the CPU torch)")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")  # type: ignore[attr-defined]
    functional.rotate = functional.normalize = unavailable  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    return {"torchvision": package, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}


def load_upscaler(name: str, path: Path, device: torch.device) -> UpscalerModel:
    """Load one model file with spandrel, which recognises the architecture from its weights."""
    spandrel = _import_spandrel()
    ImageModelDescriptor, ModelLoader = spandrel.ImageModelDescriptor, spandrel.ModelLoader

    if not path.is_file():
        raise UpscalerError(f"upscaler {name!r}: no file at {path}")
    if path.suffix.lower() not in _EXTENSIONS:
        # .pt would be loaded as TorchScript (code, not only weights).
        raise UpscalerError(f"upscaler {name!r}: {path.name} must be a {', '.join(_EXTENSIONS)} file")
    try:
        descriptor = ModelLoader(device=device).load_from_file(str(path))
    except Exception as error:  # noqa: BLE001  any loader failure is a configuration error
        raise UpscalerError(f"upscaler {name!r}: {path} is not a model spandrel can load ({error})") from error
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR":
        raise UpscalerError(f"upscaler {name!r}: {path} is not a super-resolution model")
    descriptor.eval()
    log.info("upscaler %s: %s x%d from %s", name, descriptor.architecture.name, descriptor.scale, path)
    return UpscalerModel(name, path, descriptor.scale, descriptor.architecture.name, descriptor, threading.Lock())


class Upscalers:
    """The upscalers a process serves: Lanczos always, plus each configured model."""

    def __init__(self, models: dict[str, UpscalerModel] | None = None, tile: int = 512) -> None:
        self.models = dict(models or {})
        self.tile = tile

    @classmethod
    def load(cls, files: dict[str, Path], device: torch.device, tile: int = 512) -> Upscalers:
        return cls({name: load_upscaler(name, path, device) for name, path in files.items()}, tile)

    @property
    def names(self) -> list[str]:
        return [LANCZOS, *self.models]

    def check(self, field_name: str, name: str, *, latent: bool = False) -> str:
        """The upscaler's canonical name, or InvalidArgument naming the field."""
        chosen = name.strip() or (LATENT if latent else LANCZOS)
        if chosen.lower() in (LANCZOS, LATENT):
            chosen = chosen.lower()
        allowed = ([LATENT] if latent else []) + self.names
        if chosen not in allowed:
            raise InvalidArgument(field_name, name, f"unknown upscaler; choose from {', '.join(allowed)}")
        return chosen

    def upscale(self, image: Image.Image, size: tuple[int, int], name: str) -> Image.Image:
        """`image` enlarged to `size` (width, height) by the upscaler `name`."""
        if name == LANCZOS or name not in self.models:
            return image.resize(size, Image.LANCZOS)
        model = self.models[name]
        enlarged = image
        # Apply the model as often as needed to reach the size (a x2 model twice for x4).
        while enlarged.width < size[0] or enlarged.height < size[1]:
            enlarged = self._run(model, enlarged)
        return enlarged if enlarged.size == size else enlarged.resize(size, Image.LANCZOS)

    def _run(self, model: UpscalerModel, image: Image.Image) -> Image.Image:
        descriptor = model.descriptor
        device = descriptor.device
        dtype = next(iter(descriptor.model.parameters())).dtype
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        scale = model.scale
        height, width = pixels.shape[2:]
        out = torch.zeros(1, 3, height * scale, width * scale)
        step = self.tile
        # One inference at a time per model: batchers of several image models may share it.
        with model.lock, torch.inference_mode():
            for top in range(0, height, step):
                for left in range(0, width, step):
                    # Each tile is run with an overlap on every side and cropped back, so tile seams
                    # see their neighbours' context.
                    y0, x0 = max(0, top - _OVERLAP), max(0, left - _OVERLAP)
                    y1, x1 = min(height, top + step + _OVERLAP), min(width, left + step + _OVERLAP)
                    tile = pixels[:, :, y0:y1, x0:x1].to(device, dtype)
                    result = descriptor(tile).float().cpu().clamp(0, 1)
                    bottom, right = min(height, top + step), min(width, left + step)
                    crop = result[:, :, (top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
                    out[:, :, top * scale:bottom * scale, left * scale:right * scale] = crop
        array = (out[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(array)
