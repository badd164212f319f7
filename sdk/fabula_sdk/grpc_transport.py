"""The same calls over gRPC, straight to the editor service (`fabula.editor.v1`).

Failures become the same SDK errors as over HTTP: the status and code come from the gRPC → HTTP
mapping the gateway uses too (fabula_wire), the field from the ErrorDetail in the rich status.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import BinaryIO, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from fabula.editor.v1 import editor_pb2, editor_pb2_grpc
from fabula_sdk.errors import ApiError, TransportError, api_error
from fabula_sdk.transport import Transport
from fabula_sdk.types import ImportResult, KdfParams, ObjectMeta, Salt, Session, StoredKeystore
from fabula_wire import ObjectType, error_code, http_status, read_error_detail

DEFAULT_ADDRESS = "127.0.0.1:50051"
IMPORT_MESSAGE_BYTES = 1024 * 1024
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
Reply = TypeVar("Reply")


def error_from_rpc(error: grpc.RpcError) -> ApiError:
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    detail, retry_after = read_error_detail(error)
    return api_error(http_status(code), error_code(code), error.details() or code.name,  # type: ignore[attr-defined]
                     detail.field or None, retry_after)


def _time(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def _session(session: editor_pb2.Session) -> Session:
    return Session(token=session.token, expires_at=_time(session.expires_at), user_id=session.user_id)


def _meta(meta: editor_pb2.ObjectMeta) -> ObjectMeta:
    return ObjectMeta(id=meta.id, type=ObjectType.from_proto(meta.type), size=meta.size,
                      change_index=meta.change_index, created_at=_time(meta.created_at),
                      updated_at=_time(meta.updated_at))


def _kdf(kdf: KdfParams) -> editor_pb2.KdfParams:
    return editor_pb2.KdfParams(opslimit=kdf.opslimit, memlimit=kdf.memlimit)


class GrpcTransport(Transport):
    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout_s: float = 60.0,
                 channel: grpc.Channel | None = None) -> None:
        self.address = address
        self._channel = channel or grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES)])
        self._stub = editor_pb2_grpc.EditorServiceStub(self._channel)
        self._timeout_s = timeout_s
        self.token = None

    def close(self) -> None:
        self._channel.close()

    def _metadata(self, signed_in: bool) -> tuple[tuple[str, str], ...]:
        if not signed_in:
            return ()
        if not self.token:
            raise TransportError("not signed in: log in or register first")
        return (("authorization", f"Bearer {self.token}"),)

    def _call(self, method, request, *, signed_in: bool = True):  # type: ignore[no-untyped-def]
        try:
            return method(request, metadata=self._metadata(signed_in), timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    def get_salt(self, username: str) -> Salt:
        reply = self._call(self._stub.GetSalt, editor_pb2.GetSaltRequest(username=username), signed_in=False)
        return Salt(salt=reply.salt, kdf=KdfParams(opslimit=reply.kdf.opslimit, memlimit=reply.kdf.memlimit))

    def register(self, username: str, salt: bytes, kdf: KdfParams, auth_key: bytes, keystore: bytes) -> Session:
        return _session(self._call(self._stub.Register, editor_pb2.RegisterRequest(
            username=username, salt=salt, kdf=_kdf(kdf), auth_key=auth_key, keystore=keystore),
            signed_in=False).session)

    def login(self, username: str, auth_key: bytes) -> Session:
        return _session(self._call(self._stub.Login, editor_pb2.LoginRequest(username=username, auth_key=auth_key),
                                   signed_in=False).session)

    def logout(self) -> None:
        self._call(self._stub.Logout, editor_pb2.LogoutRequest())

    def me(self) -> tuple[str, str]:
        reply = self._call(self._stub.Authenticate, editor_pb2.AuthenticateRequest())
        return reply.user_id, reply.username

    def change_password(self, old_auth_key: bytes, new_salt: bytes, new_kdf: KdfParams, new_auth_key: bytes,
                        keystore: bytes, expected_keystore_change_index: int) -> tuple[Session, int]:
        reply = self._call(self._stub.ChangePassword, editor_pb2.ChangePasswordRequest(
            old_auth_key=old_auth_key, new_salt=new_salt, new_kdf=_kdf(new_kdf), new_auth_key=new_auth_key,
            keystore=keystore, expected_keystore_change_index=expected_keystore_change_index))
        return _session(reply.session), reply.keystore_change_index

    def delete_account(self, auth_key: bytes) -> int:
        return self._call(self._stub.DeleteAccount, editor_pb2.DeleteAccountRequest(auth_key=auth_key)).deleted_objects

    def get_keystore(self) -> StoredKeystore:
        reply = self._call(self._stub.GetKeystore, editor_pb2.GetKeystoreRequest())
        return StoredKeystore(blob=reply.keystore, change_index=reply.change_index, updated_at=_time(reply.updated_at))

    def put_keystore(self, blob: bytes, expected_change_index: int) -> int:
        return self._call(self._stub.PutKeystore, editor_pb2.PutKeystoreRequest(
            keystore=blob, expected_change_index=expected_change_index)).change_index

    def list_objects(self, type: ObjectType, page_size: int | None = None,
                     page_token: str = "") -> tuple[list[ObjectMeta], str]:
        reply = self._call(self._stub.ListObjects, editor_pb2.ListObjectsRequest(
            type=type.proto, page_size=page_size or 0, page_token=page_token))
        return [_meta(meta) for meta in reply.objects], reply.next_page_token

    def put_object(self, type: ObjectType, id: str, data: bytes, expected_change_index: int) -> ObjectMeta:
        return _meta(self._call(self._stub.PutObject, editor_pb2.PutObjectRequest(
            type=type.proto, id=id, data=data, expected_change_index=expected_change_index)).meta)

    def get_object(self, type: ObjectType, id: str) -> tuple[ObjectMeta, bytes]:
        reply = self._call(self._stub.GetObject, editor_pb2.GetObjectRequest(type=type.proto, id=id))
        return _meta(reply.meta), reply.data

    def delete_object(self, type: ObjectType, id: str, expected_change_index: int | None = None) -> None:
        request = editor_pb2.DeleteObjectRequest(type=type.proto, id=id)
        if expected_change_index is not None:
            request.expected_change_index = expected_change_index
        self._call(self._stub.DeleteObject, request)

    def export_account(self, sink: BinaryIO) -> int:
        written = 0
        try:
            for reply in self._stub.ExportAccount(editor_pb2.ExportAccountRequest(), metadata=self._metadata(True),
                                                  timeout=self._timeout_s):
                sink.write(reply.chunk)
                written += len(reply.chunk)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return written

    def import_account(self, pieces: Iterable[bytes], expected_keystore_change_index: int) -> ImportResult:
        def messages() -> Iterator[editor_pb2.ImportAccountRequest]:
            first = True
            for piece in _regrouped(pieces, IMPORT_MESSAGE_BYTES):
                request = editor_pb2.ImportAccountRequest(chunk=piece)
                if first:
                    request.expected_keystore_change_index = expected_keystore_change_index
                    first = False
                yield request

        reply = self._call(self._stub.ImportAccount, messages())
        return ImportResult(imported_objects=reply.imported_objects, keystore_replaced=reply.keystore_replaced)


def _regrouped(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """`pieces` re-cut into messages of `size` bytes (the last one shorter)."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)
