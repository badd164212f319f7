"""The `tensorrt` back end: the model's networks as prebuilt TensorRT engines (GPU only).

Engines are built ahead of time by `make engines` (build_all.py beside this file) and only
loaded here: a missing engine makes this back end unavailable (backend="auto" then falls back to
compiled/eager, logging why), never a build on a user's request. One engine per network and
configured profile; each call runs on the engine whose profile covers its shape, and shapes no
profile covers are refused at validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from services.image.backends.base import Backend, register_backend
from services.image.backends.export_specs import NetworkSpec, Profile, networks_for
from services.image.backends.tensorrt.paths import EngineKey, engine_path


@dataclass
class PlannedEngine:
    spec: NetworkSpec
    profile: Profile
    key: EngineKey
    path: Path


def profiles(settings) -> list[Profile]:
    return [Profile.parse(text, settings.max_prompt_chunks) for text in settings.engine_profiles]


def precision(settings) -> str:
    return "fp32" if settings.dtype == "float32" else "fp16"


def plan_engines(model, settings, compute_capability: tuple[int, int], trt_version: str) -> list[PlannedEngine]:
    """Every engine the model needs under the settings, with its cache key and path."""
    planned = []
    for spec in networks_for(model):
        for profile in profiles(settings):
            key = EngineKey(model.hash, spec.name, profile, precision(settings), compute_capability, trt_version)
            planned.append(PlannedEngine(spec, profile, key, engine_path(settings.engines_path, model.name, key)))
    return planned


@register_backend
class TensorRTBackend(Backend):
    name = "tensorrt"
    auto_priority = 20
    # Its engines are the plain UNet graph: no ControlNet residuals, no masked or extra attention.
    supports_extras = False

    @classmethod
    def unavailable_reason(cls, model, settings, device) -> str | None:
        if device.type != "cuda":
            return "TensorRT needs a CUDA GPU"
        try:
            from services.image.backends.tensorrt.engine import tensorrt_version

            version = tensorrt_version()
        except ImportError as error:
            return str(error)
        missing = [p.path for p in plan_engines(model, settings, torch.cuda.get_device_capability(device), version)
                   if not p.path.is_file()]
        if missing:
            return f"{len(missing)} engine(s) not built, e.g. {missing[0]}; build them with `make engines`"
        return None

    def __init__(self, model, settings, device) -> None:
        super().__init__(model, settings, device)
        from services.image.backends.tensorrt.engine import TrtEngine, tensorrt_version

        self._engines: dict[str, list[tuple[Profile, TrtEngine]]] = {}
        for planned in plan_engines(model, settings, torch.cuda.get_device_capability(device), tensorrt_version()):
            engine = TrtEngine(planned.path)
            engine.load()
            engine.activate()
            self._engines.setdefault(planned.spec.name, []).append((planned.profile, engine))
        self._stream = torch.cuda.Stream(device)

    def _pick(self, network: str, images: int, height: int, width: int, chunks: int):
        for profile, engine in self._engines[network]:
            if profile.covers(images, height, width, chunks):
                return engine
        raise RuntimeError(f"no {network} engine covers {images} image(s) of {width}x{height}; "
                           "check_shape should have refused this request")

    def check_shape(self, images: int, height: int, width: int, chunks: int) -> str | None:
        if any(profile.covers(images, height, width, chunks) for profile, _ in self._engines["unet"]):
            return None
        ranges = ", ".join(f"{p.min_batch}-{p.max_batch} images of {p.min_size}-{p.max_size}px, "
                           f"{p.max_chunks} chunks" for p, _ in self._engines["unet"])
        return f"the TensorRT engines of this model cover only {ranges}"

    @property
    def max_batch_images(self) -> int | None:
        return max(profile.max_batch for profile, _ in self._engines["unet"])

    def encode_text(self, index, input_ids):
        network = "clip" if index == 0 else f"clip{index + 1}"
        # Text encoders take one prompt's chunks; any image profile does.
        engine = self._engines[network][0][1]
        out = engine.infer({"input_ids": input_ids.to(self.device, torch.int32)}, self._stream)
        hidden = out["hidden_states"].to(self.dtype)
        return hidden, out.get("text_embeds")

    def unet(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, extras=None):
        if extras is not None:
            raise RuntimeError("the tensorrt back end runs no controls, characters or references "
                               "(pipeline.check_shape refuses such requests first)")
        rows = sample.shape[0]
        factor = self.model.vae_scale_factor
        images = max(1, rows // 2)
        engine = self._pick("unet", images, sample.shape[2] * factor, sample.shape[3] * factor,
                            encoder_hidden_states.shape[1] // 77)
        timestep = torch.as_tensor(timestep, device=self.device, dtype=torch.float32).reshape(-1).expand(rows)
        feed = {"sample": sample, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states}
        if added_cond_kwargs:
            feed.update(text_embeds=added_cond_kwargs["text_embeds"], time_ids=added_cond_kwargs["time_ids"])
        return engine.infer(feed, self._stream)["latent"].to(sample.dtype)

    def vae_decode(self, latents):
        factor = self.model.vae_scale_factor
        engine = self._pick("vae_decoder", latents.shape[0], latents.shape[2] * factor, latents.shape[3] * factor, 1)
        return engine.infer({"latent": latents}, self._stream)["images"]

    def vae_encode(self, images):
        engine = self._pick("vae_encoder", 1, images.shape[2], images.shape[3], 1)
        return engine.infer({"images": images}, self._stream)["latent"].to(self.dtype)
