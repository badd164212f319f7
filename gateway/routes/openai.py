"""The OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions, onto the same
text service calls as /ai (gateway/schemas/openai.py translates). Authenticated by
`Authorization: Bearer <personal API token>` (a session token works too), rate-limited per user
like every route. Errors come in OpenAI's shape (main.py installs it for /v1/).

Streaming sends `data: {chunk}` lines and ends with `data: [DONE]`; a request the service refuses
gets its HTTP status before the stream starts, a later failure a `data: {"error": ...}` line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from fabula.text.v1 import text_pb2
from gateway.calls import first_message, unary
from gateway.deps import RateLimitedUser, Settings, TextService
from gateway.errors import from_rpc_error
from gateway.schemas.openai import (
    FIELD_PREFIXES,
    ChatCompletionBody,
    ChunkWriter,
    CompletionBody,
    GenerationFields,
    TokenLog,
    chat_completion,
    completion,
    model_list,
    openai_error_body,
)
from gateway.sse import PING_S
from gateway.streams import merged

router = APIRouter(prefix="/v1", tags=["openai"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the answer, or with `stream: true` Server-Sent Events ending with `data: [DONE]`",
          "content": {"application/json": {}, "text/event-stream": {}}},
    **{status: {"description": "OpenAI's error body {\"error\": {message, type, param, code}}"}
       for status in (400, 401, 403, 404, 409, 429, 503, 504)},
}


@router.get("/models", responses=_RESPONSES, summary="The text models, in OpenAI's list shape")
async def models(request: Request, user: RateLimitedUser, text: TextService, settings: Settings) -> JSONResponse:
    reply = await unary(request, text.ListModels(text_pb2.ListModelsRequest(), timeout=settings.request_timeout_s))
    return JSONResponse(model_list(reply))


@router.post("/completions", responses=_RESPONSES, summary="OpenAI-compatible text completion")
async def completions(body: CompletionBody, request: Request, user: RateLimitedUser, text: TextService,
                      settings: Settings) -> Any:
    specs = body.specs(body.prompt_text, body.max_tokens)
    return await _answer(request, text, settings, body, specs, chat=False, prompt=body.prompt_text)


@router.post("/chat/completions", responses=_RESPONSES, summary="OpenAI-compatible chat completion "
                                                                 "(the model's own chat template)")
async def chat_completions(body: ChatCompletionBody, request: Request, user: RateLimitedUser, text: TextService,
                           settings: Settings) -> Any:
    rendered = await unary(request, text.ApplyChatTemplate(body.template_request(),
                                                           timeout=settings.request_timeout_s))
    specs = body.specs(rendered.prompt, body.max_new_tokens(_chat_max_tokens(request, settings)))
    return await _answer(request, text, settings, body, specs, chat=True)


def _chat_max_tokens(request: Request, settings: Any) -> int:
    """A chat request's max_tokens when it sets none: the gateway's setting, within the text
    service's max_new_tokens once the gateway knows it (OpenAI's default is as many as the model
    allows), so that a request valid by the document is not refused for a default it did not choose."""
    limits = request.app.state.contract.limits
    default = settings.openai_chat_max_tokens
    return default if limits is None else min(default, limits.max_new_tokens)


async def _answer(request: Request, text: Any, settings: Any, body: GenerationFields,
                  specs: list[text_pb2.GenerationSpec], *, chat: bool, prompt: str = "") -> Any:
    if body.stream:
        return await _stream(request, text, settings, body, specs, chat=chat, prompt=prompt)
    calls = [text.Generate(text_pb2.GenerateRequest(spec=spec), timeout=settings.stream_timeout_s) for spec in specs]
    try:
        replies = await unary(request, asyncio.gather(*calls), field_prefixes=FIELD_PREFIXES)
    finally:
        for call in calls:  # one choice failed: the others are not wanted either
            call.cancel()
    top = body.top_logprobs_wanted
    if chat:
        return JSONResponse(chat_completion(list(replies), body.model, top_logprobs=top))
    return JSONResponse(completion(list(replies), body.model, top_logprobs=top, prompt=prompt))


async def _stream(request: Request, text: Any, settings: Any, body: GenerationFields,
                  specs: list[text_pb2.GenerationSpec], *, chat: bool, prompt: str) -> EventSourceResponse:
    calls = [text.GenerateStream(text_pb2.GenerateStreamRequest(spec=spec), timeout=settings.stream_timeout_s)
             for spec in specs]
    try:
        # Each choice's first message before the answer starts: a refused request gets its status.
        firsts = [await first_message(request, call, "text", field_prefixes=FIELD_PREFIXES) for call in calls]
    except BaseException:
        for call in calls:
            call.cancel()
        raise
    writer = ChunkWriter(chat, body.model)
    include_usage = body.include_usage
    top = body.top_logprobs_wanted
    logs = None if top is None else [TokenLog(top, chat=chat, start=len(prompt)) for _ in specs]

    def data(payload: dict[str, Any]) -> dict[str, str]:
        return {"data": json.dumps(payload, ensure_ascii=False)}

    async def events() -> AsyncIterator[dict[str, str]]:
        finals: dict[int, text_pb2.GenerationStats] = {}

        def chunk(index: int, message: text_pb2.GenerateStreamResponse) -> dict[str, Any] | None:
            kind = message.WhichOneof("event")
            if kind == "piece":
                piece = message.piece
                logprobs = logs[index].add(piece.probabilities, piece.text) if logs is not None else None
                return writer.text(index, piece.text, logprobs) if piece.text or logprobs else None
            if kind == "final":
                finals[index] = message.final
                return writer.end(index, message.final)
            return None  # a context report: only story contexts have one, never these prompts

        try:
            for index, first in enumerate(firsts):
                opening = writer.opening(index)
                if opening is not None:
                    yield data(opening)
                if (payload := chunk(index, first)) is not None:
                    yield data(payload)
            # A choice that already ended just reads its end of stream here.
            async for index, message in merged(calls):
                if (payload := chunk(index, message)) is not None:
                    yield data(payload)
            if include_usage:
                yield data(writer.usage([finals[index] for index in sorted(finals)]))
            yield {"data": "[DONE]"}
        except grpc.aio.AioRpcError as error:
            yield data(openai_error_body(from_rpc_error(error, FIELD_PREFIXES)))
        finally:
            for call in calls:
                call.cancel()

    return EventSourceResponse(events(), ping=PING_S)
