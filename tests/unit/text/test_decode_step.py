"""The batched decode step: both implementations compute what the model's own full forward computes
for each row's whole sequence, whatever the other rows of the batch hold; the written-out Llama
step is picked for Llama models and the transformers forward for the rest."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from services.text.decode_step import (LlamaDecodeStep, TransformersDecodeStep, decode_step_for,
                                       llama_step_unsupported)
from services.text.kv_cache import BatchKVCache
from services.text.quantize import Int4GroupwiseLinear, fuse_projections, quantize_linears

VOCAB = 97


def tiny_llama(seed: int = 0, fuse: bool = True, **overrides) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=10000.0, **overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)  # peaked, varied distributions, as in services.text.testing
    if fuse:
        fuse_projections(model)
    return model


def decode_rows(model, step_class, prompts, tokens_per_row):
    """Prefill each prompt into its own cache, join them into one batch (shorter prompts are
    right-aligned, leaving masked holes), then run batched steps; returns each step's logits."""
    cache = BatchKVCache(num_layers=model.config.num_hidden_layers, kv_heads=model.config.num_key_value_heads,
                         head_dim=model.config.hidden_size // model.config.num_attention_heads,
                         dtype=torch.float32, device=torch.device("cpu"), max_rows=8, initial_capacity=16)
    for prompt in prompts:
        prefill = DynamicCache()
        model(input_ids=torch.tensor([prompt]), past_key_values=prefill, use_cache=True)
        cache.add_row(prefill, len(prompt))
    step = step_class(model, cache)
    positions = torch.tensor([len(p) for p in prompts])
    logits = []
    for column in range(len(tokens_per_row[0])):
        mask = cache.prepare_step()
        logits.append(step(torch.tensor([row[column] for row in tokens_per_row]), positions, mask))
        cache.finish_step()
        positions = positions + 1
    return logits


def full_forward_logits(model, sequence):
    return model(input_ids=torch.tensor([sequence])).logits[0, -1]


PROMPTS = [[5, 17, 3, 44, 8, 9, 60, 2, 31, 12, 7], [11, 4], [90, 91, 1, 2, 3, 4, 5]]
NEXT = [[21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40],
        [41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60],
        [61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80]]


@pytest.mark.parametrize("step_class", [LlamaDecodeStep, TransformersDecodeStep])
@torch.inference_mode()
def test_each_row_gets_the_logits_of_its_own_full_sequence(step_class):
    # 20 steps from capacity 16: the cache grows and moves its columns on the way.
    model = tiny_llama()
    steps = decode_rows(model, step_class, PROMPTS, NEXT)
    for column, logits in enumerate(steps):
        for row, prompt in enumerate(PROMPTS):
            expected = full_forward_logits(model, prompt + NEXT[row][: column + 1])
            torch.testing.assert_close(logits[row], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quantization", ["int8-dynamic", "int4-groupwise"])
@torch.inference_mode()
def test_a_rows_logits_are_bit_identical_alone_and_in_a_batch_with_quantised_linears(quantization):
    # Seeded generation must not depend on who else is served: the batch's other rows have longer
    # and shorter histories, so this row sits right-aligned behind masked columns in the batch.
    # (Float GEMMs pick their kernels by row count, so only the quantised CPU paths are exact.)
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("fbgemm (x86) only")
    model = tiny_llama(seed=5, fuse=False)
    quantize_linears(model, quantization)
    if quantization == "int4-groupwise":  # every decoder projection (fused) is 4-bit; the head int8
        assert sum(isinstance(m, Int4GroupwiseLinear) for m in model.modules()) == 3 * 4
    alone = decode_rows(model, LlamaDecodeStep, [PROMPTS[2]], [NEXT[2]])
    batched = decode_rows(model, LlamaDecodeStep, PROMPTS, NEXT)
    for step_alone, step_batched in zip(alone, batched):
        assert torch.equal(step_alone[0], step_batched[2])


@pytest.mark.parametrize("quantization", [None, "int8-dynamic", "int4-groupwise"])
@torch.inference_mode()
def test_the_scripted_step_computes_exactly_what_the_eager_one_does(quantization):
    if quantization and "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("fbgemm (x86) only")
    model = tiny_llama(seed=4, fuse=quantization is None)
    if quantization:
        quantize_linears(model, quantization)
    cache = BatchKVCache(num_layers=3, kv_heads=2, head_dim=16, dtype=torch.float32,
                         device=torch.device("cpu"), max_rows=2)
    assert LlamaDecodeStep(model, cache).scripted  # the fast path must not fall back silently
    assert not LlamaDecodeStep(model, cache, script=False).scripted
    scripted = decode_rows(model, LlamaDecodeStep, PROMPTS, NEXT)
    eager = decode_rows(model, lambda m, c: LlamaDecodeStep(m, c, script=False), PROMPTS, NEXT)
    for ours, theirs in zip(scripted, eager):
        assert torch.equal(ours, theirs)


@torch.inference_mode()
def test_columns_taken_back_are_never_attended_again():
    # A backtrack (banned string) masks out a row's last cache columns and feeds a token again at
    # the same position: the result is the full forward of the sequence without the dropped token.
    model = tiny_llama(seed=2)
    cache = BatchKVCache(num_layers=3, kv_heads=2, head_dim=16, dtype=torch.float32,
                         device=torch.device("cpu"), max_rows=4)
    for prompt in PROMPTS[:2]:
        prefill = DynamicCache()
        model(input_ids=torch.tensor([prompt]), past_key_values=prefill, use_cache=True)
        cache.add_row(prefill, len(prompt))
    step = LlamaDecodeStep(model, cache)
    lengths = [len(p) for p in PROMPTS[:2]]

    def feed(tokens, positions):
        mask = cache.prepare_step()
        column = cache.column_of_last()
        logits = step(torch.tensor(tokens), torch.tensor(positions), mask)
        cache.finish_step()
        return logits, column

    feed([30, 40], lengths)
    _, dropped = feed([31, 41], [lengths[0] + 1, lengths[1] + 1])
    cache.mask_out(0, [dropped])  # row 0 takes back token 31; row 1 keeps 41
    logits, _ = feed([32, 42], [lengths[0] + 1, lengths[1] + 2])
    torch.testing.assert_close(logits[0], full_forward_logits(model, PROMPTS[0] + [30, 32]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[1], full_forward_logits(model, PROMPTS[1] + [40, 41, 42]), rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_llama_step_matches_the_transformers_forward_with_int8_linears():
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("fbgemm (x86) only")
    model = tiny_llama(fuse=False)
    quantize_linears(model, "int8-dynamic")
    written_out = decode_rows(model, LlamaDecodeStep, PROMPTS, NEXT)
    reference = decode_rows(model, TransformersDecodeStep, PROMPTS, NEXT)
    for ours, theirs in zip(written_out, reference):
        # Same quantised products; only float rounding of norms and attention differs, which can
        # move an activation across an int8 step now and then, hence the looser bound.
        torch.testing.assert_close(ours, theirs, rtol=0.02, atol=0.02 * float(theirs.abs().max()))
        assert torch.equal(ours.argmax(dim=-1), theirs.argmax(dim=-1))


def test_llama_models_get_the_written_out_step_and_others_the_transformers_forward():
    cache = BatchKVCache(num_layers=3, kv_heads=2, head_dim=16, dtype=torch.float32,
                         device=torch.device("cpu"), max_rows=2)
    assert isinstance(decode_step_for(tiny_llama(), cache), LlamaDecodeStep)
    biased = tiny_llama(attention_bias=True)
    assert llama_step_unsupported(biased) == "biased projections"
    assert isinstance(decode_step_for(biased, cache), TransformersDecodeStep)
    unfused = tiny_llama(fuse=False)
    assert "not fused" in llama_step_unsupported(unfused)
    assert isinstance(decode_step_for(unfused, cache), TransformersDecodeStep)
    with pytest.raises(ValueError, match="biased projections"):
        LlamaDecodeStep(biased, cache)


@torch.inference_mode()
def test_the_transformers_step_runs_models_the_written_out_one_cannot():
    model = tiny_llama(attention_bias=True, seed=3)
    steps = decode_rows(model, TransformersDecodeStep, PROMPTS[:2], NEXT[:2])
    for column, logits in enumerate(steps):
        for row, prompt in enumerate(PROMPTS[:2]):
            expected = full_forward_logits(model, prompt + NEXT[row][: column + 1])
            torch.testing.assert_close(logits[row], expected, rtol=1e-4, atol=1e-4)
