"""Fabula's Python SDK: client-side end-to-end encryption (docs/encryption.md), HTTP and gRPC
clients of the user API, and the `fabula` command line (fabula_sdk.cli)."""

from fabula_sdk.client import FabulaClient, StoredObject
from fabula_sdk.errors import (
    ApiError,
    ArchiveError,
    AuthenticationError,
    ConflictError,
    CryptoError,
    DecryptionError,
    FabulaError,
    InvalidRequestError,
    KeystoreError,
    NotFoundError,
    RateLimitedError,
    ReplayError,
    TransportError,
    WeakKdfError,
)
from fabula_sdk.stories import Stories, Story
from fabula_sdk.types import DEFAULT_KDF, KDF_FLOOR, MINIMUM_KDF, KdfParams, ObjectMeta, Session
from fabula_wire import ObjectType

__all__ = [
    "DEFAULT_KDF", "KDF_FLOOR", "MINIMUM_KDF", "ApiError", "ArchiveError", "AuthenticationError", "ConflictError",
    "CryptoError",
    "DecryptionError", "FabulaClient", "FabulaError", "InvalidRequestError", "KdfParams", "KeystoreError",
    "NotFoundError", "ObjectMeta", "ObjectType", "RateLimitedError", "ReplayError", "Session", "Stories", "Story",
    "StoredObject", "TransportError", "WeakKdfError",
]
