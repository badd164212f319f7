"""Generation over gRPC on a tiny seeded model: streaming, seeds, stops, bans, lengths, batching."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
import torch

from fabula.text.v1 import text_pb2
from services.text import wire
from services.text.sequence import Sequence

PROMPT = "Once upon a time, the knight"


def spec(**fields) -> text_pb2.GenerationSpec:
    fields.setdefault("prompt", PROMPT)
    fields.setdefault("preset", "neutral")
    # The random model ends its text early at random; tests that are not about ending ask for
    # their full length.
    fields.setdefault("min_new_tokens", fields.get("max_new_tokens", 0))
    return text_pb2.GenerationSpec(**fields)


async def stream(stub, **fields):
    """(text from the pieces, token ids from the pieces, final stats, every message)."""
    messages = [m async for m in stub.GenerateStream(text_pb2.GenerateStreamRequest(spec=spec(**fields)))]
    pieces = [m.piece for m in messages if m.WhichOneof("event") == "piece"]
    assert messages[-1].WhichOneof("event") == "final"
    assert all(m.WhichOneof("event") != "final" for m in messages[:-1])
    return "".join(p.text for p in pieces), [t for p in pieces for t in p.token_ids], messages[-1].final, messages


async def test_stream_pieces_add_up_to_the_unary_answer(tiny_service):
    text, ids, final, _ = await stream(tiny_service.stub, max_new_tokens=30, seed=11)
    reply = await tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=spec(max_new_tokens=30, seed=11)))
    assert text == reply.text and ids == list(reply.token_ids)
    assert final.finish_reason == text_pb2.FINISH_REASON_LENGTH
    assert final.completion_tokens == 30 == len(ids)
    assert final.seed == 11 and final.model == "tiny"
    assert final.prompt_tokens == len((await tiny_service.stub.Tokenize(text_pb2.TokenizeRequest(text=PROMPT))).token_ids)
    assert final.time_to_first_token_ms > 0 and final.total_ms >= final.time_to_first_token_ms
    detok = await tiny_service.stub.Detokenize(text_pb2.DetokenizeRequest(token_ids=ids))
    assert detok.text.startswith(text.rstrip())


async def test_same_seed_same_output_different_seed_different_output(tiny_service):
    first = await stream(tiny_service.stub, max_new_tokens=25, seed=5)
    again = await stream(tiny_service.stub, max_new_tokens=25, seed=5)
    other = await stream(tiny_service.stub, max_new_tokens=25, seed=6)
    assert first[1] == again[1]
    assert first[1] != other[1]


async def test_seeded_output_is_the_same_when_batched_with_other_requests(tiny_service):
    solo = await stream(tiny_service.stub, max_new_tokens=30, seed=42, preset="balanced")
    # Requests with other prompts, seeds, lengths and samplers, running in the same batch and
    # joining at different times.
    others = [stream(tiny_service.stub, prompt="She opened the door" * (i + 1), max_new_tokens=10 + 7 * i,
                     seed=i, preset=["creative", "focused", "neutral"][i % 3]) for i in range(6)]
    batched = await asyncio.gather(*others[:3], stream(tiny_service.stub, max_new_tokens=30, seed=42,
                                                        preset="balanced"), *others[3:])
    assert batched[3][1] == solo[1]
    assert tiny_service.scheduler().steps > 0


async def test_unset_seed_is_reported_and_replays(tiny_service):
    _, ids, final, _ = await stream(tiny_service.stub, max_new_tokens=20)
    _, replay_ids, _, _ = await stream(tiny_service.stub, max_new_tokens=20, seed=final.seed)
    assert ids == replay_ids


async def test_stop_sequences_end_the_output_before_them(tiny_service):
    free_text, _, _, _ = await stream(tiny_service.stub, max_new_tokens=60, seed=3)
    stop = free_text[len(free_text) // 2: len(free_text) // 2 + 3]
    assert len(stop) == 3
    text, _, final, _ = await stream(tiny_service.stub, max_new_tokens=60, seed=3, stop_sequences=["zzqq", stop])
    assert final.finish_reason == text_pb2.FINISH_REASON_STOP_SEQUENCE
    assert final.stop_sequence == stop
    assert stop not in text
    assert text == free_text[: free_text.index(stop)]


@pytest.mark.parametrize("seed", range(4))
async def test_banned_strings_never_appear(tiny_service, seed):
    free_text, _, _, _ = await stream(tiny_service.stub, max_new_tokens=40, seed=seed)
    # Ban what this seed would actually have written: the output must go another way.
    banned = [free_text[5:8], "e", " t"]
    text, _, final, messages = await stream(tiny_service.stub, max_new_tokens=40, seed=seed, banned_strings=banned)
    for string in banned:
        assert string not in text
    reply = await tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=spec(max_new_tokens=40, seed=seed,
                                                                               banned_strings=banned)))
    assert reply.text == text
    assert final.completion_tokens >= 1


async def test_streamed_pieces_never_hold_a_stop_sequence_start(tiny_service):
    free_text, _, _, _ = await stream(tiny_service.stub, max_new_tokens=60, seed=8)
    stop = free_text[30:34]
    _, _, _, messages = await stream(tiny_service.stub, max_new_tokens=60, seed=8, stop_sequences=[stop])
    shown = ""
    for message in messages[:-1]:
        shown += message.piece.text
        assert stop not in shown
    assert shown == free_text[: free_text.index(stop)]


async def test_end_of_text_and_min_length(tiny_service):
    eos = tiny_service.generator.runtime("").model.tokenizer.eos_token_id
    push_eos = [text_pb2.LogitBias(token_id=eos, bias=100)]
    _, ids, final, _ = await stream(tiny_service.stub, max_new_tokens=20, min_new_tokens=0, seed=1,
                                    logit_bias=push_eos)
    assert final.finish_reason == text_pb2.FINISH_REASON_END_OF_TEXT and ids == []
    _, ids, final, _ = await stream(tiny_service.stub, max_new_tokens=20, min_new_tokens=6, seed=1,
                                    logit_bias=push_eos)
    assert final.finish_reason == text_pb2.FINISH_REASON_END_OF_TEXT and len(ids) == 6
    assert eos not in ids


async def test_a_position_where_every_token_is_banned_ends_the_text(tiny_service):
    prepared = tiny_service.generator.prepare(
        wire.spec_from_pb(spec(preset="balanced", max_new_tokens=4, min_new_tokens=0, seed=1)))
    model = prepared.runtime.model
    seq = Sequence(prepared.request, model)
    banned = torch.full((model.vocab_size,), float("-inf"))
    assert seq.next_token(banned) in model.eos_token_ids
    one_left = banned.clone()
    one_left[7] = 0.0
    assert seq.next_token(one_left) == 7


async def test_logit_bias_steers_every_token(tiny_service):
    tokens = (await tiny_service.stub.Tokenize(text_pb2.TokenizeRequest(text=" dragon"))).token_ids
    _, ids, _, _ = await stream(tiny_service.stub, max_new_tokens=8, seed=2,
                                logit_bias=[text_pb2.LogitBias(token_id=tokens[0], bias=100)])
    assert ids == [tokens[0]] * 8


async def test_phrase_bias_writes_the_phrase(tiny_service):
    text, _, _, _ = await stream(tiny_service.stub, max_new_tokens=12, seed=2,
                                 phrase_bias=[text_pb2.PhraseBias(phrase=" the old king", bias=60)])
    assert " the old king" in text


async def test_greedy_preset_ignores_the_seed(tiny_service):
    a = await stream(tiny_service.stub, max_new_tokens=15, seed=1, preset="greedy")
    b = await stream(tiny_service.stub, max_new_tokens=15, seed=2, preset="greedy")
    assert a[1] == b[1]


async def test_context_window_ends_the_generation(tiny_service):
    # The tiny model's window is 512 tokens.
    long_prompt = "The knight rode north. " * 50
    count = (await tiny_service.stub.CountTokens(text_pb2.CountTokensRequest(texts=[long_prompt]))).counts[0]
    _, ids, final, _ = await stream(tiny_service.stub, prompt=long_prompt, max_new_tokens=1000, seed=1)
    assert final.finish_reason == text_pb2.FINISH_REASON_LENGTH
    assert count + len(ids) == 512


async def test_story_context_report_comes_first(tiny_service):
    context = text_pb2.StoryContext(
        story="The knight rode north. A dragon slept in the cave.", memory="Ada is the knight.",
        lorebook=[text_pb2.LorebookEntry(name="dragon", text="Dragons hoard gold.", keys=["dragon"])])
    messages = [m async for m in tiny_service.stub.GenerateStream(text_pb2.GenerateStreamRequest(
        spec=text_pb2.GenerationSpec(context=context, max_new_tokens=5, seed=1)))]
    assert messages[0].WhichOneof("event") == "context_report"
    report = messages[0].context_report
    assert report.prompt.startswith("Ada is the knight.\n") and "Dragons hoard gold." in report.prompt
    assert {e.source for e in report.entries if e.included} == {"memory", "lorebook:dragon", "story"}
    assert messages[-1].final.prompt_tokens == report.prompt_tokens
    reply = await tiny_service.stub.Generate(text_pb2.GenerateRequest(
        spec=text_pb2.GenerationSpec(context=context, max_new_tokens=5, seed=1)))
    assert reply.context_report.prompt == report.prompt


async def test_context_settings_categories_and_cascades_over_grpc(tiny_service):
    context = text_pb2.StoryContext(
        story="Line one.\nThe knight saw the castle.\nLine three.", memory="Ada is the knight.",
        memory_config=text_pb2.ContextConfig(prefix="[ ", suffix=" ]"),
        story_config=text_pb2.ContextConfig(trim_direction=text_pb2.TRIM_DIRECTION_NONE),
        lorebook=[
            text_pb2.LorebookEntry(name="Castle", text="The castle has a moat.", keys=["castle"], key_relative=True,
                                   context_config=text_pb2.ContextConfig(insertion_position=0)),
            text_pb2.LorebookEntry(name="Moat", text="Eels live in the moat.", keys=["moat"], cascading_activation=True,
                                   category="places"),
            text_pb2.LorebookEntry(name="Hidden", text="Never shown.", always_on=True, category="secrets"),
        ],
        lorebook_categories=[
            text_pb2.LorebookCategory(id="places", name="Places", create_subcontext=True,
                                      subcontext_config=text_pb2.ContextConfig(prefix="--- ")),
            text_pb2.LorebookCategory(id="secrets", enabled=False),
        ])
    reply = await tiny_service.stub.Generate(text_pb2.GenerateRequest(
        spec=spec(prompt=None, context=context, max_new_tokens=3, seed=1)))
    report = reply.context_report
    assert report.prompt == ("[ Ada is the knight. ]\n--- Eels live in the moat.\nLine one.\n"
                             "The knight saw the castle.\nThe castle has a moat.\nLine three.")
    rows = {row.source: (row.included, row.reason) for row in report.entries}
    assert rows == {
        "memory": (True, "included whole"), "authors_note": (False, "empty"), "story": (True, "included whole"),
        "lorebook:Castle": (True, "key 'castle' matched"), "lorebook:Moat": (True, "cascade from entry 'Castle'"),
        "lorebook:Hidden": (False, "category disabled"),
        "subcontext:Places": (True, "1 activated entry of category 'Places'"),
    }
    assert reply.stats.prompt_tokens == report.prompt_tokens


async def test_bad_context_settings_name_the_field_over_grpc(tiny_service):
    context = text_pb2.StoryContext(story="x", lorebook=[text_pb2.LorebookEntry(text="t", keys=["k"], category="nope")])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=spec(prompt=None, context=context)))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.context.lorebook[0].category" in raised.value.details()


async def test_tokens_and_listing(tiny_service):
    stub = tiny_service.stub
    tokenized = await stub.Tokenize(text_pb2.TokenizeRequest(text="The dragon 🐉"))
    assert "".join(tokenized.token_texts).replace("\ufffd", "") != ""
    assert (await stub.Detokenize(text_pb2.DetokenizeRequest(token_ids=tokenized.token_ids))).text == "The dragon 🐉"
    counts = await stub.CountTokens(text_pb2.CountTokensRequest(texts=["", "The dragon 🐉"]))
    assert list(counts.counts) == [0, len(tokenized.token_ids)]
    models = (await stub.ListModels(text_pb2.ListModelsRequest())).models
    assert [(m.name, m.is_default, m.context_window, m.architecture) for m in models] == [("tiny", True, 512, "llama")]
    presets = {p.name: p for p in (await stub.ListPresets(text_pb2.ListPresetsRequest())).presets}
    assert presets["greedy"].sampling.temperature == 0
    assert len(presets["balanced"].sampling.sampler_order) == 13  # the seven warpers and the newer steps
    assert presets["mirostat"].sampling.mirostat == 2


async def test_several_models_by_name(text_service, tiny_model, tiny_model_b):
    async with text_service([tiny_model, tiny_model_b]) as running:
        models = (await running.stub.ListModels(text_pb2.ListModelsRequest())).models
        assert [(m.name, m.is_default) for m in models] == [("tiny", True), ("tiny-b", False)]
        a = await stream(running.stub, max_new_tokens=10, seed=1)
        a_named = await stream(running.stub, model="tiny", max_new_tokens=10, seed=1)
        b = await stream(running.stub, model="tiny-b", max_new_tokens=10, seed=1)
        assert a[1] == a_named[1] != b[1]
        assert a[2].model == "tiny" and b[2].model == "tiny-b"


async def test_token_probabilities_come_with_each_token_and_do_not_change_the_output(tiny_service):
    plain_text, plain_ids, _, _ = await stream(tiny_service.stub, max_new_tokens=20, seed=9, preset="balanced")
    text, ids, _, messages = await stream(tiny_service.stub, max_new_tokens=20, seed=9, preset="balanced",
                                          top_probabilities=3)
    assert (text, ids) == (plain_text, plain_ids)
    pieces = [m.piece for m in messages if m.WhichOneof("event") == "piece"]
    assert all(len(p.probabilities) == len(p.token_ids) for p in pieces)
    reported = [probs for p in pieces for probs in p.probabilities]
    assert [probs.token_id for probs in reported] == ids
    for probs in reported:
        assert len(probs.before) == 3 and 1 <= len(probs.after) <= 3
        before = [a.logprob for a in probs.before]
        assert before == sorted(before, reverse=True) and before[0] <= 0
        assert probs.logprob_before <= before[0] and probs.logprob_after <= 0
        assert sum(math.exp(a.logprob) for a in probs.after) <= 1 + 1e-5
    reply = await tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=spec(
        max_new_tokens=20, seed=9, preset="balanced", top_probabilities=3)))
    assert list(reply.token_ids) == ids and [p.token_id for p in reply.probabilities] == ids
    plain = [m.piece for m in (await stream(tiny_service.stub, max_new_tokens=5, seed=9))[3]
             if m.WhichOneof("event") == "piece"]
    assert all(not p.probabilities for p in plain)


async def test_after_top_k_the_alternatives_are_the_top_k_renormalised(tiny_service):
    # The neutral preset changes nothing else, so "after" is exactly "before" cut to 3 tokens.
    _, ids, _, messages = await stream(tiny_service.stub, max_new_tokens=15, seed=4, preset="neutral",
                                       sampling=text_pb2.SamplingParameters(top_k=3), top_probabilities=3,
                                       min_new_tokens=0)  # nothing bans the end of text
    reported = [probs for m in messages if m.WhichOneof("event") == "piece" for probs in m.piece.probabilities]
    assert [probs.token_id for probs in reported] == ids
    for probs in reported:
        kept = math.log(sum(math.exp(a.logprob) for a in probs.before))
        assert [a.token_id for a in probs.after] == [a.token_id for a in probs.before]
        assert [a.logprob for a in probs.after] == pytest.approx([a.logprob - kept for a in probs.before], abs=1e-4)
        assert probs.token_id in [a.token_id for a in probs.before]
        assert probs.logprob_after == pytest.approx(probs.logprob_before - kept, abs=1e-4)


async def test_too_many_alternatives_is_refused_naming_the_field(tiny_service):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=spec(max_new_tokens=5, top_probabilities=21)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_probabilities" in error.value.details()
