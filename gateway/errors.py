"""The one place that turns failures into HTTP statuses and JSON bodies.

Body shape everywhere (plain responses and SSE error events alike):
`{"error": {"code": "INVALID_ARGUMENT", "message": "...", "field": "..."}}` — `field` only when
one field is at fault. The compatible APIs answer in their own clients' shapes instead: main.py
passes `install_handlers` a shape per path prefix (e.g. "/v1/" → OpenAI's error body); the status
and the decision are the same, only the body differs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# HTTP_STATUS_BY_GRPC_CODE stays importable from here for the gateway's own modules.
from fabula_wire import HTTP_STATUS_BY_GRPC_CODE, http_status, read_error_detail  # noqa: F401

log = logging.getLogger(__name__)

HTTP_CODE_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ApiError(Exception):
    """An error the gateway itself decides (before or without calling a service)."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code or HTTP_CODE_NAMES.get(status, "ERROR")
        self.retry_after_s = retry_after_s


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


def from_rpc_error(error: grpc.aio.AioRpcError, field_prefixes: Sequence[str] = ()) -> ApiError:
    """The HTTP view of a failed gRPC call, keeping the field and retry delay it carried.

    `field_prefixes`: what the service's field names start with that the HTTP body does not have
    (each schema module declares its service's), e.g. the text service names "spec.sampling.top_p"
    of its GenerationSpec where the body, which is that spec, has "sampling.top_p".
    """
    code = error.code()
    status = http_status(code)
    detail, retry_after = read_error_detail(error)
    if status == 500:
        # Never leak a service's internals; the service logged the details.
        log.error("service call failed: %s %s", code, error.details())
        return ApiError(500, "internal error", code="INTERNAL")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ApiError(503, "service unavailable, try again shortly", code="UNAVAILABLE",
                        retry_after_s=1.0)
    field, message = _body_field(detail.field, error.details() or code.name, field_prefixes)
    return ApiError(status, message, field=field or None, code=code.name, retry_after_s=retry_after)


def _body_field(field: str, message: str, prefixes: Sequence[str]) -> tuple[str, str]:
    """The field as the HTTP body names it, and the message with it named so (services start their
    messages with the field's name)."""
    for prefix in prefixes:
        if field.startswith(prefix):
            return field.removeprefix(prefix), message.removeprefix(prefix)
    return field, message


# Builds an API's own error body from the gateway's decision.
ErrorShape = Callable[[ApiError], dict[str, Any]]


def to_response(error: ApiError, shape: ErrorShape | None = None) -> JSONResponse:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    body = shape(error) if shape is not None else error_body(error.code, error.message, error.field)
    return JSONResponse(body, status_code=error.status, headers=headers)


# Where a value fits none of a union's members, pydantic puts the member it tried into the location
# ("stop_sequences", 0, "list[int]", 2); those are types, not fields.
_UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})


def _validation_field(location: tuple[Any, ...]) -> str:
    # FastAPI locations look like ("body", "sampling", "temperature"); the first part is where.
    parts = [str(part) for part in location[1:]] if len(location) > 1 else [str(p) for p in location]
    return ".".join(part for part in parts if part not in _UNION_MEMBERS and "[" not in part)


def _allowed_methods(request: Request) -> set[str]:
    """The methods the OpenAPI document serves the request's path with (the document is the
    contract a 405's Allow is checked against)."""
    app = request.app
    paths = getattr(app.state, "allowed_methods_by_path", None)
    if paths is None:
        paths = app.state.allowed_methods_by_path = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"),
             {method.upper() for method in operations})
            for template, operations in app.openapi().get("paths", {}).items()]
    return {method for pattern, methods in paths if pattern.match(request.url.path) for method in methods}


def shape_for(path: str, shapes: Mapping[str, ErrorShape] | None) -> ErrorShape | None:
    """The error body of the API served at `path` (None: the gateway's own)."""
    return next((shape for prefix, shape in (shapes or {}).items() if path.startswith(prefix)), None)


def install_handlers(app: FastAPI, shapes: Mapping[str, ErrorShape] | None = None) -> None:
    """`shapes`: path prefix → the error body of the API served under it (the gateway's own elsewhere)."""

    def respond(request: Request, error: ApiError) -> JSONResponse:
        return to_response(error, shape_for(request.url.path, shapes))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return respond(request, error)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _rpc_error(request: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        return respond(request, from_rpc_error(error))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            # FastAPI locates a JSON syntax error by character offset; the body is what is wrong.
            reason = (first.get("ctx") or {}).get("error", "")
            return respond(request, ApiError(400, f"body: invalid JSON ({reason})", field="body"))
        field = _validation_field(tuple(first.get("loc", ())))
        # Our own validators' messages read "Value error, must be ..."; the prefix is noise.
        text = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        message = f"{field}: {text}" if field else text
        return respond(request, ApiError(400, message, field=field or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # 413 comes from the body limit (front_door.BodyTooLarge), 400 from FastAPI when a
        # body cannot be decoded at all (not UTF-8): either way the body is at fault.
        if error.status_code in (400, 413):
            return respond(request, ApiError(error.status_code, f"body: {error.detail}", field="body"))
        response = respond(request, ApiError(error.status_code, str(error.detail)))
        if error.status_code == 405:
            # Starlette names the methods of the first route whose path matched; a path served by
            # several routes (GET and PUT /user/keystore) takes all of theirs.
            allowed = _allowed_methods(request) or set((error.headers or {}).get("Allow", "").split(", ")) - {""}
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error in the gateway")
        return respond(request, ApiError(500, "internal error", code="INTERNAL"))
