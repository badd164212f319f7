"""One worker thread per model running a domain loop over jobs submitted from asyncio.

The text scheduler and the image batcher share this shape: requests arrive on the event loop,
wait in a bounded queue, join a batch that one thread advances an iteration at a time (a decode
step, a denoising step), stream events back and leave when done or cancelled. `Worker` is that
shape; what one iteration does is the service's `DomainLoop`.

- **Capacity and the queue.** Each job has a weight (text: 1 sequence, image: its images) and the
  batch holds `capacity` of it; jobs join in arrival order at the start of an iteration while they
  fit, and a job heavier than the whole capacity runs alone rather than never. A job that would
  join at the next iteration is always accepted; beyond those, `max_queue` jobs may wait. One
  more is refused at once with RESOURCE_EXHAUSTED, reason `QUEUE_FULL` (not the generic
  RESOURCE_EXHAUSTED: a client can tell a full queue from a quota) and a retry-after from the
  domain, which can estimate when its batch has room. The message names the service and the model,
  since a process serves several.
- **Thread start.** The thread starts with the first job submitted, never in a constructor: the
  domain is then fully built before its thread can see it, no owner can forget to start it, and a
  model nobody asks for holds no thread (nor the OpenMP pool torch keeps for every thread that ran
  parallel work).
- **Events.** The domain emits events for a job and finally finishes or fails it; everything one
  iteration produced is handed to the event loop in one `loop.call_soon_threadsafe` after the
  iteration. Not one call per event: each call wakes the event loop's thread, which then waits
  for the GIL the worker holds in the middle of its iteration, and the worker for it; handed
  over together, they are delivered while the next iteration runs code that releases the GIL.
- **Cancellation.** `Handle.cancel()` (also on leaving the iteration early) frees a waiting job's
  queue slot at once and marks an admitted one for the domain, which drops it at its next
  iteration and finishes it.
- **Failure and stop.** An iteration that raises (a bug, out of memory) fails the jobs in the
  batch and the domain starts over with an empty one, so one bad step cannot wedge the service;
  waiting jobs were never touched and stay queued. `stop()` fails every job, waiting or running,
  with UNAVAILABLE after the current iteration: the server has already drained calls for its
  grace period, so what is left would outlive the process anyway.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from services.toolkit.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

JobT = TypeVar("JobT")
EventT = TypeVar("EventT")
ResultT = TypeVar("ResultT")

_STOP_JOIN_TIMEOUT_S = 30.0


class DomainLoop(Protocol[JobT]):
    """What a service's loop does; `Worker` calls these on its thread unless said otherwise."""

    def weight(self, job: JobT) -> int:
        """How much of the batch's capacity `job` takes (called on the event loop at submission)."""

    def admit(self, jobs: list[JobT]) -> None:
        """Take `jobs` into the batch; a job that cannot start is failed or finished here."""

    def iterate(self) -> None:
        """One iteration over the admitted jobs: drop the cancelled ones, advance the others, emit
        their events, finish those that are done."""

    def mark_cancelled(self, job: JobT) -> None:
        """Note that `job` is cancelled (called on any thread, with the worker's lock held: keep
        it to setting a flag); the next `iterate` drops it."""

    def withdraw(self, job: JobT) -> None:
        """`job` was cancelled before it joined the batch: finish it (and count it)."""

    def reset(self) -> None:
        """Forget every admitted job: the worker has failed them all (after an error, or on stop)."""

    def retry_after_s(self) -> float:
        """When a refused client should try again (called on the event loop, with the lock held)."""


@dataclass(frozen=True)
class QueueMetrics:
    """The queue's gauges for one model: waiting jobs, and jobs refused because it was full."""

    depth: Any  # a prometheus Gauge child
    rejected: Any  # a prometheus Counter child


class _State(enum.Enum):
    WAITING = "waiting"
    WITHDRAWN = "withdrawn"  # cancelled while waiting; the domain has not finished it yet
    ADMITTED = "admitted"
    DONE = "done"


@dataclass(frozen=True)
class _End(Generic[ResultT]):
    result: ResultT | None


class Handle(Generic[JobT, EventT, ResultT]):
    """The asyncio side of one job: iterate it for its events; `result` is set when it finished.

    Leaving the iteration early (client gone, deadline) cancels the job. A failed job raises its
    error from the iteration."""

    def __init__(self, worker: Worker[JobT, EventT, ResultT], job: JobT, loop: asyncio.AbstractEventLoop,
                 weight: int) -> None:
        self.job = job
        self.result: ResultT | None = None
        self.finished = False  # the stream ended, with a result or an error
        self.queue_position = 0  # jobs waiting or in the batch when this one was queued
        self._worker = worker
        self._loop = loop
        self._weight = weight
        self._state = _State.WAITING
        self._cancelled = False
        self._events: asyncio.Queue[EventT | _End[ResultT] | BaseException] = asyncio.Queue()

    def cancel(self) -> None:
        self._worker._cancel(self)

    async def __aiter__(self) -> AsyncIterator[EventT]:
        try:
            while True:
                item = await self._events.get()
                if isinstance(item, _End):
                    self.finished = True
                    self.result = item.result
                    return
                if isinstance(item, BaseException):
                    self.finished = True
                    raise item
                yield item
        finally:
            if not self.finished:
                self.cancel()


class Worker(Generic[JobT, EventT, ResultT]):
    """The thread, the bounded queue and the hand-over of events for one model's domain loop."""

    def __init__(self, domain: DomainLoop[JobT], *, service: str, model: str, capacity: int, max_queue: int,
                 metrics: QueueMetrics | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_queue < 0:
            raise ValueError(f"max_queue must not be negative, got {max_queue}")
        self.service = service
        self.model = model
        self.capacity = capacity
        self.max_queue = max_queue
        self._domain = domain
        self._metrics = metrics
        self._cond = threading.Condition()
        # Guarded by _cond:
        self._waiting: collections.deque[Handle[JobT, EventT, ResultT]] = collections.deque()
        self._withdrawn: list[Handle[JobT, EventT, ResultT]] = []
        self._handles: dict[int, Handle[JobT, EventT, ResultT]] = {}  # every unfinished job, by id(job)
        self._load = 0  # the admitted jobs' weight
        self._active = 0  # admitted jobs not finished
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Only the worker thread touches the outbox: this iteration's events, see _flush.
        self._outbox: list[tuple[Handle[JobT, EventT, ResultT], EventT | _End[ResultT] | BaseException]] = []

    # --- the event loop's side -----------------------------------------------------------------

    def submit(self, job: JobT) -> Handle[JobT, EventT, ResultT]:
        """Queue `job` (call on the event loop that will read its events); RESOURCE_EXHAUSTED at
        once when the queue is full, UNAVAILABLE once stopped."""
        handle = Handle(self, job, asyncio.get_running_loop(), self._domain.weight(job))
        with self._cond:
            if self._stopping:
                raise Unavailable(f"the {self.service} service is shutting down")
            if self._beyond_batch_locked(handle) > self.max_queue:
                if self._metrics is not None:
                    self._metrics.rejected.inc()
                raise ResourceExhausted(
                    f"the {self.service} queue of model {self.model} is full ({len(self._waiting)} waiting); "
                    "retry shortly", retry_after_s=self._domain.retry_after_s(), reason="QUEUE_FULL")
            handle.queue_position = len(self._waiting) + self._active
            self._waiting.append(handle)
            self._handles[id(job)] = handle
            self._set_depth_locked()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self.service}-{self.model}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def stop(self) -> None:
        """Fail every job with UNAVAILABLE after the current iteration and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=_STOP_JOIN_TIMEOUT_S)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting to join the batch."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Jobs in the batch."""
        return self._active

    @property
    def idle(self) -> bool:
        """Nothing waiting, nothing in the batch."""
        with self._cond:
            return not self._waiting and not self._withdrawn and not self._active

    def _cancel(self, handle: Handle[JobT, EventT, ResultT]) -> None:
        with self._cond:
            if handle._cancelled or handle._state is _State.DONE:
                return
            handle._cancelled = True
            self._domain.mark_cancelled(handle.job)
            if handle._state is _State.WAITING:
                self._waiting.remove(handle)
                handle._state = _State.WITHDRAWN
                self._withdrawn.append(handle)
                self._set_depth_locked()
            self._cond.notify()

    def _beyond_batch_locked(self, new: Handle[JobT, EventT, ResultT]) -> int:
        """How many of the waiting jobs and `new` would not join the batch at the next iteration."""
        load, joining = self._load, 0
        for handle in itertools.chain(self._waiting, (new,)):
            if load and load + handle._weight > self.capacity:
                break
            load += handle._weight
            joining += 1
        return len(self._waiting) + 1 - joining

    def _set_depth_locked(self) -> None:
        if self._metrics is not None:
            self._metrics.depth.set(len(self._waiting))

    # --- for the domain, on the worker thread --------------------------------------------------

    def emit(self, job: JobT, event: EventT) -> None:
        """Send `event` to the job's reader (after this iteration)."""
        self._outbox.append((self._handles[id(job)], event))

    def finish(self, job: JobT, result: ResultT | None = None) -> None:
        """End the job's stream with `result`; its place in the batch is free."""
        self._end(job, _End(result))

    def fail(self, job: JobT, error: BaseException) -> None:
        """End the job's stream with `error`, raised to its reader; its place in the batch is free."""
        self._end(job, error)

    def _end(self, job: JobT, item: _End[ResultT] | BaseException) -> None:
        with self._cond:
            handle = self._handles.pop(id(job))
            if handle._state is _State.ADMITTED:
                self._load -= handle._weight
                self._active -= 1
            handle._state = _State.DONE
        self._outbox.append((handle, item))

    # --- the worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._withdrawn or self._active):
                    self._cond.wait()
                if self._stopping:
                    break
                withdrawn, self._withdrawn = self._withdrawn, []
                admitted = self._admit_locked()
            try:
                for handle in withdrawn:
                    self._domain.withdraw(handle.job)
                if admitted:
                    self._domain.admit(admitted)
                if self._active:
                    self._domain.iterate()
            except Exception as error:
                log.exception("the %s loop of model %s failed; failing the jobs in its batch", self.service,
                              self.model)
                self._fail_all(RuntimeError(f"{self.service} generation failed: {type(error).__name__}"),
                               waiting_too=False)
            self._flush()
        self._fail_all(Unavailable(f"the {self.service} service is shutting down"), waiting_too=True)
        self._flush()

    def _admit_locked(self) -> list[JobT]:
        jobs = []
        while self._waiting:
            handle = self._waiting[0]
            if self._load and self._load + handle._weight > self.capacity:
                break
            self._waiting.popleft()
            handle._state = _State.ADMITTED
            self._load += handle._weight
            self._active += 1
            jobs.append(handle.job)
        self._set_depth_locked()
        return jobs

    def _fail_all(self, error: BaseException, *, waiting_too: bool) -> None:
        """Fail the jobs in the batch and the cancelled ones not yet finished (their reader, if
        still there, must not wait forever), and with `waiting_too` the waiting ones."""
        states = {_State.ADMITTED, _State.WITHDRAWN} | ({_State.WAITING} if waiting_too else set())
        with self._cond:
            jobs = [handle.job for handle in self._handles.values() if handle._state in states]
            self._withdrawn.clear()
            if waiting_too:
                self._waiting.clear()
                self._set_depth_locked()
        for job in jobs:
            self.fail(job, error)
        self._domain.reset()

    def _flush(self) -> None:
        """Hand this iteration's events to their event loops: one call per loop (module docstring)."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Handle, Any]]] = {}
        for handle, item in self._outbox:
            by_loop.setdefault(handle._loop, []).append((handle, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop is closed: nobody is left to read its events
                log.debug("dropped %d events for a closed event loop", len(items))


def _deliver(items: list[tuple[Handle, Any]]) -> None:
    """On the event loop: queue each event for its handle's reader."""
    for handle, item in items:
        handle._events.put_nowait(item)
