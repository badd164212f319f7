"""SQLite back end: one file, WAL mode, every call in a thread so the event loop never blocks.

Writes go through one connection on one thread, one transaction at a time (`BEGIN IMMEDIATE`
also locks out any other process on the same file); reads use a small pool of read-only
connections, which WAL lets run beside the writer, each seeing a consistent snapshot.

The frequent operations (object reads and writes, session checks) run whole in one hop to a
connection's thread instead of one hop per statement: each hop costs about as much CPU as the
statement it carries (see `_in_one_hop`).

Object writes are committed in groups (see `_write_grouped`): the writes waiting for the writer
when it comes free run in one transaction, each in a savepoint of its own, and one COMMIT (one
fsync of the WAL) makes them all durable. Each is acknowledged only after that COMMIT, and one
that fails (a stale change index, a quota) is rolled back to its savepoint without touching the
others, so every caller gets exactly the answer it would have had alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fabula_wire import ObjectType
from services.editor.storage.base import ObjectWrite
from services.editor.storage import faults
from services.editor.storage.sql import SqlStorage, Tx, UniqueViolation, not_open
from services.editor.types import Account, ObjectMeta, Quota, StoredObject

T = TypeVar("T")
URL_PREFIX = "sqlite:///"
# How long start-up waits for other processes switching the same file to WAL.
STARTUP_LOCK_TIMEOUT_MS = 10_000

SCHEMA_V1 = (
    """CREATE TABLE accounts (
        user_id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        salt BLOB NOT NULL,
        kdf_opslimit INTEGER NOT NULL,
        kdf_memlimit INTEGER NOT NULL,
        auth_hash BLOB NOT NULL,
        created_us INTEGER NOT NULL,
        object_count INTEGER NOT NULL,
        bytes_stored INTEGER NOT NULL,
        keystore BLOB NOT NULL,
        keystore_change_index INTEGER NOT NULL,
        keystore_updated_us INTEGER NOT NULL
    )""",
    """CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        expires_us INTEGER NOT NULL,
        created_us INTEGER NOT NULL
    )""",
    "CREATE INDEX sessions_by_user ON sessions (user_id)",
    """CREATE TABLE objects (
        user_id TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        type INTEGER NOT NULL,
        id TEXT NOT NULL,
        size INTEGER NOT NULL,
        change_index INTEGER NOT NULL,
        sha256 BLOB NOT NULL,
        created_us INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (user_id, type, id)
    )""",
)

# Objects of imports in progress (see SqlStorage.import_objects), invisible to every read.
SCHEMA_V2 = (
    """CREATE TABLE import_staging (
        import_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        type INTEGER NOT NULL,
        id TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 BLOB NOT NULL,
        staged_us INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (import_id, type, id)
    )""",
)

# Personal API tokens: only the SHA-256 of each is kept; expires_us NULL = never.
SCHEMA_V3 = (
    """CREATE TABLE api_tokens (
        token_hash BLOB PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        expires_us INTEGER
    )""",
    "CREATE INDEX api_tokens_by_user ON api_tokens (user_id)",
)


def path_from_url(url: str) -> Path:
    """`sqlite:///data/editor.db` is relative to the working directory; `sqlite:////abs.db` absolute."""
    if not url.startswith(URL_PREFIX) or len(url) == len(URL_PREFIX):
        raise ValueError(f"a SQLite database URL looks like sqlite:///path/to/editor.db, got {url!r}")
    path = url[len(URL_PREFIX):]
    if path == ":memory:" or path.startswith("file:"):
        raise ValueError("the editor needs a durable SQLite file, not an in-memory database")
    return Path(path)


def _switch_to_wal(conn: sqlite3.Connection, path: Path) -> None:
    # Switching a fresh file to WAL needs an exclusive lock. When replicas start together, SQLite
    # may answer "database is locked" at once instead of calling the busy handler (it does so when
    # waiting could deadlock: this connection already holds a shared lock), so wait here instead.
    deadline = time.monotonic() + STARTUP_LOCK_TIMEOUT_MS / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if mode.lower() != "wal":
        raise RuntimeError(f"could not switch {path} to WAL mode (got {mode!r})")


# The SQLite result codes that are faults of the file or its disk (or a lock held too long),
# not of the call: answered UNAVAILABLE. Extended codes (SQLITE_IOERR_WRITE...) share the prefix.
_FAULT_CODES = {"SQLITE_FULL": faults.DISK_FULL, "SQLITE_BUSY": faults.DATABASE_FAULT,
                "SQLITE_LOCKED": faults.DATABASE_FAULT, "SQLITE_IOERR": faults.DATABASE_FAULT,
                "SQLITE_CANTOPEN": faults.DATABASE_FAULT, "SQLITE_READONLY": faults.DATABASE_FAULT,
                "SQLITE_CORRUPT": faults.DATABASE_FAULT, "SQLITE_NOTADB": faults.DATABASE_FAULT,
                "SQLITE_PROTOCOL": faults.DATABASE_FAULT}


def classify_fault(error: BaseException) -> str | None:
    """The fault reason of a sqlite3 error, or None when it is not a fault of the database."""
    if not isinstance(error, sqlite3.DatabaseError):
        return None
    name = getattr(error, "sqlite_errorname", "") or ""
    for prefix, reason in _FAULT_CODES.items():
        if name == prefix or name.startswith(prefix + "_"):
            return reason
    # A table gone from a migrated file: the file was replaced or damaged under the service.
    if str(error).startswith("no such table"):
        return faults.DATABASE_FAULT
    return None


def _connect(path: Path, read_only: bool, lock_timeout_s: float = STARTUP_LOCK_TIMEOUT_MS / 1000) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; this module says BEGIN and COMMIT itself.
    # check_same_thread=False: a connection is used by one task at a time, from pool threads.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=lock_timeout_s)
    conn.execute(f"PRAGMA busy_timeout = {int(lock_timeout_s * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if read_only:
        conn.execute("PRAGMA query_only = ON")
    else:
        _switch_to_wal(conn, path)
        # FULL: every commit fsyncs the WAL before COMMIT returns. NORMAL would already survive
        # SIGKILL of this process (the WAL is in the OS's hands before COMMIT returns), but not
        # a power cut or kernel crash; an acknowledged write of someone's story must survive both.
        conn.execute("PRAGMA synchronous = FULL")
    return conn


class _SqliteTx(Tx):
    def __init__(self, conn: sqlite3.Connection, run: Callable[..., Any]) -> None:
        self._conn, self._run = conn, run

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%s", "?")

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return await self._run(lambda: self._conn.execute(self._sql(sql), params).fetchone())

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return await self._run(lambda: self._conn.execute(self._sql(sql), params).fetchall())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        def run() -> int:
            try:
                return self._conn.execute(self._sql(sql), params).rowcount
            except sqlite3.IntegrityError as error:
                if "UNIQUE" in str(error) or "PRIMARY KEY" in str(error):
                    raise UniqueViolation(str(error)) from error
                raise

        return await self._run(run)


def _finish(conn: sqlite3.Connection, commit: bool) -> None:
    if not conn.in_transaction:
        return
    if not commit:
        conn.execute("ROLLBACK")
        return
    try:
        conn.execute("COMMIT")
    except sqlite3.Error:
        # A COMMIT refused for a full disk or a busy file leaves the transaction open; roll it
        # back, or the connection's next BEGIN would fail for ever.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@dataclass(eq=False)
class _PendingWrite:
    """A write waiting for its group's commit, and the future that answers its caller."""

    operation: Callable[..., Coroutine[Any, Any, Any]]
    args: tuple[Any, ...]
    future: asyncio.Future
    taken: bool = field(default=False)  # in a group handed to the writer thread


# A group is bounded so that one commit never carries more than a moment's work; writes beyond
# it wait for the next group.
MAX_GROUP_WRITES = 64
MAX_GROUP_BYTES = 16 * 1024 * 1024


def probe(path: Path) -> None:
    """Open the file afresh, read-only, and read the schema version: fails when the file is gone,
    unreadable or no longer the migrated database (open connections would not notice)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0, check_same_thread=False)
    try:
        conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    finally:
        conn.close()


async def _at_once(call: Callable[[], T]) -> T:
    """A transaction's `run` when the transaction already runs on its connection's thread."""
    return call()


def _run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (every await in it completes at once) on this thread."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("an operation run in one hop tried to wait for something")


class SqliteStorage(SqlStorage):
    MIGRATIONS = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)

    def __init__(self, url: str, *, pool_size: int = 4, pool_timeout_s: float = 5.0, lock_timeout_s: float = 5.0,
                 **_: Any) -> None:
        self.path = path_from_url(url)
        self._readers_count = max(1, pool_size)
        self._pool_timeout_s, self._lock_timeout_s = pool_timeout_s, lock_timeout_s
        self._writer: sqlite3.Connection | None = None
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._writer_lock = asyncio.Lock()
        self._reader_threads = ThreadPoolExecutor(self._readers_count, thread_name_prefix="sqlite-reader")
        self._readers: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()
        self._all_readers: list[sqlite3.Connection] = []
        # On a pool thread running a whole operation (`_in_one_hop`): the connection it runs on,
        # and whether it runs inside a group's transaction (`_run_group`).
        self._hop = threading.local()
        self._pending_writes: deque[_PendingWrite] = deque()

    def __repr__(self) -> str:
        return f"SqliteStorage({str(self.path)!r})"

    async def _on(self, executor: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._on(self._writer_thread, lambda: _connect(self.path, read_only=False))
        await self._migrate()
        # After the migration (which may wait on other processes): calls wait at most this long.
        await self._on(self._writer_thread,
                       lambda: self._writer.execute(f"PRAGMA busy_timeout = {int(self._lock_timeout_s * 1000)}"))
        for _ in range(self._readers_count):
            reader = await self._on(self._reader_threads,
                                    lambda: _connect(self.path, read_only=True, lock_timeout_s=self._lock_timeout_s))
            self._all_readers.append(reader)
            self._readers.put_nowait(reader)

    async def close(self) -> None:
        async with self._writer_lock:
            if self._writer is not None:
                await self._on(self._writer_thread, self._writer.close)
                self._writer = None
        for reader in self._all_readers:
            await self._on(self._reader_threads, reader.close)
        self._all_readers.clear()
        self._writer_thread.shutdown(wait=True)
        self._reader_threads.shutdown(wait=True)

    async def check(self) -> None:
        await asyncio.to_thread(probe, self.path)

    # Waiting for the writer or a reader: bounded, then UNAVAILABLE -----------------------------

    @asynccontextmanager
    async def _writer_turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._pool_timeout_s):
                await self._writer_lock.acquire()
        except TimeoutError:
            raise faults.unavailable(faults.DATABASE_FAULT, "the writer stayed busy") from None
        try:
            yield
        finally:
            self._writer_lock.release()

    async def _take_reader(self) -> sqlite3.Connection:
        try:
            async with asyncio.timeout(self._pool_timeout_s):
                return await self._readers.get()
        except TimeoutError:
            raise faults.unavailable(faults.DATABASE_FAULT, "no reader connection came free") from None

    # One hop per operation ------------------------------------------------------------------
    # The shared SQL code awaits each statement. Run on the connection's own thread with a `Tx`
    # whose statements execute at once (`_at_once`), such an operation never suspends, so it runs
    # to its end in the one hop that carries it there (`_run_to_end`). Transactions stay exactly
    # as they were (BEGIN IMMEDIATE ... COMMIT with synchronous=FULL; one reader snapshot).

    async def _in_one_hop(self, write: bool, operation: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        with faults.faults_as_unavailable(classify_fault):
            return await self._run_hop(write, operation, *args)

    async def _run_hop(self, write: bool, operation: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        if write:
            if self._writer is None:
                raise not_open()
            conn = self._writer
            # The lock keeps this hop out of the middle of a statement-by-statement transaction
            # on the same connection; one writer thread runs the queued hops in order.
            async with self._writer_turn():
                return await loop.run_in_executor(self._writer_thread, self._run_on, conn, operation, args)
        if not self._all_readers:
            raise not_open()
        conn = await self._take_reader()
        future = loop.run_in_executor(self._reader_threads, self._run_on, conn, operation, args)
        # Back to the pool only once the thread is done with it, even if this task is cancelled.
        future.add_done_callback(lambda _: self._readers.put_nowait(conn))
        return await asyncio.shield(future)

    def _run_on(self, conn: sqlite3.Connection, operation: Callable[..., Coroutine[Any, Any, T]],
                args: tuple[Any, ...]) -> T:
        self._hop.conn = conn
        try:
            return _run_to_end(operation(*args))
        finally:
            self._hop.conn = None

    # Group commit -------------------------------------------------------------------------
    # With synchronous=FULL each COMMIT waits for an fsync, which costs far more than the writes
    # it covers; concurrent savers used to queue one fsync each. Now a write joins the queue of
    # pending writes and waits for the writer's lock like any other write; whoever gets the lock
    # takes every write pending at that moment (its own included, unless an earlier group already
    # carried it) to the writer thread as one group. Callers whose write went with an earlier group
    # find its answer when their turn comes, or as soon as it is settled.

    async def _write_grouped(self, operation: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        with faults.faults_as_unavailable(classify_fault):
            if self._writer is None:
                raise not_open()
            loop = asyncio.get_running_loop()
            pending = _PendingWrite(operation, args, loop.create_future())
            self._pending_writes.append(pending)
            try:
                async with self._writer_turn():
                    if not pending.taken:
                        await self._commit_group(loop)
            except BaseException as error:
                if not pending.taken:  # never handed to the writer: nothing was or will be written
                    self._pending_writes.remove(pending)
                    pending.future.cancel()
                    raise
                if isinstance(error, asyncio.CancelledError):
                    raise
                # Our write went with a group while we waited (the lock's timeout, say): its
                # outcome is the answer, not how long the lock took to come free.
            # Shielded: cancelling this caller must not cancel the future a group settles.
            return await asyncio.shield(pending.future)

    async def _commit_group(self, loop: asyncio.AbstractEventLoop) -> None:
        group: list[_PendingWrite] = []
        size = 0
        while self._pending_writes and len(group) < MAX_GROUP_WRITES and size < MAX_GROUP_BYTES:
            pending = self._pending_writes.popleft()
            pending.taken = True
            group.append(pending)
            size += sum(len(arg.data) for arg in pending.args if isinstance(arg, ObjectWrite))
        conn = self._writer
        if conn is None:
            outcomes: list[tuple[bool, Any]] = [(False, not_open())] * len(group)
            self._settle(group, outcomes)
            return
        running = loop.run_in_executor(self._writer_thread, self._run_group, conn, group)
        # Settled by a callback: the group's callers are answered even if this task is cancelled.
        running.add_done_callback(lambda done: self._settle(
            group, done.result() if done.exception() is None else [(False, done.exception())] * len(group)))
        await asyncio.shield(running)

    @staticmethod
    def _settle(group: list[_PendingWrite], outcomes: list[tuple[bool, Any]]) -> None:
        for pending, (succeeded, value) in zip(group, outcomes, strict=True):
            if pending.future.done():
                continue
            if succeeded:
                pending.future.set_result(value)
            else:
                pending.future.set_exception(value)

    def _run_group(self, conn: sqlite3.Connection, group: list[_PendingWrite]) -> list[tuple[bool, Any]]:
        """On the writer thread: every write of `group` in one transaction, each in a savepoint."""
        outcomes: list[tuple[bool, Any]] = []
        self._hop.conn, self._hop.in_group = conn, True
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in group:
                try:
                    outcomes.append((True, _run_to_end(pending.operation(*pending.args))))
                except Exception as error:
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back (it does for some I/O and
                        # disk-full errors): the writes before this one are gone too.
                        return [(False, error)] * len(group)
                    outcomes.append((False, error))
            _finish(conn, commit=True)
        except Exception as error:
            # BEGIN or COMMIT failed: nothing of the group was written, whatever each write saw.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, error)] * len(group)
        finally:
            self._hop.conn, self._hop.in_group = None, False
        return outcomes

    async def put_object(self, user_id: str, write: ObjectWrite, expected_index: int, quota: Quota,
                         now_us: int) -> ObjectMeta:
        return await self._write_grouped(super().put_object, user_id, write, expected_index, quota, now_us)

    async def put_object_for_session(self, token_hash: bytes, now_us: int, admit: Callable[[Account], object],
                                     write: ObjectWrite, expected_index: int,
                                     quota: Quota) -> tuple[Account | None, ObjectMeta | None]:
        # The session is looked up inside the group's transaction, on the writer's thread: no
        # trip to a reader first, and the write sees the session as the look-up did.
        return await self._write_grouped(self._put_for_session_here, token_hash, now_us, admit, write,
                                         expected_index, quota)

    async def _put_for_session_here(self, token_hash: bytes, now_us: int, admit: Callable[[Account], object],
                                    write: ObjectWrite, expected_index: int,
                                    quota: Quota) -> tuple[Account | None, ObjectMeta | None]:
        account = await SqlStorage.account_for_session(self, token_hash, now_us)
        if account is None:
            return None, None
        admit(account)
        return account, await SqlStorage.put_object(self, account.user_id, write, expected_index, quota, now_us)

    async def get_object(self, user_id: str, type: ObjectType, id: str) -> StoredObject | None:
        return await self._in_one_hop(False, super().get_object, user_id, type, id)

    async def account_for_session(self, token_hash: bytes, now_us: int) -> Account | None:
        return await self._in_one_hop(False, super().account_for_session, token_hash, now_us)

    async def object_for_session(self, token_hash: bytes, now_us: int, type: ObjectType,
                                 id: str) -> tuple[Account | None, StoredObject | None]:
        return await self._in_one_hop(False, self._object_for_session_here, token_hash, now_us, type, id)

    async def _object_for_session_here(self, token_hash: bytes, now_us: int, type: ObjectType,
                                       id: str) -> tuple[Account | None, StoredObject | None]:
        # On a reader's thread already: the shared SQL code's look-ups, not this class's hops.
        account = await SqlStorage.account_for_session(self, token_hash, now_us)
        if account is None:
            return None, None
        return account, await SqlStorage.get_object(self, account.user_id, type, id)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Tx]:
        with faults.faults_as_unavailable(classify_fault):
            async with self._write_tx() as tx:
                yield tx

    @asynccontextmanager
    async def _read(self, snapshot: bool = False) -> AsyncIterator[Tx]:
        with faults.faults_as_unavailable(classify_fault):
            async with self._read_tx() as tx:
                yield tx

    @asynccontextmanager
    async def _write_tx(self) -> AsyncIterator[Tx]:
        conn = getattr(self._hop, "conn", None)
        if conn is not None and getattr(self._hop, "in_group", False):
            # One write of a group (`_run_group`): its own savepoint inside the group's transaction.
            conn.execute("SAVEPOINT one_write")
            try:
                yield _SqliteTx(conn, _at_once)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO one_write")
                    conn.execute("RELEASE one_write")
                raise
            conn.execute("RELEASE one_write")
            return
        if conn is not None:  # already on the writer thread, inside `_in_one_hop`
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(conn, _at_once)
            except BaseException:
                _finish(conn, commit=False)
                raise
            _finish(conn, commit=True)
            return
        if self._writer is None:
            raise not_open()
        conn = self._writer
        run = lambda call: self._on(self._writer_thread, call)  # noqa: E731
        async with self._writer_turn():
            # IMMEDIATE takes the write lock now, so no other process can write between our reads
            # and our writes; within this process the lock above already serialises writers.
            await run(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteTx(conn, run)
            except BaseException:
                # The single writer thread runs this after any statement still in flight.
                await run(lambda: _finish(conn, commit=False))
                raise
            await run(lambda: _finish(conn, commit=True))

    @asynccontextmanager
    async def _read_tx(self) -> AsyncIterator[Tx]:
        conn = getattr(self._hop, "conn", None)
        if conn is not None and getattr(self._hop, "in_group", False):
            # A read inside a write group's transaction (`_put_for_session_here`): it sees the
            # committed state and the group's writes so far, as a write of the group would.
            yield _SqliteTx(conn, _at_once)
            return
        if conn is not None:  # already on a reader thread, inside `_in_one_hop`
            conn.execute("BEGIN")
            try:
                yield _SqliteTx(conn, _at_once)
            finally:
                _finish(conn, commit=True)
            return
        if not self._all_readers:
            raise not_open()
        conn = await self._take_reader()
        run = lambda call: self._on(self._reader_threads, call)  # noqa: E731
        released = False

        def release(_: object = None) -> None:
            nonlocal released
            if not released:
                released = True
                self._readers.put_nowait(conn)

        try:
            # A read transaction: every statement in it sees the same committed state (WAL snapshot).
            await run(lambda: conn.execute("BEGIN"))
            yield _SqliteTx(conn, run)
        finally:
            # End the transaction before the connection goes back to the pool, even when this
            # task was cancelled while a statement was still running on a pool thread.
            future = asyncio.get_running_loop().run_in_executor(
                self._reader_threads, lambda: _finish(conn, commit=True))
            future.add_done_callback(release)
            await asyncio.shield(future)
