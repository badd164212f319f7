"""Int8 linears: close to the float layer, and a row's output never depends on the other rows of
the batch (seeded generation must not change with who else is being served)."""

from __future__ import annotations

import pytest
import torch

from services.text.quantize import MODES, Int8DynamicLinear, Int8WeightOnlyLinear, choose_mode, quantize_linears

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
    assert torch.allclose(fused, reference, rtol=0.05, atol=0.05 * reference.abs().max().item())
    assert torch.equal(fused, again)
