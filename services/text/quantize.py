"""Int8 and int4 linear layers for CPUs, chosen from a registry (`MODES`).

Decoding a small model on a CPU is bound by reading weights (every token reads each once), and on
CPUs without native bf16 instructions (AVX2 only) bf16 matmuls are slow beyond one row; int8
weights halve the bytes read, and fbgemm's integer GEMM keeps a batch of rows cheap (docs/text.md
compares the modes on SmolLM2-135M's shapes).

- `int8-dynamic` (x86 with fbgemm): weights int8 per output channel; activations quantised to
  uint8 on the fly and multiplied in integer arithmetic (exact), so batching costs little.
  fbgemm picks one activation scale for the whole batch, which would make a row's result depend
  on the other rows (and seeded sampling on who else is in the batch). So each row is first scaled
  to max |x| = 1 and two input columns holding 1 and -1 are appended (their weights are zero): the
  batch's range is then always [-1, 1], every row is quantised on the same grid as when alone, and
  the integer products are exact, so each row's output is the same whatever the batch. (An extra
  calibration row would do the same, but costs one more row in every GEMM.)
- `int8-weight-only` (other CPUs): weights int8 per output channel, activations bf16
  (`_weight_int8pack_mm`).
- `int4-groupwise` (x86 with fbgemm; by name): the decoder layers' weights as 4-bit
  codes in groups of 32 inputs, w = (q - 8)·scale + zero, activations bf16 into torch's CPU int4
  kernel (`_weight_int4pack_mm_for_cpu`), output back to float32; a decode step reads about half
  the bytes of int8. When the model came from a Q4_1 GGUF, every group's codes are the GGUF's own
  (recovered exactly from the de-quantised weights, see `groupwise_codes`), so the layers multiply
  the weights llama.cpp multiplies, except that the kernel takes scale and zero in bf16 (rounded
  from the GGUF's fp16 d and m + 8·d). The output head stays `int8-dynamic` (at one row the int4
  kernel is slower than fbgemm for the 49k-row head). The kernel computes each row on its own: a
  row's output is the same bits whatever else is in the batch, so prefill chunks and decode
  batches stay batch-invariant (tested).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class Int8WeightOnlyLinear(nn.Module):
    """A drop-in `nn.Linear` (no bias) whose weight is int8 with one scale per output row."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation_dtype: torch.dtype) -> None:
        super().__init__()
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight_int8", quantized.contiguous())
        self.register_buffer("scales", scales.to(activation_dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(activation_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(self.scales.dtype)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(list(shape[:-1]) + [self.out_features])


# Appended to every normalised row (see the module docstring); their weights are zero.
_RANGE_COLUMNS = torch.tensor([[1.0, -1.0]])


class Int8DynamicLinear(nn.Module):
    """A drop-in `nn.Linear` running fbgemm's dynamic int8 GEMM, batch-invariant (see above)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        weight = weight.detach().float()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        scales = (weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0).double()
        padded = torch.cat([weight, torch.zeros(self.out_features, _RANGE_COLUMNS.shape[1])], dim=1)
        with warnings.catch_warnings():
            # Quantized tensor types are deprecated in favour of torchao, which has no x86 int8
            # GEMM for dynamic activations; torch is pinned, and MODES has a fallback.
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.quantize_per_channel(padded, scales, torch.zeros_like(scales, dtype=torch.long),
                                                   axis=0, dtype=torch.qint8)
        # The bias is added after undoing the row scaling, so it is not packed with the weight.
        self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        self.register_buffer("bias", None if bias is None else bias.detach().float(), persistent=False)
        self.register_buffer("range_columns", _RANGE_COLUMNS.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.dtype != torch.float32:
            flat = flat.float()
        # max |x| per row: abs().amax() is exact like an inf-norm and, on CPUs, cheaper than
        # linalg.vector_norm(ord=inf) for more than one row.
        row_scale = flat.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)
        rows = torch.cat([flat / row_scale, self.range_columns.expand(flat.shape[0], -1)], dim=1)
        # reduce_range: 7-bit activations, as fbgemm needs on AVX2 (its u8 x s8 pair sums saturate
        # 16 bits with full-range activations).
        out = torch.ops.quantized.linear_dynamic(rows, self._packed, True) * row_scale
        if self.bias is not None:
            out = out + self.bias
        out = out.reshape(list(shape[:-1]) + [self.out_features])
        return out if out.dtype == x.dtype else out.to(x.dtype)


GROUP = 32  # inputs per 4-bit group: a GGUF Q4_0/Q4_1 block


def groupwise_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit codes of a float weight [N, K] in groups of 32 inputs, as a GGUF Q4_1 block holds them:
    w = d·q + m, q in 0..15, d and m fp16. Returns (codes uint8 [N, K], d fp16 [N, K/32],
    m fp16 [N, K/32], exact bool [N, K/32]).

    A Q4_1 block's smallest weight has code 0 and its largest code 15 (llama.cpp picks
    d = (max - min) / 15 and m = min), so for weights de-quantised from Q4_1 (the converted GGUF
    folder holds them in float32, exactly) m = min and d = (max - min) / 15 give back the file's
    own d, m and codes; `exact` says, per group, that d·q + m reproduces every weight bit for bit.
    For any other weight this is plain min/max 4-bit rounding (`exact` mostly False)."""
    rows, columns = weight.shape
    groups = weight.detach().float().reshape(rows, columns // GROUP, GROUP)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    d = ((high - low) / 15).half()
    m = low.half()
    d32, m32 = d.float()[..., None], m.float()[..., None]
    safe = torch.where(d32 == 0, torch.ones_like(d32), d32)
    codes = torch.round((groups - m32) / safe).clamp_(0, 15)
    exact = ((codes * d32 + m32) == groups).all(dim=2)
    return codes.to(torch.uint8).reshape(rows, columns), d, m, exact


class Int4GroupwiseLinear(nn.Module):
    """A drop-in `nn.Linear` whose weight is 4-bit codes in groups of 32 inputs (see the module
    docstring). Needs in_features % 32 == 0 and out_features % 16 == 0 (the kernel's packing)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group_size = GROUP  # an attribute, not the global: TorchScript compiles forward
        codes, d, m, exact = groupwise_codes(weight)
        self.exact_groups = int(exact.sum())
        self.groups = exact.numel()
        # The kernel's weight: (q - 8)·scale + zero, so scale = d and zero = m + 8·d (in fp32 from
        # the fp16 values, then rounded once to bf16); laid out [K/32, N, 2].
        scales, zeros = d.float(), m.float() + 8 * d.float()
        self.register_buffer("scales_and_zeros", torch.stack([scales.t(), zeros.t()], dim=2)
                             .to(torch.bfloat16).contiguous())
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes.to(torch.int32).contiguous(), 1))
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        return linear.in_features % GROUP == 0 and linear.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size,
                                                       self.scales_and_zeros)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(list(shape[:-1]) + [self.out_features])


def _weight_only(child: nn.Linear, dtype: torch.dtype, head: bool) -> nn.Module:
    return Int8WeightOnlyLinear(child.weight, child.bias, dtype)


def _dynamic(child: nn.Linear, dtype: torch.dtype, head: bool) -> nn.Module:
    return Int8DynamicLinear(child.weight, child.bias)


def _int4(child: nn.Linear, dtype: torch.dtype, head: bool) -> nn.Module:
    # The head (49k rows at one input row) is faster in fbgemm's int8 GEMM than in the int4
    # kernel (docs/text.md); a layer the kernel cannot pack goes there too.
    if head or not Int4GroupwiseLinear.fits(child):
        return Int8DynamicLinear(child.weight, child.bias)
    return Int4GroupwiseLinear(child.weight, child.bias)


# mode → (how a linear is replaced, the activation dtype it needs)
MODES = {
    "int4-groupwise": (_int4, torch.float32),
    "int8-dynamic": (_dynamic, torch.float32),
    "int8-weight-only": (_weight_only, torch.bfloat16),
}

# Modes that build fbgemm's int8 layers (the output head at least).
_FBGEMM_MODES = {"int4-groupwise", "int8-dynamic"}


def choose_mode(requested: str, device: torch.device) -> str | None:
    """`auto`: int8 dynamic on x86 CPUs (fbgemm), int8 weight-only on other CPUs, none on GPUs
    (their bf16/fp16 matmuls are fast); `none`: never; a mode name: that mode (CPU only).
    int4-groupwise is chosen by name: faster than int8 dynamic for one row, slower for a batch of
    eight and for prompts (docs/text.md)."""
    if requested == "none":
        return None
    if device.type != "cpu":
        if requested == "auto":
            return None
        raise ValueError(f"{requested} quantisation runs on CPUs, not {device}")
    if requested == "auto":
        return "int8-dynamic" if "fbgemm" in torch.backends.quantized.supported_engines else "int8-weight-only"
    if requested not in MODES:
        raise ValueError(f"unknown quantisation {requested!r}; one of auto, none, {', '.join(MODES)}")
    return requested


# Linear layers of one module that always read the same input: run as one matrix (quantised or
# not), so a decode step runs one GEMM (and one activation quantisation) instead of three or two.
FUSABLE_GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _SharedProjection:
    """Computes the fused output once per input and hands each member its slice."""

    def __init__(self, fused: nn.Module, sizes: list[int]) -> None:
        self.fused = fused
        self.sizes = sizes
        self._input: torch.Tensor | None = None
        self._parts: tuple[torch.Tensor, ...] = ()

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        # Identity, not equality: the members are called with the very same tensor (and the
        # reference held here keeps it alive, so its identity cannot be reused meanwhile).
        if self._input is not x:
            self._parts = self.fused(x).split(self.sizes, dim=-1)
            self._input = x
        return self._parts[index]


class FusedMember(nn.Module):
    """Stands in for one of the fused linears (q_proj, k_proj, ...)."""

    def __init__(self, shared: _SharedProjection, index: int) -> None:
        super().__init__()
        self.shared = shared
        self.index = index
        self.out_features = shared.sizes[index]
        if index == 0:
            self.fused = shared.fused  # registered once, so .to() and module walks see it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.part(x, self.index)


def _fuse_groups(parent: nn.Module, replace, dtype: torch.dtype | None) -> int:
    fused_count = 0
    for group in FUSABLE_GROUPS:
        members = [getattr(parent, name, None) for name in group]
        if not all(isinstance(m, nn.Linear) for m in members):
            continue
        if len({m.in_features for m in members}) != 1 or any(m.bias is not None for m in members):
            continue
        weight = torch.cat([m.weight.detach() for m in members])
        shared = _SharedProjection(replace(_as_linear(weight), dtype, False), [m.out_features for m in members])
        for index, name in enumerate(group):
            setattr(parent, name, FusedMember(shared, index))
        fused_count += len(group)
    return fused_count


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


def fuse_projections(model: nn.Module) -> int:
    """Fuse the groups in FUSABLE_GROUPS into plain float linears, without quantising (GPUs, or
    `quantization=none`): one matrix product per group, as the quantised modes get. Returns how
    many layers were fused."""
    return sum(_fuse_groups(parent, lambda linear, dtype, head: linear, None) for parent in list(model.modules()))


def quantize_linears(model: nn.Module, mode: str) -> int:
    """Replace every `nn.Linear` (the output head included, untied from the embedding) in place,
    fusing the groups in FUSABLE_GROUPS. Returns how many layers were replaced."""
    replace, _ = MODES[mode]
    if mode in _FBGEMM_MODES:
        torch.backends.quantized.engine = "fbgemm"
    dtype = next(model.parameters()).dtype
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    replaced = 0
    for parent in list(model.modules()):
        replaced += _fuse_groups(parent, replace, dtype)
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, replace(child, dtype, child is head))
                replaced += 1
    # The tied output head is quantised on its own; the input embedding keeps its float copy.
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return replaced

