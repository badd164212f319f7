"""Relaying a gRPC server stream to the browser as Server-Sent Events, the same way for every
service: a request the service refuses is a plain HTTP error, not a stream that starts and fails;
later errors become an `error` event with the usual JSON body; and whatever ends the stream —
the client leaving (sse-starlette cancels the generator) or the last message — cancels the call,
so the service stops generating for nobody."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from sse_starlette.sse import EventSourceResponse

from gateway.errors import ApiError, error_body

PING_S = 15


async def relay_stream(
    call: grpc.aio.UnaryStreamCall,
    to_event: Callable[[Any], dict[str, str]],
    to_api_error: Callable[[grpc.aio.AioRpcError], ApiError],
    service: str,
) -> EventSourceResponse:
    try:
        # Services validate before their first message, so waiting for it separates "refused"
        # (answered as a plain 4xx) from "failed half-way" (an error event).
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        raise to_api_error(error) from None
    if first is grpc.aio.EOF:
        raise ApiError(502, f"the {service} service closed the stream without an answer", code="INTERNAL")

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            yield to_event(first)
            while (message := await call.read()) is not grpc.aio.EOF:
                yield to_event(message)
        except grpc.aio.AioRpcError as error:
            api_error = to_api_error(error)
            yield {"event": "error",
                   "data": json.dumps(error_body(api_error.code, api_error.message, api_error.field))}
        finally:
            call.cancel()

    return EventSourceResponse(events(), ping=PING_S)
