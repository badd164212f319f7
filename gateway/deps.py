"""Request dependencies shared by the routes: settings, service stubs, the current user, limits.

Routes declare what they need with the `Annotated` aliases at the bottom, e.g.
`async def list_objects(user: RateLimitedUser, editor: Editor) -> ...`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated

import grpc
from cachetools import TTLCache
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fabula.editor.v1 import editor_pb2, editor_pb2_grpc
from fabula.image.v1 import image_pb2_grpc
from fabula.text.v1 import text_pb2_grpc
from gateway.clients import ServiceChannels
from gateway.settings import GatewaySettings
from gateway.errors import ApiError, from_rpc_error
from gateway.rate_limits import RateLimits
from services.toolkit.callers import set_current_user


@dataclass(frozen=True)
class User:
    """The caller, as the editor service knows them, with the token to forward on their behalf."""

    user_id: str
    username: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


class AuthCache:
    """Remembers token → user for a few seconds so every request does not cost an extra RPC.

    Only the rate-limit key relies on it: the editor service checks the token itself on every
    storage call, so a revoked token is refused there at once.
    """

    def __init__(self, ttl_s: float) -> None:
        self._users: TTLCache[str, User] = TTLCache(maxsize=100_000, ttl=ttl_s) if ttl_s > 0 else None

    def get(self, token: str) -> User | None:
        return self._users.get(self._key(token)) if self._users is not None else None

    def put(self, user: User) -> None:
        if self._users is not None:
            self._users[self._key(user.token)] = user

    def forget(self, token: str) -> None:
        """Drop a token that was just revoked (logout, password change, account deletion)."""
        if self._users is not None:
            self._users.pop(self._key(token), None)

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()


# Dependencies are `async def` even when they never await: FastAPI runs a plain `def` dependency
# in a worker thread, which costs more than the whole route on the hot path. They also read the
# app's state from `request` themselves rather than depend on one another: FastAPI resolves every
# node of a dependency tree on every request, at a cost comparable to a node's own work.
async def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


async def get_channels(request: Request) -> ServiceChannels:
    return request.app.state.channels


async def get_editor(request: Request) -> editor_pb2_grpc.EditorServiceStub:
    return request.app.state.channels.editor_stub


async def get_text(request: Request) -> text_pb2_grpc.TextServiceStub:
    return request.app.state.channels.text_stub


async def get_image(request: Request) -> image_pb2_grpc.ImageServiceStub:
    return request.app.state.channels.image_stub


TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{1,1024}")
_bearer = HTTPBearer(auto_error=False, description="a session token from /user/login")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "authorization: missing bearer token (Authorization: Bearer <token>)",
                       field="authorization")
    # gRPC refuses metadata values outside visible ASCII (the call would fail as a bug, not 401).
    if not TOKEN_PATTERN.fullmatch(credentials.credentials):
        raise ApiError(401, "authorization: malformed bearer token", field="authorization")
    return credentials.credentials


async def bearer_token(credentials: Credentials) -> str:
    return _token(credentials)


async def _user(request: Request, credentials: HTTPAuthorizationCredentials | None) -> User:
    return await user_for_token(request, _token(credentials))


# The scope key under which the front door leaves the user it found remembered for the request's
# token (front_door.py), so that the same cache is not looked up twice per request.
REMEMBERED_USER = "fabula.remembered_user"


async def user_for_token(request: Request, token: str) -> User:
    """The user of a well-formed bearer token (remembered, or asked of the editor); 401 if unknown."""
    state = request.app.state
    cache: AuthCache = state.auth_cache
    user = request.scope.get(REMEMBERED_USER)
    if user is None or user.token != token:
        user = cache.get(token)
    if user is not None:
        set_current_user(user.user_id)
        return user
    try:
        reply = await state.channels.editor_stub.Authenticate(
            editor_pb2.AuthenticateRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=state.settings.request_timeout_s,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            # Counted against the address's budget for unknown tokens (front_door.py refuses
            # the address once it is spent).
            limits: RateLimits = state.rate_limits
            await limits.count(limits.invalid_tokens, limits.invalid_token_key(client_address(request)))
        raise from_rpc_error(error) from None
    user = User(user_id=reply.user_id, username=reply.username, token=token)
    cache.put(user)
    # Every service call this request makes from here on carries a caller token naming the user.
    set_current_user(user.user_id)
    return user


async def current_user(request: Request, credentials: Credentials) -> User:
    return await _user(request, credentials)


async def rate_limited_user(request: Request, credentials: Credentials) -> User:
    return await limit_user(request, await _user(request, credentials))


async def limit_user(request: Request, user: User) -> User:
    """Count the request against the user's rate limit; 429 once it is spent."""
    limits: RateLimits = request.app.state.rate_limits
    await limits.check(limits.per_user, limits.user_key(user.user_id))
    return user


async def rate_limited_address(request: Request) -> None:
    """For calls made before login (register, login, salt): limit by client address."""
    limits: RateLimits = request.app.state.rate_limits
    await limits.check(limits.per_address, limits.address_key(client_address(request)))


def client_address(request: Request) -> str:
    """The client's address, through trusted proxies only (gateway/client_address.py)."""
    return request.app.state.client_addresses.of(request.scope)


Settings = Annotated[GatewaySettings, Depends(get_settings)]
Channels = Annotated[ServiceChannels, Depends(get_channels)]
Editor = Annotated[editor_pb2_grpc.EditorServiceStub, Depends(get_editor)]
TextService = Annotated[text_pb2_grpc.TextServiceStub, Depends(get_text)]
ImageService = Annotated[image_pb2_grpc.ImageServiceStub, Depends(get_image)]
BearerToken = Annotated[str, Depends(bearer_token)]
CurrentUser = Annotated[User, Depends(current_user)]
RateLimitedUser = Annotated[User, Depends(rate_limited_user)]
AddressLimited = Annotated[None, Depends(rate_limited_address)]
