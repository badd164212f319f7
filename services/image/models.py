"""Loading models: diffusers folders, single-file checkpoints and the built-in tiny model.

A `LoadedModel` holds the PyTorch components (tokenizers, text encoders, UNet, VAE, the
scheduler config) and what requests need to know about it (family, defaults, quality tags,
presets, hash); back ends (backends/) decide how the components run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.image.settings import ModelOptions
from services.toolkit.errors import FailedPrecondition

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"

# NovelAI's undesired-content presets (Anime V1) and quality tags, per family.
NOVELAI_PRESETS = {
    "heavy": "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
             "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry",
    "light": "lowres, text, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, "
             "watermark, username, blurry",
    "none": "",
}


@dataclass(frozen=True)
class FamilyDefaults:
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str
    quality_tags: str
    quality_tags_position: str


FAMILIES: dict[str, FamilyDefaults] = {
    "sd1": FamilyDefaults(512, 512, 28, 7.0, "euler_ancestral", "masterpiece, best quality", "prepend"),
    "sdxl": FamilyDefaults(1024, 1024, 28, 5.0, "euler_ancestral",
                           "best quality, amazing quality, very aesthetic, absurdres", "append"),
}


@dataclass
class LoadedModel:
    name: str
    source: str
    family: str
    tokenizers: list[Any]
    text_encoders: list[torch.nn.Module]
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict[str, Any]
    hash: str
    options: ModelOptions
    defaults: FamilyDefaults
    negative_presets: dict[str, str] = field(default_factory=dict)
    default_negative_preset: str = "heavy"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def inpainting_unet(self) -> bool:
        return self.unet.config.in_channels == 9

    @property
    def builtin(self) -> bool:
        """A built-in test model: untrained, so its pictures are noise."""
        return self.source.startswith(BUILTIN_PREFIX)

    @property
    def short_hash(self) -> str:
        return self.hash[:10]

    @property
    def quality_tags(self) -> str:
        return self.options.quality_tags if self.options.quality_tags is not None else self.defaults.quality_tags

    @property
    def quality_tags_position(self) -> str:
        return self.options.quality_tags_position or self.defaults.quality_tags_position

    def pipeline(self, scheduler=None):
        """A plain diffusers pipeline over the same components (for comparisons and exports)."""
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

        scheduler = scheduler or EulerDiscreteScheduler.from_config(self.scheduler_config)
        if self.family == "sdxl":
            return StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoders[0],
                                             text_encoder_2=self.text_encoders[1], tokenizer=self.tokenizers[0],
                                             tokenizer_2=self.tokenizers[1], unet=self.unet, scheduler=scheduler,
                                             # else installing invisible-watermark would change the pixels
                                             add_watermarker=False)
        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0],
                                       unet=self.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)


def resolve_source(source: str, cache_dir: Path) -> Path:
    """The path of a model source; builds the built-in model on first use."""
    if source.startswith(BUILTIN_PREFIX):
        from services.image.tiny import BUILTIN_MODELS

        name = source.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_MODELS:
            raise FailedPrecondition(f"unknown built-in model {source!r}; the built-in ones are "
                                     f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)}")
        return BUILTIN_MODELS[name](cache_dir / "models" / name)
    path = Path(source).expanduser()
    if not path.exists():
        raise FailedPrecondition(f"model source {source!r} does not exist")
    return path


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise FailedPrecondition(f"{path} holds no weights (*.safetensors or *.bin)")
    return files


def model_hash(path: Path, cache_dir: Path) -> str:
    """sha256 of the weights (for one file: of the file, as AUTOMATIC1111's "Model hash").

    Remembered in cache_dir under the files' sizes and modification times, as hashing a
    multi-gigabyte checkpoint takes a while; any change to a file rehashes it.
    """
    files = _weight_files(path)
    stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    memo = cache_dir / "hashes" / (hashlib.sha256(json.dumps(stamp).encode()).hexdigest() + ".txt")
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    value = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(value)
    return value


def _detect_family(path: Path) -> str:
    if path.is_dir():
        index = json.loads((path / "model_index.json").read_text()) if (path / "model_index.json").is_file() else {}
        return "sdxl" if "text_encoder_2" in index or "XL" in index.get("_class_name", "") else "sd1"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return "sdxl" if any(key.startswith("conditioner.embedders.1") for key in handle.keys()) else "sd1"


def load_model(name: str, options: ModelOptions, *, cache_dir: Path, device: torch.device,
               dtype: torch.dtype) -> LoadedModel:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # progress bars are noise in a service's log
    path = resolve_source(options.source, cache_dir)
    family = options.family if options.family != "auto" else _detect_family(path)
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra: dict[str, Any] = {"dtype": dtype}
    if family == "sd1":
        extra.update(safety_checker=None, requires_safety_checker=False)
    log.info("loading model %s (%s) from %s", name, family, path)
    try:
        if path.is_dir():
            pipe = pipeline_class.from_pretrained(str(path), local_files_only=True, **extra)
        elif path.suffix == ".safetensors":
            # The file holds weights only. Without `config`, diffusers downloads the configs from the
            # hub even with local_files_only=True, so refuse before it tries.
            if not options.config:
                raise FailedPrecondition(
                    f"model {name}: {path} is a single-file checkpoint; set the model's `config` to a local "
                    f"diffusers folder of the same architecture ({family}), or a builtin: model of it")
            extra["config"] = str(resolve_source(options.config, cache_dir))
            pipe = pipeline_class.from_single_file(str(path), local_files_only=True, **extra)
        else:
            raise FailedPrecondition(f"model {name}: {path} is neither a diffusers folder nor a .safetensors file")
    except FailedPrecondition:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise FailedPrecondition(
            f"model {name}: could not load {path} ({error}). A single-file checkpoint needs its configs "
            "offline: set the model's `config` to a local diffusers folder of the same architecture") from error
    pipe.to(device)
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    for module in (*encoders, pipe.unet, pipe.vae):
        module.eval().requires_grad_(False)
    defaults = FAMILIES[family]
    presets = dict(options.negative_presets) if options.negative_presets is not None else dict(NOVELAI_PRESETS)
    presets.setdefault("none", "")
    default_preset = options.default_negative_preset or ("heavy" if "heavy" in presets else next(iter(presets)))
    if default_preset not in presets:
        raise FailedPrecondition(f"model {name}: default_negative_preset {default_preset!r} is not one of "
                                 f"{sorted(presets)}")
    return LoadedModel(
        name=name, source=options.source, family=family, tokenizers=tokenizers, text_encoders=encoders,
        unet=pipe.unet, vae=pipe.vae, scheduler_config=dict(pipe.scheduler.config),
        hash=model_hash(path, cache_dir), options=options,
        defaults=FamilyDefaults(
            width=options.width or defaults.width, height=options.height or defaults.height,
            steps=options.steps or defaults.steps,
            guidance_scale=options.guidance_scale if options.guidance_scale is not None else defaults.guidance_scale,
            sampler=options.sampler or defaults.sampler, quality_tags=defaults.quality_tags,
            quality_tags_position=defaults.quality_tags_position),
        negative_presets=presets, default_negative_preset=default_preset)
