"""One worker thread per model running a domain loop over jobs submitted from asyncio.

The text scheduler and the image batcher share this shape: requests arrive on the event loop,
wait in a bounded queue, join a batch that one thread advances an iteration at a time (a decode
step, a denoising step), stream events back and leave when done or cancelled. `Worker` is that
shape; what one iteration does is the service's `DomainLoop`.

- **Capacity and the queue.** Each job has a weight (text: 1 sequence, image: its images) and the
  batch holds `capacity` of it; jobs join at the start of an iteration while they fit, and a job
  heavier than the whole capacity runs alone rather than never. A job that would join at the next
  iteration is always accepted; beyond those, `max_queue` jobs may wait. One more is refused at
  once with RESOURCE_EXHAUSTED, reason `QUEUE_FULL` (not the generic RESOURCE_EXHAUSTED: a client
  can tell a full queue from a quota) and a retry-after from the domain, which can estimate when
  its batch has room. The message names the service and the model, since a process serves several.
- **Fairness across users.** Every job has an owner (the verified caller's user id). Waiting jobs
  join in round robin across owners, each owner's in arrival order: the owner whose job joins goes
  to the back of the turn, so a user with many jobs waiting gets one place in the batch for every
  one each other waiting user gets, not one per job. With `max_per_owner`, an owner's unfinished
  jobs (waiting or running) are capped: one more is refused with RESOURCE_EXHAUSTED, reason
  `USER_LIMIT`, while other users are still admitted, so no single account can fill the queue.
  Jobs without an owner ("": no verified caller, an in-process server without a caller check) take
  turns as one owner, with no cap.
- **Reservations.** `reserve()` makes every check `submit()` makes and holds the place (in the
  owner's count and the queue's) until `Reservation.submit(job)` turns it into a job or it is
  released: a service whose job takes costly preparation (decoding an uploaded image) refuses a
  request it has no room for before paying for it. A held place counts as waiting beyond the batch.
- **CPU priority.** With `nice`, the thread lowers its own CPU priority when it starts (Linux
  keeps a nice value per thread, and the intra-op threads torch starts from it inherit it). The
  image service runs its denoising thread at nice 10: on a machine it shares with the other
  services, their request handling and the text service's decode loop then take a core from it at
  once instead of waiting out its time slice (docs/architecture.md, "What one user's flood costs
  another"). It only matters when the cores are contended.
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
import os
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from services.toolkit.errors import ResourceExhausted, Unavailable

ANONYMOUS = ""

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
                 weight: int, owner: str) -> None:
        self.job = job
        self.owner = owner
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


class Reservation(Generic[JobT, EventT, ResultT]):
    """A place held in a worker's queue for one job of `owner`; use it as a context manager, which
    releases the place unless `submit` used it."""

    def __init__(self, worker: Worker[JobT, EventT, ResultT], owner: str) -> None:
        self.owner = owner
        self._worker = worker
        self._held = True

    def submit(self, job: JobT) -> Handle[JobT, EventT, ResultT]:
        """Queue `job` in the held place (UNAVAILABLE if the worker stopped meanwhile)."""
        if not self._held:
            raise RuntimeError("this reservation was already used or released")
        self._held = False
        return self._worker._submit_reserved(job, self.owner)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._worker._release(self.owner)

    def __enter__(self) -> Reservation[JobT, EventT, ResultT]:
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()


class Worker(Generic[JobT, EventT, ResultT]):
    """The thread, the bounded queue and the hand-over of events for one model's domain loop."""

    def __init__(self, domain: DomainLoop[JobT], *, service: str, model: str, capacity: int, max_queue: int,
                 max_per_owner: int | None = None, metrics: QueueMetrics | None = None, nice: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_queue < 0:
            raise ValueError(f"max_queue must not be negative, got {max_queue}")
        if max_per_owner is not None and max_per_owner < 1:
            raise ValueError(f"max_per_owner must be at least 1, got {max_per_owner}")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be from 0 to 19, got {nice}")
        self.service = service
        self.model = model
        self.capacity = capacity
        self.max_queue = max_queue
        self.max_per_owner = max_per_owner
        self.nice = nice
        self._domain = domain
        self._metrics = metrics
        self._cond = threading.Condition()
        # Guarded by _cond:
        # The waiting jobs: each owner's in arrival order, and the owners in turn order.
        self._queues: dict[str, collections.deque[Handle[JobT, EventT, ResultT]]] = {}
        self._turns: collections.deque[str] = collections.deque()
        self._waiting = 0
        self._owned: collections.Counter[str] = collections.Counter()  # each owner's unfinished jobs
        self._reserved = 0  # places held by reservations not yet submitted
        self._withdrawn: list[Handle[JobT, EventT, ResultT]] = []
        self._handles: dict[int, Handle[JobT, EventT, ResultT]] = {}  # every unfinished job, by id(job)
        self._load = 0  # the admitted jobs' weight
        self._active = 0  # admitted jobs not finished
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Only the worker thread touches the outbox: this iteration's events, see _flush.
        self._outbox: list[tuple[Handle[JobT, EventT, ResultT], EventT | _End[ResultT] | BaseException]] = []

    # --- the event loop's side -----------------------------------------------------------------

    def submit(self, job: JobT, owner: str = ANONYMOUS) -> Handle[JobT, EventT, ResultT]:
        """Queue `job` for `owner` (call on the event loop that will read its events);
        RESOURCE_EXHAUSTED at once when the owner is at its cap or the queue is full, UNAVAILABLE
        once stopped."""
        return self.reserve(owner, self._domain.weight(job)).submit(job)

    def reserve(self, owner: str = ANONYMOUS, weight: int = 1) -> Reservation[JobT, EventT, ResultT]:
        """Hold a place for a job of `owner` weighing about `weight`, refusing as `submit` would."""
        probe: Handle[JobT, EventT, ResultT] = Handle(self, None, asyncio.get_running_loop(),  # type: ignore[arg-type]
                                                      weight, owner)
        with self._cond:
            if self._stopping:
                raise Unavailable(f"the {self.service} service is shutting down")
            if self.max_per_owner is not None and owner != ANONYMOUS and self._owned[owner] >= self.max_per_owner:
                self._count_rejection()
                raise ResourceExhausted(
                    f"at most {self.max_per_owner} {self.service} generations per user run or wait at once; "
                    "retry when one has finished", retry_after_s=self._domain.retry_after_s(), reason="USER_LIMIT")
            if self._beyond_batch_locked(probe) > self.max_queue:
                self._count_rejection()
                raise ResourceExhausted(
                    f"the {self.service} queue of model {self.model} is full ({self._waiting} waiting); "
                    "retry shortly", retry_after_s=self._domain.retry_after_s(), reason="QUEUE_FULL")
            self._owned[owner] += 1
            self._reserved += 1
        return Reservation(self, owner)

    def _release(self, owner: str) -> None:
        with self._cond:
            self._reserved -= 1
            self._disown_locked(owner)

    def _disown_locked(self, owner: str) -> None:
        self._owned[owner] -= 1
        if not self._owned[owner]:
            del self._owned[owner]

    def _submit_reserved(self, job: JobT, owner: str) -> Handle[JobT, EventT, ResultT]:
        handle = Handle(self, job, asyncio.get_running_loop(), self._domain.weight(job), owner)
        with self._cond:
            self._reserved -= 1
            if self._stopping:
                self._disown_locked(owner)
                raise Unavailable(f"the {self.service} service is shutting down")
            handle.queue_position = self._waiting + self._active
            self._enqueue_locked(handle)
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
        return self._waiting

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
                self._dequeue_locked(handle)
                handle._state = _State.WITHDRAWN
                self._withdrawn.append(handle)
                self._set_depth_locked()
            self._cond.notify()

    def _count_rejection(self) -> None:
        if self._metrics is not None:
            self._metrics.rejected.inc()

    def _enqueue_locked(self, handle: Handle[JobT, EventT, ResultT]) -> None:
        queue = self._queues.get(handle.owner)
        if queue is None:
            queue = self._queues[handle.owner] = collections.deque()
            self._turns.append(handle.owner)
        queue.append(handle)
        self._waiting += 1

    def _dequeue_locked(self, handle: Handle[JobT, EventT, ResultT]) -> None:
        """Take a waiting job out of its owner's queue (it joined the batch, or was cancelled)."""
        queue = self._queues[handle.owner]
        if queue[0] is handle:
            queue.popleft()
        else:
            queue.remove(handle)
        self._waiting -= 1
        if not queue:
            del self._queues[handle.owner]
            self._turns.remove(handle.owner)

    def _fair_order_locked(self, new: Handle[JobT, EventT, ResultT] | None = None
                           ) -> Iterator[Handle[JobT, EventT, ResultT]]:
        """The waiting jobs (and `new`, as if queued) in the order they would join the batch if
        it had room for all: each owner's first job in turn order, then each one's second, ..."""
        queues: list[Iterable[Handle[JobT, EventT, ResultT]]] = [self._queues[owner] for owner in self._turns]
        if new is not None:
            if new.owner in self._queues:
                index = list(self._turns).index(new.owner)
                queues[index] = itertools.chain(queues[index], (new,))
            else:
                queues.append((new,))
        for round_ in itertools.zip_longest(*queues):
            yield from (handle for handle in round_ if handle is not None)

    def _beyond_batch_locked(self, new: Handle[JobT, EventT, ResultT]) -> int:
        """How many of the waiting jobs and `new` would not join the batch at the next iteration."""
        load, joining = self._load, 0
        for handle in self._fair_order_locked(new):
            if load and load + handle._weight > self.capacity:
                break
            load += handle._weight
            joining += 1
        return self._waiting + 1 - joining + self._reserved

    def _set_depth_locked(self) -> None:
        if self._metrics is not None:
            self._metrics.depth.set(self._waiting)

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
            self._disown_locked(handle.owner)
            if handle._state is _State.ADMITTED:
                self._load -= handle._weight
                self._active -= 1
            handle._state = _State.DONE
        self._outbox.append((handle, item))

    # --- the worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        if self.nice:
            _lower_thread_priority(self.nice, f"the {self.service} worker of model {self.model}")
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
        """The waiting jobs that join now, in round robin across owners (module docstring)."""
        jobs = []
        while self._turns:
            owner = self._turns[0]
            handle = self._queues[owner][0]
            if self._load and self._load + handle._weight > self.capacity:
                break
            self._dequeue_locked(handle)
            if owner in self._queues:  # more of its jobs wait: its next turn comes after the others'
                self._turns.rotate(-1)
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
                self._queues.clear()
                self._turns.clear()
                self._waiting = 0
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


def _lower_thread_priority(nice: int, what: str) -> None:
    """Raise the calling thread's nice value by `nice` (Linux: per thread; lowering one's own
    priority needs no privilege). Where a thread has no nice value of its own, say so and go on."""
    try:
        thread_id = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread_id, os.getpriority(os.PRIO_PROCESS, thread_id) + nice)
    except (AttributeError, OSError) as error:  # no setpriority, or no per-thread nice value
        log.warning("%s runs at its normal CPU priority: nice %d could not be set (%s)", what, nice, error)


def _deliver(items: list[tuple[Handle, Any]]) -> None:
    """On the event loop: queue each event for its handle's reader."""
    for handle, item in items:
        handle._events.put_nowait(item)
