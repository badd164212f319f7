"""The plain values the SDK passes around: KDF cost, sessions, object metadata. Object types are the
wire's (`fabula_wire.ObjectType`), shared with the server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import nacl.pwhash.argon2id as argon2id

from fabula_wire import ObjectType


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost in libsodium's units (passes, bytes of memory)."""

    opslimit: int
    memlimit: int

    def check(self) -> KdfParams:
        if not argon2id.OPSLIMIT_MIN <= self.opslimit <= argon2id.OPSLIMIT_MAX:
            raise ValueError(f"kdf.opslimit must be between {argon2id.OPSLIMIT_MIN} and "
                             f"{argon2id.OPSLIMIT_MAX}, not {self.opslimit}")
        if not argon2id.MEMLIMIT_MIN <= self.memlimit <= argon2id.MEMLIMIT_MAX:
            raise ValueError(f"kdf.memlimit must be between {argon2id.MEMLIMIT_MIN} and "
                             f"{argon2id.MEMLIMIT_MAX}, not {self.memlimit}")
        return self

    def to_json(self) -> dict[str, int]:
        return {"opslimit": self.opslimit, "memlimit": self.memlimit}


# libsodium's MODERATE cost (3 passes, 256 MiB); see docs/encryption.md for why. It is also what
# the editor's decoy answers for unknown usernames, so a real account does not stand out.
DEFAULT_KDF = KdfParams(opslimit=argon2id.OPSLIMIT_MODERATE, memlimit=argon2id.MEMLIMIT_MODERATE)
# libsodium's minimum: for tests only.
MINIMUM_KDF = KdfParams(opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)


@dataclass(frozen=True)
class Salt:
    """What the server says to derive a user's keys with."""

    salt: bytes
    kdf: KdfParams


@dataclass(frozen=True)
class Session:
    token: str
    expires_at: datetime
    user_id: str


@dataclass(frozen=True)
class ObjectMeta:
    """The plaintext the server keeps beside each ciphertext."""

    id: str
    type: ObjectType
    size: int
    change_index: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredKeystore:
    """The account's keystore blob as stored, with its change index."""

    blob: bytes
    change_index: int
    updated_at: datetime


@dataclass(frozen=True)
class ImportResult:
    imported_objects: int
    keystore_replaced: bool
