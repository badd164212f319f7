"""Encrypted objects and the keystore: validated requests turned into conditional storage writes."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fabula_wire import ObjectType
from services.editor import metrics, validation
from services.editor.settings import EditorSettings
from services.editor.storage.base import ObjectWrite, Storage, not_found
from services.editor.types import Account, Clock, Keystore, ObjectMeta, Quota, StoredObject
from services.toolkit.errors import Conflict, InvalidArgument, ResourceExhausted

_TOKEN_VERSION = "v1"
T = TypeVar("T")


def encode_page_token(type: ObjectType, last_id: str) -> str:
    raw = f"{_TOKEN_VERSION}:{type.proto}:{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, type: ObjectType) -> str:
    """The id after which the page starts; the token must come from a listing of the same type."""
    if not token:
        return ""
    try:
        if len(token) > 256:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, kind, last_id = raw.split(":", 2)
        if version != _TOKEN_VERSION or not validation.ID_PATTERN.fullmatch(last_id):
            raise ValueError("not a page token")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token", token, "is not a token returned by ListObjects") from None
    if kind != str(type.proto):
        raise InvalidArgument("page_token", token, "belongs to a listing of another type")
    return last_id


@functools.cache
def _write_counters(type_value: str, operation: str) -> tuple[Any, Any]:
    # `labels()` checks its values and takes a lock on every call; the few (type, operation)
    # pairs are each found once, as toolkit/metrics.py does for the per-RPC metrics.
    return metrics.OBJECT_WRITES.labels(type_value, operation), metrics.BYTES_WRITTEN.labels(type_value)


class Objects:
    def __init__(self, storage: Storage, settings: EditorSettings, clock: Clock) -> None:
        self._storage, self._settings, self._clock = storage, settings, clock
        self.quota = Quota(max_objects=settings.max_objects_per_user, max_bytes=settings.max_bytes_per_user)

    def _write(self, type_value: int, id: str, data: bytes, expected_index: int) -> ObjectWrite:
        type_ = validation.object_type(type_value)
        validation.object_id(id)
        validation.blob(data, self._settings.max_object_bytes, "data")
        validation.change_index(expected_index)
        return ObjectWrite(type=type_, id=id, data=data, sha256=hashlib.sha256(data).digest())

    def valid_write(self, type_value: int, id: str, data: bytes, expected_index: int) -> ObjectWrite | None:
        """The write of a valid request; None when `put` would refuse it."""
        try:
            return self._write(type_value, id, data, expected_index)
        except InvalidArgument:
            return None

    async def put(self, user_id: str, type_value: int, id: str, data: bytes, expected_index: int) -> ObjectMeta:
        write = self._write(type_value, id, data, expected_index)
        meta = await self._refusals_counted(write, self._storage.put_object(
            user_id, write, expected_index, self.quota, self._clock()))
        self._count_written(write, expected_index)
        return meta

    async def put_for_session(self, token_hash: bytes, admit: Callable[[Account], object], write: ObjectWrite,
                              expected_index: int) -> tuple[Account | None, ObjectMeta | None]:
        """`write` (from `valid_write`) for the session's account, checked and written in one trip
        to the database; (None, None) when the session is unknown or expired. `admit` may refuse the
        account before anything is written."""
        now = self._clock()
        account, meta = await self._refusals_counted(write, self._storage.put_object_for_session(
            token_hash, now, admit, write, expected_index, self.quota))
        if meta is not None:
            self._count_written(write, expected_index)
        return account, meta

    @staticmethod
    async def _refusals_counted(write: ObjectWrite, storing: Awaitable[T]) -> T:
        try:
            return await storing
        except Conflict:
            metrics.STALE_WRITES.labels(write.type.value).inc()
            raise
        except ResourceExhausted as error:
            metrics.QUOTA_REFUSALS.labels(error.reason).inc()
            raise

    @staticmethod
    def _count_written(write: ObjectWrite, expected_index: int) -> None:
        writes, written_bytes = _write_counters(write.type.value, "create" if expected_index == 0 else "update")
        writes.inc()
        written_bytes.inc(len(write.data))

    async def get(self, user_id: str, type_value: int, id: str) -> StoredObject:
        type_ = validation.object_type(type_value)
        validation.object_id(id)
        return self.found(await self._storage.get_object(user_id, type_, id), type_, id)

    @staticmethod
    def valid_key(type_value: int, id: str) -> tuple[ObjectType, str] | None:
        """The object's type and id when both are valid; None when `get` would refuse them."""
        try:
            type_ = validation.object_type(type_value)
            validation.object_id(id)
        except InvalidArgument:
            return None
        return type_, id

    @staticmethod
    def found(stored: StoredObject | None, type_: ObjectType, id: str) -> StoredObject:
        if stored is None:
            raise not_found(f"{type_.value}/{id}")
        return stored

    async def list(self, user_id: str, type_value: int, page_size: int, page_token: str) -> tuple[list[ObjectMeta], str]:
        type_ = validation.object_type(type_value)
        size = validation.page_size(page_size, default=self._settings.default_page_size,
                                    maximum=self._settings.max_page_size)
        after = decode_page_token(page_token, type_)
        # One extra row tells whether another page follows, without a second query.
        rows = await self._storage.list_objects(user_id, type_, after, size + 1)
        page = rows[:size]
        next_token = encode_page_token(type_, page[-1].id) if len(rows) > size else ""
        return page, next_token

    async def delete(self, user_id: str, type_value: int, id: str, expected_index: int | None) -> None:
        type_ = validation.object_type(type_value)
        validation.object_id(id)
        if expected_index is not None:
            validation.change_index(expected_index)
        try:
            await self._storage.delete_object(user_id, type_, id, expected_index)
        except Conflict:
            metrics.STALE_WRITES.labels(type_.value).inc()
            raise
        metrics.OBJECT_WRITES.labels(type_.value, "delete").inc()

    async def get_keystore(self, user_id: str) -> Keystore:
        return await self._storage.get_keystore(user_id)

    async def put_keystore(self, user_id: str, data: bytes, expected_index: int) -> int:
        validation.blob(data, self._settings.max_keystore_bytes, "keystore")
        validation.change_index(expected_index)
        try:
            return await self._storage.put_keystore(user_id, data, expected_index, self._clock())
        except Conflict:
            metrics.STALE_WRITES.labels("keystore").inc()
            raise
