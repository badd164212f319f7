"""The public JSON bodies of the user API, and their conversion from and to the editor's protobuf.

Only what a client needs appears here (never a hash, a token hash or a sha256 of stored data).
Timestamps travel as RFC 3339 in UTC; binary fields as base64 (see common.py). The editor
validates the meaning of every value (username rules, key lengths, id pattern).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import AwareDatetime, BaseModel, Field

from fabula.editor.v1 import editor_pb2
from fabula_wire import ObjectType
from gateway.schemas.common import (
    Base64Bytes,
    ChangeIndex,
    NonEmptyBase64Bytes,
    RequestBody,
    Text,
    Uint32,
    Uint64,
    exact_bytes,
)


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


# The editor's rules (services/editor/validation.py): 1-64 characters after NFC normalisation, no
# control, format, private-use or unassigned characters, no surrounding whitespace. The
# character classes are Unicode categories, which JSON Schema's patterns cannot name; the
# document states the length.
Username = Annotated[Text, Field(min_length=1, max_length=64)]
Salt = exact_bytes(16)
AuthKey = exact_bytes(32)


class SaltRequest(RequestBody):
    username: Username

    def to_pb(self) -> editor_pb2.GetSaltRequest:
        return editor_pb2.GetSaltRequest(username=self.username)


class RegisterRequest(RequestBody):
    username: Username = Field(description="1-64 characters, unique")
    salt: Salt = Field(description="16 random bytes chosen by the client")
    kdf: Kdf
    auth_key: AuthKey = Field(description="32-byte key derived from the password (never the password)")
    keystore: NonEmptyBase64Bytes = Field(description="the first keystore blob, encrypted by the client")

    def to_pb(self) -> editor_pb2.RegisterRequest:
        return editor_pb2.RegisterRequest(username=self.username, salt=self.salt, kdf=self.kdf.to_pb(),
                                          auth_key=self.auth_key, keystore=self.keystore)


class LoginRequest(RequestBody):
    username: Username
    auth_key: AuthKey

    def to_pb(self) -> editor_pb2.LoginRequest:
        return editor_pb2.LoginRequest(username=self.username, auth_key=self.auth_key)


class ChangePasswordRequest(RequestBody):
    old_auth_key: AuthKey
    new_salt: Salt
    new_kdf: Kdf
    new_auth_key: AuthKey
    keystore: NonEmptyBase64Bytes = Field(
        description="the keystore with its master key re-wrapped for the new password")
    expected_keystore_change_index: ChangeIndex

    def to_pb(self) -> editor_pb2.ChangePasswordRequest:
        return editor_pb2.ChangePasswordRequest(
            old_auth_key=self.old_auth_key, new_salt=self.new_salt, new_kdf=self.new_kdf.to_pb(),
            new_auth_key=self.new_auth_key, keystore=self.keystore,
            expected_keystore_change_index=self.expected_keystore_change_index)


class DeleteAccountRequest(RequestBody):
    auth_key: AuthKey = Field(description="the current authentication key, confirming the deletion")

    def to_pb(self) -> editor_pb2.DeleteAccountRequest:
        return editor_pb2.DeleteAccountRequest(auth_key=self.auth_key)


class PutKeystoreRequest(RequestBody):
    keystore: NonEmptyBase64Bytes
    expected_change_index: ChangeIndex = Field(description="the change index the new keystore is based on")

    def to_pb(self) -> editor_pb2.PutKeystoreRequest:
        return editor_pb2.PutKeystoreRequest(keystore=self.keystore, expected_change_index=self.expected_change_index)


class PutObjectRequest(RequestBody):
    data: NonEmptyBase64Bytes = Field(description="the encrypted object")
    expected_change_index: ChangeIndex = Field(
        description="0 to create (409 if it exists); otherwise the stored change index (409 if stale)")

    def to_pb(self, kind: ObjectKind, object_id: str) -> editor_pb2.PutObjectRequest:
        return editor_pb2.PutObjectRequest(type=kind.proto, id=object_id, data=self.data,
                                           expected_change_index=self.expected_change_index)


class CreateApiTokenRequest(RequestBody):
    name: Text = Field(min_length=1, max_length=64, description="a name to recognise the token by, 1-64 characters")
    # Not strict: a JSON body carries a timestamp as a string.
    expires_at: AwareDatetime | None = Field(None, strict=False,
                                             description="RFC 3339 with a time zone, in the future; "
                                                         "null = never expires")

    def to_pb(self) -> editor_pb2.CreateApiTokenRequest:
        message = editor_pb2.CreateApiTokenRequest(name=self.name)
        if self.expires_at is not None:
            message.expires_at.FromDatetime(self.expires_at.astimezone(UTC))
        return message


# Requests made of a path and a query alone.


def revoke_api_token_request(token_id: str) -> editor_pb2.RevokeApiTokenRequest:
    return editor_pb2.RevokeApiTokenRequest(id=token_id)



def list_objects_request(kind: ObjectKind, page_size: int | None, page_token: str) -> editor_pb2.ListObjectsRequest:
    return editor_pb2.ListObjectsRequest(type=kind.proto, page_size=page_size or 0, page_token=page_token)


# An object's id as clients choose it; the path parameter and the gateway's lean raw-data path
# (raw_objects.py) both match it.
OBJECT_ID_PATTERN = "[A-Za-z0-9_-]{1,64}"


def get_object_request(kind: ObjectKind, object_id: str) -> editor_pb2.GetObjectRequest:
    return editor_pb2.GetObjectRequest(type=kind.proto, id=object_id)


def put_object_data_request(kind: ObjectKind, object_id: str, data: bytes,
                            expected_change_index: int) -> editor_pb2.PutObjectRequest:
    """The raw-bytes write: the body is the data, the change index came in the query."""
    return editor_pb2.PutObjectRequest(type=kind.proto, id=object_id, data=data,
                                       expected_change_index=expected_change_index)


def delete_object_request(kind: ObjectKind, object_id: str,
                          expected_change_index: int | None) -> editor_pb2.DeleteObjectRequest:
    message = editor_pb2.DeleteObjectRequest(type=kind.proto, id=object_id)
    if expected_change_index is not None:
        message.expected_change_index = expected_change_index
    return message


# Responses ----------------------------------------------------------------------------------


class SaltResponse(BaseModel):
    salt: Base64Bytes
    kdf: Kdf

    @classmethod
    def from_pb(cls, reply: editor_pb2.GetSaltResponse) -> SaltResponse:
        return cls(salt=reply.salt, kdf=Kdf.from_pb(reply.kdf))


class SessionResponse(BaseModel):
    token: str = Field(description="send as 'Authorization: Bearer <token>'")
    expires_at: datetime
    user_id: str

    @classmethod
    def from_pb(cls, session: editor_pb2.Session) -> SessionResponse:
        return cls(token=session.token, expires_at=_time(session.expires_at), user_id=session.user_id)


class ChangePasswordResponse(SessionResponse):
    keystore_change_index: int

    @classmethod
    def from_reply(cls, reply: editor_pb2.ChangePasswordResponse) -> ChangePasswordResponse:
        session = SessionResponse.from_pb(reply.session)
        return cls(**session.model_dump(), keystore_change_index=reply.keystore_change_index)


class MeResponse(BaseModel):
    user_id: str
    username: str
    scope: Literal["session", "generation"] = Field(
        description="session: everything; generation: a personal API token (generation APIs only)")

    @classmethod
    def from_pb(cls, reply: editor_pb2.AuthenticateResponse) -> MeResponse:
        scope = "generation" if reply.scope == editor_pb2.TOKEN_SCOPE_GENERATION else "session"
        return cls(user_id=reply.user_id, username=reply.username, scope=scope)


class ApiTokenInfo(BaseModel):
    id: str = Field(description="revoke it with DELETE /user/tokens/{id}")
    name: str
    created_at: datetime
    expires_at: datetime | None = Field(description="null = never expires")

    @classmethod
    def from_pb(cls, info: editor_pb2.ApiTokenInfo) -> ApiTokenInfo:
        return cls(id=info.id, name=info.name, created_at=_time(info.created_at),
                   expires_at=_time(info.expires_at) if info.HasField("expires_at") else None)


class CreatedApiToken(ApiTokenInfo):
    token: str = Field(description="send as 'Authorization: Bearer <token>' to the compatible APIs; "
                                   "shown only this once")

    @classmethod
    def from_reply(cls, reply: editor_pb2.CreateApiTokenResponse) -> CreatedApiToken:
        return cls(**ApiTokenInfo.from_pb(reply.info).model_dump(), token=reply.token)


class DeleteAccountResponse(BaseModel):
    deleted_objects: int

    @classmethod
    def from_pb(cls, reply: editor_pb2.DeleteAccountResponse) -> DeleteAccountResponse:
        return cls(deleted_objects=reply.deleted_objects)


class KeystoreResponse(BaseModel):
    keystore: Base64Bytes
    change_index: int
    updated_at: datetime

    @classmethod
    def from_pb(cls, reply: editor_pb2.GetKeystoreResponse) -> KeystoreResponse:
        return cls(keystore=reply.keystore, change_index=reply.change_index, updated_at=_time(reply.updated_at))


class PutKeystoreResponse(BaseModel):
    change_index: int

    @classmethod
    def from_pb(cls, reply: editor_pb2.PutKeystoreResponse) -> PutKeystoreResponse:
        return cls(change_index=reply.change_index)


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


# The metadata of a raw-bytes read travels in these headers (the size is Content-Length).
CHANGE_INDEX_HEADER = "X-Fabula-Change-Index"
CREATED_AT_HEADER = "X-Fabula-Created-At"
UPDATED_AT_HEADER = "X-Fabula-Updated-At"


def object_meta_headers(meta: editor_pb2.ObjectMeta) -> dict[str, str]:
    """A raw-bytes read's metadata headers, the times spelled exactly as the JSON routes spell them."""
    fields = ObjectMeta.from_pb(meta).model_dump(mode="json")
    return {CHANGE_INDEX_HEADER: str(fields["change_index"]), CREATED_AT_HEADER: fields["created_at"],
            UPDATED_AT_HEADER: fields["updated_at"]}


class ObjectWithData(ObjectMeta):
    data: Base64Bytes

    @classmethod
    def from_get(cls, reply: editor_pb2.GetObjectResponse) -> ObjectWithData:
        return cls.from_pb(reply.meta, data=reply.data)


class ObjectPage(BaseModel):
    objects: list[ObjectMeta]
    next_page_token: str = Field(description="pass as page_token for the next page; empty on the last")

    @classmethod
    def from_pb(cls, reply: editor_pb2.ListObjectsResponse) -> ObjectPage:
        return cls(objects=[ObjectMeta.from_pb(meta) for meta in reply.objects],
                   next_page_token=reply.next_page_token)


class ImportResponse(BaseModel):
    imported_objects: int
    keystore_replaced: bool

    @classmethod
    def from_pb(cls, reply: editor_pb2.ImportAccountResponse) -> ImportResponse:
        return cls(imported_objects=reply.imported_objects, keystore_replaced=reply.keystore_replaced)
