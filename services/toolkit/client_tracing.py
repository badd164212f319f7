"""The gRPC client side of tracing: W3C trace context in every call's metadata, and a CLIENT span
per call when spans are recorded (`record_spans`; see tracing.client_interceptors).

OpenTelemetry's own aio client interceptors await the whole call inside the interceptor (to read
its status). While they do, `call.cancel()` cancels only the interceptor, never the RPC, so a
caller could not stop a call whose HTTP client went away. This interceptor hands the call back
at once and closes the span from the call's done callback instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


async def _finish(span: Span, call: grpc.aio.Call) -> None:
    try:
        code = grpc.StatusCode.CANCELLED if call.cancelled() else await call.code()
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    finally:
        span.end()


class TracingClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, record_spans: bool = True) -> None:
        self._record_spans = record_spans
        self._tracer = trace.get_tracer(__name__)
        # Done callbacks only schedule the span's ending; keep the tasks referenced until done.
        self._finishing: set[asyncio.Task[None]] = set()

    async def _intercept(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        if not self._record_spans:
            return await continuation(self._with_context(details), request)
        method = _method_name(details.method)
        service, _, name = method.strip("/").partition("/")
        span = self._tracer.start_span(method, kind=SpanKind.CLIENT, attributes={
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": name})
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()), *carrier.items())
        traced = grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                            details.wait_for_ready)
        try:
            call = await continuation(traced, request)
        except BaseException:
            span.end()
            raise
        call.add_done_callback(lambda done: self._schedule_finish(span, done))
        return call

    @staticmethod
    def _with_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        """`details` plus the current trace context (the caller's traceparent), without a span."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if not carrier:
            return details
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()), *carrier.items())
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)

    def _schedule_finish(self, span: Span, call: grpc.aio.Call) -> None:
        task = asyncio.get_running_loop().create_task(_finish(span, call))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await self._intercept(continuation, client_call_details, request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await self._intercept(continuation, client_call_details, request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await self._intercept(continuation, client_call_details, request_iterator)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await self._intercept(continuation, client_call_details, request_iterator)
