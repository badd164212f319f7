"""`python -m bench resilience`: Fabula under abuse, overload and faults.

Several parts of the resilience suite add figures to this one area, each measured on its own;
`merge_into_results` keeps the figures and ratios already recorded in
bench/results/resilience.json and replaces only the ones a part measured again.

Figures of the fuzz part:
- `fuzz_calls`: calls the reflection-driven fuzzer made to the editor, text and image services
  (every method; empty, random, huge and extreme requests, as a signed-in user);
- `fuzz_internal`: how many of them were answered INTERNAL or UNKNOWN (aim: 0).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

AREA = "resilience"
FUZZ_SEED = 0


def merge_into_results(measured: dict[str, Any], area: str = AREA) -> dict[str, Any]:
    """`measured` (figures, ratios, summary) over what the area's result file already holds."""
    path = RESULTS_DIR / f"{area}.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        recorded = {}
    result: dict[str, Any] = {}
    for key in ("figures", "ratios"):
        result[key] = {**recorded.get(key, {}), **measured.get(key, {})}
    # One summary line per part, "<part>: ...": a part's new line replaces its old one.
    lines = [line for line in recorded.get("summary", "").splitlines() if line.strip()]
    for line in measured.get("summary", "").splitlines():
        part = line.split(":", 1)[0]
        lines = [old for old in lines if old.split(":", 1)[0] != part] + [line]
    result["summary"] = "\n".join(lines)
    return result


async def fuzz_figures() -> dict[str, Any]:
    from tests.resilience.fuzzing import fuzz
    from tests.resilience.services import all_targets

    with tempfile.TemporaryDirectory(prefix="fabula-fuzz-") as folder:
        async with all_targets(Path(folder)) as targets:
            report = await fuzz(targets, seed=FUZZ_SEED, random_per_method=8, max_calls=3000, time_budget_s=300.0)
    for finding in report.findings:
        print(f"   fuzz finding: {finding.method} [{finding.case}]: {finding.code} {finding.details}", flush=True)
    return {"fuzz_calls": report.calls, "fuzz_internal": len(report.findings)}


def run() -> dict[str, Any]:
    figures = asyncio.run(fuzz_figures())
    return merge_into_results({
        "figures": figures,
        "summary": (f"Fuzz: the fuzzer called every method of the editor, text and image services "
                    f"{figures['fuzz_calls']} times in all (seeded, signed in)."),
    })
