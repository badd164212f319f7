"""Relaying a gRPC server stream to the browser as Server-Sent Events, the same way for every
service: a request the service refuses is a plain HTTP error, not a stream that starts and fails
(calls.first_message); later errors become an `error` event with the usual JSON body; and
whatever ends the stream — the client leaving (sse-starlette cancels the generator) or the last
message — cancels the call, so the service stops generating for nobody."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request

from gateway.calls import first_message
from gateway.errors import error_body, from_rpc_error

PING_S = 15

# A message of the stream as an SSE event: its name and its JSON data.
EventFromMessage = Callable[[Any], tuple[str, Any]]


async def relay_stream(request: Request, call: grpc.aio.UnaryStreamCall, event_from_pb: EventFromMessage,
                       service: str, *, field_prefixes: Sequence[str] = ()) -> EventSourceResponse:
    first = await first_message(request, call, service, field_prefixes=field_prefixes)

    def event(message: Any) -> dict[str, str]:
        name, data = event_from_pb(message)
        return {"event": name, "data": json.dumps(data, ensure_ascii=False)}

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            yield event(first)
            while (message := await call.read()) is not grpc.aio.EOF:
                yield event(message)
        except grpc.aio.AioRpcError as error:
            api_error = from_rpc_error(error, field_prefixes)
            yield {"event": "error",
                   "data": json.dumps(error_body(api_error.code, api_error.message, api_error.field))}
        finally:
            call.cancel()

    return EventSourceResponse(events(), ping=PING_S)
