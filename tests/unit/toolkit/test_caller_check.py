"""The server interceptor on a real gRPC server: only calls the gateway signed get through, and
the service reads the verified user; health stays open for probes."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fabula.common.v1 import errors_pb2
from fabula_wire import read_error_detail
from services.toolkit.callers import (
    METADATA_KEY, TokenSigner, caller_check, caller_token_interceptors, caller_user_id, new_key_pair, set_current_user)
from services.toolkit.interceptor_kinds import one_per_kind
from services.toolkit.server import start_server

SERVICE = "fabula.test.v1.Whoami"


async def _whoami(request: errors_pb2.ErrorDetail, context) -> errors_pb2.ErrorDetail:
    return errors_pb2.ErrorDetail(value=caller_user_id())


async def _whoami_stream(request: errors_pb2.ErrorDetail, context):
    yield errors_pb2.ErrorDetail(value=caller_user_id())


def _register(server: grpc.aio.Server) -> list[str]:
    codec = (errors_pb2.ErrorDetail.FromString, errors_pb2.ErrorDetail.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Call": grpc.unary_unary_rpc_method_handler(_whoami, *codec),
        "Stream": grpc.unary_stream_rpc_method_handler(_whoami_stream, *codec),
    }),))
    return [SERVICE]


@pytest.fixture
def keys():
    return new_key_pair()


async def _serve(public_key: str, *, required: bool = True):
    running = await start_server(_register, callers=caller_check(public_key, "text", required=required))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    codec = (errors_pb2.ErrorDetail.SerializeToString, errors_pb2.ErrorDetail.FromString)
    return running, channel, channel.unary_unary(f"/{SERVICE}/Call", *codec), \
        channel.unary_stream(f"/{SERVICE}/Stream", *codec)


@pytest.fixture
async def service(keys):
    running, channel, call, stream = await _serve(keys[1])
    yield call, stream, channel
    await channel.close()
    await running.stop(0)


def _signed(token: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, token),)


async def test_a_signed_call_reaches_the_service_with_its_user(service, keys):
    call, stream, _ = service
    token = TokenSigner(keys[0]).mint("user-7", "text")
    assert (await call(errors_pb2.ErrorDetail(), metadata=_signed(token))).value == "user-7"
    assert [reply.value async for reply in stream(errors_pb2.ErrorDetail(), metadata=_signed(token))] == ["user-7"]


@pytest.mark.parametrize("case", ["unsigned", "forged", "expired", "other audience"])
async def test_calls_without_a_valid_token_are_unauthenticated(service, keys, case):
    call, stream, _ = service
    token = {"unsigned": "",
             "forged": TokenSigner(new_key_pair()[0]).mint("user-7", "text"),
             "expired": TokenSigner(keys[0], ttl_s=-60).mint("user-7", "text"),
             "other audience": TokenSigner(keys[0]).mint("user-7", "image")}[case]
    metadata = _signed(token) if token else ()
    for method in (call, stream):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            reply = method(errors_pb2.ErrorDetail(), metadata=metadata)
            if method is stream:
                [item async for item in reply]
            else:
                await reply
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        detail, _ = read_error_detail(raised.value)
        assert detail.field == METADATA_KEY


async def test_health_needs_no_token(service):
    _, _, channel = service
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_optional_check_lets_unsigned_calls_through_but_not_bad_tokens(keys):
    running, channel, call, _ = await _serve(keys[1], required=False)
    try:
        assert (await call(errors_pb2.ErrorDetail())).value == ""
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(errors_pb2.ErrorDetail(), metadata=_signed("v1.bogus.token"))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()
        await running.stop(0)


async def test_the_client_interceptors_sign_unary_and_streaming_calls(keys):
    signing, public = keys
    running = await start_server(_register, callers=caller_check(public, "text"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}",
                                        interceptors=caller_token_interceptors(TokenSigner(signing), "text"))
    codec = (errors_pb2.ErrorDetail.SerializeToString, errors_pb2.ErrorDetail.FromString)
    try:
        set_current_user("user-9")  # what the gateway does once it knows the request's user
        assert (await channel.unary_unary(f"/{SERVICE}/Call", *codec)(errors_pb2.ErrorDetail())).value == "user-9"
        stream = channel.unary_stream(f"/{SERVICE}/Stream", *codec)(errors_pb2.ErrorDetail())
        assert [reply.value async for reply in stream] == ["user-9"]
    finally:
        await channel.close()
        await running.stop(0)


async def test_a_channel_given_one_per_kind_runs_an_interceptor_on_streaming_calls_too(keys):
    # A grpc.aio channel files an object implementing several kinds under unary calls only: the
    # tracing and reconnect interceptors went unused on streamed generations before one_per_kind.
    seen: list[str] = []

    class Recording(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):
            seen.append("unary")
            return await continuation(client_call_details, request)

        async def intercept_unary_stream(self, continuation, client_call_details, request):
            seen.append("stream")
            return await continuation(client_call_details, request)

    signing, public = keys
    running = await start_server(_register, callers=caller_check(public, "text"))
    codec = (errors_pb2.ErrorDetail.SerializeToString, errors_pb2.ErrorDetail.FromString)
    for interceptors, expected in (([Recording()], ["unary"]), (one_per_kind(Recording()), ["unary", "stream"])):
        seen.clear()
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{running.port}",
            interceptors=[*interceptors, *caller_token_interceptors(TokenSigner(signing), "text", "user-3")])
        try:
            assert (await channel.unary_unary(f"/{SERVICE}/Call", *codec)(errors_pb2.ErrorDetail())).value == "user-3"
            stream = channel.unary_stream(f"/{SERVICE}/Stream", *codec)(errors_pb2.ErrorDetail())
            assert [reply.value async for reply in stream] == ["user-3"]
            assert seen == expected
        finally:
            await channel.close()
    await running.stop(0)


def test_one_per_kind_refuses_an_object_that_intercepts_nothing():
    with pytest.raises(TypeError, match="object implements no"):
        one_per_kind(object())
