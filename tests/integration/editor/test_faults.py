"""Faults of the database and its disk answer UNAVAILABLE (with a retry delay), never INTERNAL,
and the health service follows the database: NOT_SERVING while it is gone, SERVING once back.

Every fault here is real: a tmpfs that fills up, a lock held by another connection, a pool with
one connection, a database file moved away, a PostgreSQL schema renamed under the service.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from fabula_wire import read_error_detail
from services.editor.embedded import embedded_editor, fast_settings
from tests.conftest import POSTGRES_URL
from tests.integration.editor.client import refused, register

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WAIT_S = 30.0


async def unavailable_with_retry(call, reason: str) -> None:
    error = await refused(call, UNAVAILABLE, reason=reason)
    _, retry_after = read_error_detail(error)
    assert retry_after is not None and retry_after > 0


# --- Disk full ---------------------------------------------------------------------------------

def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {error}")


@pytest.fixture
def small_volume(tmp_path):
    """A 2 MiB tmpfs: the editor's volume, small enough to fill in a test."""
    volume = tmp_path / "volume"
    mount_tmpfs(volume, "2m")
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False, capture_output=True, timeout=10)


async def test_disk_full_is_unavailable_and_acknowledged_writes_survive_a_restart(small_volume):
    url = f"sqlite:///{small_volume / 'editor.db'}"
    acknowledged: dict[str, bytes] = {}
    async with embedded_editor(fast_settings(url)) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        user = await register(stub, "filler")
        error = None
        for number in range(200):
            data = os.urandom(64 * 1024)
            try:
                await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id=f"s{number}", data=data),
                                     metadata=user.metadata)
            except grpc.aio.AioRpcError as failed:
                error = failed
                break
            acknowledged[f"s{number}"] = data
        assert error is not None, "the 2 MiB volume never filled up"
        assert error.code() == UNAVAILABLE, (error.code(), error.details())
        detail, retry_after = read_error_detail(error)
        assert detail.reason == "DISK_FULL" and retry_after
        assert acknowledged, "the volume was full before the first write"
        # Reads go on, and later writes fail the same way rather than with INTERNAL.
        first = next(iter(acknowledged))
        got = await stub.GetObject(pb.GetObjectRequest(type=pb.OBJECT_TYPE_STORY, id=first), metadata=user.metadata)
        assert got.data == acknowledged[first]
        await unavailable_with_retry(
            stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="more", data=os.urandom(256 * 1024)),
                           metadata=user.metadata), "DISK_FULL")

    # The operator grows the volume and restarts the editor: every acknowledged write is there.
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_volume)], check=True, capture_output=True)
    async with embedded_editor(fast_settings(url)) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        for id_, data in acknowledged.items():
            got = await stub.GetObject(pb.GetObjectRequest(type=pb.OBJECT_TYPE_STORY, id=id_), metadata=user.metadata)
            assert got.data == data
        await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="after", data=b"fits again"),
                             metadata=user.metadata)


# --- Locks and pool timeouts -------------------------------------------------------------------

class HeldLock:
    """Another client holding the lock every editor write needs, until released."""

    def __init__(self, database_url: str, schema_url: str) -> None:
        self._url = schema_url
        self._sqlite = database_url.startswith("sqlite")
        self._conn = None

    def __enter__(self) -> HeldLock:
        if self._sqlite:
            self._conn = sqlite3.connect(self._url.removeprefix("sqlite:///"), isolation_level=None)
            self._conn.execute("BEGIN IMMEDIATE")  # SQLite's one writer lock, for the whole file
        else:
            self._conn = psycopg.connect(self._url, autocommit=False)
            self._conn.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        return self

    def __exit__(self, *_: object) -> None:
        self._conn.rollback()
        self._conn.close()


async def test_a_lock_held_too_long_and_no_free_connection_are_unavailable(database_url):
    # One connection (PostgreSQL) / one writer turn (SQLite), short waits for locks and for it.
    settings = fast_settings(database_url, database_pool_size=1, database_lock_timeout_s=2.0,
                             database_pool_timeout_s=0.3)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        user = await register(stub, "locked")

        def put(id_: str):
            return stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id=id_, data=b"x"),
                                  metadata=user.metadata)

        with HeldLock(database_url, database_url):
            # The first write waits for the lock (holding the one connection or writer turn) ...
            first = asyncio.ensure_future(put("first"))
            await asyncio.sleep(0.5)
            # ... so a second write finds none free within its wait: UNAVAILABLE, not a hang.
            await unavailable_with_retry(put("second"), "DATABASE_UNAVAILABLE")
            # The first one's lock wait ends ("database is locked" / lock_timeout): UNAVAILABLE too.
            await unavailable_with_retry(first, "DATABASE_UNAVAILABLE")
        # The lock is gone: writes go through again.
        reply = await put("third")
        assert reply.meta.change_index == 1


# --- Health follows the database ---------------------------------------------------------------

async def wait_for_health(health: health_pb2_grpc.HealthStub, wanted: int) -> None:
    async with asyncio.timeout(WAIT_S):
        while True:
            reply = await health.Check(health_pb2.HealthCheckRequest(service="fabula.editor.v1.EditorService"))
            if reply.status == wanted:
                return
            await asyncio.sleep(0.05)


async def test_health_is_not_serving_while_the_sqlite_file_is_gone(tmp_path):
    path = tmp_path / "editor.db"
    settings = fast_settings(f"sqlite:///{path}", health_probe_interval_s=0.1)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await wait_for_health(health, SERVING)
        away = tmp_path / "moved-away.db"
        path.rename(away)
        await wait_for_health(health, NOT_SERVING)
        away.rename(path)
        await wait_for_health(health, SERVING)
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        await register(stub, "after-the-move")


@pytest.mark.postgres
async def test_health_and_calls_while_the_postgres_schema_is_gone():
    schema = f"fabula_test_{uuid.uuid4().hex}"
    admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        from tests.conftest import postgres_schema_url

        settings = fast_settings(postgres_schema_url(schema), health_probe_interval_s=0.1)
        async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = editor_pb2_grpc.EditorServiceStub(channel)
            user = await register(stub, "schema-user")
            await wait_for_health(health, SERVING)
            admin.execute(f'ALTER SCHEMA "{schema}" RENAME TO "{schema}_away"')
            try:
                await wait_for_health(health, NOT_SERVING)
                await unavailable_with_retry(stub.GetKeystore(pb.GetKeystoreRequest(), metadata=user.metadata),
                                             "DATABASE_UNAVAILABLE")
            finally:
                admin.execute(f'ALTER SCHEMA "{schema}_away" RENAME TO "{schema}"')
            await wait_for_health(health, SERVING)
            await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=user.metadata)
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}_away" CASCADE')
        admin.close()
