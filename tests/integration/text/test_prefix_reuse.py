"""Prefix reuse on a tiny seeded model: a writing session continued step by step gives the same
seeded output with the prefix cache as without it, while most of each prompt comes from the
cache; two users continuing the same scenario at once share its blocks."""

from __future__ import annotations

import asyncio

import pytest
import torch

from fabula.text.v1 import text_pb2
from services.text.models import load_model
from services.text.testing import CORPUS, build_tiny_model

STORY = " ".join(CORPUS[:3] * 3)


def spec(prompt: str, seed: int) -> text_pb2.GenerationSpec:
    return text_pb2.GenerationSpec(prompt=prompt, preset="balanced", seed=seed, max_new_tokens=12,
                                   min_new_tokens=12)


async def generate(stub, prompt: str, seed: int) -> text_pb2.GenerateResponse:
    return await stub.Generate(text_pb2.GenerateRequest(spec=spec(prompt, seed)))


async def writing_session(stub, steps: int) -> list[text_pb2.GenerateResponse]:
    """The story grows by each generation, and the next one continues it."""
    story, replies = STORY, []
    for step in range(steps):
        reply = await generate(stub, story, seed=100 + step)
        replies.append(reply)
        story += reply.text
    return replies


async def test_a_writing_session_gives_the_same_seeded_output_with_and_without_reuse(text_service, tiny_model):
    # Small blocks and chunks, so reuse starts mid-chunk and chunk boundaries are crossed.
    async with text_service([tiny_model], prefill_chunk_tokens=48, prefix_cache_bytes=0) as cold:
        without = await writing_session(cold.stub, steps=4)
        assert cold.scheduler().prefix_cache.cached_tokens == 0
    async with text_service([tiny_model], prefill_chunk_tokens=48, prefix_block_tokens=8) as warm:
        with_reuse = await writing_session(warm.stub, steps=4)
        cache = warm.scheduler().prefix_cache
    assert [list(r.token_ids) for r in with_reuse] == [list(r.token_ids) for r in without]
    assert [r.text for r in with_reuse] == [r.text for r in without]
    assert with_reuse[0].stats.cached_prompt_tokens == 0
    for previous, reply in zip(with_reuse, with_reuse[1:]):
        # The previous prompt's whole blocks come from the cache (all but the last one may, should
        # the join with the new text be tokenized differently).
        assert reply.stats.cached_prompt_tokens >= (previous.stats.prompt_tokens // 8 - 1) * 8
        assert reply.stats.cached_prompt_tokens % 8 == 0
    assert all(r.stats.cached_prompt_tokens == 0 for r in without)
    assert cache.hit_rate > 0.5 and cache.bytes > 0


async def test_two_users_on_the_same_scenario_share_its_blocks_and_keep_their_seeds(text_service, tiny_model):
    async with text_service([tiny_model], prefix_cache_bytes=0) as cold:
        alone = [await generate(cold.stub, STORY + ending, seed) for ending, seed in ((" Alice", 1), (" Bob", 2))]
    async with text_service([tiny_model], prefix_block_tokens=8) as warm:
        await generate(warm.stub, STORY, seed=0)  # the scenario, as published
        blocks = warm.scheduler().prefix_cache.blocks
        together = await asyncio.gather(generate(warm.stub, STORY + " Alice", 1), generate(warm.stub, STORY + " Bob", 2))
        assert warm.scheduler().prefix_cache.blocks <= blocks + 2 * 2
    assert [list(r.token_ids) for r in together] == [list(r.token_ids) for r in alone]
    assert all(r.stats.cached_prompt_tokens >= r.stats.prompt_tokens - 16 for r in together)


async def _assert_same_seeded_tokens_with_reuse_and_batched(text_service, model) -> None:
    """The model's scripted decode step serves; the same seeded session gives the same tokens with
    and without the prefix cache (prompt chunks then start at other places), and a seeded request
    the same tokens alone and in a batch."""
    async with text_service([model], prefill_chunk_tokens=48, prefix_cache_bytes=0) as cold:
        without = await writing_session(cold.stub, steps=3)
    async with text_service([model], prefill_chunk_tokens=48, prefix_block_tokens=8) as warm:
        assert type(warm.scheduler()._step).__name__ == "LlamaDecodeStep"
        with_reuse = await writing_session(warm.stub, steps=3)
        alone = await generate(warm.stub, STORY + " The end?", seed=7)
        batched = await asyncio.gather(*(generate(warm.stub, STORY[: 40 * (i + 1)], seed=i) for i in range(4)),
                                       generate(warm.stub, STORY + " The end?", seed=7))
    assert [list(r.token_ids) for r in with_reuse] == [list(r.token_ids) for r in without]
    assert sum(r.stats.cached_prompt_tokens for r in with_reuse) > 0
    assert list(batched[-1].token_ids) == list(alone.token_ids)


@pytest.mark.gpu
async def test_gpu_path_bf16_scripted_step_with_and_without_reuse(text_service, tmp_path):
    """The GPU path: bf16 weights on CUDA, the written-out Llama decode step, a batch and prefix
    reuse; the same seeded session with and without the cache, and a seeded request alone and in
    a batch, give the same tokens."""
    folder = build_tiny_model(tmp_path / "tiny-gpu", seed=0)
    model = load_model("tiny-gpu", str(folder), cache_dir=tmp_path / "cache", device="cuda", dtype="bfloat16",
                       quantization="none")
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    await _assert_same_seeded_tokens_with_reuse_and_batched(text_service, model)


async def test_int4_linears_keep_seeded_output_with_and_without_reuse_and_batched(text_service, tmp_path):
    """The 4-bit CPU path (`quantization=int4-groupwise`, chosen by name):
    prompt chunks start where the cache left off, so a chunk's row count differs with and without
    reuse, and decode batches differ alone and batched; each row's output must not."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("the int4 mode's output head needs fbgemm (x86)")
    from services.text.quantize import Int4GroupwiseLinear

    folder = build_tiny_model(tmp_path / "tiny-int4", seed=0)
    model = load_model("tiny-int4", str(folder), cache_dir=tmp_path / "cache", device="cpu",
                       quantization="int4-groupwise")
    assert sum(isinstance(m, Int4GroupwiseLinear) for m in model.model.modules()) > 0
    assert model.weights.startswith("int4-groupwise")
    await _assert_same_seeded_tokens_with_reuse_and_batched(text_service, model)
