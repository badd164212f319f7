"""The back-end interface and its registry."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from services.image.models import LoadedModel
    from services.image.settings import ImageSettings

log = logging.getLogger(__name__)


@dataclass
class UNetExtras:
    """What a UNet call carries beyond the text context: ControlNet residuals added to the skip
    connections, and what the cross-attention processors read (`cross_attention_kwargs`, e.g.
    regional masks and reference images, services/image/attention.py)."""

    down_residuals: list[torch.Tensor] | None = None
    mid_residual: torch.Tensor | None = None
    cross_attention_kwargs: dict[str, Any] | None = None


class BackendUnavailable(RuntimeError):
    """This back end cannot run here (no GPU, TensorRT not installed, no built engines); says why."""


class Backend(ABC):
    """Runs one model's networks. Tensors go in and come out on the back end's device."""

    name: ClassVar[str]
    # Tried in this order by backend="auto" (highest first).
    auto_priority: ClassVar[int] = 0

    def __init__(self, model: LoadedModel, settings: ImageSettings, device: torch.device) -> None:
        self.model = model
        self.settings = settings
        self.device = device

    @classmethod
    def unavailable_reason(cls, model: LoadedModel, settings: ImageSettings, device: torch.device) -> str | None:
        """None if this back end can run the model here; otherwise why not."""
        return None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.unet.dtype

    @abstractmethod
    def encode_text(self, index: int, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text encoder `index` on [batch, 77] ids: (hidden states, pooled or None)."""

    # Whether `unet` takes UNetExtras (controls, characters, references); engines with a fixed
    # graph do not.
    supports_extras: ClassVar[bool] = True

    @abstractmethod
    def unet(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
             added_cond_kwargs: dict[str, torch.Tensor] | None, extras: UNetExtras | None = None) -> torch.Tensor:
        """The noise (or v) prediction."""

    @abstractmethod
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (already divided by the VAE's scaling factor) to images in [-1, 1]."""

    @abstractmethod
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to unscaled latents (the latent distribution's mean)."""

    def check_shape(self, images: int, height: int, width: int, chunks: int) -> str | None:
        """None if a request of this shape can run; otherwise why not (back ends with fixed
        profiles refuse shapes outside them before any work starts)."""
        return None

    @property
    def max_batch_images(self) -> int | None:
        """The most images one UNet call may carry (None: no limit of the back end's own)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device)}


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    BACKENDS[cls.name] = cls
    return cls


def create_backend(model: LoadedModel, settings: ImageSettings, device: torch.device) -> Backend:
    """The configured back end, or with backend="auto" the best one that can run here.

    A back end named explicitly that cannot run is an error at start-up (with its reason); "auto"
    falls back, logging why each better back end was passed over.
    """
    if settings.backend != "auto":
        cls = BACKENDS[settings.backend]
        reason = cls.unavailable_reason(model, settings, device)
        if reason is not None:
            raise BackendUnavailable(f"backend {settings.backend!r} cannot run model {model.name}: {reason}")
        return cls(model, settings, device)
    for cls in sorted(BACKENDS.values(), key=lambda c: -c.auto_priority):
        reason = cls.unavailable_reason(model, settings, device)
        if reason is None:
            log.info("model %s: backend %s", model.name, cls.name)
            return cls(model, settings, device)
        log.info("model %s: backend %s passed over: %s", model.name, cls.name, reason)
    raise BackendUnavailable(f"no backend can run model {model.name}")
