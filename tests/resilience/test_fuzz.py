"""Every method of the editor, text and image services, fuzzed through reflection as a signed-in
user: empty, random, huge and extreme requests (numbers at and past the limits of their protobuf
types) are answered with a precise status (INVALID_ARGUMENT naming the field, NOT_FOUND, ...),
never INTERNAL or UNKNOWN.

Bounded in count and in time; the generator is seeded (FABULA_FUZZ_SEED replays another run).
"""

from __future__ import annotations

import os

from tests.resilience.fuzzing import fuzz
from tests.resilience.services import all_targets

SEED = int(os.environ.get("FABULA_FUZZ_SEED", "0"))


async def test_no_method_answers_internal_or_unknown(tmp_path):
    async with all_targets(tmp_path) as targets:
        # Three whole rounds whatever the machine's speed (the assertion below counts on them),
        # then as many more as the time budget allows.
        report = await fuzz(targets, seed=SEED, random_per_method=8, max_calls=3000, time_budget_s=240.0,
                            whole_rounds=3)
        methods = sum(len(target.service.methods) for target in targets)
    assert report.calls >= 3 * methods, report  # every method was reached, each several times
    assert report.codes.get("INVALID_ARGUMENT", 0) > 0 and report.codes.get("OK", 0) > 0, report.codes
    findings = "\n".join(f"{f.method} [{f.case}]: {f.code} {f.details}" for f in report.findings)
    assert not report.findings, f"{len(report.findings)} of {report.calls} calls failed (seed {SEED}):\n{findings}"
