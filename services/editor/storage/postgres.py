"""PostgreSQL back end (psycopg 3, async, pooled): for many editor replicas sharing one database.

Object writes lock their account's row (`SELECT ... FOR UPDATE`) so that concurrent writers on
any replica are serialised per account; start-up migrations run under an advisory lock so that
replicas starting together migrate exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.editor.storage import faults
from services.editor.storage.sql import SqlStorage, Tx, UniqueViolation, not_open

# pg_advisory_xact_lock key for schema migrations: "Fabula E" as a 64-bit integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"FabulaE\x00", "big") & 0x7FFF_FFFF_FFFF_FFFF

# COLLATE "C" on ids and usernames: byte order, so paging order (and uniqueness) is the same as
# SQLite's and does not depend on the server's locale.
SCHEMA_V1 = (
    """CREATE TABLE accounts (
        user_id TEXT COLLATE "C" PRIMARY KEY,
        username TEXT COLLATE "C" NOT NULL UNIQUE,
        salt BYTEA NOT NULL,
        kdf_opslimit BIGINT NOT NULL,
        kdf_memlimit BIGINT NOT NULL,
        auth_hash BYTEA NOT NULL,
        created_us BIGINT NOT NULL,
        object_count BIGINT NOT NULL,
        bytes_stored BIGINT NOT NULL,
        keystore BYTEA NOT NULL,
        keystore_change_index BIGINT NOT NULL,
        keystore_updated_us BIGINT NOT NULL
    )""",
    """CREATE TABLE sessions (
        token_hash BYTEA PRIMARY KEY,
        user_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        expires_us BIGINT NOT NULL,
        created_us BIGINT NOT NULL
    )""",
    "CREATE INDEX sessions_by_user ON sessions (user_id)",
    """CREATE TABLE objects (
        user_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        type SMALLINT NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        size BIGINT NOT NULL,
        change_index BIGINT NOT NULL,
        sha256 BYTEA NOT NULL,
        created_us BIGINT NOT NULL,
        updated_us BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (user_id, type, id)
    )""",
)

# Objects of imports in progress (see SqlStorage.import_objects), invisible to every read.
SCHEMA_V2 = (
    """CREATE TABLE import_staging (
        import_id TEXT NOT NULL,
        user_id TEXT COLLATE "C" NOT NULL,
        type SMALLINT NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        size BIGINT NOT NULL,
        sha256 BYTEA NOT NULL,
        staged_us BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (import_id, type, id)
    )""",
)


# Errors that say the database, not the call, is at fault: OperationalError covers lost
# connections, shutdowns, statement and lock timeouts, deadlocks and a full disk; the others mean
# the schema went away or its grants were revoked under the running service.
_SCHEMA_GONE = (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege,
                psycopg.errors.InvalidSchemaName)


def classify_fault(error: BaseException) -> str | None:
    """The fault reason of a psycopg or pool error, or None when it is not a fault of the database."""
    if isinstance(error, psycopg.errors.DiskFull):
        return faults.DISK_FULL
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, *_SCHEMA_GONE)):
        return faults.DATABASE_FAULT
    return None


def session_settings(*, statement_timeout_s: float, lock_timeout_s: float,
                     idle_in_transaction_timeout_s: float) -> dict[str, str]:
    """Per-connection limits: no statement, lock wait or forgotten transaction lasts for ever."""
    return {"statement_timeout": f"{int(statement_timeout_s * 1000)}ms",
            "lock_timeout": f"{int(lock_timeout_s * 1000)}ms",
            "idle_in_transaction_session_timeout": f"{int(idle_in_transaction_timeout_s * 1000)}ms"}

# Personal API tokens: only the SHA-256 of each is kept; expires_us NULL = never.
SCHEMA_V3 = (
    """CREATE TABLE api_tokens (
        token_hash BYTEA PRIMARY KEY,
        id TEXT COLLATE "C" NOT NULL UNIQUE,
        user_id TEXT COLLATE "C" NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created_us BIGINT NOT NULL,
        expires_us BIGINT
    )""",
    "CREATE INDEX api_tokens_by_user ON api_tokens (user_id)",
)


class _PostgresTx(Tx):
    for_update = " FOR UPDATE"

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self._conn = conn

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        async with self._conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        async with self._conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return await cursor.fetchall()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn.cursor() as cursor:
            try:
                await cursor.execute(sql, params)
            except psycopg.errors.UniqueViolation as error:
                raise UniqueViolation(str(error)) from error
            return cursor.rowcount


class PostgresStorage(SqlStorage):
    MIGRATIONS = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout_s: float = 30.0, pool_timeout_s: float = 5.0,
                 lock_timeout_s: float = 5.0, statement_timeout_s: float = 30.0,
                 idle_in_transaction_timeout_s: float = 60.0, **_: Any) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._opened = False
        self._settings = session_settings(statement_timeout_s=statement_timeout_s, lock_timeout_s=lock_timeout_s,
                                          idle_in_transaction_timeout_s=idle_in_transaction_timeout_s)
        self._probe_timeout_s = pool_timeout_s
        # `timeout`: how long a call waits for a free connection before PoolTimeout (UNAVAILABLE).
        self._pool = AsyncConnectionPool(url, min_size=1, max_size=max(1, pool_size), open=False,
                                         kwargs={"autocommit": True}, name="fabula-editor",
                                         configure=self._configure, timeout=pool_timeout_s)

    def __repr__(self) -> str:
        return "PostgresStorage()"  # the URL may carry a password

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=self._connect_timeout_s)
        self._opened = True
        await self._migrate()

    async def close(self) -> None:
        self._opened = False
        await self._pool.close()

    async def _configure(self, conn: psycopg.AsyncConnection) -> None:
        for name, value in self._settings.items():
            await conn.execute("SELECT set_config(%s, %s, false)", (name, value))

    async def check(self) -> None:
        # A connection of its own: a pool busy with slow calls must not read as a database gone.
        conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                     connect_timeout=max(1, int(self._probe_timeout_s)))
        async with conn:
            await self._configure(conn)
            await conn.execute("SELECT MAX(version) FROM schema_migrations")

    async def _lock_migrations(self, tx: Tx) -> None:
        # Replicas starting together wait for the one migrating, for as long as start-up waits
        # for the database (the calls' lock_timeout is far shorter).
        await tx.fetchone("SELECT set_config('lock_timeout', %s, true)", (f"{int(self._connect_timeout_s * 1000)}ms",))
        await tx.fetchone("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Tx]:
        if not self._opened:
            raise not_open()
        with faults.faults_as_unavailable(classify_fault):
            async with self._pool.connection() as conn, conn.transaction():
                yield _PostgresTx(conn)

    @asynccontextmanager
    async def _read(self, snapshot: bool = False) -> AsyncIterator[Tx]:
        if not self._opened:
            raise not_open()
        with faults.faults_as_unavailable(classify_fault):
            async with self._pool.connection() as conn, conn.transaction():
                if snapshot:
                    # One view over every statement of an export's snapshot.
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield _PostgresTx(conn)
