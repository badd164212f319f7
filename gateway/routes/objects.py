"""The caller's encrypted objects: list, write, read, delete, under /user/objects/{type}.

The bearer token is forwarded to the editor, which scopes every call to the token's own account:
there is no way to name another user's object. An unknown `{type}` is refused with 400 naming
"type" (the path is well-formed; the value is not one of the five types).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from gateway.calls import unary
from gateway.deps import Editor, RateLimitedUser, Settings
from gateway.schemas.common import MAX_CHANGE_INDEX, UINT32_MAX, error_responses
from gateway.schemas.editor import (
    OBJECT_ID_PATTERN,
    ObjectKind,
    ObjectMeta,
    ObjectPage,
    ObjectWithData,
    PutObjectRequest,
    delete_object_request,
    get_object_request,
    list_objects_request,
)

router = APIRouter(prefix="/user/objects", tags=["objects"])

KindPath = Annotated[ObjectKind, Path(alias="type", description="which kind of object")]
IdPath = Annotated[str, Path(alias="id", pattern=f"^{OBJECT_ID_PATTERN}$",
                             description="client-chosen id: 1-64 characters of A-Z a-z 0-9 _ -")]


@router.get("/{type}", response_model=ObjectPage, responses=error_responses(400, 401, 429, 503, 504),
            summary="List the metadata of the caller's objects of one type, ordered by id")
async def list_objects(
    kind: KindPath,
    request: Request,
    user: RateLimitedUser,
    editor: Editor,
    settings: Settings,
    page_size: Annotated[int | None, Query(ge=1, le=UINT32_MAX,
                                           description="objects per page; the server's default if absent")] = None,
    page_token: Annotated[str, Query(max_length=1024, description="next_page_token of the previous page")] = "",
) -> ObjectPage:
    reply = await unary(request, editor.ListObjects(list_objects_request(kind, page_size, page_token),
                                                    metadata=user.metadata, timeout=settings.request_timeout_s))
    return ObjectPage.from_pb(reply)


@router.put("/{type}/{id}", response_model=ObjectMeta,
            responses={201: {"model": ObjectMeta, "description": "created"},
                       **error_responses(400, 401, 404, 409, 429, 503, 504)},
            summary="Create (expected_change_index 0) or update an object")
async def put_object(kind: KindPath, object_id: IdPath, body: PutObjectRequest, request: Request,
                     response: Response, user: RateLimitedUser, editor: Editor, settings: Settings) -> ObjectMeta:
    """Creating an object that exists, or updating with a stale change index, is refused with 409
    and nothing is overwritten; updating an object that does not exist is 404."""
    reply = await unary(request, editor.PutObject(body.to_pb(kind, object_id), metadata=user.metadata,
                                                  timeout=settings.request_timeout_s))
    if body.expected_change_index == 0:
        response.status_code = status.HTTP_201_CREATED
    return ObjectMeta.from_pb(reply.meta)


@router.get("/{type}/{id}", response_model=ObjectWithData,
            responses=error_responses(400, 401, 404, 429, 503, 504), summary="Read one object with its data")
async def get_object(kind: KindPath, object_id: IdPath, request: Request, user: RateLimitedUser,
                     editor: Editor, settings: Settings) -> ObjectWithData:
    reply = await unary(request, editor.GetObject(get_object_request(kind, object_id),
                                                  metadata=user.metadata, timeout=settings.request_timeout_s))
    return ObjectWithData.from_get(reply)


@router.delete("/{type}/{id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               responses=error_responses(400, 401, 404, 409, 429, 503, 504), summary="Delete one object")
async def delete_object(
    kind: KindPath,
    object_id: IdPath,
    request: Request,
    user: RateLimitedUser,
    editor: Editor,
    settings: Settings,
    expected_change_index: Annotated[int | None, Query(
        ge=0, le=MAX_CHANGE_INDEX, description="delete only if the stored change index still equals this (409 if not)",
    )] = None,
) -> Response:
    await unary(request, editor.DeleteObject(delete_object_request(kind, object_id, expected_change_index),
                                             metadata=user.metadata, timeout=settings.request_timeout_s))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
