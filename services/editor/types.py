"""The editor's domain types: plain data, no gRPC and no SQL. Object types are the wire's
(`fabula_wire.ObjectType`): their names and numbers are shared with the gateway and the SDK.

Timestamps are integers of microseconds since the Unix epoch (UTC): both back ends store them
as 64-bit integers, so a value read back is bit-for-bit the value written.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from fabula_wire import ObjectType

Clock = Callable[[], int]
"""Returns the current time in microseconds since the epoch; tests pass their own."""


def system_clock() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost in libsodium's units, chosen by the client."""

    opslimit: int
    memlimit: int


@dataclass(frozen=True)
class Account:
    user_id: str
    username: str
    salt: bytes
    kdf: KdfParams
    auth_hash: bytes  # libsodium's Argon2id string of the authentication key
    created_at_us: int


@dataclass(frozen=True)
class NewSession:
    """What is stored of a session: only the SHA-256 of its token, and its expiry."""

    token_hash: bytes
    expires_at_us: int


@dataclass(frozen=True)
class Session:
    """A session as handed to its owner (the only time the token exists in clear)."""

    token: str
    expires_at_us: int
    user_id: str


@dataclass(frozen=True)
class Quota:
    """Per-account limits checked inside the write transaction."""

    max_objects: int
    max_bytes: int


@dataclass(frozen=True)
class ObjectMeta:
    """The plaintext kept beside each ciphertext: the minimum needed to sync."""

    type: ObjectType
    id: str
    size: int
    change_index: int
    sha256: bytes
    created_at_us: int
    updated_at_us: int


@dataclass(frozen=True)
class StoredObject:
    meta: ObjectMeta
    data: bytes


@dataclass(frozen=True)
class Keystore:
    data: bytes
    change_index: int
    updated_at_us: int


@dataclass(frozen=True)
class ImportedObject:
    """One validated object of an archive; `load` reads its bytes (already checked against sha256)."""

    type: ObjectType
    id: str
    size: int
    sha256: bytes
    load: Callable[[], bytes]


@dataclass(frozen=True)
class ImportResult:
    imported_objects: int
    keystore_replaced: bool
    keystore_change_index: int


class TokenScope(enum.Enum):
    """What a bearer token may be used for."""

    SESSION = "session"  # from register, login or a password change: everything
    GENERATION = "generation"  # a personal API token: the generation APIs only


@dataclass(frozen=True)
class Caller:
    """Who a bearer token belongs to, and what it may do."""

    account: Account
    scope: TokenScope


@dataclass(frozen=True)
class ApiToken:
    """A personal API token as stored and listed: never the token, only its SHA-256."""

    id: str
    user_id: str
    name: str
    token_hash: bytes
    created_at_us: int
    expires_at_us: int | None  # None: never expires
