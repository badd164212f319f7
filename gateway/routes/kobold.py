"""The KoboldAI / KoboldCpp API under /api, onto the same text service calls as /ai
(gateway/schemas/kobold.py translates): generate, the KoboldCpp token stream, token counts,
abort by `genkey`, and what clients ask before they start (model, context length, versions).
Authenticated like every generation route: `Authorization: Bearer <personal API token>` (or a
session), rate-limited per user. Errors come in KoboldAI's shape (main.py installs it for /api/).

Streaming (/api/extra/generate/stream) sends `event: message` with `{"token", "finish_reason"}`
data, as KoboldCpp does; the last one carries the finish reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from fabula.text.v1 import text_pb2
from gateway.calls import DisconnectWatch, first_message, unary
from gateway.deps import RateLimitedUser, Settings, TextService, User
from gateway.errors import from_rpc_error
from gateway.schemas.kobold import (
    FIELD_PREFIXES,
    KOBOLD_API_VERSION,
    KOBOLDCPP_VERSION,
    AbortBody,
    GenerateBody,
    TokenCountBody,
    default_model,
    generate_result,
    kobold_error_body,
    stream_end,
    stream_token,
    token_count,
)
from gateway.sse import PING_S
from gateway.streams import cancelled_from_outside, merged

router = APIRouter(prefix="/api", tags=["kobold"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": "KoboldAI's error body {\"detail\": {msg, type}}"} for status in (400, 401, 429, 503, 504)}


class Generations:
    """The generations running under a `genkey`, so /api/extra/abort can stop them. Per user (one
    user cannot abort another's) and per gateway replica: an abort must reach the replica that
    serves the generation, which a sticky load balancer or a single replica gives."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, str], Sequence[Any]] = {}
        self._aborted: set[tuple[str, str]] = set()

    @contextmanager
    def running(self, user: User, genkey: str | None, calls: Sequence[Any]) -> Iterator[Callable[[], bool]]:
        """Registers `calls` under the genkey; yields a function telling whether they were aborted."""
        if not genkey:
            yield lambda: False
            return
        key = (user.user_id, genkey)
        self._running[key] = calls
        self._aborted.discard(key)
        try:
            yield lambda: key in self._aborted
        finally:
            if self._running.get(key) is calls:
                del self._running[key]
            self._aborted.discard(key)

    def abort(self, user: User, genkey: str) -> bool:
        key = (user.user_id, genkey)
        calls = self._running.get(key)
        if calls is None:
            return False
        self._aborted.add(key)
        for call in calls:
            call.cancel()
        return True


def _stopped_by_abort(error: BaseException, aborted: Callable[[], bool]) -> bool:
    """Whether `error` is only an abort's cancellation of the calls (the answer goes on with the
    text so far, as KoboldCpp's does), not a failure or this request's own cancellation."""
    if not aborted() or cancelled_from_outside():
        return False
    return isinstance(error, asyncio.CancelledError) or (
        isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.CANCELLED)


class _AllCalls:
    """Cancels every choice's call at once (for DisconnectWatch)."""

    def __init__(self, calls: Sequence[Any]) -> None:
        self._calls = calls

    def cancel(self) -> bool:
        for call in self._calls:
            call.cancel()
        return True


def _generations(request: Request) -> Generations:
    return request.app.state.kobold_generations


async def _models(request: Request, text: Any, settings: Any) -> text_pb2.ModelInfo | None:
    reply = await unary(request, text.ListModels(text_pb2.ListModelsRequest(), timeout=settings.request_timeout_s))
    return default_model(reply)


@router.get("/v1/model", responses=_RESPONSES, summary="KoboldAI: the model's name")
async def model(request: Request, user: RateLimitedUser, text: TextService, settings: Settings) -> JSONResponse:
    info = await _models(request, text, settings)
    return JSONResponse({"result": f"fabula/{info.name}" if info else "fabula"})


@router.get("/v1/config/max_context_length", responses=_RESPONSES, summary="KoboldAI: the context window")
@router.get("/extra/true_max_context_length", responses=_RESPONSES, summary="KoboldCpp: the context window")
async def max_context_length(request: Request, user: RateLimitedUser, text: TextService,
                             settings: Settings) -> JSONResponse:
    info = await _models(request, text, settings)
    return JSONResponse({"value": info.context_window if info else 0})


@router.get("/v1/info/version", summary="KoboldAI: the API version")
async def api_version() -> JSONResponse:
    return JSONResponse({"result": KOBOLD_API_VERSION})


@router.get("/extra/version", summary="KoboldCpp: the server's name and version")
async def server_version() -> JSONResponse:
    return JSONResponse({"result": "KoboldCpp", "version": KOBOLDCPP_VERSION, "protected": True})


@router.post("/v1/generate", responses=_RESPONSES, summary="KoboldAI: generate, answering when done")
async def generate(body: GenerateBody, request: Request, user: RateLimitedUser, text: TextService,
                   settings: Settings) -> JSONResponse:
    # Streamed underneath, so that an abort still answers with the text written so far.
    calls = [text.GenerateStream(text_pb2.GenerateStreamRequest(spec=spec), timeout=settings.stream_timeout_s)
             for spec in body.specs()]
    texts: list[list[str]] = [[] for _ in calls]
    finals: dict[int, text_pb2.GenerationStats] = {}
    with _generations(request).running(user, body.genkey, calls) as aborted:
        try:
            async with DisconnectWatch(request, _AllCalls(calls)):
                async for index, message in merged(calls):
                    kind = message.WhichOneof("event")
                    if kind == "piece":
                        texts[index].append(message.piece.text)
                    elif kind == "final":
                        finals[index] = message.final
        except (asyncio.CancelledError, grpc.aio.AioRpcError) as error:
            if not _stopped_by_abort(error, aborted):
                if isinstance(error, grpc.aio.AioRpcError):
                    raise from_rpc_error(error, FIELD_PREFIXES) from None
                raise
    return JSONResponse(generate_result([("".join(pieces), finals.get(index)) for index, pieces in enumerate(texts)]))


@router.post("/extra/generate/stream", responses={200: {"content": {"text/event-stream": {}}}, **_RESPONSES},
             summary="KoboldCpp: generate, streaming tokens as Server-Sent Events")
async def generate_stream(body: GenerateBody, request: Request, user: RateLimitedUser, text: TextService,
                          settings: Settings) -> EventSourceResponse:
    calls = [text.GenerateStream(text_pb2.GenerateStreamRequest(spec=spec), timeout=settings.stream_timeout_s)
             for spec in body.specs()]
    try:
        firsts = [await first_message(request, call, "text", field_prefixes=FIELD_PREFIXES) for call in calls]
    except BaseException:
        for call in calls:
            call.cancel()
        raise
    generations = _generations(request)

    def event(payload: dict[str, Any]) -> dict[str, str]:
        return {"event": "message", "data": json.dumps(payload, ensure_ascii=False)}

    def payload(message: text_pb2.GenerateStreamResponse) -> dict[str, Any] | None:
        kind = message.WhichOneof("event")
        if kind == "piece":
            return stream_token(message.piece.text) if message.piece.text else None
        if kind == "final":
            return stream_end(message.final)
        return None

    async def events() -> AsyncIterator[dict[str, str]]:
        with generations.running(user, body.genkey, calls) as aborted:
            try:
                for first in firsts:
                    if (data := payload(first)) is not None:
                        yield event(data)
                async for _, message in merged(calls):
                    if (data := payload(message)) is not None:
                        yield event(data)
            except (asyncio.CancelledError, grpc.aio.AioRpcError) as error:
                if _stopped_by_abort(error, aborted):
                    yield event(stream_end(None))
                elif isinstance(error, grpc.aio.AioRpcError):
                    yield event(kobold_error_body(from_rpc_error(error, FIELD_PREFIXES)))
                else:
                    raise
            finally:
                for call in calls:
                    call.cancel()

    return EventSourceResponse(events(), ping=PING_S)


@router.post("/extra/tokencount", responses=_RESPONSES, summary="KoboldCpp: count a text's tokens")
async def tokencount(body: TokenCountBody, request: Request, user: RateLimitedUser, text: TextService,
                     settings: Settings) -> JSONResponse:
    reply = await unary(request, text.Tokenize(body.to_pb(), timeout=settings.request_timeout_s),
                        field_prefixes=FIELD_PREFIXES)
    return JSONResponse(token_count(reply))


@router.post("/extra/abort", responses=_RESPONSES, summary="KoboldCpp: stop the generation named by genkey")
async def abort(body: AbortBody, request: Request, user: RateLimitedUser) -> JSONResponse:
    stopped = _generations(request).abort(user, body.genkey)
    return JSONResponse({"success": "true" if stopped else "false", "done": "true" if stopped else "false"})
