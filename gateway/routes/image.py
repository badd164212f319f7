"""Image generation over HTTP: /ai/generate-image (JSON or zip), /ai/generate-image-stream (SSE),
/ai/image/tokenize, /ai/image/models, /ai/image/metadata, /ai/image/signing-key and
/ai/image/tags, in front of the image service's gRPC contract. The bodies and their protobuf
translation are in gateway/schemas/image.py.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from fabula.image.v1 import image_pb2
from gateway.calls import all_messages, unary
from gateway.deps import ImageService, RateLimitedUser, Settings
from gateway.errors import ApiError
from gateway.schemas.common import error_responses
from gateway.schemas.image import (
    FIELD_PREFIXES,
    PREVIEW_FIELD_PREFIXES,
    ControlPreview,
    ControlPreviewBody,
    GenerateImageBody,
    GenerateImageResult,
    GenerateStream,
    ImageModels,
    MetadataBody,
    MetadataResult,
    SigningKeyResult,
    TagSuggestions,
    TokenizeImageBody,
    TokenizeImageResult,
    stream_event_from_pb,
    suggest_tags_request,
)
from gateway.sse import relay_stream

router = APIRouter(prefix="/ai", tags=["image"])

ZIP_MEDIA_TYPE = "application/zip"
ERRORS = error_responses(400, 401, 409, 429, 503, 504)


def _wants_zip(body: GenerateImageBody, request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return body.response_format == "zip" or (ZIP_MEDIA_TYPE in accept and "application/json" not in accept)


@router.post("/generate-image", response_model=GenerateImageResult,
             responses={200: {"content": {ZIP_MEDIA_TYPE: {}}, "description": "JSON, or a zip of the PNGs"},
                        **ERRORS},
             summary="Generate images (text to image with optional hires fix, img2img, inpaint, outpaint, upscale, "
                     "enhance, variations); answers when all are done")
async def generate_image(body: GenerateImageBody, request: Request, user: RateLimitedUser, image: ImageService,
                         settings: Settings) -> Any:
    call = image.Generate(body.to_pb(), timeout=settings.stream_timeout_s)
    stream = GenerateStream.from_pb(await all_messages(request, call, field_prefixes=FIELD_PREFIXES))
    if stream.accepted is None:
        raise ApiError(500, "the image service closed the stream without an answer", code="INTERNAL")
    if _wants_zip(body, request):
        return Response(stream.to_zip(), media_type=ZIP_MEDIA_TYPE,
                        headers={"Content-Disposition": 'attachment; filename="images.zip"'})
    return stream.to_result()


@router.post("/generate-image-stream",
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "events: accepted, progress*, image+, finished | error"}, **ERRORS},
             summary="Generate images, streaming progress (with previews) and the images as Server-Sent Events")
async def generate_image_stream(body: GenerateImageBody, request: Request, user: RateLimitedUser,
                                image: ImageService, settings: Settings) -> EventSourceResponse:
    call = image.Generate(body.to_pb(), timeout=settings.stream_timeout_s)
    return await relay_stream(request, call, stream_event_from_pb, "image", field_prefixes=FIELD_PREFIXES)


@router.post("/image/tokenize", response_model=TokenizeImageResult, responses=ERRORS,
             summary="What the image model sees of a prompt: tokens, weights and 77-token chunks")
async def tokenize_image(body: TokenizeImageBody, request: Request, user: RateLimitedUser, image: ImageService,
                         settings: Settings) -> TokenizeImageResult:
    reply = await unary(request, image.Tokenize(body.to_pb(), timeout=settings.request_timeout_s),
                        field_prefixes=FIELD_PREFIXES)
    return TokenizeImageResult.from_pb(reply)


@router.post("/image/control-preview", response_model=ControlPreview, responses=ERRORS,
             summary="The control image a generation would be steered by (Canny, line art, scribble, pose, ...)")
async def control_preview(body: ControlPreviewBody, request: Request, user: RateLimitedUser, image: ImageService,
                          settings: Settings) -> ControlPreview:
    reply = await unary(request, image.PreprocessControl(body.to_preview_pb(), timeout=settings.request_timeout_s),
                        field_prefixes=PREVIEW_FIELD_PREFIXES)
    return ControlPreview.from_pb(reply)


@router.get("/image/models", response_model=ImageModels, responses=error_responses(401, 429, 503),
            summary="The image models, samplers and limits")
async def image_models(request: Request, user: RateLimitedUser, image: ImageService,
                       settings: Settings) -> ImageModels:
    reply = await unary(request, image.ListModels(image_pb2.ListModelsRequest(), timeout=settings.request_timeout_s),
                        field_prefixes=FIELD_PREFIXES)
    return ImageModels.from_pb(reply)


@router.post("/image/metadata", response_model=MetadataResult, responses=ERRORS,
             summary="The parameters in a PNG (Fabula's or A1111's) as a request to run again, and whether its "
                     "signature verifies")
async def image_metadata(body: MetadataBody, request: Request, user: RateLimitedUser, image: ImageService,
                         settings: Settings) -> MetadataResult:
    reply = await unary(request, image.ReadMetadata(body.to_pb(), timeout=settings.request_timeout_s))
    return MetadataResult.from_pb(reply)


@router.get("/image/signing-key", response_model=SigningKeyResult, responses=error_responses(401, 429, 503),
            summary="The Ed25519 public key this server signs its images with, and what is signed")
async def image_signing_key(request: Request, user: RateLimitedUser, image: ImageService,
                            settings: Settings) -> SigningKeyResult:
    reply = await unary(request, image.GetSigningKey(image_pb2.GetSigningKeyRequest(),
                                                     timeout=settings.request_timeout_s))
    return SigningKeyResult.from_pb(reply)


@router.get("/image/tags", response_model=TagSuggestions, responses=ERRORS,
            summary="Tag suggestions for prompt autocompletion (prefix, then fuzzy matches)")
async def image_tags(request: Request, user: RateLimitedUser, image: ImageService, settings: Settings,
                     q: str = Query("", max_length=200, description="what has been typed so far"),
                     limit: int = Query(20, ge=1, le=100)) -> TagSuggestions:
    reply = await unary(request, image.SuggestTags(suggest_tags_request(q, limit),
                                                   timeout=settings.request_timeout_s))
    return TagSuggestions.from_pb(reply)
