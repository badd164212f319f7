"""A bounded, fair thread pool for CPU work that asyncio hands off (building a prompt: tokenizing,
matching a lorebook's keys).

`asyncio.to_thread` queues without bound on a pool shared with everything else, so a flood of
costly requests there delays every other request's preparation for as long as the flood lasts.
`BoundedExecutor` runs at most `workers` functions at once on threads of its own; at most
`max_queue` more wait, and one more is refused at once with RESOURCE_EXHAUSTED and a retry delay.
Waiting calls start in round robin across owners (the verified callers' user ids), each owner's in
arrival order, as the model workers admit jobs (worker.py): a user with many requests waiting gets
one thread for every one each other waiting user gets.

A thread cannot be stopped from outside, so a caller that leaves (cancelled, deadline passed)
gives up a place it was waiting for at once, but a function already running keeps its thread
until it returns: the function must bound its own time and watch for the caller leaving (the
lorebook's `KeyMatching` does both). Its slot is freed when it returns, not when the caller
leaves, so the bound on running threads holds.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

from services.toolkit.errors import ResourceExhausted

T = TypeVar("T")
BUSY = "PREPARATION_BUSY"


class BoundedExecutor:
    def __init__(self, *, workers: int, max_queue: int, what: str, retry_after_s: float = 1.0) -> None:
        if workers < 1 or max_queue < 0:
            raise ValueError(f"workers must be at least 1 and max_queue at least 0 (got {workers}, {max_queue})")
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=what.replace(" ", "-"))
        self._workers, self._max_queue = workers, max_queue
        self._what, self._retry_after_s = what, retry_after_s
        self._running = 0
        # owner -> its waiting calls' tickets; the first owner is next in turn.
        self._waiting: collections.OrderedDict[str, collections.deque[asyncio.Future[None]]] = (
            collections.OrderedDict())
        self._waiting_count = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting_count

    async def run(self, owner: str, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on one of the pool's threads, once `owner`'s turn comes."""
        loop = asyncio.get_running_loop()
        if self._running < self._workers and not self._waiting_count:
            self._running += 1
        else:
            await self._wait_for_turn(owner, loop)
        try:
            future = self._pool.submit(function, *args)
        except BaseException:
            self._release()
            raise
        # Freed when the function returns (or was cancelled before it started), from its thread.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    async def _wait_for_turn(self, owner: str, loop: asyncio.AbstractEventLoop) -> None:
        if self._waiting_count >= self._max_queue:
            raise ResourceExhausted(f"{self._what}: all {self._workers} threads are busy and {self._max_queue} "
                                    "requests wait already; retry shortly", reason=BUSY,
                                    retry_after_s=self._retry_after_s)
        ticket: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(owner, collections.deque()).append(ticket)
        self._waiting_count += 1
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._release()  # the turn came as the caller left: pass it on
            else:
                self._forget(owner, ticket)
            raise

    def _forget(self, owner: str, ticket: asyncio.Future[None]) -> None:
        tickets = self._waiting.get(owner)
        if tickets is not None and ticket in tickets:
            tickets.remove(ticket)
            self._waiting_count -= 1
            if not tickets:
                del self._waiting[owner]

    def _release(self) -> None:
        """A running slot is free: hand it to the next owner in turn, or give it up."""
        while self._waiting:
            owner, tickets = next(iter(self._waiting.items()))
            ticket = tickets.popleft()
            self._waiting_count -= 1
            if tickets:
                self._waiting.move_to_end(owner)
            else:
                del self._waiting[owner]
            if not ticket.done():
                ticket.set_result(None)  # the slot passes to this caller, still counted as running
                return
        self._running -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
