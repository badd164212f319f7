"""The byte format of one encrypted object (docs/encryption.md, "Object blob").

    offset size  field
    0      4     magic "FBLO"
    4      1     format version (1)
    5      1     compression: 0 none, 1 zlib (RFC 1950, what CompressionStream("deflate") reads)
    6      8     revision, unsigned big-endian (see below)
    14     24    XChaCha20-Poly1305 nonce
    38     n+16  ciphertext of the (compressed) content, then the tag

The associated data is the first 14 bytes followed by "fabula/object" 0x00 <type> 0x00 <id>, so a
ciphertext opens only as the object (type and id) it was sealed for, at the version, compression
and revision its header states. The revision is the change index the writer expected the
server to give this version; a client that has seen revision r of an object refuses an older
one (a replay), see client.py.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from fabula_sdk import aead
from fabula_sdk.errors import DecryptionError
from fabula_wire import ObjectType

MAGIC = b"FBLO"
VERSION = 1
COMPRESSION_NONE = 0
COMPRESSION_ZLIB = 1
_HEADER = struct.Struct(">4sBBQ")
HEADER_BYTES = _HEADER.size  # 14
OVERHEAD_BYTES = HEADER_BYTES + aead.NONCE_BYTES + aead.TAG_BYTES  # 54
MAX_REVISION = 2**64 - 1
# A plaintext larger than this is refused on opening, so that a (compromised) writer cannot make
# every reader inflate gigabytes; far above the server's largest object.
MAX_PLAINTEXT_BYTES = 256 * 1024 * 1024
ZLIB_LEVEL = 6


@dataclass(frozen=True)
class OpenedObject:
    plaintext: bytes
    revision: int
    compression: int


def associated_data(header: bytes, type: ObjectType, id: str) -> bytes:
    return header + b"fabula/object\x00" + type.value.encode("ascii") + b"\x00" + id.encode("ascii")


def seal_payload(key: bytes, type: ObjectType, id: str, payload: bytes, *, compression: int, revision: int,
                 nonce: bytes) -> bytes:
    """The blob for an already-compressed `payload` (test vectors pin this layer exactly)."""
    if compression not in (COMPRESSION_NONE, COMPRESSION_ZLIB):
        raise ValueError(f"compression must be {COMPRESSION_NONE} or {COMPRESSION_ZLIB}, not {compression}")
    if not 0 <= revision <= MAX_REVISION:
        raise ValueError(f"revision must be between 0 and {MAX_REVISION}, not {revision}")
    header = _HEADER.pack(MAGIC, VERSION, compression, revision)
    return header + nonce + aead.seal(key, nonce, payload, associated_data(header, type, id))


def seal_object(key: bytes, type: ObjectType, id: str, plaintext: bytes, *, revision: int,
                compress: bool = True, nonce: bytes | None = None) -> bytes:
    """Compress (when it makes the object smaller) and encrypt `plaintext` as object `type`/`id`."""
    payload, compression = plaintext, COMPRESSION_NONE
    if compress:
        packed = zlib.compress(plaintext, ZLIB_LEVEL)
        if len(packed) < len(plaintext):
            payload, compression = packed, COMPRESSION_ZLIB
    return seal_payload(key, type, id, payload, compression=compression, revision=revision,
                        nonce=nonce or aead.new_nonce())


def open_object(key: bytes, type: ObjectType, id: str, blob: bytes) -> OpenedObject:
    """The plaintext of `blob` if it is authentic object `type`/`id` under `key`; DecryptionError otherwise."""
    what = f"{type.value}/{id}"
    if len(blob) < OVERHEAD_BYTES:
        raise DecryptionError(f"{what}: {len(blob)} bytes is too short to be an encrypted object")
    magic, version, compression, revision = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise DecryptionError(f"{what}: not an encrypted Fabula object (magic {magic!r})")
    if version != VERSION:
        raise DecryptionError(f"{what}: format version {version} is not supported (this SDK reads {VERSION})")
    header = blob[:HEADER_BYTES]
    nonce = blob[HEADER_BYTES:HEADER_BYTES + aead.NONCE_BYTES]
    payload = aead.open_(key, nonce, blob[HEADER_BYTES + aead.NONCE_BYTES:], associated_data(header, type, id), what)
    if compression == COMPRESSION_ZLIB:
        plaintext = _inflate(payload, what)
    elif compression == COMPRESSION_NONE:
        plaintext = payload
    else:
        raise DecryptionError(f"{what}: unknown compression {compression}")
    return OpenedObject(plaintext=plaintext, revision=revision, compression=compression)


def _inflate(payload: bytes, what: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        plaintext = inflater.decompress(payload, MAX_PLAINTEXT_BYTES)
    except zlib.error as error:
        raise DecryptionError(f"{what}: authentic but its compressed content is corrupt ({error})") from None
    if inflater.unconsumed_tail:
        raise DecryptionError(f"{what}: content inflates beyond {MAX_PLAINTEXT_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise DecryptionError(f"{what}: authentic but its compressed content is truncated or has trailing bytes")
    return plaintext
