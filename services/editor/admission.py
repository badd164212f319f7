"""Bounded admission: work that costs memory, CPU or disk waits in a bounded line or is refused.

Refusing at once with RESOURCE_EXHAUSTED (and a retry delay) keeps a flood from starving the
calls already admitted: a login flood cannot hold real logins past their deadlines in an endless
Argon2id queue, and a handful of exports or imports cannot take every spool byte or database
connection from everyone else.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from services.editor import metrics
from services.toolkit.errors import ResourceExhausted


class BoundedQueue:
    """At most `running` holders at once and at most `waiting` more in line; beyond, refused."""

    def __init__(self, *, running: int, waiting: int, what: str, reason: str, retry_after_s: float = 1.0) -> None:
        self._slots = asyncio.Semaphore(running)
        self._max_waiting = waiting
        self._waiting = 0
        self._what, self._reason, self._retry_after_s = what, reason, retry_after_s

    @property
    def waiting(self) -> int:
        return self._waiting

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self._max_waiting:
            metrics.ADMISSION_REFUSALS.labels(self._reason).inc()
            raise ResourceExhausted(f"the {self._what} queue is full ({self._max_waiting} waiting); retry shortly",
                                    reason=self._reason, retry_after_s=self._retry_after_s)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


TRANSFERS_BUSY = "TRANSFERS_BUSY"
SPOOL_FULL = "TRANSFER_SPOOL_FULL"
# An export or import of a large account takes a while; asking again within a second is no use.
TRANSFER_RETRY_AFTER_S = 10.0


class TransferGate:
    """Caps exports and imports per account and in all, and the bytes their spools hold together.

    Everything is refused at once rather than queued: a transfer holds a stream open for as long as
    the client takes, so waiting in line would only move the pile-up into the gRPC server.
    """

    def __init__(self, *, max_running: int, max_per_user: int, spool_bytes: int) -> None:
        self._max_running, self._max_per_user, self._spool_bytes = max_running, max_per_user, spool_bytes
        self._per_user: Counter[str] = Counter()
        self._spooled = 0

    @property
    def running(self) -> int:
        return sum(self._per_user.values())

    @property
    def spooled_bytes(self) -> int:
        return self._spooled

    @contextmanager
    def admit(self, user_id: str) -> Iterator[SpoolBudget]:
        if self._per_user[user_id] >= self._max_per_user:
            metrics.ADMISSION_REFUSALS.labels(TRANSFERS_BUSY).inc()
            raise ResourceExhausted(f"this account already runs {self._max_per_user} export(s) or import(s); "
                                    "wait for it to finish", reason=TRANSFERS_BUSY,
                                    retry_after_s=TRANSFER_RETRY_AFTER_S)
        if self.running >= self._max_running:
            metrics.ADMISSION_REFUSALS.labels(TRANSFERS_BUSY).inc()
            raise ResourceExhausted(f"the editor already runs {self._max_running} exports and imports; retry later",
                                    reason=TRANSFERS_BUSY, retry_after_s=TRANSFER_RETRY_AFTER_S)
        self._per_user[user_id] += 1
        budget = SpoolBudget(self)
        try:
            yield budget
        finally:
            budget.release_all()
            self._per_user[user_id] -= 1
            if not self._per_user[user_id]:
                del self._per_user[user_id]

    def _reserve(self, size: int) -> None:
        if self._spooled + size > self._spool_bytes:
            metrics.ADMISSION_REFUSALS.labels(SPOOL_FULL).inc()
            raise ResourceExhausted(f"the transfer spool is full ({self._spool_bytes} bytes in use by exports and "
                                    "imports); retry later", reason=SPOOL_FULL, retry_after_s=TRANSFER_RETRY_AFTER_S)
        self._spooled += size

    def _release(self, size: int) -> None:
        self._spooled -= size


class SpoolBudget:
    """The spool bytes one transfer holds; given back when the transfer ends."""

    def __init__(self, gate: TransferGate) -> None:
        self._gate = gate
        self.held = 0

    def reserve(self, size: int) -> None:
        self._gate._reserve(size)
        self.held += size

    def release_all(self) -> None:
        self._gate._release(self.held)
        self.held = 0
