"""What every service's HTTP bodies share: strict request models, the field types protobuf
cannot check by itself, and the documented error body.

Binary fields travel as standard base64 with padding. Request models are strict: a number sent as
a string or a boolean is refused naming the field, rather than guessed at. Unknown fields are
ignored, so an older gateway accepts a newer client. The services validate the meaning of every
value; the gateway checks only what protobuf itself cannot carry (integer ranges, lone
surrogates, base64), so that a bad request never turns into a crash on the way to a service.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import pybase64
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
# Change indexes are uint64 in protobuf but signed 64-bit in the editor's databases, which refuse
# any index past this one.
MAX_CHANGE_INDEX = 2**63 - 1


def _decode_base64(value: Any) -> bytes:
    if isinstance(value, bytes):  # built in Python from a service's reply (JSON never gives bytes)
        return value
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        # pybase64 (SIMD) decodes a 64 KiB story some 30 times faster than the standard library,
        # which cost more CPU than the rest of the gateway's work on a save. It refuses a few
        # oddities the standard library takes (extra '=' after a full group, e.g. "AAAA===="),
        # so those are decided by the standard library: what is accepted does not change.
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64 (A-Z, a-z, 0-9, '+', '/', with '=' padding)") from None


def _encode_base64(value: bytes) -> str:
    return pybase64.b64encode_as_string(value)  # the standard library's output, some 50 times faster


def _encodable_text(value: str) -> str:
    # json.loads accepts "\ud800"; protobuf cannot encode a lone surrogate, so refuse it here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it contains a lone surrogate)") from None
    return value


Base64Bytes = Annotated[
    bytes,
    PlainValidator(_decode_base64),
    PlainSerializer(_encode_base64, return_type=str),
    WithJsonSchema({"type": "string", "format": "byte", "contentEncoding": "base64"}),
]
Text = Annotated[str, AfterValidator(_encodable_text)]
Uint32 = Annotated[int, Field(ge=0, le=UINT32_MAX)]
Uint64 = Annotated[int, Field(ge=0, le=UINT64_MAX)]
ChangeIndex = Annotated[int, Field(ge=0, le=MAX_CHANGE_INDEX)]


class RequestBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


# Errors (documentation only: gateway/errors.py builds these bodies) --------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="e.g. INVALID_ARGUMENT, UNAUTHENTICATED, ABORTED, RESOURCE_EXHAUSTED")
    message: str
    field: str | None = Field(None, description="dotted path of the request field at fault, when one is")


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with."""
    return {status: {"model": ErrorBody} for status in statuses}
