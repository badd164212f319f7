"""Client-side helpers for the editor's integration tests (registered users, expected failures)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc
import pytest

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from fabula_wire import read_error_detail

FAST_KDF = pb.KdfParams(opslimit=1, memlimit=8192)


@dataclass
class User:
    username: str
    auth_key: bytes
    salt: bytes
    token: str
    user_id: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


async def register(stub: editor_pb2_grpc.EditorServiceStub, username: str, keystore: bytes = b"keystore-v1") -> User:
    auth_key, salt = os.urandom(32), os.urandom(16)
    reply = await stub.Register(pb.RegisterRequest(username=username, salt=salt, kdf=FAST_KDF, auth_key=auth_key,
                                                   keystore=keystore))
    return User(username=username, auth_key=auth_key, salt=salt, token=reply.session.token,
                user_id=reply.session.user_id)


async def rpc_error(call) -> grpc.aio.AioRpcError:
    """Await a call that must fail, and return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def refused(call, code: grpc.StatusCode, field: str | None = None, reason: str | None = None):
    error = await rpc_error(call)
    assert error.code() == code, error.details()
    detail, _ = read_error_detail(error)
    if field is not None:
        assert detail.field == field, (detail.field, error.details())
    if reason is not None:
        assert detail.reason == reason, (detail.reason, error.details())
    return error
