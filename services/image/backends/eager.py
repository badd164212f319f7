"""The PyTorch modules as they are: works everywhere, the reference the others are compared to."""

from __future__ import annotations

import torch

from services.image.backends.base import Backend, register_backend


@register_backend
class EagerBackend(Backend):
    name = "eager"
    auto_priority = 0

    def _text_encoder(self, index: int) -> torch.nn.Module:
        return self.model.text_encoders[index]

    def _unet(self) -> torch.nn.Module:
        return self.model.unet

    @torch.inference_mode()
    def encode_text(self, index: int, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        encoder = self._text_encoder(index)
        ids = input_ids.to(self.device)
        if self.model.family == "sd1":
            # As diffusers' StableDiffusionPipeline.encode_prompt (no clip skip): the last layer.
            return encoder(ids)[0].to(self.dtype), None
        # SDXL: the penultimate layer of each encoder; the pooled projection of the second.
        output = encoder(ids, output_hidden_states=True)
        pooled = output[0] if index == len(self.model.text_encoders) - 1 else None
        return output.hidden_states[-2].to(self.dtype), pooled

    @torch.inference_mode()
    def unet(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, extras=None):
        if extras is None:
            return self._unet()(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=None,
                                cross_attention_kwargs=None, added_cond_kwargs=added_cond_kwargs,
                                return_dict=False)[0]
        return self._unet()(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=None,
                            cross_attention_kwargs=extras.cross_attention_kwargs,
                            added_cond_kwargs=added_cond_kwargs,
                            down_block_additional_residuals=extras.down_residuals,
                            mid_block_additional_residual=extras.mid_residual, return_dict=False)[0]

    def _vae_dtype(self) -> torch.dtype:
        vae = self.model.vae
        # SDXL's VAE overflows in float16 (config.force_upcast): decode it in float32.
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            return torch.float32
        return vae.dtype

    @torch.inference_mode()
    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        dtype = self._vae_dtype()
        if dtype != vae.dtype:
            vae.to(dtype)
        return vae.decode(latents.to(dtype), return_dict=False)[0]

    @torch.inference_mode()
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        dtype = self._vae_dtype()
        if dtype != vae.dtype:
            vae.to(dtype)
        return vae.encode(images.to(self.device, dtype)).latent_dist.mode().to(self.dtype)
