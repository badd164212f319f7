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

Figures of the victim part (`bench/fair_load.py`: the whole stack as real processes, user B's short
text generations alone and while user A, a client process of its own, floods text and image
generation at its per-user caps):
- `ratios.victim_p99_alone_vs_under_attack`: B's p99 latency alone ÷ B's p99 under attack (aim:
  at least 0.5); `victim_*_ms` B's latencies, `victim_queue_*` the part waiting for a place in the
  batch, `victim_service_*` the text service's whole time for the request.

Figures of the fuzz part:
- `fuzz_calls`: calls the reflection-driven fuzzer made to the editor, text and image services
  (every method; empty, random, huge and extreme requests, as a signed-in user);
- `fuzz_internal`: how many of them were answered INTERNAL or UNKNOWN (aim: 0).

Figures of the kills-and-rollouts part, on the stack the fault tests run (tests/resilience/stack.py:
editor on SQLite, text on a tiny seeded model, image on the built-in tiny model, and the gateway,
each a real process on localhost), with three clients calling the routes that need the service
(object writes and reads, short text generations, 64x64 one-step images):
- kill: the service gets SIGKILL, stays down for two seconds and is started again on its port.
  `kill_to_503_ms_<service>` is the time from the kill to the first 503 a client receives;
  `kill_answer_max_ms_<service>` the slowest answer to a call sent while the service was down;
  `recovery_ms_<service>` the time from the restarted service's SERVING to the first success;
  `kill_to_503_ms` the largest of the three services' kill-to-503 times.
- roll: a replacement starts on the same port; once it is SERVING the old process gets SIGTERM
  and drains. `rolling_restart_5xx` counts the 5xx answers (and calls with no answer) over the
  three services' rollouts; `rolling_restart_calls_<service>` the calls made meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import RESULTS_DIR
from bench.processes import free_port, running_processes

AREA = "resilience"
FUZZ_SEED = 0
SERVICES = ("editor", "text", "image")
DOWN_FOR_S = 2.0
RECOVERY_TIMEOUT_S = 60.0


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


def _kill(stack, service: str) -> dict[str, float]:
    from tests.resilience.stack import load_on

    process = stack[service]
    with load_on(stack, service) as load:
        if load.wait_for_success_after(time.monotonic(), RECOVERY_TIMEOUT_S) is None:
            raise RuntimeError(f"no call to {service} got through before the kill")
        killed_at = time.monotonic()
        process.kill()
        dead_at = time.monotonic()  # the child reaped: nothing can answer from here on
        time.sleep(DOWN_FOR_S)
        restarting_at = time.monotonic()
        process.start()
        back_at = time.monotonic()
        recovered = load.wait_for_success_after(back_at, RECOVERY_TIMEOUT_S)
    refusals = [answer.received for answer in load.after(0) if answer.status == 503 and answer.received >= killed_at]
    while_down = [answer for answer in load.after(dead_at) if answer.sent < restarting_at]
    if not refusals or not while_down or recovered is None:
        raise RuntimeError(f"{service}: no 503 after the kill, no call while down, or no recovery")
    return {
        f"kill_to_503_ms_{service}": round((min(refusals) - killed_at) * 1000, 1),
        f"kill_answer_max_ms_{service}": round(max(a.received - a.sent for a in while_down) * 1000, 1),
        f"recovery_ms_{service}": round(max(0.0, recovered.received - back_at) * 1000, 1),
        f"kill_other_5xx_{service}": sum(1 for a in load.server_errors() if a.status != 503),
    }


def _roll(stack, service: str) -> dict[str, int]:
    from tests.resilience.stack import load_on

    with load_on(stack, service) as load:
        if load.wait_for_success_after(time.monotonic(), RECOVERY_TIMEOUT_S) is None:
            raise RuntimeError(f"no call to {service} got through before the roll")
        stack[service].roll()
        load.wait_for_success_after(time.monotonic(), RECOVERY_TIMEOUT_S)
    return {f"rolling_restart_5xx_{service}": len(load.server_errors()),
            f"rolling_restart_calls_{service}": len(load.answers)}


def fault_figures() -> dict[str, Any]:
    from tests.resilience.stack import running_stack

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fabula-bench-faults-") as workdir:
        with running_stack(Path(workdir)) as stack:
            for service in SERVICES:
                figures.update(_roll(stack, service))
            for service in SERVICES:
                figures.update(_kill(stack, service))
    figures["kill_to_503_ms"] = max(figures[f"kill_to_503_ms_{service}"] for service in SERVICES)
    figures["rolling_restart_5xx"] = sum(figures[f"rolling_restart_5xx_{service}"] for service in SERVICES)
    return figures


def fault_summary(figures: dict[str, Any]) -> str:
    per_service = "; ".join(
        f"{service}: first 503 after {figures[f'kill_to_503_ms_{service}']:.0f} ms, slowest answer while down "
        f"{figures[f'kill_answer_max_ms_{service}']:.0f} ms, success {figures[f'recovery_ms_{service}']:.0f} ms "
        f"after it was back, {figures[f'rolling_restart_5xx_{service}']} 5xx in "
        f"{figures[f'rolling_restart_calls_{service}']} calls during its roll" for service in SERVICES)
    return (f"Kills and rollouts: each service killed (SIGKILL) under load from three clients, down "
            f"{DOWN_FOR_S:.0f} s, started again on its port; and rolled (replacement on the same port, then "
            f"SIGTERM and drain of the old process); real processes on localhost. {per_service}.")


VICTIM_REQUESTS = 40
ROUNDS = 3
ATTACK_TEXT_STREAMS = 6  # the text cap (4) and two more
ATTACK_IMAGE_STREAMS = 3  # the image cap (2) and one more
REFUSAL_PAUSE_S = 0.1
CALL_TIMEOUT_S = 120.0


async def _victim_measure(stack_url: str) -> dict:
    from bench.common import percentile
    from bench.fair_load import FloodProcess, Outcomes, sign_up, victim
    from services.toolkit.heap import freeze_startup_heap

    alone, attacked, attacks = Outcomes(), Outcomes(), Outcomes()
    # This process built the tiny models (torch, transformers): its full collections took about
    # 9 ms each while B's requests were being timed, a client pause, not the stack's. The stack's
    # processes freeze their own start-up heaps (services/toolkit/heap.py).
    freeze_startup_heap()
    async with httpx.AsyncClient(base_url=stack_url, timeout=CALL_TIMEOUT_S,
                                 limits=httpx.Limits(max_connections=64)) as client:
        attacker, target = await sign_up(client, "attacker"), await sign_up(client, "victim")
        # A few requests first, so that no phase pays for the first calls' set-up.
        await victim(client, target, Outcomes(), text_requests=5)
        # Alternating phases: the machine is shared, and its other load drifts.
        for _ in range(ROUNDS):
            await victim(client, target, alone, text_requests=VICTIM_REQUESTS)
            # The attacker is a client of its own (another process), as it would be in life.
            flooding = FloodProcess(stack_url, attacker, text_streams=ATTACK_TEXT_STREAMS,
                                    image_streams=ATTACK_IMAGE_STREAMS, refusal_pause_s=REFUSAL_PAUSE_S,
                                    call_timeout_s=CALL_TIMEOUT_S)
            try:
                await asyncio.to_thread(flooding.wait_until_saturated)
                await victim(client, target, attacked, text_requests=VICTIM_REQUESTS)
            finally:
                for status, count in (await asyncio.to_thread(flooding.finish)).items():
                    attacks.statuses[status] = attacks.statuses.get(status, 0) + count
    if set(alone.statuses) != {200} or set(attacked.statuses) != {200}:
        raise RuntimeError(f"the victim was not always served: alone {alone.statuses}, "
                           f"under attack {attacked.statuses}")
    p99_alone, p99_attacked = percentile(alone.latencies_s, 0.99), percentile(attacked.latencies_s, 0.99)
    figures = {
        "victim_p50_alone_ms": round(statistics.median(alone.latencies_s) * 1000, 1),
        "victim_p99_alone_ms": round(p99_alone * 1000, 1),
        "victim_p50_under_attack_ms": round(statistics.median(attacked.latencies_s) * 1000, 1),
        "victim_p99_under_attack_ms": round(p99_attacked * 1000, 1),
        # Of that, the time the text service reports the request waited for a place in the batch.
        "victim_queue_p99_under_attack_ms": round(percentile(attacked.queue_s, 0.99) * 1000, 1),
        # The text service's whole time for the request (queue, prompt, decoding); the rest of the
        # latency is the gateway and the way there and back.
        "victim_service_p50_alone_ms": round(statistics.median(alone.service_s) * 1000, 1),
        "victim_service_p50_under_attack_ms": round(statistics.median(attacked.service_s) * 1000, 1),
        "victim_service_p99_under_attack_ms": round(percentile(attacked.service_s, 0.99) * 1000, 1),
        "victim_requests_per_phase": VICTIM_REQUESTS * ROUNDS,
        "attacker_served": attacks.statuses.get(200, 0),
        "attacker_refused_429": attacks.statuses.get(429, 0),
        "load_average_1m_end": round(os.getloadavg()[0], 2),
    }
    return {"figures": figures, "ratios": {"victim_p99_alone_vs_under_attack": round(p99_alone / p99_attacked, 3)}}


SUMMARY = (
    "Victim vs attacker: the whole stack as real processes on this machine (editor on SQLite, text and image "
    "services on tiny seeded models with their default batch sizes, queues and per-user caps: 4 text, 2 image "
    "generations per user; the gateway's rate limit out of the way). User B sends {requests} short text "
    "generations (8 tokens) one after another alone, then as many while user A, a client process of its "
    "own, keeps {text} text streams (400 tokens) and {image} image streams (64x64, 30 steps) going, each "
    "resent the moment it ends (100 ms after a refusal), in {rounds} alternating rounds; `victim_p99_alone_vs_under_attack` = B's p99 alone / B's "
    "p99 under attack (aim >= 0.5). Where B's time goes: `victim_queue_*` is its wait for a place in the "
    "batch (the fairness and the caps keep it short), `victim_service_*` the text service's whole time for "
    "it, the rest the gateway and the way there and back. Every process shares the machine's cores with A's "
    "admitted generations and with other work (`load_average_1m_end`), so B's slowdown under attack is CPU "
    "time, not waiting."
)


def victim_figures() -> dict[str, Any]:
    """The victim part: figures, ratios and its summary line."""
    from bench.fair_load import fabula_stack

    with tempfile.TemporaryDirectory(prefix="fabula-victim-") as workdir, fabula_stack(Path(workdir)) as stack:
        measured = asyncio.run(_victim_measure(stack.url))
    measured["summary"] = SUMMARY.format(requests=VICTIM_REQUESTS, text=ATTACK_TEXT_STREAMS,
                                         image=ATTACK_IMAGE_STREAMS, rounds=ROUNDS)
    return measured


def run() -> dict[str, Any]:
    hostile = hostile_body_figures()
    figures = asyncio.run(fuzz_figures())
    faults = fault_figures()
    victim = victim_figures()
    return merge_into_results({
        "figures": {**hostile, **figures, **faults, **victim["figures"]},
        "ratios": victim["ratios"],
        "summary": "\n".join([
            hostile_body_summary(hostile),
            f"Fuzz: the fuzzer called every method of the editor, text and image services "
            f"{figures['fuzz_calls']} times in all (seeded, signed in).",
            fault_summary(faults),
            victim["summary"],
        ]),
    })
