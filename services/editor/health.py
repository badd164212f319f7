"""The editor's health follows its database: NOT_SERVING while the database is gone, SERVING again
once it is back, so that Kubernetes (and the gateway's balancing) stop sending calls that could
only fail. A periodic probe reaches the database afresh each time (see `Storage.check`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.editor.storage import Storage

log = logging.getLogger(__name__)


class DatabaseHealth:
    def __init__(self, storage: Storage, *, interval_s: float,
                 set_serving: Callable[[bool], Awaitable[None]]) -> None:
        self._storage, self._interval_s, self._set_serving = storage, interval_s, set_serving
        self.serving = True

    async def probe(self) -> bool:
        """One probe; flips health when the answer changed. Returns whether the database answered."""
        try:
            async with asyncio.timeout(self._interval_s):
                await self._storage.check()
            healthy = True
        except Exception as error:  # any failure to reach the database is what this watches for
            healthy = False
            if self.serving:
                log.error("database probe failed, health NOT_SERVING: %s: %s", type(error).__name__, error)
        if healthy != self.serving:
            if healthy:
                log.info("database probe succeeded again, health SERVING")
            self.serving = healthy
            await self._set_serving(healthy)
        return healthy

    async def run(self) -> None:
        """Probe every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.probe()
