"""ObjectData: GetObject and PutObject multiplexed over one long-lived bidirectional stream.

The gateway's busiest routes each cost one unary call, and a unary call with 64 KiB costs about
half a millisecond of CPU between the two processes (docs/editor.md, "Where the time goes on the
storage path"): HEADERS and HPACK, the interceptors, the server's call set-up. On this stream each
request is one message each way.

Each message is served as its unary call would be, in a task of its own (so concurrent saves still
meet in one group commit): its own caller token verified by the server's caller check
(`callers.message_caller`; the stream's own token only says the gateway opened it), its own
session checked by the servicer's `get_object`/`put_object`, its own deadline (`timeout_ms`),
its own SERVER span in the sender's trace (`trace_context`, where spans are recorded), the
per-RPC metrics recorded under GetObject/PutObject, and any error answered as the exception
interceptor answers a call: code, message and the google.rpc.Status it would put in the trailers.
A `cancel` message cancels its request's task, as a cancelled call cancels its handler.

Batches: requests ready together may come in one message (`batch`), and answers ready together
go back in one (each message costs a send, a receive and a poller wake-up on both sides, the
largest share of a request's CPU left on this path). A side sends batches only to a peer that
announced it takes them, in its metadata (`BATCH_METADATA_KEY`, with the largest message it
accepts), so an older gateway or editor on the other end gets one request or answer a message.

Bounds: at most `max_in_flight` requests per stream (the gateway keeps below it; a request beyond
is answered RESOURCE_EXHAUSTED, not served). When the service starts to drain (`drain`), every open
stream gets an answer with request_id 0 and status UNAVAILABLE, reason DRAINING: the gateway then
closes its side, and the stream ends once its requests in flight are answered. Requests that were
already on their way are answered the same, without being served, so the gateway sends them again
by unary call (which the server still accepts for its drain delay, then refuses as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from fabula.editor.v1 import editor_pb2 as pb
from fabula_wire.object_data import BATCH_METADATA_KEY, announced_batch_bytes, take_batch
from services.editor import wire
from services.toolkit import metrics, tracing
from services.toolkit.callers import message_caller
from services.toolkit.errors import FabulaError, InvalidArgument, ResourceExhausted, Unavailable
from services.toolkit.interceptor import status_for

if TYPE_CHECKING:
    from services.editor.server import EditorServicer

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["EditorService"].full_name
MAX_IN_FLIGHT = 256
DRAINING = "DRAINING"
_END = object()


class ObjectDataStreams:
    """Serves every ObjectData stream of one servicer."""

    def __init__(self, servicer: EditorServicer, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._servicer = servicer
        self.max_in_flight = max_in_flight
        # The largest message this editor accepts (its server's limit), announced to the gateway
        # as the most a batch of requests may hold; the app sets it from its settings.
        self.max_message_bytes = 32 * 1024 * 1024
        # Whether streams are accepted with the batch announcement and answers batched (False: as
        # an editor before batches, which tests use to stand for one).
        self.takes_batches = True
        self.draining = False
        self.served = 0  # requests answered on streams (tests and benchmarks read it)
        self.messages_received = 0  # messages read on streams, batches counted once (tests read it)
        self.requests_in_batches = 0  # requests that came inside another's message (tests read it)
        self.answers_in_batches = 0  # answers sent inside another's message (tests read it)
        self._streams: set[asyncio.Queue[Any]] = set()  # the answer queue of each open stream
        self.opened = 0  # streams accepted (tests read it)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def drain(self) -> None:
        """From now on, refuse new requests (UNAVAILABLE, DRAINING) so that the gateway moves off,
        and tell every open stream so (an answer with request_id 0): the gateway closes its side,
        and the stream ends once its requests in flight are answered."""
        if self.draining:
            return
        self.draining = True
        for answers in self._streams:
            answers.put_nowait(_error_answer(0, _draining()))

    async def serve(self, requests: AsyncIterator[pb.ObjectDataRequest],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ObjectDataResponse]:
        if self.draining:  # refused before the initial metadata: the gateway keeps to unary calls
            raise _draining()
        # Initial metadata at once: the gateway sends nothing before it has them.
        if self.takes_batches:
            await context.send_initial_metadata(((BATCH_METADATA_KEY, str(self.max_message_bytes)),))
            # Within what the gateway takes and what this server may send.
            batch_bytes = min(announced_batch_bytes(context.invocation_metadata()), self.max_message_bytes)
        else:
            await context.send_initial_metadata(())
            batch_bytes = 0
        answers: asyncio.Queue[Any] = asyncio.Queue()
        in_flight: dict[int, asyncio.Task[None]] = {}
        reader = asyncio.create_task(self._read(requests, answers, in_flight))
        self._streams.add(answers)
        self.opened += 1
        # Answers that finished while the last message was being sent: the next message takes as
        # many of them as fit (all together, when the gateway takes batches).
        ready: deque[Any] = deque()
        try:
            while True:
                if not ready:
                    ready.append(await answers.get())
                    while not answers.empty():
                        ready.append(answers.get_nowait())
                answer = ready.popleft()
                if answer is _END:
                    break
                answer = take_batch(answer, ready, batch_bytes)
                self.answers_in_batches += len(answer.batch)
                yield answer
        finally:
            self._streams.discard(answers)
            reader.cancel()
            for task in list(in_flight.values()):
                task.cancel()

    async def _read(self, requests: AsyncIterator[pb.ObjectDataRequest], answers: asyncio.Queue[Any],
                    in_flight: dict[int, asyncio.Task[None]]) -> None:
        try:
            async for message in requests:
                self.messages_received += 1
                if not message.batch:
                    self._take(message, answers, in_flight)
                    continue
                # A batch: the message's own call (if it has one), then each request it carries.
                if message.WhichOneof("call") is not None:
                    self._take(message, answers, in_flight)
                self.requests_in_batches += len(message.batch)
                for request in message.batch:
                    self._take(request, answers, in_flight, in_batch=True)
            # The gateway closed its side: answer what is in flight, then end the stream.
            while in_flight:
                await asyncio.gather(*in_flight.values(), return_exceptions=True)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass  # the stream is gone; serve() cancels what is left
        except Exception:
            log.exception("ObjectData: reading the stream failed")
        finally:
            answers.put_nowait(_END)

    def _take(self, request: pb.ObjectDataRequest, answers: asyncio.Queue[Any],
              in_flight: dict[int, asyncio.Task[None]], *, in_batch: bool = False) -> None:
        """Start serving one request (or cancel the one it names), or answer its refusal."""
        request_id = request.request_id
        kind = request.WhichOneof("call")
        if kind == "cancel":
            task = in_flight.pop(request_id, None)
            if task is not None:
                task.cancel()
            return
        refusal = self._refusal(request_id, kind, in_flight)
        if refusal is None and in_batch and request.batch:
            refusal = InvalidArgument("batch", len(request.batch),
                                      "a request inside a batch carries no batch of its own")
        if refusal is not None:
            answers.put_nowait(_error_answer(request_id, refusal))
            return
        in_flight[request_id] = asyncio.create_task(self._serve_one(request, kind, answers, in_flight))

    def _refusal(self, request_id: int, kind: str | None, in_flight: dict[int, Any]) -> FabulaError | None:
        if kind is None:
            return InvalidArgument("call", "", "names no request (get_object, put_object or cancel)")
        if request_id == 0:
            return InvalidArgument("request_id", 0, "must not be 0 (answers with request_id 0 are the editor's own)")
        if request_id in in_flight:
            return InvalidArgument("request_id", request_id, "is already in flight on this stream")
        if self.draining:
            return _draining()
        if len(in_flight) >= self.max_in_flight:
            return ResourceExhausted(f"more than {self.max_in_flight} requests in flight on this stream",
                                     reason="STREAM_IN_FLIGHT")
        return None

    async def _serve_one(self, request: pb.ObjectDataRequest, kind: str, answers: asyncio.Queue[Any],
                         in_flight: dict[int, asyncio.Task[None]]) -> None:
        request_id = request.request_id
        method = "GetObject" if kind == "get_object" else "PutObject"
        code = grpc.StatusCode.OK
        started = time.perf_counter()
        try:
            with _server_span(request, method) as span:
                answer = await self._answer(request, kind)
                span.set_attribute("rpc.grpc.status_code", answer.code)
        except FabulaError as error:
            code = error.code
            answer = _error_answer(request_id, error)
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            answer = pb.ObjectDataResponse(request_id=request_id, code=code.value[0], message="Deadline Exceeded")
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # no answer: the sender has stopped waiting
            raise
        except Exception:
            log.exception("unhandled error in ObjectData %s", method)
            code = grpc.StatusCode.INTERNAL
            answer = pb.ObjectDataResponse(request_id=request_id, code=code.value[0],
                                           message="internal error; see the service's log")
        finally:
            metrics.record_rpc(SERVICE, method, code.name, time.perf_counter() - started)
            if in_flight.get(request_id) is asyncio.current_task():
                del in_flight[request_id]
        self.served += 1
        answers.put_nowait(answer)

    async def _answer(self, request: pb.ObjectDataRequest, kind: str) -> pb.ObjectDataResponse:
        """The request served: its caller and session checked, within its deadline."""
        async with asyncio.timeout(request.timeout_ms / 1000 if request.timeout_ms else None):
            message_caller(request.caller_token)
            token = wire.bearer_of(request.authorization)
            if kind == "get_object":
                reply = await self._servicer.get_object(request.get_object, token)
                return pb.ObjectDataResponse(request_id=request.request_id, get_object=reply)
            reply = await self._servicer.put_object(request.put_object, token)
            return pb.ObjectDataResponse(request_id=request.request_id, put_object=reply)


@contextlib.contextmanager
def _server_span(request: pb.ObjectDataRequest, method: str) -> Iterator[Span]:
    """A SERVER span in the sender's trace, as the tracing server interceptor makes per call: only
    where this process records spans and the message carried a trace context."""
    if not request.trace_context or not tracing.records_spans():
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
            f"/{SERVICE}/{method}", context=propagate.extract(request.trace_context), kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method}) as span:
        yield span


def _draining() -> Unavailable:
    return Unavailable("the editor is shutting down; the request was not served", retry_after_s=0.0,
                       reason=DRAINING)


def _error_answer(request_id: int, error: FabulaError) -> pb.ObjectDataResponse:
    status = status_for(error)
    return pb.ObjectDataResponse(request_id=request_id, code=status.code, message=status.message,
                                 status_details=status.SerializeToString())
