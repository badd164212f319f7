"""Text generation over HTTP: /ai/generate, /ai/generate-stream (SSE), /ai/tokenize, /ai/models,
/ai/presets. Every route needs a logged-in user (bearer token) and counts against their rate.
The bodies and their protobuf translation are in gateway/schemas/text.py.

Streaming: the first message is awaited before the response starts, so a request the service
refuses gets its proper HTTP status (400, 429, ...) instead of a 200 with an error event. After
that, events are `context` (the context builder's report), `piece` (text, token ids and, when asked
for with top_probabilities, their probabilities), `final`
(finish reason, usage, timings, seed) and, should the service fail mid-stream, `error` with the
same JSON body as any error response. A client that disconnects cancels the generation.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from fabula.text.v1 import text_pb2
from gateway.calls import unary
from gateway.deps import RateLimitedUser, Settings, TextService
from gateway.schemas.common import error_responses
from gateway.schemas.text import (
    FIELD_PREFIXES,
    GenerateBody,
    GenerateResult,
    ModelInfo,
    PresetInfo,
    TokenizeBody,
    TokenizeResult,
    stream_event_from_pb,
)
from gateway.sse import relay_stream

router = APIRouter(prefix="/ai", tags=["text"])

ERRORS = error_responses(400, 401, 429, 503, 504)


@router.post("/generate", response_model=GenerateResult, responses=ERRORS,
             summary="Continue a prompt or a story; answers once the continuation is complete")
async def generate(body: GenerateBody, request: Request, user: RateLimitedUser, text: TextService,
                   settings: Settings) -> GenerateResult:
    reply = await unary(request, text.Generate(body.to_generate_pb(), timeout=settings.stream_timeout_s),
                        field_prefixes=FIELD_PREFIXES)
    return GenerateResult.from_pb(reply)


@router.post("/generate-stream", responses={200: {"content": {"text/event-stream": {}},
                                                  "description": "events: context?, piece*, final | error"},
                                            **ERRORS},
             summary="Continue a prompt or a story, streaming the text as Server-Sent Events")
async def generate_stream(body: GenerateBody, request: Request, user: RateLimitedUser, text: TextService,
                          settings: Settings) -> EventSourceResponse:
    call = text.GenerateStream(body.to_stream_pb(), timeout=settings.stream_timeout_s)
    return await relay_stream(request, call, stream_event_from_pb, "text", field_prefixes=FIELD_PREFIXES)


@router.post("/tokenize", response_model=TokenizeResult, responses=ERRORS,
             summary="Split text into the model's tokens")
async def tokenize(body: TokenizeBody, request: Request, user: RateLimitedUser, text: TextService,
                   settings: Settings) -> TokenizeResult:
    reply = await unary(request, text.Tokenize(body.to_pb(), timeout=settings.request_timeout_s),
                        field_prefixes=FIELD_PREFIXES)
    return TokenizeResult.from_pb(reply)


@router.get("/models", response_model=list[ModelInfo], responses=error_responses(401, 429, 503),
            summary="The models the text service serves")
async def models(request: Request, user: RateLimitedUser, text: TextService, settings: Settings) -> list[ModelInfo]:
    reply = await unary(request, text.ListModels(text_pb2.ListModelsRequest(), timeout=settings.request_timeout_s),
                        field_prefixes=FIELD_PREFIXES)
    return [ModelInfo.from_pb(model) for model in reply.models]


@router.get("/presets", response_model=list[PresetInfo], responses=error_responses(401, 429, 503),
            summary="The named sampling presets")
async def presets(request: Request, user: RateLimitedUser, text: TextService, settings: Settings) -> list[PresetInfo]:
    reply = await unary(request, text.ListPresets(text_pb2.ListPresetsRequest(), timeout=settings.request_timeout_s),
                        field_prefixes=FIELD_PREFIXES)
    return [PresetInfo.from_pb(preset) for preset in reply.presets]
