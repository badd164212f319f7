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
import math
import struct
from typing import Annotated, Any

import pybase64
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)

from fabula_wire.sampling import Range

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

def exact_bytes(length: int) -> Any:
    """Base64 of exactly `length` bytes (a salt, a key): the editor refuses any other length, and the
    document says so with the one string length that decodes to it."""
    chars, padding = 4 * ((length + 2) // 3), (3 - length % 3) % 3
    pattern = f"^[A-Za-z0-9+/]{{{chars - padding}}}{'=' * padding}$"
    return Annotated[bytes, PlainValidator(_decode_base64), PlainSerializer(_encode_base64, return_type=str),
                     # The pattern alone: with `format: byte` beside it, generators draw base64 first
                     # and throw away nearly every draw of the wrong length.
                     WithJsonSchema({"type": "string", "contentEncoding": "base64", "pattern": pattern,
                                     "description": f"{length} bytes, base64"})]


# An encrypted blob: never empty (an AEAD ciphertext has at least its tag); base64 of one byte or
# more is four characters or more.
NonEmptyBase64Bytes = Annotated[
    bytes,
    PlainValidator(_decode_base64),
    PlainSerializer(_encode_base64, return_type=str),
    WithJsonSchema({"type": "string", "format": "byte", "contentEncoding": "base64", "minLength": 4}),
]
Text = Annotated[str, AfterValidator(_encodable_text)]
Uint32 = Annotated[int, Field(ge=0, le=UINT32_MAX)]
# Bounds past 2**53 are stated as "below the next power of two": the same integers, and a float
# such as 9.223372036854776e18, which rounds to a bound's 2**63 - 1 but is 2**63, falls outside
# it in the document as in the check.
Uint64 = Annotated[int, Field(ge=0, lt=UINT64_MAX + 1)]
ChangeIndex = Annotated[int, Field(ge=0, lt=MAX_CHANGE_INDEX + 1)]


def ranged(allowed: Range) -> Any:
    """A number the text service accepts only within `allowed`: checked here by the same rule and
    stated in the OpenAPI document as the same bounds, so a value the document allows is one the
    service takes."""

    def check(value: Any) -> Any:
        # The service sees the value as protobuf's 32-bit float carries it: 1e-300 arrives as 0.
        seen = value if allowed.integer else _as_float32(value)
        problem = allowed.problem(seen)
        if problem:
            raise ValueError(problem)
        return value

    schema = allowed.json_schema()
    if allowed.low_open and not allowed.integer and "exclusiveMinimum" in schema:
        # The smallest value above the bound that a 32-bit float still tells apart from it.
        schema = {**schema, "minimum": _next_float32_above(allowed.low)}
    return Annotated[int if allowed.integer else float, AfterValidator(check), WithJsonSchema(schema)]


def _as_float32(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return value
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.inf


def _next_float32_above(value: float) -> float:
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    return struct.unpack("<f", struct.pack("<I", bits + 1 if value >= 0 else bits - 1))[0]


def _float32_at_least(value: float) -> float:
    """The smallest 32-bit float at or above `value`."""
    carried = _as_float32(value)
    return carried if carried >= value else _next_float32_above(carried)


def _float32_at_most(value: float) -> float:
    """The largest 32-bit float at or below `value`."""
    carried = _as_float32(value)
    return carried if carried <= value else -_next_float32_above(-carried)


def float32_between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    """A number the image service takes within `low`..`high` (open ends excluded). It travels as
    protobuf's 32-bit float and the service checks what arrives, so 0.99 arrives as 0.9900000095
    and is refused by a maximum of 0.99, and 1e-45 arrives as 0 and is refused by an open
    minimum of 0. The field states and checks the 32-bit floats inside the range instead: every
    value it allows arrives inside the range, and the document says exactly what it allows."""
    lowest = _next_float32_above(low) if low_open else _float32_at_least(low)
    highest = -_next_float32_above(-high) if high_open else _float32_at_most(high)
    return Annotated[float, Field(ge=lowest, le=highest, allow_inf_nan=False)]


def _whole_numbers(value: Any) -> Any:
    # JSON has one number type: 3.0 is the integer 3 to JSON Schema (and to JavaScript clients),
    # while pydantic's strict mode refuses it for an int. Floats with no fraction become ints
    # before the fields' checks; a float field takes an int all the same.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


# An image's width or height as the image service takes it: 0 for the default, else a multiple of
# 64 between 64 and its MAX_SIDE (services/image/params.py); the fields stay Uint32 for what
# protobuf can carry, and the service names the field when refusing the rest.
IMAGE_MAX_SIDE = 4096
ImageSide = Annotated[int, Field(ge=0, le=UINT32_MAX), WithJsonSchema({"anyOf": [
    {"type": "integer", "const": 0},
    {"type": "integer", "multipleOf": 64, "minimum": 64, "maximum": IMAGE_MAX_SIDE}]})]


class RequestBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _integral_floats(cls, value: Any) -> Any:
        return _whole_numbers(value)


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
