"""Who is calling: short-lived caller tokens that the gateway signs and the services verify.

The gateway is the only process that holds the Ed25519 signing key; the services hold only the
public keys, so a compromised text or image pod can check tokens but never mint one
(docs/architecture.md, "Service-to-service trust", has the reasons for this choice).

A token is `v1.<payload>.<signature>` (URL-safe base64 without padding), sent as the gRPC metadata
`fabula-caller`. Its payload is JSON: `sub` the user id ("" before sign-in), `aud` the service it
is meant for (a token for the text service is refused by the editor), `exp` its expiry (Unix
seconds). The lifetime (`DEFAULT_TTL_S`) only has to cover clock skew, a call's queueing on the way
in and reuse: signing and verifying an Ed25519 signature cost a noticeable share of a cheap call
(bench/storage.py), so the gateway reuses a user's token for a service until half its lifetime is
gone, and a service remembers the tokens it has verified until they expire.

- `TokenSigner` (the gateway) mints tokens; `caller_token_interceptors` are the gateway's client
  interceptors that put one in every call, for the user `set_current_user` named.
- `TokenVerifier` (a service) checks one against every configured public key (two during a key
  rotation); `CallerCheck` is the server interceptor that refuses a call without a valid token
  (UNAUTHENTICATED) and makes the verified caller readable with `current_caller()`.

Keys travel as standard base64 (or 64 hex digits): the 32-byte seed for the signing key, 32 bytes
for a public key. `python -m services.toolkit.callers` prints a new pair, and with a signing key as
its argument the public key that goes with it.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
import string
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import nacl.exceptions
import nacl.signing

from services.toolkit.errors import Unauthenticated
from services.toolkit.interceptor_kinds import one_per_kind

METADATA_KEY = "fabula-caller"
VERSION = "v1"
DEFAULT_TTL_S = 60.0
# A token's expiry is honoured this much after it passed, for clocks that disagree a little.
CLOCK_SKEW_S = 5.0
# Longer values are refused before any decoding: a token is well under this.
MAX_TOKEN_CHARS = 2048
# Tokens a signer or verifier remembers at most (one per active user and service): beyond, it
# starts afresh rather than grow.
MAX_REMEMBERED_TOKENS = 65_536


@dataclass(frozen=True)
class Caller:
    """A verified caller: the gateway vouches that `user_id` ("" = not signed in) made this call."""

    user_id: str


_current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("fabula_caller", default=None)
_current_user: contextvars.ContextVar[str] = contextvars.ContextVar("fabula_current_user", default="")
# The check that admitted the call being served: a stream that multiplexes requests (the editor's
# ObjectData) verifies each message's own token with it (`message_caller`).
_current_check: contextvars.ContextVar[CallerCheck | None] = contextvars.ContextVar("fabula_caller_check",
                                                                                    default=None)


def current_caller() -> Caller | None:
    """The verified caller of the call being served (None where no `CallerCheck` runs)."""
    return _current_caller.get()


def caller_user_id() -> str:
    """The verified caller's user id; "" when there is none (not signed in, or no check)."""
    caller = _current_caller.get()
    return caller.user_id if caller is not None else ""


def message_caller(token: str) -> Caller | None:
    """Verify the caller token one message of a multiplexed stream carries, by the same rules as a
    call's (`CallerCheck`), and make it the current caller of the calling task: call it from the
    task that serves that message alone. None: no check runs (an in-process test server without
    one), or the token is absent and the check does not require one."""
    check = _current_check.get()
    caller = check.caller_of(token) if check is not None else None
    _current_caller.set(caller)
    return caller


def set_current_user(user_id: str) -> None:
    """The gateway's side: the signed-in user of the request being handled. Every call made from
    this task (and the tasks it starts) afterwards carries a token for that user."""
    _current_user.set(user_id)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key_bytes(text: str, what: str) -> bytes:
    text = text.strip()
    if len(text) == 64 and all(char in string.hexdigits for char in text):
        return bytes.fromhex(text)  # `openssl rand -hex 32` makes a signing key too
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is neither base64 nor 64 hex digits") from None
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes (base64), got {len(raw)}")
    return raw


def new_key_pair() -> tuple[str, str]:
    """A fresh (signing key, public key) pair, both base64."""
    key = nacl.signing.SigningKey.generate()
    return base64.b64encode(bytes(key)).decode(), base64.b64encode(bytes(key.verify_key)).decode()


def public_key_of(signing_key: str) -> str:
    return base64.b64encode(bytes(nacl.signing.SigningKey(_key_bytes(signing_key, "signing key")).verify_key)).decode()


def parse_public_keys(text: str) -> list[nacl.signing.VerifyKey]:
    """Comma-separated base64 public keys (two while a key is rotated)."""
    parts = [part for part in (piece.strip() for piece in text.split(",")) if part]
    return [nacl.signing.VerifyKey(_key_bytes(part, f"public key {index + 1}")) for index, part in enumerate(parts)]


class TokenSigner:
    def __init__(self, signing_key: str, *, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = nacl.signing.SigningKey(_key_bytes(signing_key, "signing key"))
        self._ttl_s = ttl_s
        self._clock = clock
        self._minted: dict[tuple[str, str], tuple[str, float]] = {}  # (user, audience) -> token, renew at

    def mint(self, user_id: str, audience: str) -> str:
        """A token for `user_id` at `audience`: the one minted before while it has more than half
        its lifetime left, else a new one."""
        now = self._clock()
        remembered = self._minted.get((user_id, audience))
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        token = self._sign(user_id, audience, now + self._ttl_s)
        if len(self._minted) >= MAX_REMEMBERED_TOKENS:
            self._minted.clear()
        self._minted[user_id, audience] = (token, now + self._ttl_s / 2)
        return token

    def _sign(self, user_id: str, audience: str, expires: float) -> str:
        payload = json.dumps({"sub": user_id, "aud": audience, "exp": round(expires, 3)},
                             separators=(",", ":")).encode()
        encoded = f"{VERSION}.{_b64encode(payload)}"
        signature = self._key.sign(encoded.encode("ascii")).signature
        return f"{encoded}.{_b64encode(signature)}"


class TokenVerifier:
    def __init__(self, public_keys: list[nacl.signing.VerifyKey], audience: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        if not public_keys:
            raise ValueError("a verifier needs at least one public key")
        self._keys = list(public_keys)
        self.audience = audience
        self._clock = clock
        self._verified: dict[str, tuple[Caller, float]] = {}  # token -> its caller, its expiry

    def verify(self, token: str) -> Caller:
        """The caller a valid token names; UNAUTHENTICATED (saying why) for anything else. A token
        verified before is only checked for expiry."""
        remembered = self._verified.get(token)
        if remembered is not None:
            caller, expires = remembered
            if expires + CLOCK_SKEW_S < self._clock():
                del self._verified[token]
                raise self._invalid("expired")
            return caller
        caller, expires = self._check(token)
        if len(self._verified) >= MAX_REMEMBERED_TOKENS:
            self._verified.clear()
        self._verified[token] = (caller, expires)
        return caller

    def _check(self, token: str) -> tuple[Caller, float]:
        if not token:
            raise Unauthenticated(f"{METADATA_KEY}: missing caller token; this service accepts only calls "
                                  "the gateway signed", field=METADATA_KEY, reason="CALLER_TOKEN_MISSING")
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise self._invalid("malformed")
        version, payload_text, signature_text = token.split(".")
        if version != VERSION:
            raise self._invalid(f"unknown version {version[:16]!r}")
        try:
            signature = _b64decode(signature_text)
            payload_bytes = _b64decode(payload_text)
        except (binascii.Error, ValueError):
            raise self._invalid("malformed") from None
        signed = f"{version}.{payload_text}".encode("ascii")
        if not any(self._signed_by(key, signed, signature) for key in self._keys):
            raise self._invalid("bad signature")
        try:
            payload = json.loads(payload_bytes)
            user_id, audience, expires = payload["sub"], payload["aud"], float(payload["exp"])
        except (ValueError, KeyError, TypeError):
            raise self._invalid("malformed payload") from None
        if audience != self.audience:
            raise self._invalid(f"meant for {str(audience)[:32]!r}, not {self.audience!r}")
        if expires + CLOCK_SKEW_S < self._clock():
            raise self._invalid("expired")
        if not isinstance(user_id, str):
            raise self._invalid("malformed payload")
        return Caller(user_id=user_id), expires

    @staticmethod
    def _signed_by(key: nacl.signing.VerifyKey, message: bytes, signature: bytes) -> bool:
        try:
            key.verify(message, signature)
            return True
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False

    @staticmethod
    def _invalid(why: str) -> Unauthenticated:
        return Unauthenticated(f"{METADATA_KEY}: invalid caller token ({why})", field=METADATA_KEY,
                               reason="CALLER_TOKEN_INVALID")


def token_of(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == METADATA_KEY and isinstance(value, str):
            return value
    return ""


# --- the service's side: the server interceptor --------------------------------------------------


class CallerCheck(grpc.aio.ServerInterceptor):
    """Verifies the caller token of every call to the service's own methods (health and
    reflection, grpc's own, stay open: probes and tools call them).

    `required=False` lets a call without a token through with no caller (the editor's direct
    clients, who authenticate with their session instead); a token that is present must be valid
    either way. Install it inside the exception interceptor, which turns the refusal into
    UNAUTHENTICATED with its ErrorDetail.
    """

    def __init__(self, verifier: TokenVerifier, *, required: bool = True) -> None:
        self.verifier = verifier
        self.required = required
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith("/grpc."):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _caller(self, context: grpc.aio.ServicerContext) -> Caller | None:
        _current_check.set(self)
        return self.caller_of(token_of(context.invocation_metadata()))

    def caller_of(self, token: str) -> Caller | None:
        if not token and not self.required:
            return None
        return self.verifier.verify(token)

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def unary(behavior):
            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _current_caller.set(self._caller(context))
                return await behavior(request, context)
            return checked

        def stream(behavior):
            async def checked(request: Any, context: grpc.aio.ServicerContext):
                _current_caller.set(self._caller(context))
                async for response in behavior(request, context):
                    yield response
            return checked

        types = ((handler.unary_unary, unary, grpc.unary_unary_rpc_method_handler),
                 (handler.unary_stream, stream, grpc.unary_stream_rpc_method_handler),
                 (handler.stream_unary, unary, grpc.stream_unary_rpc_method_handler),
                 (handler.stream_stream, stream, grpc.stream_stream_rpc_method_handler))
        for behavior, wrap, build in types:
            if behavior is not None:
                return build(wrap(behavior), handler.request_deserializer, handler.response_serializer)
        return handler


def caller_check(public_keys: str, audience: str, *, required: bool = True) -> CallerCheck:
    """The server interceptor for a service configured with `public_keys` (comma-separated base64)."""
    return CallerCheck(TokenVerifier(parse_public_keys(public_keys), audience), required=required)


# --- the gateway's side: the client interceptor --------------------------------------------------


class _CallerTokens(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                    grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Adds a token for `audience`, naming the request's user (`set_current_user`), to every call
    on a channel: no route can forget it, and no call goes out unsigned. A fixed `user_id` names
    that user instead (tools and benchmarks that call a service directly)."""

    def __init__(self, signer: TokenSigner, audience: str, user_id: str | None = None) -> None:
        self._signer = signer
        self._audience = audience
        self._user_id = user_id

    def _signed(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        user_id = self._user_id if self._user_id is not None else _current_user.get()
        token = self._signer.mint(user_id, self._audience)
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()), (METADATA_KEY, token))
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._signed(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._signed(client_call_details), request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._signed(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._signed(client_call_details), request_iterator)


def caller_token_interceptors(signer: TokenSigner, audience: str, user_id: str | None = None
                              ) -> list[grpc.aio.ClientInterceptor]:
    """The client interceptors that sign every call of a channel (see `_CallerTokens`), one per
    kind of call (interceptor_kinds.py says why)."""
    return one_per_kind(_CallerTokens(signer, audience, user_id))


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.toolkit.callers",
                                     description="Make a caller-token key pair (docs/architecture.md).")
    parser.add_argument("signing_key", nargs="?", help="print the public key of this signing key instead")
    args = parser.parse_args(argv)
    if args.signing_key:
        print(public_key_of(args.signing_key))
        return
    signing, public = new_key_pair()
    print(f"signing-key={signing}")
    print(f"public-keys={public}")


if __name__ == "__main__":
    main()
