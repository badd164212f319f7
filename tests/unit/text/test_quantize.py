"""Int8 and int4 linears: close to the float layer (the int4 one: the GGUF's own 4-bit weights), and
a row's output never depends on the other rows of the batch (seeded generation must not change
with who else is being served)."""

from __future__ import annotations

import pytest
import torch

from services.text.quantize import (MODES, Int4GroupwiseLinear, Int8DynamicLinear, Int8WeightOnlyLinear, choose_mode,
                                    groupwise_codes, quantize_linears)

needs_fbgemm = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines,
                                  reason="fbgemm (x86) only")


def layer(seed=0, out_features=96, in_features=64):
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features, bias=True)


@needs_fbgemm
def test_dynamic_int8_is_close_to_float_and_batch_invariant():
    torch.backends.quantized.engine = "fbgemm"
    linear = layer()
    quantized = Int8DynamicLinear(linear.weight, linear.bias)
    x = torch.randn(1, 64)
    others = torch.randn(7, 64) * torch.tensor([[0.01], [0.1], [1], [10], [100], [3], [0.5]])
    with torch.no_grad():
        alone = quantized(x)
        for position in range(8):
            batch = torch.cat([others[:position], x, others[position:]])
            assert torch.equal(quantized(batch)[position], alone[0])
        reference = linear(x)
    assert torch.allclose(alone, reference, rtol=0.05, atol=0.05 * reference.abs().max().item())


@needs_fbgemm
def test_dynamic_int8_rows_of_one_sign_are_batch_invariant():
    # Without the constant range columns, a batch of non-negative rows would be quantised over
    # [0, 1] and a lone row over [min, 1]: different grids, different outputs.
    torch.backends.quantized.engine = "fbgemm"
    linear = layer(seed=3)
    quantized = Int8DynamicLinear(linear.weight, None)
    x = torch.rand(1, 64) + 0.5
    others = torch.rand(5, 64) * torch.tensor([[0.2], [1], [4], [9], [30]])
    with torch.no_grad():
        alone = quantized(x)
        assert torch.equal(quantized(torch.cat([others, x]))[-1], alone[0])
        assert torch.equal(quantized(-torch.cat([x, others]))[0], quantized(-x)[0])


def test_weight_only_int8_is_close_to_float():
    linear = layer(1)
    quantized = Int8WeightOnlyLinear(linear.weight, linear.bias, torch.float32)
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.allclose(quantized(x), linear(x), rtol=0.05, atol=0.05)


def test_modes_and_replacement():
    assert choose_mode("none", torch.device("cpu")) is None
    assert choose_mode("auto", torch.device("cpu")) in MODES
    with pytest.raises(ValueError):
        choose_mode("int8-dynamic", torch.device("cuda"))
    model = torch.nn.Sequential(layer(), torch.nn.ReLU(), layer(2, 8, 96))
    model.config = type("Config", (), {"tie_word_embeddings": False})()
    assert quantize_linears(model, "int8-weight-only") == 2
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


@pytest.mark.parametrize("mode", [m for m in MODES if m != "int8-dynamic" or "fbgemm" in torch.backends.quantized.supported_engines])
def test_fused_projections_match_separate_ones(mode):
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(64, n, bias=False) for n in (64, 32, 32))

        def forward(self, x):
            return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)

    model = Attention()
    model.config = type("Config", (), {"tie_word_embeddings": False})()
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        reference = model(x)
        assert quantize_linears(model, mode) == 3
        fused = model(x)
        again = model(x.clone())  # a new input is computed afresh, not served from the last one
    assert fused.shape == reference.shape
    bound = 0.15 if mode == "int4-groupwise" else 0.05  # 4-bit: 16 levels a group of 32 weights
    assert torch.allclose(fused, reference, rtol=bound, atol=bound * reference.abs().max().item())
    assert torch.equal(fused, again)


def _q4_1_blocks(name: str):
    """A Q4_1 tensor of the shipped SmolLM2 GGUF, read with the gguf package: its raw codes
    [N, K], d and m [N, K/32] (fp16), and the float32 weights transformers de-quantises it to."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from gguf.quants import dequantize

    from services.text.models import builtin_path

    tensor = {t.name: t for t in gguf.GGUFReader(str(builtin_path("smollm2"))).tensors}[name]
    assert tensor.tensor_type.name == "Q4_1"
    raw = np.asarray(tensor.data)
    blocks = raw.reshape(raw.shape[0], -1, 20)  # fp16 d, fp16 m, 16 bytes of two codes each
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0]
    packed = blocks[..., 4:]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(raw.shape[0], -1)  # low nibbles first
    weight = dequantize(raw, tensor.tensor_type).astype(np.float32)
    return torch.from_numpy(codes), torch.from_numpy(d), torch.from_numpy(m), torch.from_numpy(weight)


@pytest.mark.parametrize("name", ["blk.0.ffn_down.weight", "blk.0.attn_v.weight", "blk.29.ffn_gate.weight",
                                  "blk.17.attn_output.weight"])
def test_int4_layer_holds_the_gguf_codes_and_scales(name):
    # The converted folder holds the GGUF's weights de-quantised to float32; the int4 layer must
    # get the file's own codes, d and m back from them, and multiply (q - 8)·bf16(d) + bf16(m + 8d).
    codes, d, m, weight = _q4_1_blocks(name)
    ours, our_d, our_m, exact = groupwise_codes(weight)
    assert bool(exact.all())
    assert torch.equal(ours, codes) and torch.equal(our_d, d) and torch.equal(our_m, m)
    layer = Int4GroupwiseLinear(weight, None)
    scale, zero = d.float(), m.float() + 8 * d.float()
    assert torch.equal(layer.scales_and_zeros[..., 0], scale.t().bfloat16())
    assert torch.equal(layer.scales_and_zeros[..., 1], zero.t().bfloat16())
    # The kernel's weights, read back through an identity input: exactly those values (in bf16,
    # the kernel's output type), and off the GGUF's weights by no more than three bf16 roundings
    # (scale, zero, output: 2^-8 relative each, 8 significant bits) allow.
    with torch.no_grad():
        seen = layer(torch.eye(weight.shape[1])).t()
    group = lambda x: x.bfloat16().float().repeat_interleave(32, dim=1)  # noqa: E731
    expected = (codes.float() - 8) * group(scale) + group(zero)
    assert torch.equal(seen, expected.bfloat16().float())
    allowed = 2.0 ** -8 * (8 * d.float().abs().repeat_interleave(32, dim=1) + zero.abs().repeat_interleave(32, dim=1)
                           + weight.abs()) * 1.01
    assert bool(((seen - weight).abs() <= allowed).all())


def test_int4_codes_of_plain_float_weights_are_round_to_nearest():
    linear = layer(4, 64, 96)
    codes, d, m, exact = groupwise_codes(linear.weight)
    rebuilt = codes.float() * d.float().repeat_interleave(32, 1) + m.float().repeat_interleave(32, 1)
    step = d.float().repeat_interleave(32, 1)
    # half a step, plus the fp16 rounding of d and m
    assert float(((rebuilt - linear.weight).abs() / step).max()) < 0.51
    assert not bool(exact.all())


def test_int4_layer_is_close_to_float_and_batch_invariant():
    linear = layer(5, 96, 64)
    quantized = Int4GroupwiseLinear(linear.weight, linear.bias)
    x = torch.randn(1, 64)
    others = torch.randn(15, 64) * torch.linspace(0.01, 100, 15)[:, None]
    with torch.no_grad():
        alone = quantized(x)
        for position in (0, 3, 7, 15):
            batch = torch.cat([others[:position], x, others[position:]])
            assert torch.equal(quantized(batch)[position], alone[0])
        # a long prefill chunk: the same row, the same bits
        assert torch.equal(quantized(torch.cat([others.repeat(40, 1), x]))[-1], alone[0])
        reference = linear(x)
    assert alone.dtype == torch.float32
    assert torch.allclose(alone, reference, rtol=0.1, atol=0.1 * reference.abs().max().item())


def test_int4_mode_keeps_the_head_and_unpackable_layers_in_int8():
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("fbgemm (x86) only")
    model = torch.nn.Sequential(layer(0, 96, 64), torch.nn.ReLU(), layer(1, 40, 96), torch.nn.ReLU(),
                                layer(2, 64, 40), torch.nn.ReLU(), layer(3, 32, 64))
    model.config = type("Config", (), {"tie_word_embeddings": False})()
    model.get_output_embeddings = lambda: model[6]
    assert quantize_linears(model, "int4-groupwise") == 4
    kinds = [type(model[i]) for i in (0, 2, 4, 6)]
    # 40 outputs cannot be packed (16 per block), 40 inputs not grouped by 32; the head stays int8
    assert kinds == [Int4GroupwiseLinear, Int8DynamicLinear, Int8DynamicLinear, Int8DynamicLinear]
    assert choose_mode("auto", torch.device("cpu")) == "int8-dynamic"  # int4 is chosen by name

