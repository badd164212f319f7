"""NovelAI's API under the base URL prefix /novelai (point a NovelAI client's API URL at
http://<gateway>/novelai): /novelai/ai/generate-image answers with a ZIP of PNGs. Fabula's own
routes keep their paths. Bodies and translation are in gateway/schemas/novelai.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fabula.image.v1 import image_pb2
from gateway.calls import all_messages, unary
from gateway.deps import ImageService, RateLimitedUser, Settings
from gateway.errors import ApiError
from gateway.schemas.common import error_responses
from gateway.schemas.novelai import FIELD_PREFIXES, GenerateImageBody, honesty_headers, images_zip

PREFIX = "/novelai"
router = APIRouter(prefix=f"{PREFIX}/ai", tags=["NovelAI"])
ZIP_MEDIA_TYPE = "application/zip"


def _as_body_field(error: ApiError) -> ApiError:
    """The image service's field, as NovelAI's body names it (the prompt is `input`, the rest are
    under `parameters`)."""
    if error.field:
        field = "input" if error.field == "prompt" else f"parameters.{error.field}"
        error.message = error.message.replace(error.field, field, 1)
        error.field = field
    return error


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
