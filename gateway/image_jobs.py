"""The image generations each user has running through the AUTOMATIC1111 API, so that
/sdapi/v1/progress can show the current step and preview and /sdapi/v1/interrupt can stop them.

In memory, per gateway replica: a client polls the replica its generation runs on (A1111 itself
is one process), and the state of a generation lives only as long as its request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.calls import Cancellable


@dataclass
class ImageJob:
    call: Cancellable
    started: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))
    step: int = 0
    total_steps: int = 0
    preview: bytes | None = None
    interrupted: bool = False

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def eta_s(self) -> float:
        """Time left, extrapolated from the steps done so far."""
        elapsed = time.monotonic() - self.started
        return elapsed / self.progress - elapsed if self.progress else 0.0

    def interrupt(self) -> None:
        self.interrupted = True
        self.call.cancel()


class ImageJobs:
    def __init__(self) -> None:
        self._by_user: dict[str, list[ImageJob]] = {}

    @contextmanager
    def track(self, user_id: str, call: Cancellable) -> Iterator[ImageJob]:
        job = ImageJob(call)
        self._by_user.setdefault(user_id, []).append(job)
        try:
            yield job
        finally:
            jobs = self._by_user[user_id]
            jobs.remove(job)
            if not jobs:
                del self._by_user[user_id]

    def running(self, user_id: str) -> list[ImageJob]:
        return list(self._by_user.get(user_id, ()))

    def interrupt(self, user_id: str) -> int:
        jobs = self.running(user_id)
        for job in jobs:
            job.interrupt()
        return len(jobs)
