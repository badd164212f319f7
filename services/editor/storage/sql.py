"""The storage logic both SQL back ends share, written once against a tiny transaction interface.

A back end supplies only connections and transactions (`_write`, `_read`) and its schema; the
statements here use `%s` placeholders and portable SQL (the SQLite back end rewrites the
placeholders). Every object write first locks its account's row (`FOR UPDATE` on PostgreSQL; on
SQLite the whole database is locked by `BEGIN IMMEDIATE`), so the change-index check, the quota
check and the write form one serialised step per account, correct under concurrent writers and
across replicas.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fabula_wire import ObjectType
from services.editor.types import (
    Account,
    ApiToken,
    ImportedObject,
    ImportResult,
    Keystore,
    KdfParams,
    NewSession,
    ObjectMeta,
    Quota,
    StoredObject,
    system_clock,
)
from services.editor.storage.base import (
    QUOTA_RETRY_AFTER_S,
    ExportSnapshot,
    ObjectWrite,
    Storage,
    Usage,
    check_bytes,
    check_objects,
    not_found,
    stale,
)
from services.toolkit.errors import AlreadyExists, NotFound, ResourceExhausted, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

IMPORT_INDEX_FIELD = "expected_keystore_change_index"
# Staged rows older than this at start-up belong to an import whose process died.
STALE_STAGING_US = 24 * 3600 * 1_000_000

ACCOUNT_COLUMNS = "user_id, username, salt, kdf_opslimit, kdf_memlimit, auth_hash, created_us"
API_TOKEN_COLUMNS = "id, user_id, name, token_hash, created_us, expires_us"
META_COLUMNS = "type, id, size, change_index, sha256, created_us, updated_us"
_OBJECT_KEY = "user_id = %s AND type = %s AND id = %s"


class UniqueViolation(Exception):
    """A back end's unique-constraint error, in a form the shared code can catch."""


class Tx(abc.ABC):
    """One open transaction; `for_update` is the row-lock clause the back end understands."""

    for_update: str = ""

    @abc.abstractmethod
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed. Raises UniqueViolation."""


def _account(row: tuple) -> Account:
    return Account(user_id=row[0], username=row[1], salt=bytes(row[2]),
                   kdf=KdfParams(opslimit=int(row[3]), memlimit=int(row[4])),
                   auth_hash=bytes(row[5]), created_at_us=int(row[6]))


def _api_token(row: tuple) -> ApiToken:
    return ApiToken(id=row[0], user_id=row[1], name=row[2], token_hash=bytes(row[3]), created_at_us=int(row[4]),
                    expires_at_us=None if row[5] is None else int(row[5]))


def _meta(row: tuple) -> ObjectMeta:
    return ObjectMeta(type=ObjectType.from_proto(int(row[0])), id=row[1], size=int(row[2]), change_index=int(row[3]),
                      sha256=bytes(row[4]), created_at_us=int(row[5]), updated_at_us=int(row[6]))


def _what(type: ObjectType, id: str) -> str:
    return f"{type.value}/{id}"


class _SqlSnapshot(ExportSnapshot):
    def __init__(self, tx: Tx, user_id: str, account: Account, keystore: Keystore,
                 objects: list[ObjectMeta]) -> None:
        self._tx, self._user_id = tx, user_id
        self.account, self.keystore, self.objects = account, keystore, objects

    async def read(self, meta: ObjectMeta) -> bytes:
        row = await self._tx.fetchone(f"SELECT data FROM objects WHERE {_OBJECT_KEY}",
                                      (self._user_id, meta.type.proto, meta.id))
        if row is None:  # impossible inside the snapshot; a bug if it happens
            raise RuntimeError(f"object {_what(meta.type, meta.id)} vanished from an export snapshot")
        return bytes(row[0])


def _batches(objects: Sequence[ImportedObject], batch_bytes: int) -> list[list[ImportedObject]]:
    """Consecutive groups of about `batch_bytes` (at least one object each)."""
    batches: list[list[ImportedObject]] = []
    current: list[ImportedObject] = []
    size = 0
    for item in objects:
        if current and size + item.size > batch_bytes:
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        batches.append(current)
    return batches


def _check_import_quota(quota: Quota, usage: Usage, objects: Sequence[ImportedObject],
                        existing: dict[tuple[int, str], int]) -> tuple[int, int]:
    """The objects and bytes an import adds, checked against the quota."""
    added = sum(1 for o in objects if (o.type.proto, o.id) not in existing)
    grown = sum(o.size - existing.get((o.type.proto, o.id), 0) for o in objects)
    if added > 0:
        check_objects(quota, usage.objects + added)
    if grown > 0:
        check_bytes(quota, usage.stored_bytes + grown)
    return added, grown


def not_open() -> Unavailable:
    """Calls that arrive before start-up has opened the database (health is still NOT_SERVING)."""
    return Unavailable("the editor's database is not open yet; retry shortly")


class SqlStorage(Storage):
    """Shared implementation; subclasses provide transactions and the schema's migrations."""

    MIGRATIONS: Sequence[Sequence[str]] = ()
    """Schema versions in order; version N is MIGRATIONS[N-1]. Never edit one that shipped."""

    @abc.abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Tx]:
        """A read-write transaction, committed when the block ends without error."""

    @abc.abstractmethod
    def _read(self, snapshot: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A read-only transaction; `snapshot` asks for one consistent view over many statements."""

    async def _lock_migrations(self, tx: Tx) -> None:
        """Hold off other processes migrating the same database until this transaction ends."""

    async def _migrate(self) -> None:
        async with self._write() as tx:
            await self._lock_migrations(tx)
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                             "(version INTEGER PRIMARY KEY, applied_us BIGINT NOT NULL)")
            row = await tx.fetchone("SELECT MAX(version) FROM schema_migrations")
            current = int(row[0]) if row and row[0] is not None else 0
            if current > len(self.MIGRATIONS):
                raise RuntimeError(f"the database's schema version {current} is newer than this "
                                   f"editor knows ({len(self.MIGRATIONS)}); upgrade the editor")
            for version in range(current + 1, len(self.MIGRATIONS) + 1):
                for statement in self.MIGRATIONS[version - 1]:
                    await tx.execute(statement)
                await tx.execute("INSERT INTO schema_migrations (version, applied_us) VALUES (%s, %s)",
                                 (version, system_clock()))
            await tx.execute("DELETE FROM import_staging WHERE staged_us < %s", (system_clock() - STALE_STAGING_US,))

    async def schema_version(self) -> int:
        async with self._read() as tx:
            row = await tx.fetchone("SELECT MAX(version) FROM schema_migrations")
            return int(row[0]) if row and row[0] is not None else 0

    # Accounts and sessions.
    async def create_account(self, account: Account, keystore: bytes, session: NewSession) -> None:
        try:
            async with self._write() as tx:
                if await tx.fetchone("SELECT 1 FROM accounts WHERE username = %s", (account.username,)):
                    raise UniqueViolation
                await tx.execute(
                    f"INSERT INTO accounts ({ACCOUNT_COLUMNS}, object_count, bytes_stored, keystore, "
                    "keystore_change_index, keystore_updated_us) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 0, %s, 1, %s)",
                    (account.user_id, account.username, account.salt, account.kdf.opslimit,
                     account.kdf.memlimit, account.auth_hash, account.created_at_us, keystore,
                     account.created_at_us))
                await self._insert_session(tx, account.user_id, session, account.created_at_us)
        except UniqueViolation:
            raise AlreadyExists(f"the username {account.username!r} is taken", field="username",
                                value=account.username) from None

    @staticmethod
    async def _insert_session(tx: Tx, user_id: str, session: NewSession, now_us: int) -> None:
        await tx.execute("INSERT INTO sessions (token_hash, user_id, expires_us, created_us) "
                         "VALUES (%s, %s, %s, %s)", (session.token_hash, user_id, session.expires_at_us, now_us))

    async def account_by_username(self, username: str) -> Account | None:
        async with self._read() as tx:
            row = await tx.fetchone(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE username = %s", (username,))
        return _account(row) if row else None

    async def account_by_id(self, user_id: str) -> Account | None:
        async with self._read() as tx:
            row = await tx.fetchone(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE user_id = %s", (user_id,))
        return _account(row) if row else None

    async def add_session(self, user_id: str, session: NewSession, now_us: int) -> None:
        async with self._write() as tx:
            if not await tx.fetchone("SELECT 1 FROM accounts WHERE user_id = %s", (user_id,)):
                raise Unauthenticated("the account no longer exists")
            await tx.execute("DELETE FROM sessions WHERE user_id = %s AND expires_us <= %s", (user_id, now_us))
            await self._insert_session(tx, user_id, session, now_us)

    async def account_for_session(self, token_hash: bytes, now_us: int) -> Account | None:
        columns = ", ".join(f"a.{name.strip()}" for name in ACCOUNT_COLUMNS.split(","))
        async with self._read() as tx:
            row = await tx.fetchone(
                f"SELECT {columns} FROM sessions s JOIN accounts a ON a.user_id = s.user_id "
                "WHERE s.token_hash = %s AND s.expires_us > %s", (token_hash, now_us))
        return _account(row) if row else None

    async def delete_session(self, token_hash: bytes) -> None:
        async with self._write() as tx:
            await tx.execute("DELETE FROM sessions WHERE token_hash = %s", (token_hash,))

    # Personal API tokens.
    async def add_api_token(self, token: ApiToken, max_per_user: int) -> None:
        async with self._write() as tx:
            # The account's row lock serialises concurrent creations, so the count stays a bound.
            if not await tx.fetchone(f"SELECT 1 FROM accounts WHERE user_id = %s{tx.for_update}", (token.user_id,)):
                raise Unauthenticated("the account no longer exists")
            row = await tx.fetchone("SELECT COUNT(*) FROM api_tokens WHERE user_id = %s", (token.user_id,))
            if row is not None and int(row[0]) >= max_per_user:
                raise ResourceExhausted(f"an account holds at most {max_per_user} API tokens; revoke one first",
                                        reason="API_TOKEN_QUOTA", retry_after_s=QUOTA_RETRY_AFTER_S)
            await tx.execute(f"INSERT INTO api_tokens ({API_TOKEN_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                             (token.id, token.user_id, token.name, token.token_hash, token.created_at_us,
                              token.expires_at_us))

    async def list_api_tokens(self, user_id: str) -> list[ApiToken]:
        async with self._read() as tx:
            rows = await tx.fetchall(f"SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE user_id = %s "
                                     "ORDER BY created_us, id", (user_id,))
        return [_api_token(row) for row in rows]

    async def delete_api_token(self, user_id: str, id: str) -> bool:
        async with self._write() as tx:
            return await tx.execute("DELETE FROM api_tokens WHERE user_id = %s AND id = %s", (user_id, id)) > 0

    async def account_for_api_token(self, token_hash: bytes, now_us: int) -> Account | None:
        columns = ", ".join(f"a.{name.strip()}" for name in ACCOUNT_COLUMNS.split(","))
        async with self._read() as tx:
            row = await tx.fetchone(
                f"SELECT {columns} FROM api_tokens t JOIN accounts a ON a.user_id = t.user_id "
                "WHERE t.token_hash = %s AND (t.expires_us IS NULL OR t.expires_us > %s)", (token_hash, now_us))
        return _account(row) if row else None

    async def change_password(self, user_id: str, *, salt: bytes, kdf: KdfParams, auth_hash: bytes,
                              keystore: bytes, expected_keystore_index: int, session: NewSession,
                              now_us: int) -> int:
        async with self._write() as tx:
            row = await tx.fetchone(
                f"SELECT keystore_change_index FROM accounts WHERE user_id = %s{tx.for_update}", (user_id,))
            if row is None:
                raise Unauthenticated("the account no longer exists")
            if int(row[0]) != expected_keystore_index:
                raise stale("keystore", expected_keystore_index, int(row[0]))
            await tx.execute(
                "UPDATE accounts SET salt = %s, kdf_opslimit = %s, kdf_memlimit = %s, auth_hash = %s, "
                "keystore = %s, keystore_change_index = keystore_change_index + 1, keystore_updated_us = %s "
                "WHERE user_id = %s",
                (salt, kdf.opslimit, kdf.memlimit, auth_hash, keystore, now_us, user_id))
            await tx.execute("DELETE FROM sessions WHERE user_id = %s", (user_id,))
            await self._insert_session(tx, user_id, session, now_us)
            return int(row[0]) + 1

    async def delete_account(self, user_id: str) -> int:
        async with self._write() as tx:
            if not await tx.fetchone(f"SELECT 1 FROM accounts WHERE user_id = %s{tx.for_update}", (user_id,)):
                raise Unauthenticated("the account no longer exists")
            deleted = await tx.execute("DELETE FROM objects WHERE user_id = %s", (user_id,))
            await tx.execute("DELETE FROM sessions WHERE user_id = %s", (user_id,))
            await tx.execute("DELETE FROM api_tokens WHERE user_id = %s", (user_id,))
            await tx.execute("DELETE FROM accounts WHERE user_id = %s", (user_id,))
            return deleted

    # Keystore.
    async def get_keystore(self, user_id: str) -> Keystore:
        async with self._read() as tx:
            row = await tx.fetchone("SELECT keystore, keystore_change_index, keystore_updated_us "
                                    "FROM accounts WHERE user_id = %s", (user_id,))
        if row is None:
            raise Unauthenticated("the account no longer exists")
        return Keystore(data=bytes(row[0]), change_index=int(row[1]), updated_at_us=int(row[2]))

    async def put_keystore(self, user_id: str, data: bytes, expected_index: int, now_us: int) -> int:
        async with self._write() as tx:
            changed = await tx.execute(
                "UPDATE accounts SET keystore = %s, keystore_change_index = keystore_change_index + 1, "
                "keystore_updated_us = %s WHERE user_id = %s AND keystore_change_index = %s",
                (data, now_us, user_id, expected_index))
            row = await tx.fetchone("SELECT keystore_change_index FROM accounts WHERE user_id = %s", (user_id,))
            if row is None:
                raise Unauthenticated("the account no longer exists")
            if changed != 1:
                raise stale("keystore", expected_index, int(row[0]))
            return int(row[0])

    # Objects.
    async def _lock_usage(self, tx: Tx, user_id: str) -> Usage:
        row = await tx.fetchone(
            f"SELECT object_count, bytes_stored FROM accounts WHERE user_id = %s{tx.for_update}", (user_id,))
        if row is None:
            raise Unauthenticated("the account no longer exists")
        return Usage(objects=int(row[0]), stored_bytes=int(row[1]))

    @staticmethod
    async def _add_usage(tx: Tx, user_id: str, objects: int, stored_bytes: int) -> None:
        await tx.execute("UPDATE accounts SET object_count = object_count + %s, "
                         "bytes_stored = bytes_stored + %s WHERE user_id = %s", (objects, stored_bytes, user_id))

    async def put_object(self, user_id: str, write: ObjectWrite, expected_index: int, quota: Quota,
                         now_us: int) -> ObjectMeta:
        what, size, type_ = _what(write.type, write.id), len(write.data), write.type.proto
        async with self._write() as tx:
            usage = await self._lock_usage(tx, user_id)
            row = await tx.fetchone(f"SELECT change_index, size, created_us FROM objects WHERE {_OBJECT_KEY}",
                                    (user_id, type_, write.id))
            if expected_index == 0:
                if row is not None:
                    raise stale(what, 0, int(row[0]))
                check_objects(quota, usage.objects + 1)
                check_bytes(quota, usage.stored_bytes + size)
                await tx.execute(
                    f"INSERT INTO objects (user_id, {META_COLUMNS}, data) VALUES (%s, %s, %s, %s, 1, %s, %s, %s, %s)",
                    (user_id, type_, write.id, size, write.sha256, now_us, now_us, write.data))
                await self._add_usage(tx, user_id, 1, size)
                return ObjectMeta(type=write.type, id=write.id, size=size, change_index=1, sha256=write.sha256,
                                  created_at_us=now_us, updated_at_us=now_us)
            if row is None:
                raise not_found(what)
            stored_index, old_size, created_us = int(row[0]), int(row[1]), int(row[2])
            if stored_index != expected_index:
                raise stale(what, expected_index, stored_index)
            if size > old_size:  # shrinking an object is allowed even over a lowered quota
                check_bytes(quota, usage.stored_bytes - old_size + size)
            changed = await tx.execute(
                "UPDATE objects SET data = %s, size = %s, sha256 = %s, change_index = change_index + 1, "
                f"updated_us = %s WHERE {_OBJECT_KEY} AND change_index = %s",
                (write.data, size, write.sha256, now_us, user_id, type_, write.id, expected_index))
            if changed != 1:  # the account lock makes this unreachable; refuse rather than guess
                raise stale(what, expected_index, stored_index)
            await self._add_usage(tx, user_id, 0, size - old_size)
            return ObjectMeta(type=write.type, id=write.id, size=size, change_index=expected_index + 1,
                              sha256=write.sha256, created_at_us=created_us, updated_at_us=now_us)

    async def get_object(self, user_id: str, type: ObjectType, id: str) -> StoredObject | None:
        async with self._read() as tx:
            row = await tx.fetchone(f"SELECT {META_COLUMNS}, data FROM objects WHERE {_OBJECT_KEY}",
                                    (user_id, type.proto, id))
        return StoredObject(meta=_meta(row), data=bytes(row[7])) if row else None

    async def list_objects(self, user_id: str, type: ObjectType, after_id: str, limit: int) -> list[ObjectMeta]:
        async with self._read() as tx:
            rows = await tx.fetchall(
                f"SELECT {META_COLUMNS} FROM objects WHERE user_id = %s AND type = %s AND id > %s "
                "ORDER BY id LIMIT %s", (user_id, type.proto, after_id, limit))
        return [_meta(row) for row in rows]

    async def delete_object(self, user_id: str, type: ObjectType, id: str, expected_index: int | None) -> None:
        what = _what(type, id)
        async with self._write() as tx:
            await self._lock_usage(tx, user_id)
            row = await tx.fetchone(f"SELECT change_index, size FROM objects WHERE {_OBJECT_KEY}",
                                    (user_id, type.proto, id))
            if row is None:
                raise not_found(what)
            if expected_index is not None and int(row[0]) != expected_index:
                raise stale(what, expected_index, int(row[0]))
            await tx.execute(f"DELETE FROM objects WHERE {_OBJECT_KEY}", (user_id, type.proto, id))
            await self._add_usage(tx, user_id, -1, -int(row[1]))

    async def usage(self, user_id: str) -> Usage:
        async with self._read() as tx:
            row = await tx.fetchone("SELECT object_count, bytes_stored FROM accounts WHERE user_id = %s", (user_id,))
        if row is None:
            raise NotFound("the account does not exist", field="user_id", value=user_id)
        return Usage(objects=int(row[0]), stored_bytes=int(row[1]))

    # Export and import.
    @asynccontextmanager
    async def export_snapshot(self, user_id: str) -> AsyncIterator[ExportSnapshot]:
        async with self._read(snapshot=True) as tx:
            row = await tx.fetchone(
                f"SELECT {ACCOUNT_COLUMNS}, keystore, keystore_change_index, keystore_updated_us "
                "FROM accounts WHERE user_id = %s", (user_id,))
            if row is None:
                raise Unauthenticated("the account no longer exists")
            account = _account(row[:7])
            keystore = Keystore(data=bytes(row[7]), change_index=int(row[8]), updated_at_us=int(row[9]))
            rows = await tx.fetchall(f"SELECT {META_COLUMNS} FROM objects WHERE user_id = %s ORDER BY type, id",
                                     (user_id,))
            yield _SqlSnapshot(tx, user_id, account, keystore, [_meta(r) for r in rows])

    # An import is staged, then applied. Staging copies the archive's objects into
    # `import_staging` in short transactions of about `batch_bytes` each, reading the spool with
    # no transaction open, so other writers (on SQLite: everyone, for one file has one writer) get
    # their turn between batches. Staged rows are invisible to every read. One last transaction
    # then checks the keystore index and the quota and moves the rows into `objects` inside the
    # database: that is what makes the import all or nothing and visible at once. Whatever
    # happens, the staged rows are deleted again (the apply deletes them itself; rows left by a
    # crash are swept at the next start).

    async def import_objects(self, user_id: str, objects: Sequence[ImportedObject], keystore: bytes | None,
                             expected_keystore_index: int, quota: Quota, now_us: int, *,
                             batch_bytes: int) -> ImportResult:
        await self._precheck_import(user_id, objects, expected_keystore_index, quota)
        import_id = uuid.uuid4().hex
        applied = False
        try:
            for batch in _batches(objects, batch_bytes):
                # Read from the spooled archive in a thread (it may be on disk), before the
                # transaction: the writer is held only for the inserts.
                loaded = [(item, await asyncio.to_thread(item.load)) for item in batch]
                async with self._write() as tx:
                    for item, data in loaded:
                        await tx.execute(
                            "INSERT INTO import_staging (import_id, user_id, type, id, size, sha256, staged_us, data) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                            (import_id, user_id, item.type.proto, item.id, item.size, item.sha256, now_us, data))
            result = await self._apply_import(import_id, user_id, objects, keystore, expected_keystore_index,
                                              quota, now_us)
            applied = True  # the apply deleted the staged rows in its own transaction
            return result
        finally:
            if not applied:
                # Shielded: a cancelled import (the client left) must still clear what it staged.
                await asyncio.shield(self._drop_staged(import_id))

    async def _drop_staged(self, import_id: str) -> None:
        try:
            async with self._write() as tx:
                await tx.execute("DELETE FROM import_staging WHERE import_id = %s", (import_id,))
        except Exception:  # left for the sweep at the next start; the import's outcome stands
            log.warning("could not delete the staged rows of import %s", import_id, exc_info=True)

    async def _precheck_import(self, user_id: str, objects: Sequence[ImportedObject], expected_keystore_index: int,
                               quota: Quota) -> None:
        """The apply's checks on a snapshot, so a doomed import is refused before it stages anything."""
        async with self._read() as tx:
            row = await tx.fetchone("SELECT keystore_change_index, object_count, bytes_stored FROM accounts "
                                    "WHERE user_id = %s", (user_id,))
            if row is None:
                raise Unauthenticated("the account no longer exists")
            existing = {(int(r[0]), r[1]): int(r[2]) for r in await tx.fetchall(
                "SELECT type, id, size FROM objects WHERE user_id = %s", (user_id,))}
        if int(row[0]) != expected_keystore_index:
            raise stale("keystore", expected_keystore_index, int(row[0]), IMPORT_INDEX_FIELD)
        _check_import_quota(quota, Usage(objects=int(row[1]), stored_bytes=int(row[2])), objects, existing)

    async def _apply_import(self, import_id: str, user_id: str, objects: Sequence[ImportedObject],
                            keystore: bytes | None, expected_keystore_index: int, quota: Quota,
                            now_us: int) -> ImportResult:
        async with self._write() as tx:
            usage = await self._lock_usage(tx, user_id)
            row = await tx.fetchone("SELECT keystore_change_index FROM accounts WHERE user_id = %s", (user_id,))
            keystore_index = int(row[0])
            if keystore_index != expected_keystore_index:
                raise stale("keystore", expected_keystore_index, keystore_index, IMPORT_INDEX_FIELD)
            existing = {(int(r[0]), r[1]): int(r[2]) for r in await tx.fetchall(
                "SELECT o.type, o.id, o.size FROM objects o JOIN import_staging s "
                "ON o.type = s.type AND o.id = s.id WHERE s.import_id = %s AND o.user_id = %s",
                (import_id, user_id))}
            added, grown = _check_import_quota(quota, usage, objects, existing)
            await tx.execute(
                "UPDATE objects SET data = s.data, size = s.size, sha256 = s.sha256, "
                "change_index = objects.change_index + 1, updated_us = %s FROM import_staging s "
                "WHERE s.import_id = %s AND objects.user_id = %s AND objects.type = s.type AND objects.id = s.id",
                (now_us, import_id, user_id))
            await tx.execute(
                f"INSERT INTO objects (user_id, {META_COLUMNS}, data) "
                "SELECT s.user_id, s.type, s.id, s.size, 1, s.sha256, %s, %s, s.data FROM import_staging s "
                "WHERE s.import_id = %s AND NOT EXISTS (SELECT 1 FROM objects o "
                "WHERE o.user_id = s.user_id AND o.type = s.type AND o.id = s.id)",
                (now_us, now_us, import_id))
            await tx.execute("DELETE FROM import_staging WHERE import_id = %s", (import_id,))
            await self._add_usage(tx, user_id, added, grown)
            if keystore is not None:
                keystore_index += 1
                await tx.execute(
                    "UPDATE accounts SET keystore = %s, keystore_change_index = %s, "
                    "keystore_updated_us = %s WHERE user_id = %s", (keystore, keystore_index, now_us, user_id))
        return ImportResult(imported_objects=len(objects), keystore_replaced=keystore is not None,
                            keystore_change_index=keystore_index)
