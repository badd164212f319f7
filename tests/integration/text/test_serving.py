"""Serving behaviour: cancellation frees the slot, a full queue refuses at once, hostile inputs are
INVALID_ARGUMENT naming the field, health waits for the warm-up."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fabula.text.v1 import text_pb2
from fabula_wire import read_error_detail
from services.text.server import registrar

# Long enough (on the long-context tiny model) that the test is done long before it would end.
LONG = dict(prompt="The knight", max_new_tokens=1024, min_new_tokens=1024, preset="neutral")


def stream_call(stub, **fields):
    return stub.GenerateStream(text_pb2.GenerateStreamRequest(spec=text_pb2.GenerationSpec(**fields)))


async def first_piece(call):
    async for message in call:
        if message.WhichOneof("event") == "piece":
            return message


async def wait_until(predicate, timeout_s=10.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_cancelling_a_stream_frees_its_slot_within_a_step(text_service, tiny_long_model):
    async with text_service([tiny_long_model], max_batch_size=1, max_queue=4) as running:
        scheduler = running.scheduler()
        call = stream_call(running.stub, seed=1, **LONG)
        await first_piece(call)
        assert scheduler.active == 1
        steps_at_cancel = scheduler.steps
        call.cancel()
        await wait_until(lambda: scheduler.active == 0)
        assert scheduler.steps - steps_at_cancel <= 2
        # The one slot is free: the next request runs to its end.
        reply = await running.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(
            prompt="x", max_new_tokens=5, min_new_tokens=5, seed=1)))
        assert reply.stats.completion_tokens == 5


async def test_deadline_cancels_the_generation(text_service, tiny_long_model):
    async with text_service([tiny_long_model], max_batch_size=1, max_queue=4) as running:
        scheduler = running.scheduler()
        long = dict(LONG, prompt="x")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await running.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(seed=1, **long)),
                                        timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_until(lambda: scheduler.active == 0)


async def test_a_full_queue_answers_resource_exhausted_at_once(text_service, tiny_long_model):
    async with text_service([tiny_long_model], max_batch_size=1, max_queue=1) as running:
        scheduler = running.scheduler()
        busy = stream_call(running.stub, seed=1, **LONG)
        await first_piece(busy)
        queued = stream_call(running.stub, seed=2, **LONG)
        await wait_until(lambda: scheduler.queue_depth == 1)
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await running.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(seed=3, **LONG)))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert asyncio.get_running_loop().time() - started < 5
        detail, retry_after = read_error_detail(raised.value)
        assert detail.reason == "QUEUE_FULL" and retry_after and retry_after > 0
        busy.cancel()
        # The queued request gets the slot once the busy one is gone.
        assert (await first_piece(queued)) is not None
        queued.cancel()
        await wait_until(lambda: scheduler.active == 0 and scheduler.queue_depth == 0)


def _order(samplers):
    return text_pb2.SamplingParameters(sampler_order=[text_pb2.SamplerStep(sampler=s) for s in samplers])


HOSTILE = [
    ("nan temperature", dict(sampling=text_pb2.SamplingParameters(temperature=math.nan)), "spec.sampling.temperature"),
    ("negative temperature", dict(sampling=text_pb2.SamplingParameters(temperature=-1)), "spec.sampling.temperature"),
    ("infinite top_p", dict(sampling=text_pb2.SamplingParameters(top_p=math.inf)), "spec.sampling.top_p"),
    ("10 MB prompt", dict(prompt="a" * 10_000_000), "spec.prompt"),
    ("unknown model", dict(model="gpt-17"), "spec.model"),
    ("unknown preset", dict(preset="wild"), "spec.preset"),
    ("unbalanced order", dict(sampling=_order([1, 2, 3])), "spec.sampling.sampler_order"),
    ("duplicated order", dict(sampling=_order([1, 2, 3, 4, 5, 6, 7, 7])), "spec.sampling.sampler_order[7]"),
    ("zero length", dict(max_new_tokens=0), "spec.max_new_tokens"),
    ("too long", dict(max_new_tokens=10**6), "spec.max_new_tokens"),
    ("min over max", dict(max_new_tokens=5, min_new_tokens=6), "spec.min_new_tokens"),
    ("token beyond vocabulary", dict(logit_bias=[text_pb2.LogitBias(token_id=10**6, bias=1)]),
     "spec.logit_bias[0].token_id"),
    ("empty stop", dict(stop_sequences=[""]), "spec.stop_sequences[0]"),
    ("bad regex key", dict(context=text_pb2.StoryContext(story="x", lorebook=[
        text_pb2.LorebookEntry(keys=["(("], regex_keys=True, text="t")])), "spec.context.lorebook[0].keys[0]"),
    ("huge story", dict(context=text_pb2.StoryContext(story="a" * 10_000_000)), "spec.context.story"),
]


@pytest.mark.parametrize(("name", "fields", "field"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_inputs_are_invalid_argument_naming_the_field(tiny_service, name, fields, field):
    fields = {"prompt": "x", **fields} if "context" not in fields else fields
    for call in (
        lambda: tiny_service.stub.Generate(text_pb2.GenerateRequest(spec=text_pb2.GenerationSpec(**fields))),
        lambda: _drain(stream_call(tiny_service.stub, **fields)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
        detail, _ = read_error_detail(raised.value)
        assert detail.field.startswith(field), (detail.field, raised.value.details())
    assert tiny_service.scheduler().active == 0


async def _drain(call):
    return [message async for message in call]


async def test_token_calls_validate_too(tiny_service):
    stub = tiny_service.stub
    cases = [
        (stub.Detokenize(text_pb2.DetokenizeRequest(token_ids=[1, 10**7])), "token_ids[1]"),
        (stub.Tokenize(text_pb2.TokenizeRequest(model="nope", text="x")), "model"),
        (stub.CountTokens(text_pb2.CountTokensRequest(texts=["a" * 10_000_000])), "texts[0]"),
    ]
    for call, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert read_error_detail(raised.value)[0].field == field


async def test_health_is_not_serving_until_the_model_is_warm(tiny_model):
    from services.text.generator import TextGenerator
    from services.text.scheduler import SchedulerConfig
    from services.text.settings import TextSettings
    from services.toolkit.server import start_server

    generator = TextGenerator(TextSettings(models={"tiny": tiny_model.source}, warmup_tokens=2))
    # As `serve` does: listen first, NOT_SERVING while loading and warming, then SERVING.
    server = await start_server(registrar(generator), serving=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    try:
        status = (await health.Check(health_pb2.HealthCheckRequest(service="fabula.text.v1.TextService"))).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        from fabula.text.v1 import text_pb2_grpc
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await text_pb2_grpc.TextServiceStub(channel).Generate(text_pb2.GenerateRequest(
                spec=text_pb2.GenerationSpec(prompt="x")))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        generator.add_model(tiny_model, SchedulerConfig())
        await generator.warm_up()
        await server.set_serving(True)
        status = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
        await server.stop(0)
        generator.close()
