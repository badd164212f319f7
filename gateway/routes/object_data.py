"""An object's data as raw bytes: GET and PUT /user/objects/{type}/{id}/data.

The same objects as objects.py, without base64 and JSON around the data: the body is the
encrypted object itself (`application/octet-stream`) and the metadata travels in headers. For
objects of tens of KiB this is the cheaper path for both ends (no encoding a third larger, no
parsing of a long JSON string); the JSON routes stay for clients that prefer them.

- `GET .../data` answers the bytes, with `X-Fabula-Change-Index`, `X-Fabula-Created-At` and
  `X-Fabula-Updated-At` (ISO 8601, UTC) and `Content-Length` (the size).
- `PUT .../data?expected_change_index=N` stores the body: 0 creates (201; 409 if it exists),
  otherwise the stored change index (200; 409 if stale, 404 if absent). The answer is the JSON
  metadata, as from the JSON route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from gateway.calls import unary
from gateway.deps import Editor, RateLimitedUser, Settings
from gateway.routes.objects import IdPath, KindPath
from gateway.schemas.common import MAX_CHANGE_INDEX, error_responses
from gateway.schemas.editor import ObjectMeta, get_object_request, object_meta_headers, put_object_data_request

router = APIRouter(prefix="/user/objects", tags=["objects"])

OCTET_STREAM = "application/octet-stream"


@router.get("/{type}/{id}/data", response_class=Response,
            responses={200: {"content": {OCTET_STREAM: {}}, "description": "the encrypted object"},
                       **error_responses(400, 401, 404, 429, 503, 504)},
            summary="Read one object's data as raw bytes, its metadata in headers")
async def get_object_data(kind: KindPath, object_id: IdPath, request: Request, user: RateLimitedUser,
                          editor: Editor, settings: Settings) -> Response:
    reply = await unary(request, editor.GetObject(get_object_request(kind, object_id), metadata=user.metadata,
                                                  timeout=settings.request_timeout_s))
    return Response(content=reply.data, media_type=OCTET_STREAM, headers=object_meta_headers(reply.meta))


@router.put("/{type}/{id}/data", response_model=ObjectMeta,
            responses={201: {"model": ObjectMeta, "description": "created"},
                       **error_responses(400, 401, 404, 409, 413, 429, 503, 504)},
            # The encrypted object is never empty (an AEAD ciphertext has at least its tag).
            openapi_extra={"requestBody": {"required": True, "content": {OCTET_STREAM: {"schema": {
                "type": "string", "format": "binary", "minLength": 1}}}}},
            summary="Create (expected_change_index 0) or update an object from raw bytes")
async def put_object_data(
    kind: KindPath,
    object_id: IdPath,
    request: Request,
    response: Response,
    user: RateLimitedUser,
    editor: Editor,
    settings: Settings,
    expected_change_index: Annotated[int, Query(
        ge=0, le=MAX_CHANGE_INDEX, description="0 to create (409 if it exists); otherwise the stored change index "
                                         "(409 if stale)")],
) -> ObjectMeta:
    data = await request.body()
    reply = await unary(request, editor.PutObject(
        put_object_data_request(kind, object_id, data, expected_change_index), metadata=user.metadata,
        timeout=settings.request_timeout_s))
    if expected_change_index == 0:
        response.status_code = status.HTTP_201_CREATED
    return ObjectMeta.from_pb(reply.meta)
