"""Start-up migrations on each back end: versioned, idempotent, safe when replicas start together."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from services.editor.storage import create_storage
from services.toolkit.errors import Unavailable
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
