"""Checks on everything a client sends, before any hashing or database work.

Each check raises `InvalidArgument` naming the field, so the client learns exactly what to fix.

Usernames are normalised to Unicode NFC (so "é" typed precomposed or decomposed is the same
account) and compared case-sensitively. After normalisation they must be 1-64 code points with no
control, format, surrogate, private-use, unassigned or line/paragraph-separator characters and
no leading or trailing whitespace. The same function runs at Register, GetSalt and Login.
"""

from __future__ import annotations

import re
import unicodedata

import nacl.pwhash.argon2id as argon2id

from fabula_wire import ObjectType
from services.editor.types import KdfParams
from services.toolkit.errors import InvalidArgument

USERNAME_MAX_CHARS = 64
SALT_BYTES = 16
AUTH_KEY_BYTES = 32
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Change indexes are uint64 on the wire but BIGINT (signed 64-bit) in both databases: an index
# past this can never match a stored one, and the drivers could not even send it.
MAX_CHANGE_INDEX = 2**63 - 1
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def username(value: str, field: str = "username") -> str:
    """The normalised username, or InvalidArgument."""
    if not value:
        raise InvalidArgument(field, value, "must not be empty")
    if len(value) > 4 * USERNAME_MAX_CHARS:  # cheap bound before normalising hostile input
        raise InvalidArgument(field, value, f"must be at most {USERNAME_MAX_CHARS} characters")
    normal = unicodedata.normalize("NFC", value)
    if len(normal) > USERNAME_MAX_CHARS:
        raise InvalidArgument(field, value, f"must be at most {USERNAME_MAX_CHARS} characters")
    for char in normal:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise InvalidArgument(field, value, f"must not contain the character U+{ord(char):04X}")
    if normal != normal.strip():
        raise InvalidArgument(field, value, "must not start or end with whitespace")
    return normal


def exact_bytes(value: bytes, length: int, field: str) -> bytes:
    if len(value) != length:
        raise InvalidArgument(field, f"{len(value)} bytes", f"must be exactly {length} bytes")
    return value


def salt(value: bytes, field: str = "salt") -> bytes:
    return exact_bytes(value, SALT_BYTES, field)


def auth_key(value: bytes, field: str = "auth_key") -> bytes:
    return exact_bytes(value, AUTH_KEY_BYTES, field)


def kdf(opslimit: int, memlimit: int, *, min_opslimit: int = argon2id.OPSLIMIT_MIN,
        min_memlimit: int = argon2id.MEMLIMIT_MIN, max_opslimit: int, max_memlimit: int,
        field: str = "kdf") -> KdfParams:
    """A client-chosen Argon2id cost within [min, max]: the minimum is the server's floor, so
    that no account is given a password derivation cheap enough to brute-force."""
    if not min_opslimit <= opslimit <= max_opslimit:
        raise InvalidArgument(f"{field}.opslimit", opslimit,
                              f"must be between {min_opslimit} and {max_opslimit}")
    if not min_memlimit <= memlimit <= max_memlimit:
        raise InvalidArgument(f"{field}.memlimit", memlimit,
                              f"must be between {min_memlimit} and {max_memlimit}")
    return KdfParams(opslimit=opslimit, memlimit=memlimit)


def blob(value: bytes, max_bytes: int, field: str) -> bytes:
    """An encrypted blob: never empty (an AEAD ciphertext has at least its tag), bounded."""
    if not value:
        raise InvalidArgument(field, "0 bytes", "must not be empty")
    if len(value) > max_bytes:
        raise InvalidArgument(field, f"{len(value)} bytes", f"must be at most {max_bytes} bytes",
                              reason="TOO_LARGE")
    return value


def change_index(value: int, field: str = "expected_change_index") -> int:
    if not 0 <= value <= MAX_CHANGE_INDEX:
        raise InvalidArgument(field, value, f"must be between 0 and {MAX_CHANGE_INDEX}")
    return value


def object_id(value: str, field: str = "id") -> str:
    if not ID_PATTERN.fullmatch(value):
        raise InvalidArgument(field, value, "must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
    return value


def object_type(value: int, field: str = "type") -> ObjectType:
    try:
        return ObjectType.from_proto(value)
    except ValueError:
        names = ", ".join(f"{kind.proto} ({kind.name})" for kind in ObjectType)
        raise InvalidArgument(field, value, f"must be one of {names}") from None


def page_size(value: int, *, default: int, maximum: int, field: str = "page_size") -> int:
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument(field, value, f"must be between 1 and {maximum} (0 for the default {default})")
    return value
