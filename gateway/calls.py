"""Awaiting gRPC calls on behalf of an HTTP request, so that a client who leaves stops the work.

Neither uvicorn nor Starlette cancels a handler when its client disconnects: the handler runs to
the end and its answer is thrown away. Here a watcher waits for the ASGI `http.disconnect`
message beside the call and cancels the call when it comes, so the service stops at once.

Every route awaits its call through one of these: `unary` (one reply), `first_message` (the
opening of a server stream that the route then relays) or `all_messages` (a server stream
collected into one answer). Each turns a failed call into the HTTP error errors.py decides, with
the service's field names rewritten by the `field_prefixes` its schema module declares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from starlette.requests import Request

from gateway.errors import ApiError, from_rpc_error

Reply = TypeVar("Reply")


class Cancellable(Protocol):
    def cancel(self) -> bool: ...


async def _wait_for_disconnect(request: Request) -> None:
    # Only called once the request body has been read (FastAPI reads it before the handler
    # runs; the import route says when it is done), so nothing here can swallow body bytes.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class DisconnectWatch:
    """Cancels `call` if the client disconnects while the watch is open, and then answers the
    request (to no one) with 499 rather than let the cancelled call look like a server shutdown.

    `after`: listen only once this event is set, for a route that is still reading the body
    itself (listening earlier would take body messages away from it). `left_earlier`: how such a
    route tells that its body reader saw the client leave before that.
    """

    def __init__(self, request: Request, call: Cancellable, *, after: asyncio.Event | None = None,
                 left_earlier: Callable[[], bool] | None = None) -> None:
        self._request = request
        self._call = call
        self._after = after
        self._left_earlier = left_earlier
        self._watcher: asyncio.Task[None] | None = None

    @property
    def client_left(self) -> bool:
        if self._left_earlier is not None and self._left_earlier():
            return True
        watcher = self._watcher
        return watcher is not None and watcher.done() and not watcher.cancelled()

    async def __aenter__(self) -> DisconnectWatch:
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, _type: Any, error: BaseException | None, _traceback: Any) -> None:
        assert self._watcher is not None
        self._watcher.cancel()
        # A CancelledError is this task's own cancellation (e.g. a server shutdown) unless the
        # client's leaving cancelled the call it was awaiting.
        if isinstance(error, asyncio.CancelledError) and self.client_left:
            raise ApiError(499, "client closed the request", code="CANCELLED") from None

    async def _watch(self) -> None:
        if self._after is not None:
            await self._after.wait()
        await _wait_for_disconnect(self._request)
        self._call.cancel()


async def unary(request: Request, call: Awaitable[Reply], *, field_prefixes: Sequence[str] = ()) -> Reply:
    """The reply of a unary call."""
    async with DisconnectWatch(request, call):  # type: ignore[arg-type]
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, field_prefixes) from None


async def first_message(request: Request, call: grpc.aio.UnaryStreamCall, service: str, *,
                        field_prefixes: Sequence[str] = ()) -> Any:
    """The first message of a server stream, awaited before the response starts.

    Services validate before their first message, so waiting for it separates "refused"
    (answered with its own HTTP status) from "failed half-way" (too late for a status). On any
    failure the call is cancelled; after a success the caller relays the rest and cancels it.
    """
    try:
        async with DisconnectWatch(request, call):
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error, field_prefixes) from None
        if first is grpc.aio.EOF:
            raise ApiError(502, f"the {service} service closed the stream without an answer", code="INTERNAL")
    except BaseException:
        call.cancel()
        raise
    return first


async def all_messages(request: Request, call: grpc.aio.UnaryStreamCall, *,
                       field_prefixes: Sequence[str] = ()) -> list[Any]:
    """Every message of a server stream, for a route that answers once the stream has ended."""
    async with DisconnectWatch(request, call):
        try:
            return [message async for message in call]
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, field_prefixes) from None
