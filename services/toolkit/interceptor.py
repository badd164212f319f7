"""The one exception interceptor: domain errors become precise status codes, bugs become INTERNAL.

Every non-OK answer carries a google.rpc.Status in the `grpc-status-details-bin` trailer with a
`fabula.common.v1.ErrorDetail` (field, value, reason) and, for RESOURCE_EXHAUSTED and
UNAVAILABLE, a `google.rpc.RetryInfo`, so clients and the gateway never have to parse messages;
they read it with `fabula_wire.read_error_detail`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from fabula.common.v1 import errors_pb2
from fabula_wire import STATUS_DETAILS_KEY
from services.toolkit import metrics
from services.toolkit.errors import FabulaError, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


def status_for(error: FabulaError) -> status_pb2.Status:
    """The rich status for a domain error."""
    detail = any_pb2.Any()
    detail.Pack(errors_pb2.ErrorDetail(field=error.field, value=error.value, reason=error.reason))
    details = [detail]
    if isinstance(error, (ResourceExhausted, Unavailable)):
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=details)


async def _abort(context: grpc.aio.ServicerContext, error: FabulaError) -> None:
    status = status_for(error)
    await context.abort(
        error.code, error.message, trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),)
    )


async def _abort_internal(context: grpc.aio.ServicerContext, method: str) -> None:
    log.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service's log")


class _Outcome:
    """Records one call's outcome (code and duration) in the shared Prometheus metrics."""

    def __init__(self, service: str, method: str) -> None:
        self.service, self.method = service, method
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()

    def finish(self) -> None:
        metrics.record_rpc(self.service, self.method, self.code.name, time.perf_counter() - self.started)


def _split(full_method: str) -> tuple[str, str]:
    _, service, method = full_method.split("/", 2) if full_method.count("/") >= 2 else ("", "", full_method)
    return service, method


class ExceptionInterceptor(grpc.aio.ServerInterceptor):
    """Maps `FabulaError` to its status code; any other exception is logged and made INTERNAL."""

    def __init__(self) -> None:
        # The wrapped handler of each method, built on its first call: wrapping costs more than
        # the rest of this interceptor, and a method's handler never changes once registered.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        cached = self._wrapped.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, handler_call_details.method)
        self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        service, method = _split(full_method)
        if service.startswith("grpc."):
            # Health and reflection are grpc's own; leave them as they are.
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, service, method),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, service, method),
                handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, service, method),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, service, method),
            handler.request_deserializer, handler.response_serializer)

    @staticmethod
    def _wrap_unary(behavior: Callable[..., Awaitable[Any]], service: str, method: str):
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            outcome = _Outcome(service, method)
            try:
                return await behavior(request, context)
            except FabulaError as error:
                outcome.code = error.code
                await _abort(context, error)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                outcome.code = context.code() or grpc.StatusCode.CANCELLED
                raise
            except Exception:
                outcome.code = grpc.StatusCode.INTERNAL
                await _abort_internal(context, method)
            finally:
                outcome.finish()

        return wrapped

    @staticmethod
    def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]], service: str, method: str):
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            outcome = _Outcome(service, method)
            try:
                async for response in behavior(request, context):
                    yield response
            except FabulaError as error:
                outcome.code = error.code
                await _abort(context, error)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                outcome.code = context.code() or grpc.StatusCode.CANCELLED
                raise
            except Exception:
                outcome.code = grpc.StatusCode.INTERNAL
                await _abort_internal(context, method)
            finally:
                outcome.finish()

        return wrapped

