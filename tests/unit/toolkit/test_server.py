"""The toolkit's server: error mapping with rich details, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fabula.common.v1 import errors_pb2
from fabula_wire import read_error_detail
from services.toolkit import errors
from services.toolkit.server import start_server

SERVICE = "fabula.test.v1.Probe"

# A call with reason "wait" stands for one waiting in a service's queue: it holds until released.
_waiting = asyncio.Event()
_released = asyncio.Event()


async def _raise_from_field(request: errors_pb2.ErrorDetail, context) -> errors_pb2.ErrorDetail:
    # The request's `reason` picks what the handler does, so one method exercises every path.
    if request.reason == "invalid":
        raise errors.InvalidArgument("sampling.temperature", float("nan"), "must be a finite number")
    if request.reason == "busy":
        raise errors.ResourceExhausted("queue full", retry_after_s=2.5)
    if request.reason == "stale":
        raise errors.Conflict("change index 3 is stale; stored is 4", reason="STALE_CHANGE_INDEX")
    if request.reason == "bug":
        raise KeyError("oops")
    if request.reason == "wait":
        _waiting.set()
        await _released.wait()
    return errors_pb2.ErrorDetail(field="echo:" + request.field)


async def _stream(request: errors_pb2.ErrorDetail, context):
    yield errors_pb2.ErrorDetail(field="first")
    raise errors.NotFound("no such thing", field="id", value=request.field)


def _register(server: grpc.aio.Server) -> list[str]:
    handlers = {
        "Call": grpc.unary_unary_rpc_method_handler(
            _raise_from_field, errors_pb2.ErrorDetail.FromString, errors_pb2.ErrorDetail.SerializeToString),
        "Stream": grpc.unary_stream_rpc_method_handler(
            _stream, errors_pb2.ErrorDetail.FromString, errors_pb2.ErrorDetail.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return [SERVICE]


@pytest.fixture
async def probe():
    running = await start_server(_register)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    call = channel.unary_unary(f"/{SERVICE}/Call", errors_pb2.ErrorDetail.SerializeToString,
                               errors_pb2.ErrorDetail.FromString)
    stream = channel.unary_stream(f"/{SERVICE}/Stream", errors_pb2.ErrorDetail.SerializeToString,
                                  errors_pb2.ErrorDetail.FromString)
    yield running, channel, call, stream
    await channel.close()
    await running.stop(0)


async def test_ok_call_passes_through(probe):
    _, _, call, _ = probe
    reply = await call(errors_pb2.ErrorDetail(field="x"))
    assert reply.field == "echo:x"


@pytest.mark.parametrize(
    ("reason", "code", "field"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature"),
        ("busy", grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        ("stale", grpc.StatusCode.ABORTED, ""),
        ("bug", grpc.StatusCode.INTERNAL, ""),
    ],
)
async def test_errors_map_to_precise_codes(probe, reason, code, field):
    _, _, call, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(errors_pb2.ErrorDetail(reason=reason))
    assert raised.value.code() == code
    detail, retry_after = read_error_detail(raised.value)
    assert detail.field == field
    if reason == "invalid":
        assert "nan" in raised.value.details() and detail.value == "nan"
    if reason == "busy":
        assert retry_after == 2.5
    if reason == "stale":
        assert detail.reason == "STALE_CHANGE_INDEX"
    if reason == "bug":
        # A bug's text stays in the log; the caller learns only that it was internal.
        assert "oops" not in raised.value.details()


async def test_stream_error_after_first_message(probe):
    _, _, _, stream = probe
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for message in stream(errors_pb2.ErrorDetail(field="42")):
            received.append(message.field)
    assert received == ["first"]
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert read_error_detail(raised.value)[0].value == "42"


async def test_health_follows_serving_state(probe):
    running, channel, _, _ = probe
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await running.set_serving(False)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_the_service(probe):
    _, channel, _, _ = probe
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(one_request()):
        names = {service.name for service in reply.list_services_response.service}
        assert SERVICE in names and "grpc.health.v1.Health" in names
        break
    else:
        pytest.fail("reflection sent no answer")


async def test_drain_serves_new_calls_then_finishes_held_ones(probe):
    """SIGTERM's drain: NOT_SERVING at once, new calls still served during the delay, then new
    calls refused while a call already held (queued) runs to completion."""
    running, channel, call, _ = probe
    _waiting.clear()
    _released.clear()
    held = asyncio.ensure_future(call(errors_pb2.ErrorDetail(field="held", reason="wait")))
    await asyncio.wait_for(_waiting.wait(), 10)
    stopping = asyncio.ensure_future(running.stop(30, drain_delay_s=2.0))
    health_stub = health_pb2_grpc.HealthStub(channel)
    reply = await health_stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert (await call(errors_pb2.ErrorDetail(field="during delay"))).field == "echo:during delay"
    assert not stopping.done()

    async def refused() -> grpc.StatusCode:
        while True:
            try:
                await call(errors_pb2.ErrorDetail(field="late"), timeout=5)
            except grpc.aio.AioRpcError as error:
                return error.code()
            await asyncio.sleep(0.05)

    assert await asyncio.wait_for(refused(), 20) == grpc.StatusCode.UNAVAILABLE
    assert not held.done() and not stopping.done()
    _released.set()
    assert (await held).field == "echo:held"
    await asyncio.wait_for(stopping, 10)
