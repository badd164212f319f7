"""The bounded executor: at most `workers` functions run, at most `max_queue` calls wait (more are
RESOURCE_EXHAUSTED at once), waiting calls start in round robin across owners, a caller that leaves
gives up its place, and a running function keeps its thread until it returns."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.toolkit.errors import ResourceExhausted
from services.toolkit.executor import BUSY, BoundedExecutor


class Gates:
    """Functions that block on their own gate until the test opens it."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.started: list[str] = []

    def function(self, name: str):
        gate = self.gates.setdefault(name, threading.Event())

        def run() -> str:
            self.started.append(name)
            gate.wait()
            return name

        return run

    def open(self, name: str) -> None:
        self.gates[name].set()


async def until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


async def test_runs_at_most_the_workers_and_refuses_beyond_the_queue():
    executor, gates = BoundedExecutor(workers=2, max_queue=1, what="test pool"), Gates()
    running = [asyncio.create_task(executor.run("a", gates.function(n))) for n in ("one", "two")]
    await until(lambda: len(gates.started) == 2)
    waiting = asyncio.create_task(executor.run("b", gates.function("three")))
    await until(lambda: executor.waiting == 1)
    with pytest.raises(ResourceExhausted) as raised:
        await executor.run("c", gates.function("four"))
    assert raised.value.reason == BUSY and raised.value.retry_after_s > 0
    assert executor.running == 2 and gates.started == ["one", "two"]
    gates.open("one")
    assert await running[0] == "one"
    await until(lambda: gates.started == ["one", "two", "three"])
    gates.open("two")
    gates.open("three")
    assert [await running[1], await waiting] == ["two", "three"]
    assert executor.running == 0 and executor.waiting == 0
    executor.shutdown()


async def test_waiting_calls_take_turns_across_owners():
    executor, gates = BoundedExecutor(workers=1, max_queue=10, what="test pool"), Gates()
    tasks = [asyncio.create_task(executor.run("first", gates.function("busy")))]
    await until(lambda: gates.started == ["busy"])
    for name in ("a1", "a2", "a3", "b1", "c1", "b2"):
        tasks.append(asyncio.create_task(executor.run(name[0], gates.function(name))))
        await until(lambda: executor.waiting == len(tasks) - 1)
    for name in ("busy", "a1", "b1", "c1", "a2", "b2", "a3"):
        await until(lambda: gates.started[-1] == name)
        gates.open(name)
    await asyncio.gather(*tasks)
    assert gates.started == ["busy", "a1", "b1", "c1", "a2", "b2", "a3"]
    executor.shutdown()


async def test_a_caller_that_leaves_gives_up_its_place_but_not_a_running_thread():
    executor, gates = BoundedExecutor(workers=1, max_queue=1, what="test pool"), Gates()
    running = asyncio.create_task(executor.run("a", gates.function("running")))
    await until(lambda: gates.started == ["running"])
    waiting = asyncio.create_task(executor.run("b", gates.function("never")))
    await until(lambda: executor.waiting == 1)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert executor.waiting == 0
    # The running function's caller leaves too: its thread is still busy, so the slot stays taken.
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert executor.running == 1
    after = asyncio.create_task(executor.run("c", gates.function("after")))
    await until(lambda: executor.waiting == 1)
    assert gates.started == ["running"]
    gates.open("running")
    await until(lambda: gates.started == ["running", "after"])
    gates.open("after")
    assert await after == "after"
    assert "never" not in gates.started
    executor.shutdown()


async def test_a_function_that_raises_frees_its_slot():
    executor = BoundedExecutor(workers=1, max_queue=0, what="test pool")

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await executor.run("a", fail)
    assert await executor.run("a", lambda: 42) == 42
    executor.shutdown()
