"""The text scheduler's decode step alone: the written-out Llama step (TorchScript, and the same code
eagerly) against transformers' forward.

All run SmolLM2-135M as the service loads it (int8 linears on an x86 CPU) over the same batch
cache, in the benchmark's process, in alternating rounds (this machine is shared and noisy): per
(batch rows, context length) the median time of one decode step. Also counted: over 40 steps, how
often a row's logits differ (in any bit) between running alone and in a batch with 7 rows of other
lengths, which decides whether seeded output changes with who else is served.

`python -m bench text_step`.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROUNDS = 5
STEPS = 20
SHAPES = [(1, 64), (8, 64), (8, 1000)]  # (rows, context tokens per row)
INVARIANCE_STEPS = 40


def _batch(model, step_class, prompts):
    import torch
    from transformers import DynamicCache

    from services.text.kv_cache import BatchKVCache

    cache = BatchKVCache(num_layers=model.num_layers, kv_heads=model.kv_heads, head_dim=model.head_dim,
                         dtype=model.dtype, device=model.device, max_rows=16)
    for prompt in prompts:
        prefill = DynamicCache()
        model.model(input_ids=torch.tensor([prompt]), past_key_values=prefill, use_cache=True, logits_to_keep=1)
        cache.add_row(prefill, len(prompt))
    return cache, step_class(model.model, cache)


def _steps(cache, step, prompts, tokens):
    """Run len(tokens) decode steps; returns each step's logits."""
    import torch

    positions = torch.tensor([len(p) for p in prompts])
    out = []
    for column in tokens:
        mask = cache.prepare_step()
        out.append(step(torch.tensor(column), positions, mask))
        cache.finish_step()
        positions = positions + 1
    return out


def _prompts(rows: int, length: int, seed: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 40000, (length + 7 * row,), generator=generator).tolist() for row in range(rows)]


def run() -> dict:
    import torch

    from services.text.decode_step import LlamaDecodeStep, TransformersDecodeStep
    from services.text.models import load_model

    kinds = {"llama_step": LlamaDecodeStep,
             "llama_step_eager": lambda model, cache: LlamaDecodeStep(model, cache, script=False),
             "transformers": TransformersDecodeStep}
    with tempfile.TemporaryDirectory() as cache_dir, torch.inference_mode():
        model = load_model("smollm2", "builtin:smollm2", cache_dir=Path(cache_dir))
        figures: dict[str, float] = {}
        ratios: dict[str, float] = {}
        for rows, length in SHAPES:
            prompts = _prompts(rows, length, seed=rows * 10_000 + length)
            tokens = [[100 + column + row for row in range(rows)] for column in range(STEPS + 3)]
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(ROUNDS):
                for kind, step_class in kinds.items():
                    cache, step = _batch(model, step_class, prompts)
                    _steps(cache, step, prompts, tokens[:3])  # warm-up
                    started = time.perf_counter()
                    _steps(cache, step, prompts, tokens[3:])
                    times[kind].append((time.perf_counter() - started) / STEPS * 1000)
            for kind in kinds:
                figures[f"{kind}_ms_rows{rows}_ctx{length}"] = statistics.median(times[kind])
            for reference in ("transformers", "llama_step_eager"):
                ratios[f"llama_step_vs_{reference}_rows{rows}_ctx{length}"] = statistics.median(
                    theirs / ours for theirs, ours in zip(times[reference], times["llama_step"]))
            print(f"   rows {rows}, context {length}: " + ", ".join(
                f"{kind} {figures[f'{kind}_ms_rows{rows}_ctx{length}']:.1f} ms" for kind in kinds), flush=True)

        prompts = _prompts(8, 40, seed=7)
        tokens = [[200 + column + row for row in range(8)] for column in range(INVARIANCE_STEPS)]
        for kind, step_class in kinds.items():
            alone = _steps(*_batch(model, step_class, prompts[3:4]), prompts[3:4], [[c[3]] for c in tokens])
            batched = _steps(*_batch(model, step_class, prompts), prompts, tokens)
            figures[f"{kind}_steps_batched_differs_from_alone"] = sum(
                not torch.equal(a[0], b[3]) for a, b in zip(alone, batched))
        figures["invariance_steps"] = INVARIANCE_STEPS
        figures["threads"] = torch.get_num_threads()
    summary = (
        f"One decode step of SmolLM2-135M ({model.weights}) over the scheduler's batch cache: "
        f"`LlamaDecodeStep` (written out, attention row by row, compiled with TorchScript) against the "
        f"same code run eagerly (`llama_step_eager`) and against `TransformersDecodeStep` (transformers' "
        f"forward), in the benchmark's process, median of {ROUNDS} alternating rounds of {STEPS} steps; "
        f"ratio = the reference's time / the scripted step's time (above 1: the scripted step is faster). "
        f"Rows have contexts of the given length plus 7 tokens per row. "
        f"`*_steps_batched_differs_from_alone`: of {INVARIANCE_STEPS} steps, how many gave a row different "
        f"logits (any bit) in a batch of 8 than alone (0 = seeded output cannot change with the batch)."
    )
    return {"figures": figures, "ratios": ratios, "summary": summary}

