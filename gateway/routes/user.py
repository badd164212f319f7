"""The account: salt, registration, sessions, password change, deletion and the keystore.

Every call goes to the editor service with the configured deadline and is cancelled if the client
disconnects. The server only ever sees keys derived from the password and ciphertext; see the
SDK for the client side of the protocol.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from fabula.editor.v1 import editor_pb2
from gateway.calls import unary
from gateway.deps import AddressLimited, Editor, RateLimitedUser, Settings, client_address
from gateway.rate_limits import RateLimits
from gateway.schemas.common import error_responses
from gateway.schemas.editor import (
    ApiTokenInfo,
    CreateApiTokenRequest,
    CreatedApiToken,
    ChangePasswordRequest,
    ChangePasswordResponse,
    DeleteAccountRequest,
    DeleteAccountResponse,
    KeystoreResponse,
    LoginRequest,
    MeResponse,
    PutKeystoreRequest,
    PutKeystoreResponse,
    RegisterRequest,
    SaltRequest,
    SaltResponse,
    SessionResponse,
    revoke_api_token_request,
)

router = APIRouter(prefix="/user", tags=["user"])

_ANONYMOUS_ERRORS = error_responses(400, 429, 503, 504)
_SIGNED_IN_ERRORS = error_responses(400, 401, 429, 503, 504)


@router.post("/salt", response_model=SaltResponse, responses=_ANONYMOUS_ERRORS,
             summary="The Argon2id salt and cost to derive a user's keys with")
async def get_salt(body: SaltRequest, request: Request, _: AddressLimited, editor: Editor,
                   settings: Settings) -> SaltResponse:
    """For a username without an account the answer is a stable decoy, so it reveals nothing."""
    reply = await unary(request, editor.GetSalt(body.to_pb(), timeout=settings.request_timeout_s))
    return SaltResponse.from_pb(reply)


@router.post("/register", response_model=SessionResponse, status_code=status.HTTP_201_CREATED,
             responses=error_responses(400, 409, 429, 503, 504), summary="Create an account")
async def register(body: RegisterRequest, request: Request, _: AddressLimited, editor: Editor,
                   settings: Settings) -> SessionResponse:
    """Creates the account with its first keystore and returns a first session (409 if taken)."""
    reply = await unary(request, editor.Register(body.to_pb(), timeout=settings.request_timeout_s))
    return SessionResponse.from_pb(reply.session)


@router.post("/login", response_model=SessionResponse, responses=error_responses(400, 401, 429, 503, 504),
             summary="Exchange a username and authentication key for a session token")
async def login(body: LoginRequest, request: Request, _: AddressLimited, editor: Editor,
                settings: Settings) -> SessionResponse:
    """A wrong key and an unknown username get the same 401, so neither reveals the other;
    failures are limited per username and per client address (429 once either is spent)."""
    limits: RateLimits = request.app.state.rate_limits
    async with limits.login_attempt(body.username, client_address(request)):
        reply = await unary(request, editor.Login(body.to_pb(), timeout=settings.request_timeout_s))
    return SessionResponse.from_pb(reply.session)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             responses=_SIGNED_IN_ERRORS, summary="Revoke the calling session")
async def logout(request: Request, user: RateLimitedUser, editor: Editor, settings: Settings) -> Response:
    await unary(request, editor.Logout(editor_pb2.LogoutRequest(), metadata=user.metadata,
                                       timeout=settings.request_timeout_s))
    request.app.state.auth_cache.forget(user.token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=MeResponse, responses=_SIGNED_IN_ERRORS, summary="Who the token belongs to")
async def me(request: Request, user: RateLimitedUser, editor: Editor, settings: Settings) -> MeResponse:
    # Asked of the editor every time (not the gateway's short auth cache), so that a session
    # revoked on another device is refused here at once.
    reply = await unary(request, editor.Authenticate(editor_pb2.AuthenticateRequest(), metadata=user.metadata,
                                                     timeout=settings.request_timeout_s))
    return MeResponse.from_pb(reply)


@router.post("/change-password", response_model=ChangePasswordResponse,
             responses=error_responses(400, 401, 409, 429, 503, 504),
             summary="Replace the authentication key, salt and keystore; revokes every session")
async def change_password(body: ChangePasswordRequest, request: Request, user: RateLimitedUser,
                          editor: Editor, settings: Settings) -> ChangePasswordResponse:
    """409 if the keystore changed since `expected_keystore_change_index`; nothing is written then."""
    reply = await unary(request, editor.ChangePassword(body.to_pb(), metadata=user.metadata,
                                                       timeout=settings.request_timeout_s))
    request.app.state.auth_cache.forget(user.token)
    return ChangePasswordResponse.from_reply(reply)


@router.post("/delete", response_model=DeleteAccountResponse, responses=_SIGNED_IN_ERRORS,
             summary="Delete the account, its keystore, every object and every session")
async def delete_account(body: DeleteAccountRequest, request: Request, user: RateLimitedUser,
                         editor: Editor, settings: Settings) -> DeleteAccountResponse:
    reply = await unary(request, editor.DeleteAccount(body.to_pb(), metadata=user.metadata,
                                                      timeout=settings.request_timeout_s))
    request.app.state.auth_cache.forget(user.token)
    return DeleteAccountResponse.from_pb(reply)


@router.get("/keystore", response_model=KeystoreResponse, responses=_SIGNED_IN_ERRORS,
            summary="The account's encrypted keystore")
async def get_keystore(request: Request, user: RateLimitedUser, editor: Editor,
                       settings: Settings) -> KeystoreResponse:
    reply = await unary(request, editor.GetKeystore(editor_pb2.GetKeystoreRequest(), metadata=user.metadata,
                                                    timeout=settings.request_timeout_s))
    return KeystoreResponse.from_pb(reply)


@router.put("/keystore", response_model=PutKeystoreResponse,
            responses=error_responses(400, 401, 409, 429, 503, 504),
            summary="Replace the keystore if nobody changed it since `expected_change_index`")
async def put_keystore(body: PutKeystoreRequest, request: Request, user: RateLimitedUser, editor: Editor,
                       settings: Settings) -> PutKeystoreResponse:
    """A stale `expected_change_index` is refused with 409 and nothing is overwritten."""
    reply = await unary(request, editor.PutKeystore(body.to_pb(), metadata=user.metadata,
                                                    timeout=settings.request_timeout_s))
    return PutKeystoreResponse.from_pb(reply)


# Personal API tokens. A token itself is refused here (403 from the editor): only a session manages them.
_TOKEN_ERRORS = error_responses(400, 401, 403, 429, 503, 504)
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,64}$", description="the token's id")]


@router.post("/tokens", response_model=CreatedApiToken, status_code=status.HTTP_201_CREATED,
             responses=_TOKEN_ERRORS, summary="Create a personal API token for the compatible APIs")
async def create_api_token(body: CreateApiTokenRequest, request: Request, user: RateLimitedUser, editor: Editor,
                           settings: Settings) -> CreatedApiToken:
    """The token is scoped to generation (OpenAI- and KoboldAI-compatible APIs, /ai): it never reads or
    writes stories. It is in this answer only; the server keeps its SHA-256."""
    reply = await unary(request, editor.CreateApiToken(body.to_pb(), metadata=user.metadata,
                                                       timeout=settings.request_timeout_s))
    return CreatedApiToken.from_reply(reply)


@router.get("/tokens", response_model=list[ApiTokenInfo], responses=_TOKEN_ERRORS,
            summary="The account's personal API tokens (without the tokens themselves)")
async def list_api_tokens(request: Request, user: RateLimitedUser, editor: Editor,
                          settings: Settings) -> list[ApiTokenInfo]:
    reply = await unary(request, editor.ListApiTokens(editor_pb2.ListApiTokensRequest(), metadata=user.metadata,
                                                      timeout=settings.request_timeout_s))
    return [ApiTokenInfo.from_pb(info) for info in reply.tokens]


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               responses=error_responses(400, 401, 403, 404, 429, 503, 504),
               summary="Revoke a personal API token")
async def revoke_api_token(token_id: TokenId, request: Request, user: RateLimitedUser, editor: Editor,
                           settings: Settings) -> Response:
    await unary(request, editor.RevokeApiToken(revoke_api_token_request(token_id), metadata=user.metadata,
                                               timeout=settings.request_timeout_s))
    # The gateway's auth cache may still hold the token for a few seconds (auth_cache_s); it is
    # dropped when the client next presents it after that. Revocation is immediate at the editor.
    return Response(status_code=status.HTTP_204_NO_CONTENT)
