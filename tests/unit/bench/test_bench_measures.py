"""The measures bench/compat.py reports: the bootstrap interval of a median of per-pair ratios,
and the gateway's CPU time read from the scheduler's per-thread counters."""

from __future__ import annotations

import os
import random
import statistics
import threading

from bench.compat import median_interval
from bench.processes import threads_cpu_seconds


def test_the_interval_holds_the_median_and_narrows_with_more_pairs():
    rng = random.Random(1)
    few = [rng.gauss(1.0, 0.2) for _ in range(6)]
    many = [rng.gauss(1.0, 0.2) for _ in range(60)]
    few_low, few_high = median_interval(few, random.Random(2))
    many_low, many_high = median_interval(many, random.Random(2))
    assert min(few) <= few_low <= statistics.median(few) <= few_high <= max(few)
    assert many_low <= statistics.median(many) <= many_high
    assert many_high - many_low < few_high - few_low


def test_the_interval_is_reproducible_with_its_seed():
    values = [0.9, 1.1, 0.95, 1.3, 0.7, 1.0, 1.02]
    assert median_interval(values, random.Random(14)) == median_interval(values, random.Random(14))


def test_thread_counters_count_a_live_threads_work():
    spun, release = threading.Event(), threading.Event()

    def spin() -> None:
        total = 0
        for number in range(2_000_000):
            total += number * number
        spun.set()
        release.wait()  # alive while read: an ended thread takes its counters with it

    before = threads_cpu_seconds(os.getpid())
    worker = threading.Thread(target=spin)  # a thread other than the main one, which only waits
    worker.start()
    spun.wait()
    after = threads_cpu_seconds(os.getpid())
    release.set()
    worker.join()
    assert before is not None and after is not None
    assert after - before > 0.01  # two million multiplications take well over 10 ms of CPU


def test_a_process_that_is_gone_has_no_counters():
    assert threads_cpu_seconds(2**22 + 12345) is None  # above Linux's largest process id
