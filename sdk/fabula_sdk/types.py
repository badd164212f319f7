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

    def at_least(self, floor: KdfParams) -> bool:
        """Whether this cost reaches `floor` in both passes and memory."""
        return self.opslimit >= floor.opslimit and self.memlimit >= floor.memlimit

    def to_json(self) -> dict[str, int]:
        return {"opslimit": self.opslimit, "memlimit": self.memlimit}


# libsodium's MODERATE cost (3 passes, 256 MiB); see docs/encryption.md for why. It is also what
# the editor's decoy answers for unknown usernames, so a real account does not stand out.
DEFAULT_KDF = KdfParams(opslimit=argon2id.OPSLIMIT_MODERATE, memlimit=argon2id.MEMLIMIT_MODERATE)
# The lowest cost this SDK derives a password's keys with, whoever asks (docs/encryption.md, "The
# floor"): libsodium's INTERACTIVE cost (2 passes, 64 MiB). The cost of a login comes from the
# server unauthenticated, so without a floor a compromised server could ask for a derivation cheap
# enough to brute-force the password from the authentication key it is then sent.
KDF_FLOOR = KdfParams(opslimit=argon2id.OPSLIMIT_INTERACTIVE, memlimit=argon2id.MEMLIMIT_INTERACTIVE)
# libsodium's minimum: for tests only, with the floor lowered to it (FabulaClient's
# `kdf_floor_for_tests`) against a server whose floor is lowered too.
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
