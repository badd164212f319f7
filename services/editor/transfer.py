"""Export and import of a whole account's encrypted data as one archive (see archive.py).

Export reads one consistent snapshot and streams it member by member, never holding more than one
object in memory. Import spools the incoming stream (bounded by `max_archive_bytes`) to a
temporary file, validates all of it, then stores everything in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterable, AsyncIterator

from services.editor import archive, metrics
from services.editor.settings import EditorSettings
from services.editor.storage.base import Storage
from services.editor.types import Clock, ImportResult, Quota
from services.toolkit.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

# Incoming archives stay in memory up to this size, then move to a temporary file.
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024


class Transfers:
    def __init__(self, storage: Storage, settings: EditorSettings, clock: Clock) -> None:
        self._storage, self._settings, self._clock = storage, settings, clock
        self._quota = Quota(max_objects=settings.max_objects_per_user, max_bytes=settings.max_bytes_per_user)

    async def export(self, user_id: str) -> AsyncIterator[bytes]:
        """The account's archive, in chunks of about `export_chunk_bytes`."""
        chunk_bytes = self._settings.export_chunk_bytes
        now = self._clock()
        async with self._storage.export_snapshot(user_id) as snapshot:
            head = json.dumps(archive.manifest(snapshot.account, snapshot.keystore, snapshot.objects, now),
                              indent=1).encode()
            size = archive.archive_size(len(head), len(snapshot.keystore.data), [m.size for m in snapshot.objects])
            if size > self._settings.max_archive_bytes:
                raise FailedPrecondition(f"the account's archive would be {size} bytes, more than the "
                                         f"limit of {self._settings.max_archive_bytes}", reason="ARCHIVE_TOO_LARGE")
            writer = archive.ArchiveWriter(mtime_s=now // 1_000_000)
            writer.add(archive.MANIFEST, head)
            writer.add(archive.KEYSTORE, snapshot.keystore.data)
            pending = bytearray(writer.take())
            for meta in snapshot.objects:
                writer.add(archive.object_path(meta.type, meta.id), await snapshot.read(meta))
                pending += writer.take()
                while len(pending) >= chunk_bytes:
                    yield bytes(pending[:chunk_bytes])
                    del pending[:chunk_bytes]
            writer.finish()
            pending += writer.take()
            for start in range(0, len(pending), chunk_bytes):
                yield bytes(pending[start:start + chunk_bytes])
        metrics.ARCHIVE_BYTES.labels("export").inc(size)

    async def import_(self, user_id: str, chunks: AsyncIterable[bytes]) -> ImportResult:
        limit = self._settings.max_archive_bytes
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            received = 0
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    raise InvalidArgument("archive", f"more than {limit} bytes",
                                          f"must be at most {limit} bytes", reason="ARCHIVE_TOO_LARGE")
                await asyncio.to_thread(spool.write, chunk)
            if received == 0:
                raise InvalidArgument("archive", "0 bytes", "must not be empty")
            parsed = await asyncio.to_thread(
                archive.read_archive, spool, max_objects=self._settings.max_objects_per_user,
                max_object_bytes=self._settings.max_object_bytes, max_keystore_bytes=self._settings.max_keystore_bytes)
            try:
                result = await self._storage.import_objects(user_id, parsed.objects, parsed.keystore, self._quota,
                                                            self._clock())
            except ResourceExhausted as error:
                metrics.QUOTA_REFUSALS.labels(error.reason).inc()
                raise
        metrics.ARCHIVE_BYTES.labels("import").inc(received)
        for item in parsed.objects:
            metrics.OBJECT_WRITES.labels(item.type.value, "import").inc()
        return result
