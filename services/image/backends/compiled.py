"""torch.compile of the UNet (and the VAE decoder): on a GPU with CUDA graphs for static shapes.

"reduce-overhead" captures a CUDA graph per input shape, which removes the per-kernel launch
cost that dominates small batches; shapes are kept static (`dynamic=False`) so each shape gets a
graph, and the recompile limit is raised so that a handful of sizes do not fall back to eager.
On a CPU the same code compiles with Inductor's C++ backend (no graphs); "auto" only picks this
back end on a GPU, where it pays for its compile time.
"""

from __future__ import annotations

import logging

import torch

from services.image.backends.base import register_backend
from services.image.backends.eager import EagerBackend

log = logging.getLogger(__name__)

# Distinct (batch, size, prompt length) shapes each compile once; beyond this torch runs eagerly.
RECOMPILE_LIMIT = 64


@register_backend
class CompiledBackend(EagerBackend):
    name = "compiled"
    auto_priority = 10

    def __init__(self, model, settings, device) -> None:
        super().__init__(model, settings, device)
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        self._compiled_unet = torch.compile(model.unet, mode=mode, dynamic=False, fullgraph=False)
        self._compiled_decoder = torch.compile(model.vae.decode, mode=mode, dynamic=False)

    @classmethod
    def unavailable_reason(cls, model, settings, device) -> str | None:
        if settings.backend == "auto" and device.type != "cuda":
            return "picked automatically only on a GPU (on a CPU compiling costs more than it saves)"
        return None

    def _unet(self) -> torch.nn.Module:
        return self._compiled_unet

    @torch.inference_mode()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self._vae_dtype() != self.model.vae.dtype:
            return super().vae_decode(latents)
        return self._compiled_decoder(latents.to(self.model.vae.dtype), return_dict=False)[0]
