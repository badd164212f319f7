"""Every failure the SDK reports, so callers can catch exactly what they can handle.

`ApiError` carries what the server said (HTTP status, code, message, field) whichever transport
carried it; the cryptographic errors say what went wrong with data the server returned, and
never hand back unauthenticated bytes.
"""

from __future__ import annotations


class FabulaError(Exception):
    """Base of every SDK error."""


class ApiError(FabulaError):
    """The server refused a call: `status` is the HTTP status (the gRPC client maps its codes to
    the same statuses as the gateway), `code` e.g. "INVALID_ARGUMENT", `field` the request field
    at fault when one is."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after_s: float | None = None) -> None:
        where = f" (field {field})" if field else ""
        super().__init__(f"{status} {code}: {message}{where}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class InvalidRequestError(ApiError):
    """400: the request named in `field` is malformed."""


class AuthenticationError(ApiError):
    """401: wrong username or password, or a session that is expired or revoked."""


class NotFoundError(ApiError):
    """404: the object (or account) does not exist."""


class ConflictError(ApiError):
    """409: the data changed since the change index the write was based on (nothing was
    overwritten), or it already exists; read it again and retry."""


class RateLimitedError(ApiError):
    """429: a rate limit or quota; `retry_after_s` says when to retry where the server knows."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitedError,
}


def api_error(status: int, code: str, message: str, field: str | None = None,
              retry_after_s: float | None = None) -> ApiError:
    """The most specific ApiError subclass for `status`."""
    return _BY_STATUS.get(status, ApiError)(status, code, message, field, retry_after_s)


class TransportError(FabulaError):
    """The server could not be reached, or answered with something that is not the API."""


class CryptoError(FabulaError):
    """Base of the errors about encrypted data."""


class DecryptionError(CryptoError):
    """Data failed authentication: tampered with, belonging to another object, encrypted under
    another key, or malformed. Nothing of it is returned."""


class ReplayError(DecryptionError):
    """The server returned an authentic but older version of an object than this client has
    already seen (a rollback or replay)."""


class WeakKdfError(CryptoError):
    """An Argon2id cost below the client's floor: asked for by the server for a login (a
    compromised or misconfigured server), or chosen for a new password. Nothing was derived or
    sent."""


class KeystoreError(CryptoError):
    """The keystore is unusable: wrong password, tampered with, or holds no key for an object."""


class ArchiveError(FabulaError):
    """An export archive is malformed or inconsistent with its manifest."""
