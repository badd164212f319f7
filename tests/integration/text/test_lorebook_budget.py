"""Hostile lorebooks on the real text service: a lorebook over the request's budget is refused
before any matching, one within it is stopped by the call's deadline, the preparation threads are
bounded (one more request is RESOURCE_EXHAUSTED), and another user's request is served meanwhile."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from fabula.text.v1 import text_pb2
from fabula_wire import read_error_detail
from services.toolkit.callers import METADATA_KEY, TokenSigner, caller_check, new_key_pair
from services.toolkit.executor import BUSY

SHORT = dict(prompt="The knight", max_new_tokens=3, min_new_tokens=3, preset="neutral", seed=1)
HOSTILE_STORY = "a" * 60 + "!"


def hostile_context(entries: int, keys: int) -> text_pb2.StoryContext:
    # (a|aa)+$ backtracks exponentially on a run of a's that ends in a mismatch: one search alone
    # would outlast the universe unless something stops it.
    return text_pb2.StoryContext(story=HOSTILE_STORY, lorebook=[
        text_pb2.LorebookEntry(name=f"e{i}", text="t", keys=[f"(a|aa)+(?#{j})$" for j in range(keys)],
                               regex_keys=True) for i in range(entries)])


@pytest.fixture
def keys():
    return new_key_pair()


def as_user(signing_key: str, user: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, TokenSigner(signing_key).mint(user, "text")),)


async def until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


async def test_hundreds_of_entries_of_catastrophic_keys_are_refused_while_another_user_is_served(
        text_service, tiny_model, keys):
    signing, public = keys
    async with text_service([tiny_model], callers=caller_check(public, "text")) as running:
        attack = running.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(
            context=hostile_context(300, 30), max_new_tokens=3)), metadata=as_user(signing, "attacker"), timeout=60)
        victim = running.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(**SHORT)),
                                       metadata=as_user(signing, "victim"), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await attack
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        detail, _ = read_error_detail(raised.value)
        assert detail.field == "spec.context.lorebook"
        assert "9000 keys" in raised.value.details()
        assert (await victim).stats.completion_tokens == 3


async def test_slow_keys_stop_at_the_deadline_and_the_preparation_threads_are_bounded(
        text_service, tiny_model, keys):
    signing, public = keys
    # Only the call's deadline can stop these searches: the per-search and per-request limits
    # are set to an hour.
    async with text_service([tiny_model], callers=caller_check(public, "text"), prepare_workers=1,
                            prepare_queue=1, lorebook_search_ms=3_600_000, lorebook_total_ms=3_600_000) as running:
        pool = running.generator.preparation
        attacker = as_user(signing, "attacker")
        hostile = text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(context=hostile_context(20, 20),
                                                                         max_new_tokens=3))
        slow = running.stub.Generate(hostile, metadata=attacker, timeout=1.0)
        slow_task = asyncio.ensure_future(slow)
        await until(lambda: pool.running == 1)
        victim = asyncio.ensure_future(running.stub.Generate(
            text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(**SHORT)), metadata=as_user(signing, "victim"),
            timeout=120))
        await until(lambda: pool.waiting == 1)
        # The one thread is busy and the one waiting place taken: refused at once.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await running.stub.Generate(hostile, metadata=attacker, timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        detail, retry_after = read_error_detail(refused.value)
        assert detail.reason == BUSY and retry_after and retry_after > 0
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await slow_task
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The victim's request needs the one thread, which only the deadline could free.
        assert (await victim).stats.completion_tokens == 3
        await until(lambda: pool.running == 0)
