"""Awaiting gRPC calls on behalf of an HTTP request, so that a client who leaves stops the work.

Neither uvicorn nor Starlette cancels a handler when its client disconnects: the handler runs to
the end and its answer is thrown away. Here a watcher waits for the ASGI `http.disconnect`
message beside the call and cancels the call when it comes, so the service stops at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from starlette.requests import Request

from gateway.errors import ApiError

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
    """Cancels `call` if the client disconnects while the watch is open.

    `after`: listen only once this event is set, for a route that is still reading the body
    itself (listening earlier would take body messages away from it).
    """

    def __init__(self, request: Request, call: Cancellable, *, after: asyncio.Event | None = None) -> None:
        self._request = request
        self._call = call
        self._after = after
        self._watcher: asyncio.Task[None] | None = None

    @property
    def client_left(self) -> bool:
        watcher = self._watcher
        return watcher is not None and watcher.done() and not watcher.cancelled()

    async def __aenter__(self) -> DisconnectWatch:
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self._watcher is not None
        self._watcher.cancel()

    async def _watch(self) -> None:
        if self._after is not None:
            await self._after.wait()
        await _wait_for_disconnect(self._request)
        self._call.cancel()


async def unary(request: Request, call: Awaitable[Reply]) -> Reply:
    """The reply of a unary call (failures raise grpc.aio.AioRpcError, mapped in errors.py)."""
    async with DisconnectWatch(request, call) as watch:  # type: ignore[arg-type]
        try:
            return await call
        except asyncio.CancelledError:
            if watch.client_left:
                # The call was cancelled because the client left, not this task: answer (to no
                # one) with 499 rather than let it look like a server shutdown.
                raise ApiError(499, "client closed the request", code="CANCELLED") from None
            raise
