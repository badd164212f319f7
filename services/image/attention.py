"""The UNet's cross-attention, extended per row of a batch: regional prompting and IP-Adapter.

`GuidedAttnProcessor` replaces diffusers' processor on every cross-attention layer (`attn2`).
Without `guidance` (a call with no characters and no references) it is diffusers'
`AttnProcessor2_0`, so plain generations keep their exact arithmetic. With it:

- **Regions** (several characters): the text context of a row is the base prompt's tokens
  followed by each character's; a boolean mask lets a latent position attend to the base tokens
  everywhere and to a character's tokens only inside that character's region (NovelAI V4's
  character prompts, A1111's regional prompter in attention mode). Outside every region the
  softmax runs over the base tokens alone, which is exactly the base prompt's attention.
- **References** (IP-Adapter): each reference's image tokens get their own attention from the
  same queries, with the adapter's `to_k_ip` / `to_v_ip`, added with the reference's strength
  (diffusers' IPAdapterAttnProcessor2_0 does the same with one scale per adapter; here each
  reference of each row has its own).

Rows of one UNet call may come from different jobs: rows without regions attend everywhere,
rows without references have strength 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0


@dataclass
class AttentionGuidance:
    """What one UNet call's cross-attention layers need beyond the text context.

    `regions`: per job of the call, None (it attends everywhere) or (masks [segments, H, W] at
    latent resolution, tokens per segment): the text context is that many segments of equal
    length, and a position attends to a segment's tokens where its mask is 1. `mask_rows` maps
    each row to its job (None: one job, whose mask is broadcast over its rows rather than
    copied). `ip_tokens`: [rows, references, tokens, dim] projected image embeddings,
    `ip_scales`: [rows, references] (None: no row has references).
    """

    latent_size: tuple[int, int]
    context_tokens: int = 0
    regions: list[tuple[torch.Tensor, int] | None] | None = None
    mask_rows: torch.Tensor | None = None
    ip_tokens: torch.Tensor | None = None
    ip_scales: torch.Tensor | None = None
    _masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def mask_for(self, positions: int) -> torch.Tensor | None:
        """The boolean attention mask [rows or 1, 1, positions, tokens] for a layer with `positions` queries."""
        if self.regions is None:
            return None
        if positions not in self._masks:
            height, width = _layer_size(self.latent_size, positions)
            per_job = []
            for region in self.regions:
                if region is None:
                    per_job.append(torch.ones(positions, self.context_tokens, dtype=torch.bool,
                                              device=self._device()))
                    continue
                masks, segment_tokens = region
                # A cell attends to a character's tokens if it overlaps the region at all, so that
                # a small region keeps at least one cell on the coarsest levels.
                cells = F.interpolate(masks[None].float(), size=(height, width), mode="area")[0] > 0
                per_job.append(cells.flatten(1).transpose(0, 1).repeat_interleave(segment_tokens, dim=1))
            masks = torch.stack(per_job)  # [jobs, positions, tokens]
            if self.mask_rows is not None:
                masks = masks[self.mask_rows]
            self._masks[positions] = masks[:, None]
        return self._masks[positions]

    def _device(self) -> torch.device:
        return next(region[0].device for region in self.regions if region is not None)


def _layer_size(latent_size: tuple[int, int], positions: int) -> tuple[int, int]:
    """A UNet level's (height, width): the latents halved (rounding up) until they hold `positions`."""
    height, width = latent_size
    while height * width > positions:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    if height * width != positions:
        raise ValueError(f"no UNet level of latents {latent_size} has {positions} positions")
    return height, width


# The most bytes of attention weights one masked attention call may hold (a masked call cannot use
# the fused kernels on every device, and characters multiply the context's length): beyond it the
# queries are taken in slices, which gives the same result.
MASKED_ATTENTION_BYTES = 256 * 1024 * 1024


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    batch, heads, positions, _ = query.shape
    per_query = batch * heads * key.shape[2] * 4
    step = max(1, MASKED_ATTENTION_BYTES // per_query)
    if step >= positions:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return torch.cat([F.scaled_dot_product_attention(query[:, :, i:i + step], key, value,
                                                     attn_mask=mask[:, :, i:i + step], dropout_p=0.0, is_causal=False)
                      for i in range(0, positions, step)], dim=2)


class GuidedAttnProcessor(AttnProcessor2_0):
    """Cross-attention with per-row region masks and IP-Adapter references (module docstring)."""

    def __init__(self, to_k_ip: torch.nn.Module | None = None, to_v_ip: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 guidance: AttentionGuidance | None = None, *args, **kwargs):
        if guidance is None or encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, positions, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads

        def heads(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query = heads(query)
        mask = guidance.mask_for(positions)
        out = _attend(query, heads(key), heads(value), mask)
        if guidance.ip_tokens is not None and self.to_k_ip is not None:
            tokens = guidance.ip_tokens.to(query.dtype)
            for index in range(tokens.shape[1]):
                scale = guidance.ip_scales[:, index].to(query.dtype)
                if not bool((scale != 0).any()):
                    continue
                ip_key, ip_value = heads(self.to_k_ip(tokens[:, index])), heads(self.to_v_ip(tokens[:, index]))
                ip_out = F.scaled_dot_product_attention(query, ip_key, ip_value, dropout_p=0.0, is_causal=False)
                out = out + scale.view(-1, 1, 1, 1) * ip_out
        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class PassThroughProcessor:
    """Self-attention layers receive the same `guidance` keyword; they have no use for it."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 guidance: AttentionGuidance | None = None, *args, **kwargs):
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def plain_processors(unet: torch.nn.Module) -> dict:
    """The UNet's processors without this module's (as they were before `install`)."""
    processors = {}
    for name, current in unet.attn_processors.items():
        if isinstance(current, PassThroughProcessor):
            current = current.inner
        elif isinstance(current, GuidedAttnProcessor):
            current = AttnProcessor2_0()
        processors[name] = current
    return processors


def install(unet: torch.nn.Module, ip_layers: dict[str, tuple[torch.nn.Module, torch.nn.Module]] | None = None
            ) -> None:
    """Put a GuidedAttnProcessor on every cross-attention layer of `unet` (with its IP-Adapter
    projections when `ip_layers`, processor name → (to_k_ip, to_v_ip), has them)."""
    ip_layers = ip_layers or {}
    processors = {}
    for name, current in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            processors[name] = GuidedAttnProcessor(*ip_layers.get(name, (None, None)))
        else:
            processors[name] = current if isinstance(current, PassThroughProcessor) else PassThroughProcessor(current)
    unet.set_attn_processor(processors)
