"""One decode step for the whole running batch: `(tokens [B], positions [B], mask) -> logits [B, V]`.

The engine calls a `DecodeStep` once per step; `decode_step_for` picks the implementation:

- `LlamaDecodeStep` for Llama-architecture models (SmolLM2, Llama 2/3, TinyLlama, ...): the step
  written out as the few tensor operations it needs. Decoding a small model on a CPU is bound by
  how many operations run, not by arithmetic: transformers' forward runs about 2,400 per step for
  SmolLM2-135M (masks, cache bookkeeping, dispatch layers), each costing microseconds of Python
  and dispatch, against some 8 ms of matrix products. Here a layer is ~30 operations: the fused
  QKV and gate/up projections (`quantize.FusedMember`), one rotary embedding for queries and keys
  together, the key/value write straight into the batch cache, and attention row by row (below).
- `TransformersDecodeStep` for every other architecture: the model's own forward over the same
  cache.

Both compute the same function: tests check each against the model's full forward.

Attention runs one row at a time, over exactly that row's own cache columns. Attending over the
batch's shared span at once also sums a shorter row's leading masked columns, and how a kernel
groups the terms of its sums then depends on the batch's layout: the row's logits change in their
last bits, and with int8 activations such a bit now and then changes a drawn token. With
transformers' batched attention, 7 of the benchmark's 8 seeded requests drew different text
batched than alone; row by row, none does (tested: a row's logits are bit-identical alone and in
a batch). The price: at long contexts with many rows, per-row kernels use the two cores less
well than one batched kernel (see docs/text.md).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from services.text.kv_cache import BatchKVCache
from services.text.quantize import FusedMember


class DecodeStep(Protocol):
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens, positions: int64 [B]; mask: bool [B, 1, 1, width] from `BatchKVCache.prepare_step`.
        Returns the next-token logits [B, vocab]."""


class TransformersDecodeStep:
    def __init__(self, model: nn.Module, cache: BatchKVCache) -> None:
        self.model, self.cache = model, cache

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tokens[:, None], position_ids=positions[:, None], attention_mask=mask,
                         past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1]


def llama_step_unsupported(model: nn.Module) -> str | None:
    """Why `LlamaDecodeStep` cannot run `model` (None when it can)."""
    config = model.config
    if config.model_type != "llama":
        return f"architecture {config.model_type!r} is not llama"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "biased projections"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    for layer in model.model.layers:
        if not (isinstance(layer.self_attn.q_proj, FusedMember) and isinstance(layer.mlp.gate_proj, FusedMember)):
            return "projections not fused (quantize.fuse_projections)"
    return None


class LlamaDecodeStep:
    """See the module docstring. Reads the weights of a loaded (and possibly quantised) transformers
    Llama model; holds no copies of them."""

    def __init__(self, model: nn.Module, cache: BatchKVCache) -> None:
        reason = llama_step_unsupported(model)
        if reason is not None:
            raise ValueError(f"LlamaDecodeStep cannot run this model: {reason}")
        config, inner = model.config, model.model
        self.cache = cache
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden_size = config.hidden_size
        self.eps = config.rms_norm_eps
        self.embedding = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb  # knows the model's RoPE variant and scaling
        self.final_norm = inner.norm.weight
        self.head = model.lm_head
        self.layers = [
            (layer.input_layernorm.weight, layer.self_attn.q_proj.shared.fused, layer.self_attn.o_proj,
             layer.post_attention_layernorm.weight, layer.mlp.gate_proj.shared.fused, layer.mlp.down_proj,
             layer.self_attn.scaling)
            for layer in inner.layers
        ]

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = tokens.shape[0]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        rotated = (heads + kv_heads) * head_dim  # queries and keys lead the fused QKV output
        half = head_dim // 2
        hidden = self.embedding[tokens]
        cos, sin = self.rotary(hidden, positions[:, None])  # [rows, 1, head_dim]
        spans = _row_spans(mask)
        for index, (norm_in, qkv_proj, o_proj, norm_post, gate_up_proj, down_proj, scaling) in enumerate(self.layers):
            qkv = qkv_proj(F.rms_norm(hidden, (self.hidden_size,), norm_in, self.eps))
            qk = qkv[:, :rotated].view(rows, heads + kv_heads, head_dim)
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            keys, values = self.cache.write(index, qk[:, heads:, None], qkv[:, rotated:].view(rows, kv_heads, 1, head_dim))
            attended = _attend_each_row(qk[:, :heads, None], keys, values, mask, spans, scaling)
            hidden = hidden + o_proj(attended.view(rows, heads * head_dim))
            gate, up = gate_up_proj(F.rms_norm(hidden, (self.hidden_size,), norm_post, self.eps)).chunk(2, dim=-1)
            hidden = hidden + down_proj(F.silu(gate) * up)
        return self.head(F.rms_norm(hidden, (self.hidden_size,), self.final_norm, self.eps))


def _row_spans(mask: torch.Tensor) -> list[tuple[int, bool]]:
    """Per row: its first valid column, and whether masked columns (a backtrack's) follow it."""
    flat = mask.view(mask.shape[0], -1)
    firsts = torch.argmax(flat.to(torch.uint8), dim=1).tolist()
    counts = flat.sum(dim=1).tolist()
    return [(first, count != flat.shape[1] - first) for first, count in zip(firsts, counts)]


def _attend_each_row(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                     spans: list[tuple[int, bool]], scaling: float) -> torch.Tensor:
    """queries [rows, heads, 1, head_dim]; keys, values [rows, kv_heads, width, head_dim]. SDPA
    handles grouped-query heads in place (no repeat_kv copies)."""
    return torch.cat([
        F.scaled_dot_product_attention(
            queries[row: row + 1], keys[row: row + 1, :, first:], values[row: row + 1, :, first:],
            attn_mask=mask[row: row + 1, :, :, first:] if holes else None, scale=scaling, enable_gqa=True)
        for row, (first, holes) in enumerate(spans)])


def decode_step_for(model: nn.Module, cache: BatchKVCache) -> DecodeStep:
    if llama_step_unsupported(model) is None:
        return LlamaDecodeStep(model, cache)
    return TransformersDecodeStep(model, cache)
