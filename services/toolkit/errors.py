"""Domain errors: raised by code that knows nothing of gRPC, mapped to status codes in one place.

Each error carries the field at fault and its value where there is one, so that a client can be
told exactly what to fix (`interceptor.py` puts them in a `fabula.common.v1.ErrorDetail`).
"""

from __future__ import annotations

from typing import Any

import grpc

_VALUE_PREVIEW_CHARS = 200


def preview(value: Any) -> str:
    """Render a value for an error message without echoing megabytes back to the caller."""
    text = repr(value) if not isinstance(value, str) else value
    if len(text) > _VALUE_PREVIEW_CHARS:
        return f"{text[:_VALUE_PREVIEW_CHARS]}... ({len(text)} characters)"
    return text


class FabulaError(Exception):
    """Base of the errors a service answers with; anything else is a bug (INTERNAL)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = ""

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        value: Any = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = "" if value is None else preview(value)
        self.reason = reason or self.default_reason


class InvalidArgument(FabulaError):
    """The request is malformed: says which field and which value."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, value: Any, message: str, *, reason: str = "") -> None:
        super().__init__(f"{field}: {message} (got {preview(value)})", field=field, value=value,
                         reason=reason)


class NotFound(FabulaError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(FabulaError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class Conflict(FabulaError):
    """A write based on stale state (optimistic concurrency): nothing was changed."""

    code = grpc.StatusCode.ABORTED
    default_reason = "CONFLICT"


class FailedPrecondition(FabulaError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(FabulaError):
    """A queue, quota or rate limit is full; `retry_after_s` tells the client when to retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, field: str = "",
                 value: Any = None, reason: str = "") -> None:
        super().__init__(message, field=field, value=value, reason=reason)
        self.retry_after_s = retry_after_s


class Unauthenticated(FabulaError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(FabulaError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class DeadlineExceeded(FabulaError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unavailable(FabulaError):
    """The service cannot take work now (still loading, draining on shutdown, or a fault of its
    database or disk); `retry_after_s` tells the client when to retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, field: str = "",
                 value: Any = None, reason: str = "") -> None:
        super().__init__(message, field=field, value=value, reason=reason)
        self.retry_after_s = retry_after_s


class Cancelled(FabulaError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"
