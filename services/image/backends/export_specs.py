"""What each network is for export: its inputs and outputs, dynamic axes and shape profiles.

One spec per network (as NVIDIA's demo/Diffusion has one `model/*.py` per network): the CLIP
text encoder(s), the UNet, the VAE decoder and encoder. A spec knows how to wrap the PyTorch
module so that it takes positional tensors (what ONNX and TensorRT see), what a sample input
looks like, and the (min, opt, max) shape of every input for a `Profile` of batch and image
sizes. It knows nothing of TensorRT's API (tensorrt/engine.py) or of where files go
(tensorrt/paths.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from services.image.models import LoadedModel

TOKENS = 77
Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]


@dataclass(frozen=True)
class Profile:
    """Batch (images per call) and image side (pixels) ranges an engine is optimised for."""

    min_batch: int
    max_batch: int
    min_size: int
    max_size: int
    max_chunks: int = 4

    _PATTERN = re.compile(r"^\s*(\d+)-(\d+)\s*x\s*(\d+)-(\d+)\s*$")

    @classmethod
    def parse(cls, text: str, max_chunks: int = 4) -> Profile:
        """'1-4x512-1024': 1 to 4 images of 512 to 1024 pixels a side."""
        match = cls._PATTERN.match(text)
        if match is None:
            raise ValueError(f"engine profile {text!r} is not 'minbatch-maxbatch x minsize-maxsize', e.g. 1-4x512-1024")
        profile = cls(*(int(group) for group in match.groups()), max_chunks=max_chunks)
        if not (1 <= profile.min_batch <= profile.max_batch):
            raise ValueError(f"engine profile {text!r}: batch range must be 1 <= min <= max")
        if not (64 <= profile.min_size <= profile.max_size) or profile.min_size % 64 or profile.max_size % 64:
            raise ValueError(f"engine profile {text!r}: sizes must be multiples of 64 with 64 <= min <= max")
        return profile

    @property
    def opt_batch(self) -> int:
        return (self.min_batch + self.max_batch + 1) // 2

    @property
    def opt_size(self) -> int:
        return ((self.min_size + self.max_size) // 2) // 64 * 64

    @property
    def key(self) -> str:
        return f"b{self.min_batch}-{self.max_batch}_s{self.min_size}-{self.max_size}_c{self.max_chunks}"

    def covers(self, images: int, height: int, width: int, chunks: int) -> bool:
        return (self.min_batch <= images <= self.max_batch and chunks <= self.max_chunks
                and all(self.min_size <= side <= self.max_size for side in (height, width)))


class NetworkSpec(ABC):
    """What exporting one network (CLIP, UNet, VAE decoder) needs; one subclass per network."""

    name: str

    @abstractmethod
    def inputs(self, model: LoadedModel) -> list[str]:
        ...

    @abstractmethod
    def outputs(self, model: LoadedModel) -> list[str]:
        ...

    @abstractmethod
    def axes(self, model: LoadedModel) -> dict[str, dict[int, str]]:
        """Dynamic axes of every input and output (ONNX export)."""
        ...

    def applies(self, model: LoadedModel) -> bool:
        return True

    @abstractmethod
    def module(self, model: LoadedModel) -> torch.nn.Module:
        ...

    @abstractmethod
    def sample_inputs(self, model: LoadedModel, batch: int, height: int, width: int, chunks: int,
                      device: torch.device) -> tuple[torch.Tensor, ...]:
        ...

    @abstractmethod
    def shapes(self, model: LoadedModel, profile: Profile) -> dict[str, ShapeRange]:
        """(min, opt, max) of every input for the profile."""
        ...


def _latent_range(model: LoadedModel, profile: Profile) -> tuple[int, int, int]:
    factor = model.vae_scale_factor
    return profile.min_size // factor, profile.opt_size // factor, profile.max_size // factor


class _TextEncoder(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, family: str, pooled: bool) -> None:
        super().__init__()
        self.encoder, self.family, self.pooled = encoder, family, pooled

    def forward(self, input_ids: torch.Tensor):
        ids = input_ids.long()
        if self.family == "sd1":
            return self.encoder(ids)[0]
        output = self.encoder(ids, output_hidden_states=True)
        if self.pooled:
            return output.hidden_states[-2], output[0]
        return output.hidden_states[-2]


@dataclass
class ClipSpec(NetworkSpec):
    """Text encoder `index` (SDXL has two; the second also gives the pooled embedding)."""

    index: int = 0

    def __post_init__(self) -> None:
        self.name = "clip" if self.index == 0 else f"clip{self.index + 1}"

    def inputs(self, model: LoadedModel) -> list[str]:
        return ["input_ids"]

    def _pooled(self, model: LoadedModel) -> bool:
        return model.family == "sdxl" and self.index == len(model.text_encoders) - 1

    def applies(self, model: LoadedModel) -> bool:
        return self.index < len(model.text_encoders)

    def outputs(self, model: LoadedModel) -> list[str]:
        return ["hidden_states", "text_embeds"] if self._pooled(model) else ["hidden_states"]

    def axes(self, model: LoadedModel) -> dict[str, dict[int, str]]:
        return {name: {0: "B"} for name in ["input_ids", *self.outputs(model)]}

    def module(self, model: LoadedModel) -> torch.nn.Module:
        return _TextEncoder(model.text_encoders[self.index], model.family, self._pooled(model)).eval()

    def sample_inputs(self, model, batch, height, width, chunks, device):
        return (torch.full((batch, TOKENS), model.tokenizers[self.index].eos_token_id, dtype=torch.int32,
                           device=device),)

    def shapes(self, model, profile):
        # One row per chunk of one prompt.
        return {"input_ids": ((1, TOKENS), (1, TOKENS), (profile.max_chunks, TOKENS))}


class _UNet(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module, xl: bool) -> None:
        super().__init__()
        self.unet, self.xl = unet, xl

    def forward(self, sample, timestep, encoder_hidden_states, *added):
        extra = {"text_embeds": added[0], "time_ids": added[1]} if self.xl else None
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=extra,
                         return_dict=False)[0]


class UNetSpec(NetworkSpec):
    name = "unet"

    def inputs(self, model: LoadedModel) -> list[str]:
        names = ["sample", "timestep", "encoder_hidden_states"]
        return names + (["text_embeds", "time_ids"] if model.family == "sdxl" else [])

    def outputs(self, model: LoadedModel) -> list[str]:
        return ["latent"]

    def axes(self, model: LoadedModel) -> dict[str, dict[int, str]]:
        axes = {"sample": {0: "2B", 2: "H", 3: "W"}, "timestep": {0: "2B"}, "encoder_hidden_states": {0: "2B", 1: "S"},
                "latent": {0: "2B", 2: "H", 3: "W"}}
        if model.family == "sdxl":
            axes.update(text_embeds={0: "2B"}, time_ids={0: "2B"})
        return axes

    def module(self, model):
        return _UNet(model.unet, model.family == "sdxl").eval()

    def sample_inputs(self, model, batch, height, width, chunks, device):
        factor, unet = model.vae_scale_factor, model.unet
        dtype = unet.dtype
        inputs = [torch.randn(batch, unet.config.in_channels, height // factor, width // factor, dtype=dtype,
                              device=device),
                  torch.full((batch,), 500.0, dtype=torch.float32, device=device),
                  torch.randn(batch, TOKENS * chunks, unet.config.cross_attention_dim, dtype=dtype, device=device)]
        if model.family == "sdxl":
            pooled = model.text_encoders[-1].config.projection_dim
            inputs += [torch.randn(batch, pooled, dtype=dtype, device=device),
                       torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch, dtype=dtype, device=device)]
        return tuple(inputs)

    def shapes(self, model, profile):
        low, opt, high = _latent_range(model, profile)
        channels = model.unet.config.in_channels
        # Rows: one per image without guidance, two (unconditional and conditional) with it.
        b_min, b_opt, b_max = profile.min_batch, 2 * profile.opt_batch, 2 * profile.max_batch
        dim = model.unet.config.cross_attention_dim
        shapes = {
            "sample": ((b_min, channels, low, low), (b_opt, channels, opt, opt), (b_max, channels, high, high)),
            "timestep": ((b_min,), (b_opt,), (b_max,)),
            "encoder_hidden_states": ((b_min, TOKENS, dim), (b_opt, TOKENS, dim),
                                      (b_max, TOKENS * profile.max_chunks, dim)),
        }
        if model.family == "sdxl":
            pooled = model.text_encoders[-1].config.projection_dim
            shapes["text_embeds"] = ((b_min, pooled), (b_opt, pooled), (b_max, pooled))
            shapes["time_ids"] = ((b_min, 6), (b_opt, 6), (b_max, 6))
        return shapes


class _VaeDecoder(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


class _VaeEncoder(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images):
        return self.vae.encode(images).latent_dist.mode()


class VaeDecoderSpec(NetworkSpec):
    name = "vae_decoder"

    def inputs(self, model):
        return ["latent"]

    def outputs(self, model):
        return ["images"]

    def axes(self, model):
        return {"latent": {0: "B", 2: "H", 3: "W"}, "images": {0: "B", 2: "8H", 3: "8W"}}

    def module(self, model):
        return _VaeDecoder(model.vae).eval()

    def sample_inputs(self, model, batch, height, width, chunks, device):
        factor = model.vae_scale_factor
        return (torch.randn(batch, model.vae.config.latent_channels, height // factor, width // factor,
                            dtype=model.vae.dtype, device=device),)

    def shapes(self, model, profile):
        low, opt, high = _latent_range(model, profile)
        c = model.vae.config.latent_channels
        return {"latent": ((profile.min_batch, c, low, low), (profile.opt_batch, c, opt, opt),
                           (profile.max_batch, c, high, high))}


class VaeEncoderSpec(NetworkSpec):
    name = "vae_encoder"

    def inputs(self, model):
        return ["images"]

    def outputs(self, model):
        return ["latent"]

    def axes(self, model):
        return {"images": {0: "B", 2: "8H", 3: "8W"}, "latent": {0: "B", 2: "H", 3: "W"}}

    def module(self, model):
        return _VaeEncoder(model.vae).eval()

    def sample_inputs(self, model, batch, height, width, chunks, device):
        return (torch.rand(batch, 3, height, width, dtype=model.vae.dtype, device=device) * 2 - 1,)

    def shapes(self, model, profile):
        # The VAE encodes one input image per request (img2img, inpainting).
        return {"images": ((1, 3, profile.min_size, profile.min_size), (1, 3, profile.opt_size, profile.opt_size),
                           (1, 3, profile.max_size, profile.max_size))}


# The networks of a model, by name (the second CLIP applies to SDXL only).
NETWORKS: dict[str, NetworkSpec] = {spec.name: spec for spec in (
    ClipSpec(index=0), ClipSpec(index=1), UNetSpec(), VaeDecoderSpec(), VaeEncoderSpec())}


def networks_for(model: LoadedModel) -> list[NetworkSpec]:
    return [spec for spec in NETWORKS.values() if spec.applies(model)]


# --- the guidance networks (ControlNet, IP-Adapter's image encoder) ---
# They are loaded beside a model (services/image/guidance.py), so their specs carry the network.


class _ControlNet(torch.nn.Module):
    def __init__(self, network: torch.nn.Module, xl: bool) -> None:
        super().__init__()
        self.network, self.xl = network, xl

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *added):
        extra = {"text_embeds": added[0], "time_ids": added[1]} if self.xl else None
        # The conditioning scale is applied to the residuals by the caller (it is a plain product).
        down, mid = self.network(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                 controlnet_cond=controlnet_cond, conditioning_scale=1.0, added_cond_kwargs=extra,
                                 return_dict=False)
        return (*down, mid)


@dataclass
class ControlNetSpec(NetworkSpec):
    """A ControlNet of a model: the UNet's inputs plus the control image; the down-block
    residuals and the mid-block residual out."""

    network: torch.nn.Module | None = None
    name: str = "controlnet"

    def _down_count(self) -> int:
        return len(self.network.controlnet_down_blocks)

    def inputs(self, model):
        names = ["sample", "timestep", "encoder_hidden_states", "controlnet_cond"]
        return names + (["text_embeds", "time_ids"] if model.family == "sdxl" else [])

    def outputs(self, model):
        return [f"down_{i}" for i in range(self._down_count())] + ["mid"]

    def axes(self, model):
        axes = {"sample": {0: "2B", 2: "H", 3: "W"}, "timestep": {0: "2B"}, "encoder_hidden_states": {0: "2B", 1: "S"},
                "controlnet_cond": {0: "2B", 2: "8H", 3: "8W"}}
        for name in self.outputs(model):
            axes[name] = {0: "2B", 2: f"{name}_H", 3: f"{name}_W"}
        if model.family == "sdxl":
            axes.update(text_embeds={0: "2B"}, time_ids={0: "2B"})
        return axes

    def module(self, model):
        return _ControlNet(self.network, model.family == "sdxl").eval()

    def sample_inputs(self, model, batch, height, width, chunks, device):
        unet_inputs = list(UNetSpec().sample_inputs(model, batch, height, width, chunks, device))
        unet_inputs[0] = unet_inputs[0][:, :self.network.config.in_channels]
        control = torch.rand(batch, 3, height, width, dtype=model.unet.dtype, device=device)
        return (*unet_inputs[:3], control, *unet_inputs[3:])

    def shapes(self, model, profile):
        shapes = UNetSpec().shapes(model, profile)
        channels = self.network.config.in_channels
        shapes["sample"] = tuple((s[0], channels, *s[2:]) for s in shapes["sample"])
        shapes["controlnet_cond"] = tuple((s[0], 3, s[2] * model.vae_scale_factor, s[3] * model.vae_scale_factor)
                                          for s in shapes["sample"])
        return dict(shapes)


class _ImageEncoder(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values):
        output = self.encoder(pixel_values, output_hidden_states=True)
        return output.image_embeds, output.hidden_states[-2]


@dataclass
class ImageEncoderSpec(NetworkSpec):
    """IP-Adapter's CLIP vision encoder: image embeddings (IP-Adapter) and the penultimate hidden
    states (IP-Adapter Plus) of preprocessed reference images."""

    encoder: torch.nn.Module | None = None
    name: str = "image_encoder"

    def inputs(self, model):
        return ["pixel_values"]

    def outputs(self, model):
        return ["image_embeds", "hidden_states"]

    def axes(self, model):
        return {"pixel_values": {0: "R"}, "image_embeds": {0: "R"}, "hidden_states": {0: "R"}}

    def module(self, model):
        return _ImageEncoder(self.encoder).eval()

    def sample_inputs(self, model, batch, height, width, chunks, device):
        side = self.encoder.config.image_size
        return (torch.randn(batch, 3, side, side, dtype=self.encoder.dtype, device=device),)

    def shapes(self, model, profile):
        # One row per reference image of a request (max_references).
        side = self.encoder.config.image_size
        return {"pixel_values": ((1, 3, side, side), (1, 3, side, side), (16, 3, side, side))}
