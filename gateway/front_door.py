"""What every request passes before a byte of its body is read: the body limit of its route, a
bearer token on signed-in routes, and the caller's address's budget for unknown tokens.

FastAPI reads and parses a JSON body before any dependency runs (authentication and rate limits
included), and parsed JSON costs many times its size: a body of millions of tiny objects would
grow the process by gigabytes. So each route gets a limit that fits what it really carries,
enforced here while the body streams in (Content-Length can lie or be absent), and a signed-in
route refuses a request without a token, or from an address that keeps sending unknown tokens,
before reading anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import deps
from gateway.client_address import ClientAddresses
from gateway.settings import GatewaySettings
from gateway.deps import AuthCache
from gateway.errors import ApiError, ErrorShape, error_body, shape_for, to_response
from gateway.rate_limits import RateLimits


def body_limits(settings: GatewaySettings) -> dict[str, int]:
    """"METHOD /path" → the largest body that route accepts. Every route that takes a body is
    listed (tests/unit/gateway checks it); any other may carry `max_sign_in_body_bytes`."""
    sign_in, account = settings.max_sign_in_body_bytes, settings.max_account_body_bytes
    text, image = settings.max_text_body_bytes, settings.max_image_body_bytes
    return {
        "POST /user/salt": sign_in,
        "POST /user/login": sign_in,
        "POST /user/delete": sign_in,
        # These carry the keystore, which holds a key per object and so grows with the account.
        "POST /user/register": account,
        "POST /user/change-password": account,
        "PUT /user/keystore": account,
        "PUT /user/objects/{type}/{id}": settings.max_object_body_bytes,
        # The same object as raw bytes, a quarter smaller than its base64: the JSON bound covers it.
        "PUT /user/objects/{type}/{id}/data": settings.max_object_body_bytes,
        "POST /user/import": settings.max_import_bytes,
        "POST /ai/generate": text,
        "POST /ai/generate-stream": text,
        "POST /ai/tokenize": text,
        "POST /ai/image/tokenize": text,
        "POST /ai/generate-image": image,
        "POST /ai/generate-image-stream": image,
        "POST /ai/image/control-preview": image,
        "POST /ai/image/metadata": image,
        "POST /sdapi/v1/txt2img": text,
        "POST /sdapi/v1/img2img": image,
        "POST /sdapi/v1/png-info": image,
        "POST /novelai/ai/generate": text,
        "POST /novelai/ai/generate-stream": text,
        "POST /novelai/ai/generate-image": image,
        "POST /user/tokens": sign_in,
        # The compatible APIs carry a prompt, as /ai/generate does.
        "POST /v1/completions": text,
        "POST /v1/chat/completions": text,
        "POST /api/v1/generate": text,
        "POST /api/extra/generate/stream": text,
        "POST /api/extra/tokencount": text,
        "POST /api/extra/abort": sign_in,
    }


# The dependencies that make a route signed-in: each needs the caller's bearer token.
_TOKEN_DEPENDENCIES: frozenset[Callable[..., object]] = frozenset(
    {deps.current_user, deps.rate_limited_user, deps.bearer_token})


def needs_token(dependant: Dependant) -> bool:
    return dependant.call in _TOKEN_DEPENDENCIES or any(needs_token(d) for d in dependant.dependencies)


@dataclass(frozen=True)
class RouteRule:
    method: str
    path: str
    pattern: re.Pattern[str]
    max_body_bytes: int
    signed_in: bool


def route_rules(routers: Iterable[APIRouter], settings: GatewaySettings) -> list[RouteRule]:
    """A rule for every route and method of `routers` (included in the app without a prefix)."""
    limits = body_limits(settings)
    return [RouteRule(method=method, path=route.path, pattern=route.path_regex,
                      max_body_bytes=limits.get(f"{method} {route.path}", settings.max_sign_in_body_bytes),
                      signed_in=needs_token(route.dependant))
            for router in routers for route in router.routes if isinstance(route, APIRoute)
            for method in sorted(route.methods)]


class BodyTooLarge(HTTPException):
    """Raised from `receive` mid-body. An HTTPException so that FastAPI's body reader passes it
    on (it turns any other exception into a 400) and errors.py answers 413 naming "body"."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, f"request body is larger than {max_body_bytes} bytes")


class FrontDoor:
    """ASGI middleware. `rules` come from `route_rules`; a request no rule matches (404, 405)
    may carry `default_max_body_bytes` and needs no token here.

    Refusals leave the connection open: uvicorn discards the rest of the body as it arrives
    (nothing is kept), whereas closing a socket with unread data resets it, and the reset can
    destroy the answer before the client has read it."""

    def __init__(self, app: ASGIApp, *, rules: Iterable[RouteRule], default_max_body_bytes: int,
                 rate_limits: RateLimits, auth_cache: AuthCache, client_addresses: ClientAddresses,
                 error_shapes: Mapping[str, ErrorShape] | None = None) -> None:
        self.app = app
        self.error_shapes = error_shapes  # the compatible APIs' own error bodies, by path prefix
        self.rules = tuple(rules)
        self.default_max_body_bytes = default_max_body_bytes
        self.rate_limits = rate_limits
        self.auth_cache = auth_cache
        self.client_addresses = client_addresses

    def _rule(self, scope: Scope) -> RouteRule | None:
        path, method = scope.get("path", ""), scope.get("method", "")
        for rule in self.rules:
            if rule.method == method and rule.pattern.match(path):
                return rule
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self._rule(scope)
        limit = rule.max_body_bytes if rule else self.default_max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse_body(send, limit, self._shape(scope))
            return
        if rule is not None and rule.signed_in:
            try:
                await self._admit_token(scope, headers.get(b"authorization", b""))
            except ApiError as error:
                await to_response(error, self._shape(scope))(scope, receive, send)
                return
        await self._limited(scope, receive, send, limit)

    def _shape(self, scope: Scope) -> ErrorShape | None:
        # Looked up only for a refusal: most requests pass, and the look-up scans every prefix.
        return shape_for(scope.get("path", ""), self.error_shapes)

    async def _admit_token(self, scope: Scope, authorization: bytes) -> None:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "authorization: missing bearer token (Authorization: Bearer <token>)",
                           field="authorization")
        user = self.auth_cache.get(token)
        if user is not None:
            scope[deps.REMEMBERED_USER] = user  # found once per request (deps.user_for_token)
            return
        # An unknown token costs the editor a lookup: an address that keeps sending them (a
        # guessing or flooding client) is refused here, before its body or the editor is touched.
        key = self.rate_limits.invalid_token_key(self.client_addresses.of(scope))
        await self.rate_limits.ensure_room(self.rate_limits.invalid_tokens, key)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await _refuse_body(send, limit, self._shape(scope))


async def _refuse_body(send: Send, limit: int, shape: ErrorShape | None = None) -> None:
    message = f"body: request body is larger than {limit} bytes"
    document = shape(ApiError(413, message, field="body")) if shape else error_body("PAYLOAD_TOO_LARGE", message,
                                                                                  "body")
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
