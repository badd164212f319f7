"""Signatures on generated PNGs: Ed25519 over the pixels and the generation metadata, so an author
can show that an image came from this server unchanged.

What is signed (the `SCHEME` text, also published with the public key): the bytes
`fabula-image-signature-v1\\n`, then the SHA-256 of the decoded pixels (mode, width, height and
the raw pixel bytes in PIL's layout), then the SHA-256 of the `parameters` text chunk and of the
`fabula` text chunk (UTF-8; empty when absent). The PNG carries `v1:<key id>:<base64 signature>`
in its `fabula_signature` iTXt chunk. Re-encoding the PNG losslessly keeps the signature valid;
changing one pixel or one character of the metadata breaks it.

The key: `FABULA_IMAGE_SIGNING_KEY` (from a Kubernetes Secret), else a key file in the data
directory (`cache_dir/signing-key`), created on first start and read on every later one, so
signatures made before a restart still verify after it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from PIL import Image

log = logging.getLogger(__name__)

CHUNK = "fabula_signature"
SIGNED_CHUNKS = ("parameters", "fabula")
_DOMAIN = b"fabula-image-signature-v1\n"
SCHEME = ("Ed25519 over: b'fabula-image-signature-v1\\n' || SHA-256(f'{mode} {width} {height}\\n' || raw pixels) "
          "|| SHA-256(parameters chunk, UTF-8) || SHA-256(fabula chunk, UTF-8); PNG iTXt chunk "
          "fabula_signature = 'v1:' key_id ':' base64(signature)")


class Verdict(str, Enum):
    ABSENT = "absent"
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN_KEY = "unknown_key"


@dataclass(frozen=True)
class Verification:
    verdict: Verdict
    key_id: str = ""


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def parse_seed(text: str) -> bytes:
    """A 32-byte Ed25519 seed from 64 hex digits or base64."""
    text = text.strip()
    try:
        seed = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("the signing key must be 64 hex digits or base64 of 32 bytes") from None
    if len(seed) != 32:
        raise ValueError(f"the signing key must be 32 bytes, got {len(seed)}")
    return seed


def load_or_create_key(path: Path) -> SigningKey:
    """The key kept at `path`, created there (readable by this user only) when missing."""
    if path.exists():
        return SigningKey(parse_seed(path.read_text()))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    # O_EXCL: two processes starting at once on the same data directory keep one key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return SigningKey(parse_seed(path.read_text()))
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(bytes(key)).decode("ascii") + "\n")
    log.info("created the image signing key %s at %s", key_id(bytes(key.verify_key)), path)
    return key


def pixel_digest(image: Image.Image) -> bytes:
    header = f"{image.mode} {image.width} {image.height}\n".encode()
    return hashlib.sha256(header + image.tobytes()).digest()


def message(image: Image.Image, text: Mapping[str, str]) -> bytes:
    parts = [_DOMAIN, pixel_digest(image)]
    parts += [hashlib.sha256(text.get(name, "").encode("utf-8")).digest() for name in SIGNED_CHUNKS]
    return b"".join(parts)


class ImageSigner:
    """Signs with one key; verifies signatures of that key and of the trusted public keys."""

    def __init__(self, key: SigningKey, trusted: list[bytes] | None = None) -> None:
        self.key = key
        self.public_key = bytes(key.verify_key)
        self.key_id = key_id(self.public_key)
        self._verifiers = {self.key_id: key.verify_key}
        for public in trusted or []:
            self._verifiers[key_id(public)] = VerifyKey(public)

    @classmethod
    def from_settings(cls, seed_text: str, key_path: Path, trusted: list[str]) -> ImageSigner:
        key = SigningKey(parse_seed(seed_text)) if seed_text else load_or_create_key(key_path)
        return cls(key, [base64.b64decode(item) for item in trusted])

    def signature_text(self, image: Image.Image, text: Mapping[str, str]) -> str:
        signature = self.key.sign(message(image, text)).signature
        return f"v1:{self.key_id}:{base64.b64encode(signature).decode('ascii')}"

    def verify(self, image: Image.Image, text: Mapping[str, str]) -> Verification:
        value = text.get(CHUNK, "")
        if not value:
            return Verification(Verdict.ABSENT)
        parts = value.split(":")
        if len(parts) != 3 or parts[0] != "v1":
            return Verification(Verdict.INVALID)
        verifier = self._verifiers.get(parts[1])
        if verifier is None:
            return Verification(Verdict.UNKNOWN_KEY, parts[1])
        try:
            verifier.verify(message(image, text), base64.b64decode(parts[2], validate=True))
        except (BadSignatureError, ValueError, binascii.Error):
            return Verification(Verdict.INVALID, parts[1])
        return Verification(Verdict.VALID, parts[1])

    def verify_png(self, png: bytes) -> Verification:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            return self.verify(image, dict(getattr(image, "text", {})))
