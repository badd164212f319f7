"""The public JSON bodies of the user API, and their conversion from and to the editor's protobuf.

Only what a client needs appears here (never a hash, a token hash or a sha256 of stored data).
Timestamps travel as RFC 3339 in UTC; binary fields as base64 (see common.py). The editor
validates the meaning of every value (username rules, key lengths, id pattern).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from fabula.editor.v1 import editor_pb2
from fabula_wire import ObjectType
from gateway.schemas.common import Base64Bytes, RequestBody, Text, Uint32, Uint64


# The name the routes import; the enum itself is the wire's, shared with the editor and the SDK.
ObjectKind = ObjectType


def _time(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


# Requests -----------------------------------------------------------------------------------


class Kdf(RequestBody):
    """Argon2id cost in libsodium's units."""

    opslimit: Uint32 = Field(description="passes (libsodium opslimit)")
    memlimit: Uint64 = Field(description="memory in bytes (libsodium memlimit)")

    def to_pb(self) -> editor_pb2.KdfParams:
        return editor_pb2.KdfParams(opslimit=self.opslimit, memlimit=self.memlimit)

    @classmethod
    def from_pb(cls, kdf: editor_pb2.KdfParams) -> Kdf:
        return cls(opslimit=kdf.opslimit, memlimit=kdf.memlimit)


class SaltRequest(RequestBody):
    username: Text


class RegisterRequest(RequestBody):
    username: Text = Field(description="1-64 characters, unique")
    salt: Base64Bytes = Field(description="16 random bytes chosen by the client")
    kdf: Kdf
    auth_key: Base64Bytes = Field(description="32-byte key derived from the password (never the password)")
    keystore: Base64Bytes = Field(description="the first keystore blob, encrypted by the client")

    def to_pb(self) -> editor_pb2.RegisterRequest:
        return editor_pb2.RegisterRequest(username=self.username, salt=self.salt, kdf=self.kdf.to_pb(),
                                          auth_key=self.auth_key, keystore=self.keystore)


class LoginRequest(RequestBody):
    username: Text
    auth_key: Base64Bytes


class ChangePasswordRequest(RequestBody):
    old_auth_key: Base64Bytes
    new_salt: Base64Bytes
    new_kdf: Kdf
    new_auth_key: Base64Bytes
    keystore: Base64Bytes = Field(description="the keystore with its master key re-wrapped for the new password")
    expected_keystore_change_index: Uint64

    def to_pb(self) -> editor_pb2.ChangePasswordRequest:
        return editor_pb2.ChangePasswordRequest(
            old_auth_key=self.old_auth_key, new_salt=self.new_salt, new_kdf=self.new_kdf.to_pb(),
            new_auth_key=self.new_auth_key, keystore=self.keystore,
            expected_keystore_change_index=self.expected_keystore_change_index)


class DeleteAccountRequest(RequestBody):
    auth_key: Base64Bytes = Field(description="the current authentication key, confirming the deletion")


class PutKeystoreRequest(RequestBody):
    keystore: Base64Bytes
    expected_change_index: Uint64 = Field(description="the change index the new keystore is based on")


class PutObjectRequest(RequestBody):
    data: Base64Bytes = Field(description="the encrypted object")
    expected_change_index: Uint64 = Field(
        description="0 to create (409 if it exists); otherwise the stored change index (409 if stale)")


# Responses ----------------------------------------------------------------------------------


class SaltResponse(BaseModel):
    salt: Base64Bytes
    kdf: Kdf


class SessionResponse(BaseModel):
    token: str = Field(description="send as 'Authorization: Bearer <token>'")
    expires_at: datetime
    user_id: str

    @classmethod
    def from_pb(cls, session: editor_pb2.Session) -> SessionResponse:
        return cls(token=session.token, expires_at=_time(session.expires_at), user_id=session.user_id)


class ChangePasswordResponse(SessionResponse):
    keystore_change_index: int


class MeResponse(BaseModel):
    user_id: str
    username: str


class DeleteAccountResponse(BaseModel):
    deleted_objects: int


class KeystoreResponse(BaseModel):
    keystore: Base64Bytes
    change_index: int
    updated_at: datetime

    @classmethod
    def from_pb(cls, reply: editor_pb2.GetKeystoreResponse) -> KeystoreResponse:
        return cls(keystore=reply.keystore, change_index=reply.change_index, updated_at=_time(reply.updated_at))


class PutKeystoreResponse(BaseModel):
    change_index: int


class ObjectMeta(BaseModel):
    id: str
    type: ObjectType
    size: int = Field(description="bytes of encrypted data")
    change_index: int = Field(description="incremented by every write; 1 after creation")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_pb(cls, meta: editor_pb2.ObjectMeta, **extra: Any) -> ObjectMeta:
        return cls(id=meta.id, type=ObjectType.from_proto(meta.type), size=meta.size,
                   change_index=meta.change_index, created_at=_time(meta.created_at),
                   updated_at=_time(meta.updated_at), **extra)


class ObjectWithData(ObjectMeta):
    data: Base64Bytes

    @classmethod
    def from_get(cls, reply: editor_pb2.GetObjectResponse) -> ObjectWithData:
        return cls.from_pb(reply.meta, data=reply.data)


class ObjectPage(BaseModel):
    objects: list[ObjectMeta]
    next_page_token: str = Field(description="pass as page_token for the next page; empty on the last")


class ImportResponse(BaseModel):
    imported_objects: int
    keystore_replaced: bool
