"""From a password to the two keys a client needs (docs/encryption.md, "Key derivation").

    root     = Argon2id(NFC(password) as UTF-8, salt, opslimit, memlimit) -> 32 bytes
    auth_key = BLAKE2b-256(message="", key=root, personal="fabula/authkey/1")  sent to the server
    kek      = BLAKE2b-256(message="", key=root, personal="fabula/wrapkey/1")  never leaves the client

The two BLAKE2b calls are libsodium's keyed derivation with different personalisation strings,
so knowing the authentication key (which the server sees at every login) tells nothing about
the key-encryption key.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import nacl.hash
import nacl.pwhash.argon2id as argon2id
import nacl.utils
from nacl.encoding import RawEncoder

from fabula_sdk.errors import WeakKdfError
from fabula_sdk.types import KdfParams

SALT_BYTES = argon2id.SALTBYTES  # 16
KEY_BYTES = 32
AUTH_KEY_PERSONAL = b"fabula/authkey/1"
KEK_PERSONAL = b"fabula/wrapkey/1"
assert len(AUTH_KEY_PERSONAL) == len(KEK_PERSONAL) == 16  # BLAKE2b's personal field, exactly


@dataclass(frozen=True, repr=False)
class PasswordKeys:
    """The keys derived from one password; repr hides them so they never land in a log."""

    auth_key: bytes
    key_encryption_key: bytes

    def __repr__(self) -> str:
        return "PasswordKeys(<hidden>)"


def new_salt() -> bytes:
    return nacl.utils.random(SALT_BYTES)


def password_bytes(password: str) -> bytes:
    """NFC so that the same password typed on two keyboards (precomposed or combining accents)
    derives the same keys."""
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    return unicodedata.normalize("NFC", password).encode("utf-8")


def root_key(password: str, salt: bytes, kdf: KdfParams) -> bytes:
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes, not {len(salt)}")
    kdf.check()
    return argon2id.kdf(KEY_BYTES, password_bytes(password), salt, opslimit=kdf.opslimit, memlimit=kdf.memlimit)


def require_floor(kdf: KdfParams, floor: KdfParams, *, asked_by: str) -> KdfParams:
    """`kdf`, if it reaches `floor`; else WeakKdfError, before anything is derived."""
    kdf.check()
    if not kdf.at_least(floor):
        raise WeakKdfError(
            f"{asked_by} asked for an Argon2id cost of {kdf.opslimit} passes and {kdf.memlimit} bytes, below this "
            f"client's floor of {floor.opslimit} passes and {floor.memlimit} bytes; refusing to derive keys that "
            "cheap (a server that asks for this may be trying to brute-force the password)")
    return kdf


def subkey(root: bytes, personal: bytes) -> bytes:
    return nacl.hash.blake2b(b"", digest_size=KEY_BYTES, key=root, person=personal, encoder=RawEncoder)


def derive_keys(password: str, salt: bytes, kdf: KdfParams) -> PasswordKeys:
    root = root_key(password, salt, kdf)
    return PasswordKeys(auth_key=subkey(root, AUTH_KEY_PERSONAL), key_encryption_key=subkey(root, KEK_PERSONAL))
