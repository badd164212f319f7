"""Each back end: start-up migrations (versioned, idempotent, safe when replicas start together), and
concurrent object writes answered each as if alone."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import uuid

import pytest

from fabula_wire import ObjectType
from services.editor.storage import create_storage
from services.editor.storage.base import ObjectWrite, Usage
from services.editor.types import Account, KdfParams, NewSession, Quota, system_clock
from services.toolkit.errors import Conflict, NotFound, ResourceExhausted, Unavailable
from tests.conftest import fresh_postgres_schema


async def test_migration_is_idempotent(database_url):
    for _ in range(2):
        storage = create_storage(database_url, pool_size=2)
        await storage.open()
        try:
            assert await storage.schema_version() == len(storage.MIGRATIONS)
        finally:
            await storage.close()


async def test_replicas_starting_together_migrate_once(database_url):
    replicas = [create_storage(database_url, pool_size=2) for _ in range(4)]
    try:
        await asyncio.gather(*(replica.open() for replica in replicas))
        versions = {await replica.schema_version() for replica in replicas}
        assert versions == {len(replicas[0].MIGRATIONS)}
    finally:
        for replica in replicas:
            await replica.close()


async def test_sqlite_file_is_durable_wal(tmp_path):
    path = tmp_path / "editor.db"
    storage = create_storage(f"sqlite:///{path}")
    await storage.open()
    try:
        with sqlite3.connect(path) as probe:
            assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {row[0] for row in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"accounts", "sessions", "objects", "schema_migrations"} <= tables
    finally:
        await storage.close()


async def test_calls_before_open_are_unavailable_not_internal(database_url):
    storage = create_storage(database_url)
    with pytest.raises(Unavailable):
        await storage.account_by_username("x")


@pytest.mark.postgres
async def test_postgres_connections_carry_the_timeouts():
    with fresh_postgres_schema() as url:
        storage = create_storage(url, pool_size=1, statement_timeout_s=12.5, lock_timeout_s=3.0,
                                 idle_in_transaction_timeout_s=45.0)
        await storage.open()
        try:
            async with storage._read() as tx:  # the connections every call runs on
                shown = [(await tx.fetchone(f"SHOW {name}"))[0] for name in
                         ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")]
            assert shown == ["12500ms", "3s", "45s"]
        finally:
            await storage.close()


# --- Concurrent object writes (on SQLite, committed in groups) ------------------------------------

def _account(name: str) -> tuple[Account, NewSession]:
    now = system_clock()
    account = Account(user_id=str(uuid.uuid4()), username=name, salt=os.urandom(16), kdf=KdfParams(1, 8192),
                      auth_hash=b"unused", created_at_us=now)
    return account, NewSession(token_hash=os.urandom(32), expires_at_us=now + 3600_000_000)


def _write(id: str, data: bytes) -> ObjectWrite:
    return ObjectWrite(type=ObjectType.STORY, id=id, data=data, sha256=hashlib.sha256(data).digest())


async def test_concurrent_writes_each_get_their_own_answer_and_acknowledged_ones_last(database_url):
    """Writes that arrive together (and so share a commit on SQLite) succeed or fail each as it would
    alone: a refused write leaves no trace and takes none of the others with it; every
    acknowledged write is there after the database is reopened."""
    roomy, tight = Quota(max_objects=100, max_bytes=1 << 20), Quota(max_objects=100, max_bytes=10)
    storage = create_storage(database_url, pool_size=2)
    await storage.open()
    try:
        alice, alice_session = _account("alice")
        bob, bob_session = _account("bob")
        await storage.create_account(alice, b"keystore", alice_session)
        await storage.create_account(bob, b"keystore", bob_session)
        await storage.put_object(alice.user_id, _write("contended", b"base"), 0, roomy, system_clock())
        now = system_clock()
        calls = {
            **{f"create-{n}": storage.put_object(bob.user_id, _write(f"new-{n}", f"new {n}".encode()), 0, roomy, now)
               for n in range(10)},
            **{f"update-{n}": storage.put_object(alice.user_id, _write("contended", f"update {n}".encode()), 1,
                                                 roomy, now) for n in range(5)},
            "recreate": storage.put_object(alice.user_id, _write("contended", b"again"), 0, roomy, now),
            "absent": storage.put_object(alice.user_id, _write("absent", b"x"), 3, roomy, now),
            "over-quota": storage.put_object(alice.user_id, _write("big", b"x" * 11), 0, tight, now),
        }
        outcomes = dict(zip(calls, await asyncio.gather(*calls.values(), return_exceptions=True), strict=True))
    finally:
        await storage.close()

    assert all(outcomes[f"create-{n}"].change_index == 1 for n in range(10))
    winners = [n for n in range(5) if not isinstance(outcomes[f"update-{n}"], BaseException)]
    assert len(winners) == 1 and outcomes[f"update-{winners[0]}"].change_index == 2
    assert all(isinstance(outcomes[f"update-{n}"], Conflict) for n in range(5) if n not in winners)
    assert isinstance(outcomes["recreate"], Conflict)
    assert isinstance(outcomes["absent"], NotFound)
    assert isinstance(outcomes["over-quota"], ResourceExhausted)

    reopened = create_storage(database_url, pool_size=2)
    await reopened.open()
    try:
        for n in range(10):
            stored = await reopened.get_object(bob.user_id, ObjectType.STORY, f"new-{n}")
            assert (stored.data, stored.meta.change_index) == (f"new {n}".encode(), 1)
        stored = await reopened.get_object(alice.user_id, ObjectType.STORY, "contended")
        assert (stored.data, stored.meta.change_index) == (f"update {winners[0]}".encode(), 2)
        assert await reopened.get_object(alice.user_id, ObjectType.STORY, "absent") is None
        assert await reopened.get_object(alice.user_id, ObjectType.STORY, "big") is None
        assert await reopened.usage(bob.user_id) == Usage(objects=10, stored_bytes=sum(
            len(f"new {n}".encode()) for n in range(10)))
        assert await reopened.usage(alice.user_id) == Usage(objects=1, stored_bytes=len(f"update {winners[0]}"))
    finally:
        await reopened.close()
