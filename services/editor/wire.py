"""Protobuf ⇄ domain for the editor: every conversion between `fabula.editor.v1` messages and the
editor's plain types (services/editor/types.py) lives here, so the servicer only routes calls.

Timestamps travel as google.protobuf.Timestamp and are integers of microseconds in the domain.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from fabula.editor.v1 import editor_pb2 as pb
from services.editor.types import (
    ApiToken,
    Caller,
    ImportResult,
    KdfParams,
    Keystore,
    ObjectMeta,
    Session,
    StoredObject,
    TokenScope,
)


def timestamp_to_pb(microseconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMicroseconds(microseconds)
    return stamp


def kdf_to_pb(kdf: KdfParams) -> pb.KdfParams:
    return pb.KdfParams(opslimit=kdf.opslimit, memlimit=kdf.memlimit)


def session_to_pb(session: Session) -> pb.Session:
    return pb.Session(token=session.token, expires_at=timestamp_to_pb(session.expires_at_us), user_id=session.user_id)


def object_meta_to_pb(meta: ObjectMeta) -> pb.ObjectMeta:
    return pb.ObjectMeta(id=meta.id, type=meta.type.proto, size=meta.size, change_index=meta.change_index,
                         created_at=timestamp_to_pb(meta.created_at_us), updated_at=timestamp_to_pb(meta.updated_at_us))


def salt_to_pb(salt: bytes, kdf: KdfParams) -> pb.GetSaltResponse:
    return pb.GetSaltResponse(salt=salt, kdf=kdf_to_pb(kdf))


def keystore_to_pb(keystore: Keystore) -> pb.GetKeystoreResponse:
    return pb.GetKeystoreResponse(keystore=keystore.data, change_index=keystore.change_index,
                                  updated_at=timestamp_to_pb(keystore.updated_at_us))


def stored_object_to_pb(stored: StoredObject) -> pb.GetObjectResponse:
    return pb.GetObjectResponse(meta=object_meta_to_pb(stored.meta), data=stored.data)


def object_page_to_pb(page: list[ObjectMeta], next_page_token: str) -> pb.ListObjectsResponse:
    return pb.ListObjectsResponse(objects=[object_meta_to_pb(meta) for meta in page], next_page_token=next_page_token)


def expected_change_index_from_pb(request: pb.DeleteObjectRequest) -> int | None:
    """The change index a delete is based on; None when the request leaves it out (delete whatever is there)."""
    return request.expected_change_index if request.HasField("expected_change_index") else None


def export_chunk_to_pb(chunk: bytes) -> pb.ExportAccountResponse:
    return pb.ExportAccountResponse(chunk=chunk)


async def import_from_pb(
        messages: AsyncIterable[pb.ImportAccountRequest]) -> tuple[int | None, AsyncIterator[bytes]]:
    """The keystore change index the import is based on (read from the first message; None when
    it leaves it out) and the archive's bytes, piece by piece as they arrive."""
    stream = aiter(messages)
    first = await anext(stream, None)
    expected = (first.expected_keystore_change_index
                if first is not None and first.HasField("expected_keystore_change_index") else None)

    async def chunks() -> AsyncIterator[bytes]:
        if first is None:
            return
        yield first.chunk
        async for message in stream:
            yield message.chunk

    return expected, chunks()


def import_result_to_pb(result: ImportResult) -> pb.ImportAccountResponse:
    return pb.ImportAccountResponse(imported_objects=result.imported_objects, keystore_replaced=result.keystore_replaced,
                                    keystore_change_index=result.keystore_change_index)


_SCOPES = {TokenScope.SESSION: pb.TOKEN_SCOPE_SESSION, TokenScope.GENERATION: pb.TOKEN_SCOPE_GENERATION}


def caller_to_pb(caller: Caller) -> pb.AuthenticateResponse:
    return pb.AuthenticateResponse(user_id=caller.account.user_id, username=caller.account.username,
                                   scope=_SCOPES[caller.scope])


def api_token_to_pb(token: ApiToken) -> pb.ApiTokenInfo:
    info = pb.ApiTokenInfo(id=token.id, name=token.name, created_at=timestamp_to_pb(token.created_at_us))
    if token.expires_at_us is not None:
        info.expires_at.CopyFrom(timestamp_to_pb(token.expires_at_us))
    return info


def expires_at_from_pb(request: pb.CreateApiTokenRequest) -> int | None:
    """The requested expiry in microseconds; None when the request leaves it out (never expires)."""
    return request.expires_at.ToMicroseconds() if request.HasField("expires_at") else None


def created_api_token_to_pb(token: str, stored: ApiToken) -> pb.CreateApiTokenResponse:
    return pb.CreateApiTokenResponse(token=token, info=api_token_to_pb(stored))


def api_token_list_to_pb(tokens: list[ApiToken]) -> pb.ListApiTokensResponse:
    return pb.ListApiTokensResponse(tokens=[api_token_to_pb(token) for token in tokens])


def bearer_of(authorization: str) -> str:
    """The token of an "authorization" value "Bearer <token>" (metadata of a call, or a field of an
    ObjectData message), or "" when it is not one."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
