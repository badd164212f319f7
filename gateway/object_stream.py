"""The gateway's side of the editor's ObjectData stream: the lean /data routes' GetObject and
PutObject, one message each way on a few long-lived streams instead of one call per request.

The protocol is the editor's (protos/fabula/editor/v1/editor.proto, services/editor/object_stream.py).
The streams have a channel of their own, without interceptors (clients.py says why), so every
request carries what its unary call would get from them: the user's session ("authorization"), a
caller token signed for that user (the stream is opened with the gateway's token for nobody),
its trace context (with a CLIENT span where the gateway records them), and the request's
deadline, also kept here: when it passes, the request is cancelled on the stream
and answered DEADLINE_EXCEEDED (504) as the call would be. An answer's status becomes the same
`grpc.aio.AioRpcError` the call would have raised, so errors.py maps both alike.

When no stream is ready (none opened yet, the editor restarting, a stream that broke), a request
goes by unary call, which rides out restarts as before (channel_policy.py), and a stream is opened
again in the background, at most every `REOPEN_INTERVAL_S`. A stream counts as ready only once the
editor has answered it with initial metadata. On a stream that breaks, a GetObject in flight is
sent again by unary call (the retry a unary GetObject gets on UNAVAILABLE) and a PutObject in
flight is answered 503 (it may have been applied; writes are never repeated); one that could not
be written on the stream at all goes by unary call. A request the editor
refused as DRAINING was not served: it goes by unary call. A draining editor also says so on the
stream itself (an answer with request_id 0): the stream is closed on this side at once, and ends
once the requests still in flight on it are answered.

Batches: each connection's messages are written by one task; requests queued while a message is
being sent go together in the next one (`fabula_wire.object_data`), where the editor said it takes
batches, and the gateway says it takes batched answers. Nothing waits to be batched.

Backpressure: at most `in_flight` requests per stream; beyond, a request waits for a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind
from starlette.requests import Request

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from fabula_wire import STATUS_DETAILS_KEY, read_error_detail
from fabula_wire.object_data import BATCH_METADATA_KEY, announced_batch_bytes, take_batch
from gateway.calls import DisconnectWatch
from gateway.errors import from_rpc_error
from services.toolkit.callers import METADATA_KEY, TokenSigner

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["EditorService"].full_name
OPEN_TIMEOUT_S = 1.0
REOPEN_INTERVAL_S = 0.5
# A stream is closed (gracefully: its answers still come) and opened again after this long, so
# that the streams follow the editor replicas the channel balances over (one that was added, or
# came back, gets its share within this time) instead of staying where they were first opened.
MAX_AGE_S = 60.0
_DRAINING = "DRAINING"


class _StreamLost(Exception):
    """The stream broke (or was closed) before the request's answer came."""


class _NoConnection(Exception):
    """The request was not sent (no connection open when it got its slot, or the connection closed
    or broke before its message was written): it goes as a unary call."""


def _rpc_error(code: grpc.StatusCode, message: str, details: bytes = b"") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((STATUS_DETAILS_KEY, details)) if details else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Waiting:
    """One request's answer to come; `cancel` is what the disconnect watch calls."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[pb.ObjectDataResponse] = asyncio.get_running_loop().create_future()

    def cancel(self) -> bool:
        return self.future.cancel()


class _Connection:
    """One opened ObjectData call: its requests in flight, the task writing its messages and the
    task reading its answers. Kept apart from `_Stream` so that a call that ends late (closed while
    the editor drains) can only fail its own requests, never those of the call that replaced it.

    Requests are not written by their own tasks: each is queued, and one writer task sends what is
    queued, as one message with a batch when the editor takes batches (`batch_bytes` > 0). While a
    message is being sent, the requests that arrive meanwhile wait together for the next one, so
    requests are batched exactly when they are ready together, never held back for company."""

    def __init__(self, call: grpc.aio.StreamStreamCall, batch_bytes: int) -> None:
        self.call = call
        self.batch_bytes = batch_bytes
        self.pending: dict[int, asyncio.Future[pb.ObjectDataResponse]] = {}
        self.reader: asyncio.Task[None] | None = None
        self._outbox: deque[pb.ObjectDataRequest] = deque()
        self._wake = asyncio.Event()
        self._closing = False  # nothing more is queued; the side is closed once the queue is sent
        self._broken = False
        self.writer = asyncio.get_running_loop().create_task(self._write_all(), context=contextvars.Context())

    @property
    def broken(self) -> bool:
        """Whether writing failed: the call is being cancelled, and nothing more is sent on it."""
        return self._broken

    def send(self, message: pb.ObjectDataRequest) -> None:
        """Queue `message`; _NoConnection when this side is closing or broken (nothing is sent)."""
        if self._closing or self._broken:
            raise _NoConnection()
        self._outbox.append(message)
        self._wake.set()

    def close_writes(self) -> None:
        """Send what is queued, then close this side (the call ends once its answers are in)."""
        self._closing = True
        self._wake.set()

    async def _write_all(self) -> None:
        message: pb.ObjectDataRequest | None = None
        try:
            while not self._broken:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox and not self._broken:
                    message = self._outbox.popleft()
                    message = take_batch(message, self._outbox, self.batch_bytes)
                    await self.call.write(message)
                    message = None
                if self._closing and not self._outbox:
                    await self.call.done_writing()
                    return
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            # Not sent: the call was closing or broke first. Nothing of it reached the editor, so
            # even a write may go as a unary call; so may everything still queued.
            self._broken = True
            self._not_sent(message)
        except BaseException as error:  # cancelled (the gateway stops), or a fault of this code
            self._broken = True
            self._not_sent(message)
            if isinstance(error, asyncio.CancelledError):
                raise
            log.exception("ObjectData: writing the stream failed; it is opened again")
            self.call.cancel()  # its reader then fails what is in flight, and the slot reopens

    def _not_sent(self, message: pb.ObjectDataRequest | None) -> None:
        """Send the requests of `message` (being written when the call failed) and of the queue
        by unary call instead: none of them reached the editor."""
        unsent = [*(([message, *message.batch]) if message is not None else ()), *self._outbox]
        self._outbox.clear()
        for request in unsent:
            future = self.pending.pop(request.request_id, None)
            if future is not None and not future.done():
                future.set_exception(_NoConnection())

    def lost(self) -> None:
        self._broken = True
        self._wake.set()
        self.call.cancel()
        self._not_sent(None)  # what is still queued was never sent
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(_StreamLost())


class _Stream:
    """One slot of the pool: the connection in use (if any), its bound on requests in flight, and
    the reopening of a connection that was lost."""

    def __init__(self, stub: editor_pb2_grpc.EditorServiceStub, in_flight: int,
                 opening_metadata: Callable[[], tuple[tuple[str, str], ...]]) -> None:
        self._stub = stub
        self._opening_metadata = opening_metadata
        self._slots = asyncio.Semaphore(in_flight)
        self._ids = itertools.count(1)
        self._current: _Connection | None = None
        self._opening: asyncio.Task[None] | None = None
        self._next_open = 0.0
        self._retire_at = 0.0

    @property
    def ready(self) -> bool:
        """Whether a connection is open (one past MAX_AGE_S is closed here, and opened again soon)."""
        connection = self._current
        if connection is None:
            return False
        if connection.broken:
            # Its writer failed and cancelled the call; the reader, which lets go of the connection
            # when the call ends, may not have seen that yet. Let go now, so that a new one opens.
            self._current = None
            return False
        if time.monotonic() < self._retire_at:
            return True
        self._close_soon(connection)
        self._next_open = 0.0
        return False

    def open_soon(self) -> None:
        """Start opening a connection unless one is open, opening, or failed too recently."""
        if self._current is not None or self._opening is not None or time.monotonic() < self._next_open:
            return
        self._next_open = time.monotonic() + REOPEN_INTERVAL_S
        # A fresh context: the stream must not carry the user of the request that happened to open it.
        self._opening = asyncio.get_running_loop().create_task(self._open(), context=contextvars.Context())

    async def _open(self) -> None:
        call = self._stub.ObjectData(metadata=self._opening_metadata())
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                accepted = await call.initial_metadata()
            if call.done():
                raise _StreamLost()
        except (TimeoutError, grpc.aio.AioRpcError, _StreamLost) as error:
            call.cancel()
            log.debug("ObjectData stream not opened (%s); requests go by unary call", type(error).__name__)
            return
        finally:
            self._opening = None
        connection = _Connection(call, announced_batch_bytes(accepted))
        connection.reader = asyncio.create_task(self._read(connection))
        self._current = connection
        self._retire_at = time.monotonic() + MAX_AGE_S

    async def _read(self, connection: _Connection) -> None:
        try:
            while (message := await connection.call.read()) is not grpc.aio.EOF:
                for answer in (message, *message.batch):
                    if answer.request_id == 0:  # the editor drains: send nothing more on this stream
                        self._close_soon(connection)
                        continue
                    future = connection.pending.pop(answer.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(answer)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("ObjectData: reading the stream failed")
        finally:
            if self._current is connection:
                self._current = None
            connection.lost()

    async def request(self, waiting: _Waiting, message: pb.ObjectDataRequest, timeout_s: float
                      ) -> pb.ObjectDataResponse:
        """The answer to `message` (its request_id is set here); _StreamLost if the stream broke
        after it was sent, _NoConnection if it could not be sent (no connection open when a slot
        came free, or one closing). The deadline covers the wait for a slot too."""
        connection: _Connection | None = None
        request_id = 0
        try:
            async with asyncio.timeout(timeout_s), self._slots:
                connection = self._current
                if connection is None:
                    raise _NoConnection()
                if waiting.future.cancelled():
                    raise asyncio.CancelledError()  # the client left while the request waited for a slot
                request_id = message.request_id = next(self._ids)
                connection.pending[request_id] = waiting.future
                try:
                    connection.send(message)
                except _NoConnection:
                    # The connection is closing (renewed, the editor draining) or broke: nothing
                    # reached the editor, so even a write may go as a unary call.
                    connection.pending.pop(request_id, None)
                    raise
                # The answer; or _NoConnection when the message could not be written after all.
                return await waiting.future
        except TimeoutError:
            if connection is not None:
                self._cancel(connection, request_id)
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            if connection is not None:
                self._cancel(connection, request_id)
            raise

    def _cancel(self, connection: _Connection, request_id: int) -> None:
        """Tell the editor to stop serving `request_id` (sent by the writer: the caller is leaving)."""
        if connection.pending.pop(request_id, None) is None or self._current is not connection:
            return  # answered already, or the connection is closing (no more writes on it)
        with contextlib.suppress(_NoConnection):
            connection.send(pb.ObjectDataRequest(request_id=request_id, cancel=True))

    def _close_soon(self, connection: _Connection) -> None:
        """Send nothing more on `connection` (the editor drains): it ends once its answers are in."""
        if self._current is connection:
            self._current = None
        connection.close_writes()

    async def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        connection, self._current = self._current, None
        if connection is not None:
            if connection.reader is not None:
                connection.reader.cancel()
            connection.writer.cancel()
            connection.lost()


class ObjectDataStreams:
    """A few ObjectData streams on the editor's channel, used in turn."""

    def __init__(self, channel: grpc.aio.Channel, signer: TokenSigner | None, *, streams: int, in_flight: int,
                 max_message_bytes: int, record_spans: bool = False) -> None:
        """`channel`: to the editor, for these streams alone (it is closed with them), taking
        messages of up to `max_message_bytes` (announced, so that the editor may batch its answers)."""
        self._channel = channel
        self._announcement = ((BATCH_METADATA_KEY, str(max_message_bytes)),)
        self._signer = signer
        self._record_spans = record_spans
        self._tracer = trace.get_tracer(__name__)
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        self._streams = [_Stream(stub, in_flight, self._stream_metadata) for _ in range(streams)]
        self._turn = itertools.cycle(self._streams)

    def _ready_stream(self) -> _Stream | None:
        for _ in range(len(self._streams)):
            stream = next(self._turn)
            if stream.ready:
                return stream
            stream.open_soon()
        return None

    async def call(self, request: Request, kind: str, message: Any, user_id: str, authorization: str,
                   timeout_s: float) -> Any | None:
        """The reply (GetObjectResponse or PutObjectResponse) to `message` sent on a stream; None
        when the caller must send it by unary call instead. Raises the ApiError the call would."""
        stream = self._ready_stream()
        if stream is None:
            return None
        token = self._signer.mint(user_id, "editor") if self._signer is not None else ""
        outgoing = pb.ObjectDataRequest(authorization=authorization, caller_token=token,
                                        timeout_ms=max(1, round(timeout_s * 1000)), **{kind: message})
        span = self._client_span(kind, outgoing)
        waiting = _Waiting()
        try:
            async with DisconnectWatch(request, waiting):
                answer = await stream.request(waiting, outgoing, timeout_s)
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", answer.code)
        except _NoConnection:
            return None
        except _StreamLost:
            if kind == "get_object":
                return None  # a read is sent again, as a unary GetObject is retried on UNAVAILABLE
            raise from_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, "the editor's stream broke")) from None
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        finally:
            if span is not None:
                span.end()
        if answer.code == 0:
            return getattr(answer, kind)
        error = _rpc_error(_CODES.get(answer.code, grpc.StatusCode.UNKNOWN), answer.message, answer.status_details)
        if error.code() == grpc.StatusCode.UNAVAILABLE and _draining(error):
            return None  # not served: the unary call goes where the channel goes now
        raise from_rpc_error(error)

    def _client_span(self, kind: str, outgoing: pb.ObjectDataRequest) -> Span | None:
        """The trace context for the message, as the tracing client interceptor puts it in a call's
        metadata, and the CLIENT span it makes where spans are recorded."""
        if not self._record_spans:
            propagate.inject(outgoing.trace_context)
            return None
        method = "GetObject" if kind == "get_object" else "PutObject"
        span = self._tracer.start_span(f"/{SERVICE}/{method}", kind=SpanKind.CLIENT, attributes={
            "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method})
        propagate.inject(outgoing.trace_context, context=trace.set_span_in_context(span))
        return span

    def _stream_metadata(self) -> tuple[tuple[str, str], ...]:
        """What opens a stream: the gateway's caller token for no user (each message names its own),
        and whether answers may come in batches."""
        token = ((METADATA_KEY, self._signer.mint("", "editor")),) if self._signer is not None else ()
        return (*token, *self._announcement)

    async def close(self) -> None:
        for stream in self._streams:
            await stream.close()
        await self._channel.close()


def _draining(error: grpc.aio.AioRpcError) -> bool:
    detail, _ = read_error_detail(error)
    return detail.reason == _DRAINING
