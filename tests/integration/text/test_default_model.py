"""The real default model (SmolLM2-135M-Instruct from its GGUF file, int8 linears on a CPU): it
loads by the ordinary path, writes text, honours seeds in a batch, stops and bans."""

from __future__ import annotations

import asyncio

import pytest

from fabula.text.v1 import text_pb2

PROMPT = "The old lighthouse keeper climbed the stairs and"


@pytest.fixture
async def smol(text_service, default_model):
    async with text_service([default_model], max_batch_size=8) as running:
        yield running


async def generate(stub, **fields):
    fields.setdefault("prompt", PROMPT)
    reply = await stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(**fields)))
    return reply


async def test_default_model_is_listed_and_writes_english(smol, default_model):
    models = (await smol.stub.ListModels(text_pb2.ListModelsRequest())).models
    assert models[0].name == "smollm2" and models[0].context_window == 8192
    assert models[0].source.endswith(".gguf") and models[0].dtype.startswith("int8-")
    reply = await generate(smol.stub, max_new_tokens=24, preset="greedy")
    words = reply.text.split()
    assert len(words) >= 8
    # A real model's greedy continuation is mostly ordinary words (a random one is not).
    common = {"the", "a", "to", "and", "of", "he", "she", "his", "her", "was", "in", "it", "up", "at", "on"}
    assert sum(word.lower().strip(".,") in common for word in words) >= 2, reply.text


async def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(smol):
    solo = await generate(smol.stub, max_new_tokens=64, seed=1234, preset="balanced")
    # Longer and shorter histories around it: in the batch its row sits behind masked columns.
    others = [generate(smol.stub, prompt=f"Chapter {i}. " + "The storm grew louder. " * (3 * i), seed=i,
                       max_new_tokens=40 + 8 * i, preset="creative") for i in range(5)]
    results = await asyncio.gather(*others[:2], generate(smol.stub, max_new_tokens=64, seed=1234,
                                                          preset="balanced"), *others[2:])
    assert list(results[2].token_ids) == list(solo.token_ids)


async def test_stop_sequence_and_banned_strings_on_the_real_model(smol):
    stopped = await generate(smol.stub, max_new_tokens=60, seed=3, preset="balanced", stop_sequences=["."])
    assert "." not in stopped.text
    assert stopped.stats.finish_reason in (text_pb2.FINISH_REASON_STOP_SEQUENCE, text_pb2.FINISH_REASON_LENGTH,
                                          text_pb2.FINISH_REASON_END_OF_TEXT)
    free = await generate(smol.stub, max_new_tokens=40, preset="greedy")
    banned = ["the", "The", free.text.split()[1]]
    reply = await generate(smol.stub, max_new_tokens=40, preset="greedy", banned_strings=banned)
    for string in banned:
        assert string not in reply.text
    assert reply.text != free.text


async def test_story_context_on_the_real_model(smol):
    story = " ".join(f"Day {i}: the keeper lit the lamp and watched the sea." for i in range(400))
    # The story's default reservation (512 tokens) exceeds this budget and is set aside before the
    # memory is placed; a smaller one leaves the memory room.
    messages = [m async for m in smol.stub.GenerateStream(text_pb2.GenerateStreamRequest(
        spec=text_pb2.GenerationSpec(context=text_pb2.StoryContext(
            story=story, memory="The keeper is Tom.", max_context_tokens=300,
            story_config=text_pb2.ContextConfig(reserved_tokens=64)),
                                     max_new_tokens=8, seed=1)))]
    report = messages[0].context_report
    assert report.prompt_tokens <= 300 and report.prompt.startswith("The keeper is Tom.\n")
    assert messages[-1].final.prompt_tokens == report.prompt_tokens
