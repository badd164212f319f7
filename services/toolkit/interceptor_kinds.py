"""One client interceptor object per kind of gRPC call.

A grpc.aio channel files each client interceptor it is given under the first of the four call
kinds (unary-unary, unary-stream, stream-unary, stream-stream) the object implements: it tests
them in an if/elif chain. An object that implements several kinds would therefore intercept only
unary calls, and streamed generations would go out without it. `one_per_kind` hands the channel
a thin adapter per kind, each passing the call on to the object's method for that kind.
"""

from __future__ import annotations

from typing import Any

import grpc


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await self.inner.intercept_unary_unary(continuation, client_call_details, request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await self.inner.intercept_unary_stream(continuation, client_call_details, request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await self.inner.intercept_stream_unary(continuation, client_call_details, request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await self.inner.intercept_stream_stream(continuation, client_call_details, request_iterator)


_ADAPTERS = (
    (grpc.aio.UnaryUnaryClientInterceptor, _UnaryUnary),
    (grpc.aio.UnaryStreamClientInterceptor, _UnaryStream),
    (grpc.aio.StreamUnaryClientInterceptor, _StreamUnary),
    (grpc.aio.StreamStreamClientInterceptor, _StreamStream),
)


def one_per_kind(interceptor: Any) -> list[grpc.aio.ClientInterceptor]:
    """An adapter for every kind of call `interceptor` implements, to give a channel instead of it."""
    adapters = [adapter(interceptor) for kind, adapter in _ADAPTERS if isinstance(interceptor, kind)]
    if not adapters:
        raise TypeError(f"{type(interceptor).__name__} implements no grpc.aio client interceptor kind")
    return adapters
