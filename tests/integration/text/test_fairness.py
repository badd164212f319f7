"""One user cannot starve the others on the real text service: the gateway-signed caller is the
owner of each generation, a user at their cap is refused while another is admitted, waiting
requests take turns across users, and unsigned calls never reach the model."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from fabula.text.v1 import text_pb2
from fabula_wire import read_error_detail
from services.toolkit.callers import METADATA_KEY, TokenSigner, caller_check, new_key_pair

# Long enough (on the long-context tiny model) that it runs until the test cancels it.
LONG = dict(prompt="The knight", max_new_tokens=1024, min_new_tokens=1024, preset="neutral")
SHORT = dict(prompt="The knight", max_new_tokens=3, min_new_tokens=3, preset="neutral")


@pytest.fixture
def keys():
    return new_key_pair()


def as_user(signing_key: str, user: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, TokenSigner(signing_key).mint(user, "text")),)


def stream(stub, metadata, **fields):
    return stub.GenerateStream(text_pb2.GenerateStreamRequest(spec=text_pb2.GenerationSpec(seed=1, **fields)),
                               metadata=metadata)


async def first_piece(call):
    async for message in call:
        if message.WhichOneof("event") == "piece":
            return message


async def wait_until(predicate, timeout_s=30.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_a_user_at_the_cap_is_refused_while_another_is_admitted(text_service, tiny_long_model, keys):
    signing, public = keys
    async with text_service([tiny_long_model], max_batch_size=1, max_queue=8, max_per_user=2,
                            callers=caller_check(public, "text")) as running:
        scheduler = running.scheduler()
        a = as_user(signing, "user-a")
        busy = stream(running.stub, a, **LONG)
        await first_piece(busy)
        queued = stream(running.stub, a, **SHORT)
        await wait_until(lambda: scheduler.queue_depth == 1)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await running.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(seed=3, **SHORT)),
                                        metadata=a)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        detail, retry_after = read_error_detail(raised.value)
        assert detail.reason == "USER_LIMIT" and retry_after and retry_after > 0
        # User b is admitted to the same queue, and served once the busy slot frees.
        other = running.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(seed=4, **SHORT)),
                                      metadata=as_user(signing, "user-b"))
        await wait_until(lambda: scheduler.queue_depth == 2)
        busy.cancel()
        assert (await other).stats.completion_tokens == 3
        assert [m async for m in queued][-1].final.completion_tokens == 3


async def test_waiting_requests_take_turns_across_users(text_service, tiny_long_model, keys):
    signing, public = keys
    async with text_service([tiny_long_model], max_batch_size=1, max_queue=8, max_per_user=4,
                            callers=caller_check(public, "text")) as running:
        scheduler = running.scheduler()
        busy = stream(running.stub, as_user(signing, "user-x"), **LONG)
        await first_piece(busy)
        order: list[str] = []

        async def generate(user: str, name: str) -> None:
            call = stream(running.stub, as_user(signing, user), **SHORT)
            await first_piece(call)
            order.append(name)
            [m async for m in call]

        # User a queues three requests before user b's one arrives.
        tasks = []
        for index, (user, name) in enumerate([("user-a", "a1"), ("user-a", "a2"), ("user-a", "a3"),
                                              ("user-b", "b1")]):
            tasks.append(asyncio.create_task(generate(user, name)))
            await wait_until(lambda n=index + 1: scheduler.queue_depth == n)
        busy.cancel()
        await asyncio.gather(*tasks)
        assert order == ["a1", "b1", "a2", "a3"]


@pytest.mark.parametrize("case", ["unsigned", "forged", "expired"])
async def test_calls_without_a_valid_caller_token_are_unauthenticated(text_service, tiny_model, keys, case):
    signing, public = keys
    metadata = {"unsigned": (),
                "forged": as_user(new_key_pair()[0], "user-a"),
                "expired": ((METADATA_KEY, TokenSigner(signing, ttl_s=-60).mint("user-a", "text")),)}[case]
    async with text_service([tiny_model], callers=caller_check(public, "text")) as running:
        steps_before = running.scheduler().steps  # the warm-up's
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await running.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(**SHORT)),
                                        metadata=metadata)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert running.scheduler().steps == steps_before
