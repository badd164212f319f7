"""`python -m bench resilience`: Fabula under abuse, overload and faults.

Several parts of the resilience suite add figures to this one area, each measured on its own;
`merge_into_results` keeps the figures and ratios already recorded in
bench/results/resilience.json and replaces only the ones a part measured again.

Figures of the hostile-body part (the gateway's front door):
- `hostile_body_rss_growth_mib`: the gateway process's peak RSS growth while four 60 MiB bodies
  of millions of empty JSON objects (one with Content-Length, three chunked) are sent at once to
  POST /user/login (aim: < 64);
- `hostile_body_413_ms`: the slowest of those four answers (413), from connecting;
- `hostile_body_sent_mib`: the most any of the four clients had sent when the answer came.

Figures of the fuzz part:
- `fuzz_calls`: calls the reflection-driven fuzzer made to the editor, text and image services
  (every method; empty, random, huge and extreme requests, as a signed-in user);
- `fuzz_internal`: how many of them were answered INTERNAL or UNKNOWN (aim: 0).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import RESULTS_DIR
from bench.processes import free_port, running_processes

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


MiB = 1024 * 1024
HOSTILE_BYTES = 60 * MiB


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


async def _hostile_post(port: int, declare_length: bool) -> tuple[int, float, int]:
    """(status, seconds, bytes sent before the answer) for one hostile body."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = f"Content-Length: {HOSTILE_BYTES}" if declare_length else "Transfer-Encoding: chunked"
    writer.write(f"POST /user/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"{framing}\r\n\r\n".encode())
    sent = 0

    async def pump() -> None:
        nonlocal sent
        piece = b"{}," * (64 * 1024 // 3)
        pieces = [b'{"username": [', *[piece] * (HOSTILE_BYTES // len(piece) - 1), b"{}]}"]
        try:
            for chunk in pieces:
                writer.write(chunk if declare_length else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
        except (ConnectionError, OSError):
            pass  # answered and closed

    pumping = asyncio.create_task(pump())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 120)
        return int(status_line.split()[1]), time.monotonic() - started, sent
    finally:
        pumping.cancel()
        writer.close()


def hostile_body_figures() -> dict[str, Any]:
    """The gateway alone (`python -m gateway`): the sign-in route refuses before any service is asked."""
    port = free_port()
    env = {"FABULA_GATEWAY_PORT": str(port), "FABULA_GATEWAY_LOG_LEVEL": "WARNING",
           "FABULA_GATEWAY_EDITOR_ADDRESS": "127.0.0.1:9", "FABULA_GATEWAY_TEXT_ADDRESS": "127.0.0.1:9",
           "FABULA_GATEWAY_IMAGE_ADDRESS": "127.0.0.1:9"}

    def live() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    with tempfile.TemporaryDirectory(prefix="fabula-hostile-") as folder, \
            running_processes(["gateway"], env, Path(folder) / "gateway.log", live) as (gateway,):
        time.sleep(0.5)
        baseline_kib = _status_kib(gateway.pid, "VmRSS")
        Path(f"/proc/{gateway.pid}/clear_refs").write_text("5")  # VmHWM = peak from now on

        async def attack() -> list[tuple[int, float, int]]:
            return await asyncio.gather(_hostile_post(port, True), *(_hostile_post(port, False) for _ in range(3)))

        replies = asyncio.run(attack())
        growth_mib = (_status_kib(gateway.pid, "VmHWM") - baseline_kib) / 1024
    statuses = sorted({status for status, _, _ in replies})
    if statuses != [413]:
        raise RuntimeError(f"hostile bodies answered {statuses}, expected only 413")
    return {"hostile_body_rss_growth_mib": round(growth_mib, 1),
            "hostile_body_413_ms": round(max(seconds for _, seconds, _ in replies) * 1000, 1),
            "hostile_body_sent_mib": round(max(sent for _, _, sent in replies) / MiB, 2)}


def hostile_body_summary(figures: dict[str, Any]) -> str:
    return (f"Hostile body: four 60 MiB bodies of empty JSON objects sent at once to POST /user/login "
            f"(one declared, three chunked) were all refused with 413 within {figures['hostile_body_413_ms']:.0f} ms, "
            f"after at most {figures['hostile_body_sent_mib']:.1f} MiB had been sent; the gateway's peak RSS grew "
            f"by {figures['hostile_body_rss_growth_mib']:.1f} MiB (aim: < 64).")


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
    hostile = hostile_body_figures()
    figures = asyncio.run(fuzz_figures())
    return merge_into_results({
        "figures": {**hostile, **figures},
        "summary": "\n".join([
            hostile_body_summary(hostile),
            f"Fuzz: the fuzzer called every method of the editor, text and image services "
            f"{figures['fuzz_calls']} times in all (seeded, signed in).",
        ]),
    })
