"""Model loading runs in a thread that ends with it, so its OpenMP pool goes with it."""

from __future__ import annotations

import asyncio
import os
import platform
import time

import pytest
import torch

from services.toolkit.model_service import run_in_passing_thread

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/task")


def parallel_tensor_work() -> float:
    # Over torch's grain size (32,768 elements), so OpenMP starts worker threads for the caller.
    return float(torch.ones(1 << 20).add_(1).sum())


def threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


async def threads_left_after(run) -> set[str]:
    before = threads()
    assert await run(parallel_tensor_work) == 2.0 * (1 << 20)
    deadline = time.monotonic() + 2.0  # exiting threads take a moment to go
    while threads() - before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return threads() - before


def test_a_passing_thread_leaves_no_threads_behind():
    async def check() -> None:
        assert await threads_left_after(run_in_passing_thread) == set()
        # What it replaces: the executor's thread (and the OpenMP workers it started) live on.
        assert await threads_left_after(asyncio.to_thread) != set()

    asyncio.run(check())


def test_a_passing_thread_passes_errors_on():
    def fail() -> None:
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        asyncio.run(run_in_passing_thread(fail))
