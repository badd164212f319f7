"""NovelAI's API under the base URL prefix /novelai (point a NovelAI client's API URL at
http://<gateway>/novelai): /novelai/ai/generate-image answers with a ZIP of PNGs,
/novelai/ai/generate with the continuation, /novelai/ai/generate-stream with `newToken` events.
Fabula's own routes keep their paths. Bodies and translation are in gateway/schemas/novelai.py.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from fabula.image.v1 import image_pb2
from fabula.text.v1 import text_pb2
from gateway.calls import all_messages, unary
from gateway.deps import ImageService, RateLimitedUser, Settings, TextService
from gateway.errors import ApiError
from gateway.schemas.common import error_responses
from gateway.schemas.novelai import (
    FIELD_PREFIXES,
    TEXT_FIELD_PREFIXES,
    GenerateImageBody,
    GenerateTextAnswer,
    GenerateTextBody,
    TokenEvents,
    honesty_headers,
    images_zip,
    text_body_field,
)
from gateway.sse import relay_stream

PREFIX = "/novelai"
router = APIRouter(prefix=f"{PREFIX}/ai", tags=["NovelAI"])
ZIP_MEDIA_TYPE = "application/zip"


TEXT_ERRORS = error_responses(400, 401, 429, 503, 504)


def _renamed(error: ApiError, field: str) -> ApiError:
    if error.field:
        error.message = error.message.replace(error.field, field, 1)
        error.field = field
    return error


def _as_body_field(error: ApiError) -> ApiError:
    """The image service's field, as NovelAI's body names it (the prompt is `input`, the rest are
    under `parameters`)."""
    if not error.field:
        return error
    return _renamed(error, "input" if error.field == "prompt" else f"parameters.{error.field}")


async def _text_spec(body: GenerateTextBody, request: Request, text: TextService,
                     settings: Settings) -> text_pb2.GenerationSpec:
    models = await unary(request, text.ListModels(text_pb2.ListModelsRequest(), timeout=settings.request_timeout_s))
    names = {m.name for m in models.models}

    async def decode(index: int, token_ids: list[int]) -> tuple[int, str]:
        call = text.Detokenize(text_pb2.DetokenizeRequest(model=body.model_name(names), token_ids=token_ids),
                               timeout=settings.request_timeout_s)
        try:
            return index, (await unary(request, call)).text
        except ApiError as error:  # an id outside the model's vocabulary, "token_ids[3]"
            inner = (error.field or "").removeprefix("token_ids").replace("[", ".").replace("]", "")
            raise _renamed(error, f"parameters.stop_sequences.{index}{inner}") from None

    decoded = dict(await asyncio.gather(*(decode(index, ids) for index, ids in body.stop_token_ids().items())))
    return body.to_pb(names, decoded)


@router.post("/generate", response_model=GenerateTextAnswer, responses=TEXT_ERRORS,
             summary="Continue a text (NovelAI)")
async def generate_text(body: GenerateTextBody, request: Request, user: RateLimitedUser, text: TextService,
                        settings: Settings) -> GenerateTextAnswer:
    spec = await _text_spec(body, request, text, settings)
    try:
        reply = await unary(request, text.Generate(text_pb2.GenerateRequest(spec=spec),
                                                   timeout=settings.stream_timeout_s),
                            field_prefixes=TEXT_FIELD_PREFIXES)
    except ApiError as error:
        raise _renamed(error, text_body_field(error.field or "")) from None
    return GenerateTextAnswer(output=reply.text)


@router.post("/generate-stream", responses={200: {"content": {"text/event-stream": {}},
                                                  "description": "events: newToken ({token, ptr, final})+ | error"},
                                            **TEXT_ERRORS},
             summary="Continue a text, streaming NovelAI's newToken events")
async def generate_text_stream(body: GenerateTextBody, request: Request, user: RateLimitedUser, text: TextService,
                               settings: Settings) -> EventSourceResponse:
    spec = await _text_spec(body, request, text, settings)
    call = text.GenerateStream(text_pb2.GenerateStreamRequest(spec=spec), timeout=settings.stream_timeout_s)
    try:
        return await relay_stream(request, call, TokenEvents(), "text", field_prefixes=TEXT_FIELD_PREFIXES)
    except ApiError as error:
        raise _renamed(error, text_body_field(error.field or "")) from None


@router.post("/generate-image",
             responses={200: {"content": {ZIP_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                              "description": "a ZIP of PNGs: image_0.png, image_1.png, ...; X-Fabula-Note "
                                             "says when the built-in model's pictures are noise"},
                        **error_responses(400, 401, 429, 503, 504)},
             response_class=Response, summary="Generate images (NovelAI: generate, img2img, infill)")
async def generate_image(body: GenerateImageBody, request: Request, user: RateLimitedUser, image: ImageService,
                         settings: Settings) -> Response:
    models = await unary(request, image.ListModels(image_pb2.ListModelsRequest(),
                                                   timeout=settings.request_timeout_s))
    call = image.Generate(body.to_pb({m.name for m in models.models}), timeout=settings.stream_timeout_s)
    try:
        messages = await all_messages(request, call, field_prefixes=FIELD_PREFIXES)
    except ApiError as error:
        raise _as_body_field(error) from None
    images = [message.image for message in messages if message.WhichOneof("event") == "image"]
    return Response(images_zip(images), media_type=ZIP_MEDIA_TYPE, headers=honesty_headers(images))
