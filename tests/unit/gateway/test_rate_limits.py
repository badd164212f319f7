"""The gateway's in-process rate-limit counters answer exactly as `limits`' own sliding window
counter does (the one the Redis storage keeps), hit for hit, on the same clock."""

from __future__ import annotations

import random
from unittest import mock

import pytest
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.rate_limits import MemorySlidingWindows

START = 1_700_000_000.0


@pytest.mark.parametrize("limit", ["5/second", "30/minute", "3/10 seconds", "1/hour"])
async def test_same_answers_as_limits_sliding_window_counter(limit):
    item = parse(limit)
    now = [START]
    ours = MemorySlidingWindows(clock=lambda: now[0])
    rnd = random.Random(limit)
    with mock.patch("time.time", lambda: now[0]):
        reference = SlidingWindowCounterRateLimiter(MemoryStorage())
        for _ in range(3000):
            # Hits about 1.5 times faster than the limit allows, so both refusing and allowing occur.
            now[0] += rnd.expovariate(1.5 * item.amount / item.get_expiry())
            key = rnd.choice(["alice", "bob"])
            choice = rnd.random()
            if choice < 0.7:
                assert await ours.hit(item, key) == await reference.hit(item, key)
            elif choice < 0.85:
                assert await ours.test(item, key) == await reference.test(item, key)
            else:
                mine, theirs = await ours.get_window_stats(item, key), await reference.get_window_stats(item, key)
                assert mine.remaining == theirs.remaining
                assert mine.reset_time == pytest.approx(theirs.reset_time, abs=1e-6)


async def test_refuses_past_the_limit_and_forgets_old_windows():
    item = parse("2/minute")
    now = [START - START % 60]
    windows = MemorySlidingWindows(clock=lambda: now[0])
    assert [await windows.hit(item, "k") for _ in range(3)] == [True, True, False]
    assert not await windows.test(item, "k")
    now[0] += 60  # the next window: the two hits still count in full at its start
    assert not await windows.hit(item, "k")
    now[0] += 30  # half of them left the sliding window
    assert await windows.hit(item, "k")
    assert len(windows._counts) == 1
    now[0] += 200  # long after: the key is swept away on the next hit
    assert await windows.hit(item, "other")
    assert list(windows._counts) == list(windows._windows) == [item.key_for("other")]
