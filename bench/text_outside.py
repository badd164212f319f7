"""Where a decode iteration's time goes in the text service's scheduler: the model step, and the
work outside it (sampling, `accept` with detokenising and stop checks, the cache's bookkeeping, the
hand-over to the event loop), at 1 and 8 rows, for both quantisation modes.

The real `Scheduler` and its worker thread serve requests read by an asyncio loop, as in the
service, without gRPC (the service's event loop and the client cost about 0.3 ms a token each,
docs/text.md). Each mode's model is loaded, and its scheduler built, in a thread that exits, as
the service loads its models (`toolkit.model_service.run_in_passing_thread`). The `balanced`
preset, 128 tokens a request, end of text suppressed, seeds 0..rows-1; wall and CPU (thread time of the worker thread)
per iteration, medians over the rounds, with the load average before and after.
`python -m bench text_outside`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.text import PROMPTS  # noqa: E402 - the same prompts as the service benchmark

MODES = ("int8-dynamic", "int4-groupwise")
ROWS = (1, 8)
ROUNDS = {1: 6, 8: 3}
NEW_TOKENS = 128


def _load(mode: str):
    from services.text.models import load_model
    from services.text.settings import TextSettings
    from services.toolkit.model_service import run_in_passing_thread

    cache_dir = Path(os.environ.get("FABULA_TEXT_CACHE_DIR", TextSettings().cache_dir))
    return asyncio.run(run_in_passing_thread(lambda: load_model("smollm2", "builtin:smollm2", cache_dir=cache_dir,
                                                                quantization=mode)))


class _Timed:
    """Wall and worker-thread CPU time of the decode iterations and of the model step inside them."""

    def __init__(self, scheduler) -> None:
        self.iteration_wall = self.iteration_cpu = self.step_wall = self.step_cpu = 0.0
        self.steps = 0
        step, decode = scheduler._step, scheduler._decode_step

        def timed_step(*args):
            wall, cpu = time.perf_counter(), time.thread_time()
            out = step(*args)
            self.step_wall += time.perf_counter() - wall
            self.step_cpu += time.thread_time() - cpu
            return out

        def timed_decode():
            wall, cpu = time.perf_counter(), time.thread_time()
            decode()
            self.iteration_wall += time.perf_counter() - wall
            self.iteration_cpu += time.thread_time() - cpu
            self.steps += 1

        self._scheduler, self._step = scheduler, step
        scheduler._step, scheduler._decode_step = timed_step, timed_decode

    def remove(self) -> None:
        self._scheduler._step = self._step
        del self._scheduler._decode_step  # the class's method again

    def per_step_ms(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {"step_ms": 1000 * self.step_wall / n,
                "outside_ms": 1000 * (self.iteration_wall - self.step_wall) / n,
                "outside_cpu_ms": 1000 * (self.iteration_cpu - self.step_cpu) / n}


async def _measure(model, rows: int, rounds: int) -> dict[str, float]:
    from services.text.params import GenerationParams
    from services.text.presets_store import load_presets
    from services.text.scheduler import Scheduler, SchedulerConfig
    from services.text.sequence import GenerationRequest
    from services.toolkit.model_service import run_in_passing_thread

    sampling = load_presets()["balanced"].sampling
    # Built in a passing thread too: its batch cache's zeroed buffers are a parallel operator, and
    # a pool left in this benchmark's main thread made the one-row step 19.6 ms instead of 7.8.
    scheduler = await run_in_passing_thread(lambda: Scheduler(model, SchedulerConfig(max_batch_size=16)))
    try:
        async def one(index: int) -> None:
            params = GenerationParams(sampling=sampling, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                      seed=index)
            async for _ in scheduler.submit(GenerationRequest(model.encode(PROMPTS[index % len(PROMPTS)]), params)):
                pass

        await one(0)  # warm-up: TorchScript's first runs
        samples: dict[str, list[float]] = {}
        for _ in range(rounds):
            timed = _Timed(scheduler)
            await asyncio.gather(*(one(index) for index in range(rows)))
            for name, value in timed.per_step_ms().items():
                samples.setdefault(name, []).append(value)
            timed.remove()
        return {name: statistics.median(values) for name, values in samples.items()}
    finally:
        scheduler.stop()


def run() -> dict:
    import torch

    load_before = os.getloadavg()
    figures: dict[str, float] = {"threads": torch.get_num_threads(), "new_tokens_per_request": NEW_TOKENS}
    for mode in MODES:
        model = _load(mode)
        for rows in ROWS:
            result = asyncio.run(_measure(model, rows, ROUNDS[rows]))
            for name, value in result.items():
                figures[f"{mode}_rows{rows}_{name}"] = value
            print(f"   {mode}, {rows} rows: step {result['step_ms']:.2f} ms, outside it {result['outside_ms']:.2f} ms "
                  f"wall / {result['outside_cpu_ms']:.2f} ms CPU a step (load {os.getloadavg()[0]:.2f})", flush=True)
    summary = (
        f"SmolLM2-135M through the text scheduler (worker thread, asyncio reader, no gRPC), `balanced`, "
        f"{NEW_TOKENS} tokens a request, {figures['threads']} threads: per decode iteration, the model step's wall "
        f"time and the time outside it (sampling, accept, cache bookkeeping, hand-over), wall and worker-thread CPU, "
        f"medians of {ROUNDS[1]} (1 row) and {ROUNDS[8]} (8 rows) rounds. Load average (1 min) {load_before[0]:.2f} "
        f"at the start, {os.getloadavg()[0]:.2f} at the end.")
    return {"figures": figures, "ratios": {}, "summary": summary}


if __name__ == "__main__":
    print(run())
