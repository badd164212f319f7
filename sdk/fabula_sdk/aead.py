"""XChaCha20-Poly1305 (IETF) from libsodium, with failures turned into the SDK's errors."""

from __future__ import annotations

import nacl.bindings as sodium
import nacl.exceptions
import nacl.utils

from fabula_sdk.errors import DecryptionError

KEY_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16


def new_key() -> bytes:
    return nacl.utils.random(KEY_BYTES)


def new_nonce() -> bytes:
    # 24 random bytes: XChaCha's nonce is long enough that random nonces never repeat in practice.
    return nacl.utils.random(NONCE_BYTES)


def seal(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Ciphertext followed by the 16-byte tag."""
    if len(key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes and nonce {NONCE_BYTES} bytes")
    return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated_data, nonce, key)


def open_(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes, what: str) -> bytes:
    """The plaintext, or DecryptionError naming `what` if anything (key, nonce, data, associated
    data) differs from what was sealed."""
    if len(ciphertext) < TAG_BYTES:
        raise DecryptionError(f"{what}: ciphertext is shorter than its authentication tag")
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, associated_data, nonce, key)
    except nacl.exceptions.CryptoError:
        raise DecryptionError(f"{what}: authentication failed (tampered with, belongs to another object, "
                              "or encrypted under another key)") from None
