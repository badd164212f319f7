"""The shared worker thread, queue and handle, driven by a tiny real domain loop that counts."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
from dataclasses import dataclass

import pytest

from services.toolkit.errors import ResourceExhausted, Unavailable
from services.toolkit.worker import Handle, Worker

_names = itertools.count()


@dataclass(eq=False)
class Count:
    """A job: emit the numbers 1..upto; its result is their sum."""

    upto: int
    weight: int = 1
    sent: int = 0
    cancelled: bool = False


class Counting:
    """The domain loop: every iteration, each job in the batch emits its next `per_iteration`
    numbers and finishes once it reached `upto`. With `gated`, each iteration first takes a permit
    from `gate`, so a test decides how many iterations run."""

    def __init__(self, *, gated: bool = False, per_iteration: int = 1, fail_on_iteration: int = 0) -> None:
        self.gate = threading.Semaphore(0) if gated else None
        self.per_iteration = per_iteration
        self.fail_on_iteration = fail_on_iteration
        self.batch: list[Count] = []
        self.admitted: list[Count] = []  # every job that joined, in order
        self.iterations = 0
        self.withdrawn: list[Count] = []
        self.resets = 0
        self.worker: Worker[Count, int, int]

    def weight(self, job: Count) -> int:
        return job.weight

    def admit(self, jobs: list[Count]) -> None:
        self.batch.extend(jobs)
        self.admitted.extend(jobs)

    def iterate(self) -> None:
        if self.gate is not None and not self.gate.acquire(timeout=30):
            raise TimeoutError("the test never let this iteration run")
        self.iterations += 1
        if self.iterations == self.fail_on_iteration:
            raise ValueError("a bug in the domain loop")
        for job in list(self.batch):
            if job.cancelled:
                self.batch.remove(job)
                self.worker.finish(job, None)
                continue
            for _ in range(self.per_iteration):
                job.sent += 1
                self.worker.emit(job, job.sent)
                if job.sent == job.upto:
                    self.batch.remove(job)
                    self.worker.finish(job, job.upto * (job.upto + 1) // 2)
                    break

    def mark_cancelled(self, job: Count) -> None:
        job.cancelled = True

    def withdraw(self, job: Count) -> None:
        self.withdrawn.append(job)
        self.worker.finish(job, None)

    def reset(self) -> None:
        self.resets += 1
        self.batch.clear()

    def retry_after_s(self) -> float:
        return 2.5


@pytest.fixture
def make():
    made: list[tuple[Counting, Worker]] = []

    def make(*, capacity: int = 4, max_queue: int = 4, max_per_owner: int | None = None,
             **options) -> tuple[Counting, Worker[Count, int, int]]:
        domain = Counting(**options)
        domain.worker = Worker(domain, service="test", model=f"m{next(_names)}", capacity=capacity,
                               max_queue=max_queue, max_per_owner=max_per_owner)
        made.append((domain, domain.worker))
        return domain, domain.worker

    yield make
    for domain, worker in made:
        if domain.gate is not None:
            domain.gate.release(1_000_000)
        worker.stop()


async def until(predicate, what: str) -> None:
    for _ in range(6000):  # a guard against hanging, not a speed check
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


async def collect(handle: Handle) -> list[int]:
    return [event async for event in handle]


def threads_named(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


async def test_events_arrive_in_order_then_the_result(make) -> None:
    _, worker = make(per_iteration=2)
    handles = [worker.submit(Count(upto)) for upto in (5, 1, 8)]
    assert [await collect(handle) for handle in handles] == [[1, 2, 3, 4, 5], [1], list(range(1, 9))]
    assert [handle.result for handle in handles] == [15, 1, 36]
    assert all(handle.finished for handle in handles)
    await until(lambda: worker.idle, "idle")


async def test_a_full_queue_is_refused_at_once_with_a_retry_after(make) -> None:
    domain, worker = make(capacity=1, max_queue=1, gated=True)
    running = worker.submit(Count(3))
    await until(lambda: worker.active == 1, "the first job joined the batch")
    waiting = worker.submit(Count(2))
    assert (worker.queue_depth, waiting.queue_position) == (1, 1)
    with pytest.raises(ResourceExhausted) as refused:
        worker.submit(Count(2))
    assert refused.value.reason == "QUEUE_FULL"
    assert refused.value.retry_after_s == 2.5
    assert worker.model in refused.value.message and "(1 waiting)" in refused.value.message
    domain.gate.release(1_000_000)
    assert await collect(running) == [1, 2, 3] and await collect(waiting) == [1, 2]


async def test_a_job_that_joins_at_the_next_iteration_is_never_refused(make) -> None:
    domain, worker = make(capacity=4, max_queue=0, gated=True)
    first = worker.submit(Count(2, weight=2))
    await until(lambda: worker.active == 1, "the first job joined the batch")
    fits = worker.submit(Count(2, weight=2))  # 2 + 2 fits a capacity of 4
    with pytest.raises(ResourceExhausted):
        worker.submit(Count(2, weight=1))  # behind the one that fits, over the capacity, no queue
    domain.gate.release(1_000_000)
    assert await collect(first) == [1, 2] and await collect(fits) == [1, 2]


async def test_a_job_heavier_than_the_batch_runs_alone(make) -> None:
    _, worker = make(capacity=2, max_queue=0)
    assert await collect(worker.submit(Count(3, weight=5))) == [1, 2, 3]


async def test_cancelling_a_waiting_job_frees_its_queue_slot_at_once(make) -> None:
    domain, worker = make(capacity=1, max_queue=1, gated=True)
    running = worker.submit(Count(2))
    await until(lambda: worker.active == 1, "the first job joined the batch")
    waiting = worker.submit(Count(2))
    waiting.cancel()
    assert worker.queue_depth == 0
    taking_its_place = worker.submit(Count(1))  # no longer refused
    domain.gate.release(1_000_000)
    assert await collect(waiting) == [] and waiting.result is None
    assert domain.withdrawn == [waiting.job]
    assert await collect(running) == [1, 2] and await collect(taking_its_place) == [1]


async def test_cancelling_a_running_job_frees_its_batch_slot(make) -> None:
    domain, worker = make(capacity=1, max_queue=1)
    running = worker.submit(Count(10**9))
    events = aiter(running)
    assert await anext(events) == 1
    await events.aclose()  # leaving the iteration early cancels the job
    await until(lambda: worker.active == 0, "the cancelled job left the batch")
    assert running.job.cancelled and not domain.batch
    assert await collect(worker.submit(Count(2))) == [1, 2]


def test_each_iteration_reaches_the_event_loop_in_one_call() -> None:
    """Not one `call_soon_threadsafe` per event: each would wake the event loop in the middle of
    the worker's iteration to fight for the GIL."""
    calls: list[object] = []

    class CountingLoop(asyncio.SelectorEventLoop):
        def call_soon_threadsafe(self, callback, *args, context=None):
            calls.append(callback)
            return super().call_soon_threadsafe(callback, *args, context=context)

    async def scenario() -> tuple[int, int]:
        domain = Counting(per_iteration=3)
        domain.worker = Worker(domain, service="test", model=f"m{next(_names)}", capacity=4, max_queue=4)
        try:
            handles = [domain.worker.submit(Count(12)) for _ in range(3)]
            events = [await collect(handle) for handle in handles]
        finally:
            domain.worker.stop()
        assert events == [list(range(1, 13))] * 3
        return sum(map(len, events)), domain.iterations

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        events, iterations = runner.run(scenario())
        assert len(calls) == iterations < events


async def test_an_iteration_that_raises_fails_the_batch_and_the_queue_goes_on(make) -> None:
    domain, worker = make(capacity=1, max_queue=1, gated=True, fail_on_iteration=2)
    broken = worker.submit(Count(5))
    await until(lambda: worker.active == 1, "the first job joined the batch")
    waiting = worker.submit(Count(2))
    domain.gate.release(1_000_000)
    with pytest.raises(RuntimeError, match="test generation failed: ValueError"):
        await collect(broken)
    assert broken.finished and domain.resets == 1
    assert await collect(waiting) == [1, 2] and waiting.result == 3


async def test_stop_fails_every_job_and_ends_the_thread(make) -> None:
    domain, worker = make(capacity=1, max_queue=1, gated=True)
    running = worker.submit(Count(10**9))
    await until(lambda: worker.active == 1, "the first job joined the batch")
    waiting = worker.submit(Count(2))
    domain.gate.release(1_000_000)
    await asyncio.to_thread(worker.stop)
    for handle in (running, waiting):
        with pytest.raises(Unavailable, match="the test service is shutting down"):
            await collect(handle)
    assert not threads_named(f"test-{worker.model}") and worker.idle
    with pytest.raises(Unavailable):
        worker.submit(Count(1))


async def test_the_thread_starts_with_the_first_job(make) -> None:
    _, worker = make()
    name = f"test-{worker.model}"
    assert not threads_named(name)
    worker.stop()  # stopping a worker that never ran is fine
    _, worker = make()
    name = f"test-{worker.model}"
    assert not threads_named(name)
    assert await collect(worker.submit(Count(1))) == [1]
    assert len(threads_named(name)) == 1
    assert await collect(worker.submit(Count(1))) == [1]
    assert len(threads_named(name)) == 1


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Worker(Counting(), service="test", model="m", capacity=0, max_queue=1)
    with pytest.raises(ValueError, match="max_queue"):
        Worker(Counting(), service="test", model="m", capacity=1, max_queue=-1)


async def test_waiting_jobs_join_in_round_robin_across_owners(make) -> None:
    domain, worker = make(capacity=1, max_queue=10, gated=True)
    blocker = worker.submit(Count(1), owner="x")
    await until(lambda: worker.active == 1, "the first job joined")
    # "a" queues three jobs before anyone else: they must not all go first.
    jobs = {name: Count(1) for name in ("a1", "a2", "a3", "b1", "b2", "c1")}
    handles = [worker.submit(jobs[name], owner=name[0]) for name in jobs]
    domain.gate.release(100)
    for handle in [blocker, *handles]:
        await collect(handle)
    names = {id(job): name for name, job in jobs.items()}
    assert [names[id(job)] for job in domain.admitted[1:]] == ["a1", "b1", "c1", "a2", "b2", "a3"]


async def test_an_owner_at_its_cap_is_refused_while_another_is_admitted(make) -> None:
    domain, worker = make(capacity=1, max_queue=10, max_per_owner=2, gated=True)
    first, second = worker.submit(Count(1), owner="a"), worker.submit(Count(1), owner="a")
    with pytest.raises(ResourceExhausted) as refused:
        worker.submit(Count(1), owner="a")
    assert refused.value.reason == "USER_LIMIT"
    assert refused.value.retry_after_s == 2.5
    other = worker.submit(Count(1), owner="b")
    await until(lambda: worker.active == 1, "a's first job joined")
    assert worker.queue_depth == 2  # a's second and b's
    domain.gate.release(1)
    await collect(first)
    # One of a's jobs finished: a may queue another.
    third = worker.submit(Count(1), owner="a")
    domain.gate.release(100)
    for handle in (second, other, third):
        assert await collect(handle) == [1]


async def test_a_cancelled_job_no_longer_counts_against_its_owner(make) -> None:
    domain, worker = make(capacity=1, max_queue=10, max_per_owner=2, gated=True)
    worker.submit(Count(5), owner="a")
    waiting = worker.submit(Count(1), owner="a")
    waiting.cancel()
    domain.gate.release(1)  # the worker withdraws it after this iteration
    await until(lambda: waiting.job in domain.withdrawn, "the cancelled job was withdrawn")
    worker.submit(Count(1), owner="a")  # not refused


async def test_jobs_without_an_owner_have_no_cap(make) -> None:
    _, worker = make(capacity=1, max_queue=10, max_per_owner=1, gated=True)
    for _ in range(3):
        worker.submit(Count(1))


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_per_owner"):
        Worker(Counting(), service="test", model="m", capacity=1, max_queue=1, max_per_owner=0)


async def test_a_reservation_holds_its_place_until_released(make) -> None:
    domain, worker = make(capacity=1, max_queue=1, max_per_owner=2, gated=True)
    worker.submit(Count(5), owner="x")
    await until(lambda: worker.active == 1, "the first job joined")
    with worker.reserve(owner="a") as reservation:
        with pytest.raises(ResourceExhausted) as refused:
            worker.submit(Count(1), owner="b")  # the queue's one place is held
        assert refused.value.reason == "QUEUE_FULL"
    assert reservation.owner == "a"
    worker.submit(Count(1), owner="b")  # released on leaving the block


async def test_a_reservation_counts_against_its_owner_and_becomes_the_job(make) -> None:
    domain, worker = make(capacity=1, max_queue=5, max_per_owner=2, gated=True)
    worker.submit(Count(1), owner="a")
    with worker.reserve(owner="a") as reservation:
        with pytest.raises(ResourceExhausted) as refused:
            worker.reserve(owner="a")
        assert refused.value.reason == "USER_LIMIT"
        handle = reservation.submit(Count(2))
    # Submitted, the place is the job's: leaving the block released nothing.
    with pytest.raises(ResourceExhausted):
        worker.submit(Count(1), owner="a")
    domain.gate.release(100)
    assert await collect(handle) == [1, 2]


class PriorityProbe(Counting):
    """Records the nice value of the thread that runs each iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def iterate(self) -> None:
        self.seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        super().iterate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
async def test_a_niced_worker_lowers_its_own_thread_only() -> None:
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    probes = {}
    for nice in (0, 7):
        domain = probes[nice] = PriorityProbe()
        domain.worker = Worker(domain, service="test", model=f"m{next(_names)}", capacity=2, max_queue=2, nice=nice)
        try:
            assert await collect(domain.worker.submit(Count(2))) == [1, 2]
        finally:
            domain.worker.stop()
    assert set(probes[0].seen) == {here}
    assert set(probes[7].seen) == {min(here + 7, 19)}
    # The event loop's thread (and the process) keep their priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == here


def test_a_nice_value_outside_0_to_19_is_refused() -> None:
    for nice in (-1, 20):
        with pytest.raises(ValueError, match="nice"):
            Worker(Counting(), service="test", model="m", capacity=1, max_queue=1, nice=nice)
