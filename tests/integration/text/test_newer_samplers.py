"""The newer samplers over gRPC on a tiny seeded model: classifier-free guidance on its second batch
row, mirostat, DRY, XTC, unified sampling and the phrase repetition penalty, seeded and the same
alone or batched; bad values refused by field name."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from fabula.text.v1 import text_pb2

PROMPT = "Once upon a time, the knight"


def spec(**fields) -> text_pb2.GenerationSpec:
    fields.setdefault("prompt", PROMPT)
    fields.setdefault("preset", "neutral")
    fields.setdefault("min_new_tokens", fields.get("max_new_tokens", 0))
    return text_pb2.GenerationSpec(**fields)


async def generate(stub, **fields) -> list[int]:
    reply = await stub.Generate(text_pb2.GenerateRequest(spec=spec(**fields)))
    return list(reply.token_ids)


EVERYTHING = text_pb2.SamplingParameters(
    cfg_scale=1.6, cfg_uc="The dragon", mirostat=2, mirostat_tau=4.0, mirostat_eta=0.2,
    dry_multiplier=0.8, dry_allowed_length=2,
    dry_sequence_breakers=text_pb2.SequenceBreakers(breakers=["\n", "."]), xtc_probability=0.5,
    xtc_threshold=0.05, unified_linear=0.8, unified_quad=0.1, unified_conf=-0.05,
    phrase_repetition_penalty=text_pb2.PHRASE_REPETITION_PENALTY_MEDIUM, temperature=0.9)


async def test_every_newer_sampler_at_once_is_seeded(tiny_service):
    first = await generate(tiny_service.stub, max_new_tokens=30, seed=4, sampling=EVERYTHING)
    again = await generate(tiny_service.stub, max_new_tokens=30, seed=4, sampling=EVERYTHING)
    plain = await generate(tiny_service.stub, max_new_tokens=30, seed=4,
                           sampling=text_pb2.SamplingParameters(temperature=0.9))
    assert len(first) == 30 and first == again
    assert first != plain


async def test_guidance_changes_the_output_and_scale_one_is_no_guidance(tiny_service):
    plain = await generate(tiny_service.stub, max_new_tokens=25, seed=9)
    neutral = await generate(tiny_service.stub, max_new_tokens=25, seed=9,
                             sampling=text_pb2.SamplingParameters(cfg_scale=1.0, cfg_uc="The dragon"))
    guided = await generate(tiny_service.stub, max_new_tokens=25, seed=9,
                            sampling=text_pb2.SamplingParameters(cfg_scale=3.0, cfg_uc="The dragon"))
    empty_uc = await generate(tiny_service.stub, max_new_tokens=25, seed=9,
                              sampling=text_pb2.SamplingParameters(cfg_scale=3.0))
    assert plain == neutral
    assert guided != plain and empty_uc != plain and guided != empty_uc


async def test_a_guided_sequence_gives_the_same_output_batched_with_others(tiny_service):
    guided = text_pb2.SamplingParameters(cfg_scale=2.0, cfg_uc="She opened", mirostat=1, dry_multiplier=1.0)
    solo = await generate(tiny_service.stub, max_new_tokens=30, seed=21, sampling=guided)
    others = [generate(tiny_service.stub, prompt="The bard sang" * (i + 1), max_new_tokens=8 + 5 * i, seed=i,
                       sampling=text_pb2.SamplingParameters(cfg_scale=1.5) if i % 2 else None)
              for i in range(5)]
    batched = await asyncio.gather(*others[:2], generate(tiny_service.stub, max_new_tokens=30, seed=21,
                                                          sampling=guided), *others[2:])
    assert batched[2] == solo


async def test_a_guided_request_with_banned_strings_backtracks_both_rows(tiny_service):
    free = await tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=spec(
        max_new_tokens=40, seed=3, sampling=text_pb2.SamplingParameters(cfg_scale=2.0))))
    banned = free.text[len(free.text) // 2: len(free.text) // 2 + 2]
    assert len(banned) == 2
    reply = await tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=spec(
        max_new_tokens=40, seed=3, banned_strings=[banned], sampling=text_pb2.SamplingParameters(cfg_scale=2.0))))
    assert banned not in reply.text


async def test_a_guided_sequence_fits_a_batch_of_one(text_service, tiny_model):
    async with text_service([tiny_model], max_batch_size=1) as running:
        tokens = await generate(running.stub, max_new_tokens=10, seed=1,
                                sampling=text_pb2.SamplingParameters(cfg_scale=2.0))
        assert len(tokens) == 10


@pytest.mark.parametrize(("sampling", "field"), [
    (text_pb2.SamplingParameters(mirostat=3), "spec.sampling.mirostat"),
    (text_pb2.SamplingParameters(xtc_probability=1.5), "spec.sampling.xtc_probability"),
    (text_pb2.SamplingParameters(dry_base=0.5), "spec.sampling.dry_base"),
    (text_pb2.SamplingParameters(unified_conf=-11), "spec.sampling.unified_conf"),
    (text_pb2.SamplingParameters(cfg_scale=101), "spec.sampling.cfg_scale"),
    (text_pb2.SamplingParameters(dry_sequence_breakers=text_pb2.SequenceBreakers(breakers=[""])),
     "spec.sampling.dry_sequence_breakers[0]"),
    (text_pb2.SamplingParameters(phrase_repetition_penalty=42), "spec.sampling.phrase_repetition_penalty"),
    (text_pb2.SamplingParameters(sampler_order=[text_pb2.SamplerStep(sampler=text_pb2.SAMPLER_MIROSTAT)]),
     "spec.sampling.sampler_order"),
])
async def test_bad_values_are_refused_by_field(tiny_service, sampling, field):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=spec(max_new_tokens=5, sampling=sampling)))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()
