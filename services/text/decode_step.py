"""One decode step for the whole running batch: `(tokens [B], positions [B], mask) -> logits [B, V]`.

The scheduler calls a `DecodeStep` once per step; `decode_step_for` picks the implementation:

- `LlamaDecodeStep` for Llama-architecture models (SmolLM2, Llama 2/3, TinyLlama, ...): the step
  written out as the few tensor operations it needs. Decoding a small model on a CPU is bound by
  how many operations run, not by arithmetic: transformers' forward runs thousands of small
  operators per step (masks, cache bookkeeping, dispatch layers), and their Python and dispatch
  overhead adds up to as much as the matrix products. Here a layer is a few dozen operations: the
  fused QKV and gate/up projections (`quantize.FusedMember`), one rotary embedding for queries and
  keys together, the key/value write straight into the batch cache, and attention row by row
  (below). The layers are compiled with TorchScript, whose interpreter runs them without the Python
  interpreter between operations (`python -m bench text_step` compares the three; figures in
  docs/text.md). torch.compile, the supported successor, is slower for this step (docs/text.md);
  if scripting fails the same code runs eagerly.
- `TransformersDecodeStep` for every other architecture: the model's own forward over the same
  cache.

Both compute the same function: tests check each against the model's full forward.

Attention runs one row at a time, over exactly that row's own cache columns. Attending over the
batch's shared span at once also sums a shorter row's leading masked columns, and how a kernel
groups the terms of its sums then depends on the batch's layout: the row's logits change in their
last bits, and with int8 activations such a bit now and then changes a drawn token, so seeded
requests would draw different text batched than alone. Row by row they do not (tested: a row's
logits are bit-identical alone and in a batch). The price: at long contexts with many rows,
per-row kernels use the cores less well than one batched kernel (see docs/text.md).
"""

from __future__ import annotations

import logging
import warnings
from typing import List, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from services.text.kv_cache import BatchKVCache
from services.text.quantize import FusedMember

log = logging.getLogger(__name__)


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
    Llama model; holds no copies of them. `script=False` runs the layers eagerly (tests compare the
    two)."""

    def __init__(self, model: nn.Module, cache: BatchKVCache, script: bool = True) -> None:
        reason = llama_step_unsupported(model)
        if reason is not None:
            raise ValueError(f"LlamaDecodeStep cannot run this model: {reason}")
        inner = model.model
        self.cache = cache
        self.embedding = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb  # knows the model's RoPE variant and scaling
        layers = _LlamaLayers(model)
        self.scripted = False
        if script:
            try:
                with warnings.catch_warnings():
                    # torch.jit is deprecated in favour of torch.compile, which is slower for this
                    # step on CPUs (docs/text.md); torch is pinned, and eager is the fallback.
                    warnings.simplefilter("ignore", FutureWarning)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    layers = torch.jit.script(layers)
                self.scripted = True
            except Exception as error:  # noqa: BLE001 - any failure leaves the eager step, which is correct
                log.warning("decode step runs eagerly: TorchScript could not compile it (%s)", error)
        self.layers = layers

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding[tokens]
        cos, sin = self.rotary(hidden, positions[:, None])  # [rows, 1, head_dim]
        cache = self.cache
        firsts, holes = _row_spans(mask, cache.start)
        return self.layers(hidden, cos, sin, cache.keys_buf, cache.values_buf, cache.start, cache.end, mask,
                           firsts, holes)


class _LlamaLayer(nn.Module):
    """One decoder layer's weights (shared with the model, not copied)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.norm_in = layer.input_layernorm.weight
        self.qkv_proj = layer.self_attn.q_proj.shared.fused
        self.o_proj = layer.self_attn.o_proj
        self.norm_post = layer.post_attention_layernorm.weight
        self.gate_up_proj = layer.mlp.gate_proj.shared.fused
        self.down_proj = layer.mlp.down_proj
        self.scaling = float(layer.self_attn.scaling)


class _LlamaLayers(nn.Module):
    """Every decoder layer, the final norm and the output head, written in the subset of Python
    TorchScript compiles (typed arguments; tensors, ints and lists only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden_size = config.hidden_size
        self.eps = float(config.rms_norm_eps)
        self.layers = nn.ModuleList([_LlamaLayer(layer) for layer in model.model.layers])
        self.final_norm = model.model.norm.weight
        self.head = model.lm_head

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys_buf: List[torch.Tensor],
                values_buf: List[torch.Tensor], start: int, end: int, mask: torch.Tensor, firsts: List[int],
                holes: List[bool]) -> torch.Tensor:
        """keys_buf/values_buf: `BatchKVCache`'s per-layer buffers, valid in columns [start, end);
        this step writes column `end` and attends up to it; mask covers [start, end]; firsts and
        holes: see `_row_spans`."""
        rows = hidden.shape[0]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        rotated = (heads + kv_heads) * head_dim  # queries and keys lead the fused QKV output
        half = head_dim // 2
        normalized_shape = [self.hidden_size]
        index = 0
        for layer in self.layers:
            qkv = layer.qkv_proj(F.rms_norm(hidden, normalized_shape, layer.norm_in, self.eps))
            qk = qkv[:, :rotated].view(rows, heads + kv_heads, head_dim)
            qk = qk * cos + torch.cat((-qk[:, :, half:], qk[:, :, :half]), dim=-1) * sin
            # The cache write of `BatchKVCache.write`: column `end` of every running row.
            keys, values = keys_buf[index], values_buf[index]
            keys[:rows, :, end] = qk[:, heads:]
            values[:rows, :, end] = qkv[:, rotated:].view(rows, kv_heads, head_dim)
            attended = _attend_each_row(qk[:, :heads, None], keys, values, mask, start, end, firsts, holes,
                                        layer.scaling)
            hidden = hidden + layer.o_proj(attended.view(rows, heads * head_dim))
            gate, up = layer.gate_up_proj(F.rms_norm(hidden, normalized_shape, layer.norm_post, self.eps)).chunk(2, dim=-1)
            hidden = hidden + layer.down_proj(F.silu(gate) * up)
            index += 1
        return self.head(F.rms_norm(hidden, normalized_shape, self.final_norm, self.eps))


def _row_spans(mask: torch.Tensor, start: int) -> tuple[list[int], list[bool]]:
    """Per row of the step's mask [rows, 1, 1, width] (whose first column is buffer column
    `start`): its first valid buffer column, and whether masked columns (a backtrack's) follow it."""
    flat = mask.view(mask.shape[0], -1)
    firsts = torch.argmax(flat.to(torch.uint8), dim=1).tolist()
    counts = flat.sum(dim=1).tolist()
    return [start + first for first in firsts], [count != flat.shape[1] - first for first, count in zip(firsts, counts)]


def _attend_each_row(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                     start: int, end: int, firsts: List[int], holes: List[bool], scaling: float) -> torch.Tensor:
    """queries [rows, heads, 1, head_dim]; keys, values: a layer's cache buffers
    [max_rows, kv_heads, capacity, head_dim], row r valid in columns [firsts[r], end]. SDPA handles
    grouped-query heads in place (no repeat_kv copies)."""
    outputs: List[torch.Tensor] = []
    for row in range(queries.shape[0]):
        first = firsts[row]
        row_mask: Optional[torch.Tensor] = None
        if holes[row]:
            row_mask = mask[row: row + 1, :, :, first - start:]
        outputs.append(F.scaled_dot_product_attention(
            queries[row: row + 1], keys[row: row + 1, :, first: end + 1], values[row: row + 1, :, first: end + 1],
            attn_mask=row_mask, scale=scaling, enable_gqa=True))
    return torch.cat(outputs)


def decode_step_for(model: nn.Module, cache: BatchKVCache) -> DecodeStep:
    if llama_step_unsupported(model) is None:
        return LlamaDecodeStep(model, cache)
    return TransformersDecodeStep(model, cache)
