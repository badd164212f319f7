"""The lean path of GET and PUT /user/objects/{type}/{id}/data: the busiest routes, served as plain ASGI.

Saving and loading stories is what clients do most, and for these two routes FastAPI's routing,
dependency resolution and response handling cost more of the gateway's CPU than the editor call
itself (profile in docs/editor.md, "Where the time goes on the storage path"). This middleware
serves a request of either route whose every part is plainly valid — a known type, an id of the
allowed characters, a well-formed bearer token and, for PUT, `expected_change_index` as the only
query parameter, in range — with the same steps the route's dependencies take: the user from the
token (remembered, or asked of the editor), the user's rate limit, the editor call awaited with a
disconnect watch, errors answered by errors.py. Anything else (a bad id or type, a missing or
malformed token or query) goes on to the FastAPI routes in routes/object_data.py, which answer it
exactly as before and remain what the OpenAPI document describes.

It sits inside the front door (front_door.py), so the body limit, the token check before the body
and the unknown-token budget apply unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fabula_wire import ObjectType
from gateway.calls import unary
from gateway.deps import TOKEN_PATTERN, User, limit_user, user_for_token
from gateway.errors import ApiError, to_response
from gateway.schemas.common import MAX_CHANGE_INDEX
from gateway.schemas.editor import (
    CHANGE_INDEX_HEADER,
    CREATED_AT_HEADER,
    OBJECT_ID_PATTERN,
    UPDATED_AT_HEADER,
    get_object_request,
    put_object_data_request,
)

_PATH = re.compile(rf"/user/objects/([a-z]+)/({OBJECT_ID_PATTERN})/data")
_QUERY = re.compile(rb"expected_change_index=([0-9]{1,19})")
_TYPES = {kind.value: kind for kind in ObjectType}
_OCTET_STREAM = b"application/octet-stream"
_JSON = b"application/json"
_CHANGE_INDEX, _CREATED_AT, _UPDATED_AT = (name.lower().encode() for name in (
    CHANGE_INDEX_HEADER, CREATED_AT_HEADER, UPDATED_AT_HEADER))
# An answer: status, headers (Content-Length is added), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def iso_time(timestamp: Timestamp) -> str:
    """A timestamp as the JSON routes spell it (pydantic's UTC form: no fraction when it is zero, "Z")."""
    return timestamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            # As FastAPI's HTTPBearer reads it: "<scheme> <credentials>", the scheme in any case.
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and TOKEN_PATTERN.fullmatch(token):
                return token
            return None
    return None


class RawObjectData:
    """ASGI middleware: serves the plainly valid /data requests, passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "PUT"):
            match = _PATH.fullmatch(scope["path"])
            kind = _TYPES.get(match[1]) if match else None
            token = _bearer_token(scope) if kind is not None else None
            if token is not None:
                if scope["method"] == "GET":
                    await _serve(_get, scope, receive, send, token, kind, match[2])
                    return
                query = _QUERY.fullmatch(scope["query_string"])
                if query is not None and int(query[1]) <= MAX_CHANGE_INDEX:
                    await _serve(_put, scope, receive, send, token, kind, match[2], int(query[1]))
                    return
        await self.app(scope, receive, send)


async def _serve(handler: Callable[..., Awaitable[Answer]], scope: Scope, receive: Receive, send: Send,
                 token: str, *args: Any) -> None:
    request = Request(scope, receive)
    try:
        user = await limit_user(request, await user_for_token(request, token))
        status, headers, body = await handler(request, user, *args)
    except ApiError as error:
        # The gateway's own error body: no compatible API is served under /user/.
        await to_response(error)(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _editor_call(request: Request, user: User, kind: str, message: Any) -> Any:
    """GetObject or PutObject (`kind` "get_object" or "put_object"): on an ObjectData stream when
    one is ready (object_stream.py), else as a unary call."""
    state = request.app.state
    timeout_s = state.settings.request_timeout_s
    streams = state.channels.editor_data
    if streams is not None:
        reply = await streams.call(request, kind, message, user.user_id, f"Bearer {user.token}", timeout_s)
        if reply is not None:
            return reply
    stub = state.channels.editor_stub
    method = stub.GetObject if kind == "get_object" else stub.PutObject
    return await unary(request, method(message, metadata=user.metadata, timeout=timeout_s))


async def _get(request: Request, user: User, kind: ObjectType, object_id: str) -> Answer:
    reply = await _editor_call(request, user, "get_object", get_object_request(kind, object_id))
    meta = reply.meta
    headers = [(_CHANGE_INDEX, str(meta.change_index).encode()), (_CREATED_AT, iso_time(meta.created_at).encode()),
               (_UPDATED_AT, iso_time(meta.updated_at).encode()), (b"content-type", _OCTET_STREAM)]
    return 200, headers, reply.data


async def _put(request: Request, user: User, kind: ObjectType, object_id: str, expected: int) -> Answer:
    data = await _read_body(request.receive)
    reply = await _editor_call(request, user, "put_object", put_object_data_request(kind, object_id, data, expected))
    meta = reply.meta
    body = json.dumps({"id": meta.id, "type": ObjectType.from_proto(meta.type).value, "size": meta.size,
                       "change_index": meta.change_index, "created_at": iso_time(meta.created_at),
                       "updated_at": iso_time(meta.updated_at)},
                      ensure_ascii=False, separators=(",", ":")).encode()
    return (201 if expected == 0 else 200), [(b"content-type", _JSON)], body


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (the front door's `receive` refuses one over the route's limit)."""
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(499, "client closed the request", code="CANCELLED")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
