"""Export and import of a whole account's encrypted data as one archive (see archive.py).

Both directions pass through a spool (memory up to `SPOOL_IN_MEMORY_BYTES`, then a temporary
file) whose bytes count against the editor-wide `transfer_spool_bytes`, and both are admitted by
`TransferGate` (a cap per account and in all), refused at once when it is full.

Export snapshots the account into the spool first and only then streams it: the database
connection (and its snapshot transaction) is held while the archive is written at disk speed,
never while the client reads at its own pace, so slow downloads cannot pin every connection and
block everyone's calls. Paging through short transactions instead would hold nothing either, but
an account changed mid-export would yield an archive that matches no moment (a manifest, keystore
and objects from different times); the spool keeps the one consistent snapshot.

Import spools the incoming stream (bounded by `max_archive_bytes` and the spool budget),
validates all of it, then hands it to storage, which stages it in short transactions and applies
it in one (all or nothing) if the account's keystore change index is still the expected one.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO

from services.editor import archive, metrics, validation
from services.editor.admission import SpoolBudget, TransferGate
from services.editor.settings import EditorSettings
from services.editor.storage import faults
from services.editor.storage.base import Storage
from services.editor.types import Clock, ImportResult, Quota
from services.toolkit.errors import Conflict, FailedPrecondition, InvalidArgument, ResourceExhausted

# Archives stay in memory up to this size, then move to a temporary file.
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
EXPECTED_INDEX_FIELD = "expected_keystore_change_index"


def _no_driver_faults(_: BaseException) -> str | None:
    return None  # the spool's own faults are disk errors, which `faults` knows already


class Transfers:
    def __init__(self, storage: Storage, settings: EditorSettings, clock: Clock) -> None:
        self._storage, self._settings, self._clock = storage, settings, clock
        self._quota = Quota(max_objects=settings.max_objects_per_user, max_bytes=settings.max_bytes_per_user)
        self.gate = TransferGate(max_running=settings.max_concurrent_transfers,
                                 max_per_user=settings.max_transfers_per_user,
                                 spool_bytes=settings.transfer_spool_bytes)

    async def export(self, user_id: str) -> AsyncIterator[bytes]:
        """The account's archive, in chunks of about `export_chunk_bytes`."""
        chunk_bytes = self._settings.export_chunk_bytes
        with self.gate.admit(user_id) as budget, tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            size = await self._spool_export(user_id, spool, budget)
            spool.seek(0)
            while chunk := await asyncio.to_thread(spool.read, chunk_bytes):
                yield chunk
        metrics.ARCHIVE_BYTES.labels("export").inc(size)

    async def _spool_export(self, user_id: str, spool: IO[bytes], budget: SpoolBudget) -> int:
        """Write the account's archive into `spool` from one snapshot; returns its size."""
        now = self._clock()
        async with self._storage.export_snapshot(user_id) as snapshot:
            head = json.dumps(archive.manifest(snapshot.account, snapshot.keystore, snapshot.objects, now),
                              indent=1).encode()
            size = archive.archive_size(len(head), len(snapshot.keystore.data), [m.size for m in snapshot.objects])
            if size > self._settings.max_archive_bytes:
                raise FailedPrecondition(f"the account's archive would be {size} bytes, more than the "
                                         f"limit of {self._settings.max_archive_bytes}", reason="ARCHIVE_TOO_LARGE")
            budget.reserve(size)
            writer = archive.ArchiveWriter(mtime_s=now // 1_000_000)
            with faults.faults_as_unavailable(_no_driver_faults):
                writer.add(archive.MANIFEST, head)
                writer.add(archive.KEYSTORE, snapshot.keystore.data)
                for meta in snapshot.objects:
                    writer.add(archive.object_path(meta.type, meta.id), await snapshot.read(meta))
                    await asyncio.to_thread(spool.write, writer.take())
                writer.finish()
                await asyncio.to_thread(spool.write, writer.take())
        return size

    async def import_(self, user_id: str, expected_keystore_index: int | None,
                      chunks: AsyncIterable[bytes]) -> ImportResult:
        if expected_keystore_index is None:
            raise InvalidArgument(EXPECTED_INDEX_FIELD, "unset",
                                  "must be set in the first message (the keystore change index the import is based on)")
        validation.change_index(expected_keystore_index, EXPECTED_INDEX_FIELD)
        limit = self._settings.max_archive_bytes
        with self.gate.admit(user_id) as budget, tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            received = 0
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    raise InvalidArgument("archive", f"more than {limit} bytes",
                                          f"must be at most {limit} bytes", reason="ARCHIVE_TOO_LARGE")
                budget.reserve(len(chunk))
                with faults.faults_as_unavailable(_no_driver_faults):
                    await asyncio.to_thread(spool.write, chunk)
            if received == 0:
                raise InvalidArgument("archive", "0 bytes", "must not be empty")
            parsed = await asyncio.to_thread(
                archive.read_archive, spool, max_objects=self._settings.max_objects_per_user,
                max_object_bytes=self._settings.max_object_bytes, max_keystore_bytes=self._settings.max_keystore_bytes)
            try:
                result = await self._storage.import_objects(
                    user_id, parsed.objects, parsed.keystore, expected_keystore_index, self._quota, self._clock(),
                    batch_bytes=self._settings.import_batch_bytes)
            except ResourceExhausted as error:
                metrics.QUOTA_REFUSALS.labels(error.reason).inc()
                raise
            except Conflict:
                metrics.STALE_WRITES.labels("keystore").inc()
                raise
        metrics.ARCHIVE_BYTES.labels("import").inc(received)
        for item in parsed.objects:
            metrics.OBJECT_WRITES.labels(item.type.value, "import").inc()
        return result
