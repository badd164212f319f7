"""Direct access to the editor's database for the end-to-end tests: read everything the server
stores (to search it for plaintext), and act as a malicious server (rewrite ciphertexts)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from fabula_wire import ObjectType

TABLES = ("accounts", "sessions", "objects")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite:///")

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        if self.is_sqlite:
            conn = sqlite3.connect(self.sqlite_path, timeout=10)
            try:
                with conn:  # commits on success
                    yield conn
            finally:
                conn.close()
        else:
            with psycopg.connect(self.url, autocommit=False) as conn:
                yield conn

    def _sql(self, text: str) -> str:
        return text.replace("%s", "?") if self.is_sqlite else text

    def rows(self) -> list[tuple]:
        """Every row of every table the editor keeps."""
        found = []
        with self._connect() as conn:
            for table in TABLES:
                found.extend(conn.execute(f"SELECT * FROM {table}").fetchall())
        return found

    def stored_bytes(self) -> bytes:
        """Every stored value as bytes (text as UTF-8), and for SQLite the raw database files too
        (the main file, the write-ahead log and its index), which hold old page versions as well."""
        parts = []
        for row in self.rows():
            for value in row:
                if isinstance(value, (bytes, bytearray, memoryview)):
                    parts.append(bytes(value))
                else:
                    parts.append(str(value).encode("utf-8"))
        if self.is_sqlite:
            for suffix in ("", "-wal", "-shm"):
                file = Path(f"{self.sqlite_path}{suffix}")
                if file.exists():
                    parts.append(file.read_bytes())
        return b"\x00".join(parts)

    def sqlite_files(self) -> list[Path]:
        return [path for suffix in ("", "-wal") if (path := Path(f"{self.sqlite_path}{suffix}")).exists()]

    def object_data(self, user_id: str, type: ObjectType, id: str) -> bytes:
        with self._connect() as conn:
            row = conn.execute(self._sql("SELECT data FROM objects WHERE user_id = %s AND type = %s AND id = %s"),
                               (user_id, type.proto, id)).fetchone()
        assert row is not None, f"no stored {type.value}/{id}"
        return bytes(row[0])

    def set_object_data(self, user_id: str, type: ObjectType, id: str, data: bytes) -> None:
        """What a malicious server does: serve other bytes, consistently (size and sha256 too)."""
        with self._connect() as conn:
            cursor = conn.execute(
                self._sql("UPDATE objects SET data = %s, size = %s, sha256 = %s "
                          "WHERE user_id = %s AND type = %s AND id = %s"),
                (data, len(data), hashlib.sha256(data).digest(), user_id, type.proto, id))
            assert cursor.rowcount == 1

    def keystore(self, user_id: str) -> bytes:
        with self._connect() as conn:
            row = conn.execute(self._sql("SELECT keystore FROM accounts WHERE user_id = %s"), (user_id,)).fetchone()
        return bytes(row[0])

    def set_keystore(self, user_id: str, blob: bytes) -> None:
        with self._connect() as conn:
            cursor = conn.execute(self._sql("UPDATE accounts SET keystore = %s WHERE user_id = %s"), (blob, user_id))
            assert cursor.rowcount == 1
