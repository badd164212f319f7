"""One user flooding while another is served: the whole stack as real processes on localhost (the
editor on SQLite, the text and image services on tiny seeded models, the gateway), two signed-up
users, an attacker that keeps its generations at the per-user cap and retries every refusal at
once, and a victim whose short generations are timed. Used by `tests/resilience/` (which asserts
the victim is served) and `bench/resilience.py` (which records the victim's latencies).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.processes import free_port, grpc_serving, running_processes

# Generations short enough for a CPU, long enough that the attacker's keep the batch busy.
VICTIM_TEXT = {"prompt": "The knight", "max_new_tokens": 8, "min_new_tokens": 8, "preset": "neutral", "seed": 1}
ATTACK_TEXT = {"prompt": "The dragon", "max_new_tokens": 400, "min_new_tokens": 400, "preset": "neutral", "seed": 2}
VICTIM_IMAGE = {"prompt": "a castle", "width": 64, "height": 64, "steps": 2, "seed": 1, "sampler": "euler"}
ATTACK_IMAGE = {"prompt": "a dragon", "width": 64, "height": 64, "steps": 30, "seed": 2, "sampler": "euler"}


@dataclass(frozen=True)
class Limits:
    """The services' capacity and per-user caps for a run."""

    text_batch: int = 16
    text_queue: int = 64
    text_per_user: int = 4
    image_batch: int = 8
    image_queue: int = 16
    image_per_user: int = 2
    # The gateway's per-user request rate: out of the way, so that what holds the attacker back is
    # the services' caps alone.
    gateway_rate: str = "1000000/minute"


@dataclass
class Stack:
    url: str
    log: Path


@contextmanager
def fabula_stack(workdir: Path, limits: Limits = Limits()) -> Iterator[Stack]:
    """Every process on free ports over tiny models built in `workdir`; stopped on exit."""
    from services.image.tiny import build_tiny_sd
    from services.text.testing import build_tiny_model

    text_model = build_tiny_model(workdir / "tiny-text", seed=0, context_window=4096)
    image_model = build_tiny_sd(workdir / "tiny-sd")
    ports = {name: free_port() for name in ("editor", "text", "image", "gateway")}
    env = {
        "FABULA_EDITOR_PORT": str(ports["editor"]), "FABULA_EDITOR_METRICS_PORT": "0",
        "FABULA_EDITOR_DATABASE_URL": f"sqlite:///{workdir / 'editor.db'}",
        "FABULA_EDITOR_AUTH_HASH_OPSLIMIT": "1", "FABULA_EDITOR_AUTH_HASH_MEMLIMIT": "8192",
        # The users sign up with libsodium's minimum Argon2id cost (random keys; nothing to protect).
        "FABULA_EDITOR_MIN_KDF_OPSLIMIT": "1", "FABULA_EDITOR_MIN_KDF_MEMLIMIT": "8192",
        "FABULA_EDITOR_LOG_LEVEL": "WARNING",
        "FABULA_TEXT_PORT": str(ports["text"]), "FABULA_TEXT_METRICS_PORT": "0",
        "FABULA_TEXT_MODELS": json.dumps({"tiny": str(text_model)}), "FABULA_TEXT_CACHE_DIR": str(workdir / "cache"),
        "FABULA_TEXT_DEVICE": "cpu", "FABULA_TEXT_DTYPE": "float32", "FABULA_TEXT_QUANTIZATION": "none",
        "FABULA_TEXT_THREADS": "1", "FABULA_TEXT_MAX_BATCH_SIZE": str(limits.text_batch),
        "FABULA_TEXT_MAX_QUEUE": str(limits.text_queue),
        "FABULA_TEXT_MAX_GENERATIONS_PER_USER": str(limits.text_per_user), "FABULA_TEXT_LOG_LEVEL": "WARNING",
        "FABULA_IMAGE_PORT": str(ports["image"]), "FABULA_IMAGE_METRICS_PORT": "0",
        "FABULA_IMAGE_MODELS": json.dumps({"tiny": str(image_model)}), "FABULA_IMAGE_CACHE_DIR": str(workdir / "cache"),
        "FABULA_IMAGE_BACKEND": "eager", "FABULA_IMAGE_DEVICE": "cpu", "FABULA_IMAGE_THREADS": "1",
        "FABULA_IMAGE_WARMUP_STEPS": "1", "FABULA_IMAGE_MAX_BATCH_IMAGES": str(limits.image_batch),
        "FABULA_IMAGE_MAX_QUEUE": str(limits.image_queue),
        "FABULA_IMAGE_MAX_GENERATIONS_PER_USER": str(limits.image_per_user), "FABULA_IMAGE_LOG_LEVEL": "WARNING",
        "FABULA_GATEWAY_PORT": str(ports["gateway"]),
        **{f"FABULA_GATEWAY_{name.upper()}_ADDRESS": f"127.0.0.1:{ports[name]}" for name in ("editor", "text", "image")},
        "FABULA_GATEWAY_RATE_LIMIT": limits.gateway_rate, "FABULA_GATEWAY_ANONYMOUS_RATE_LIMIT": "1000000/minute",
        "FABULA_GATEWAY_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }
    url = f"http://127.0.0.1:{ports['gateway']}"

    def ready() -> bool:
        if not all(grpc_serving(f"127.0.0.1:{ports[name]}") for name in ("editor", "text", "image")):
            return False
        try:
            return httpx.get(f"{url}/health/live", timeout=1.0).is_success
        except httpx.HTTPError:
            return False

    log = workdir / "stack.log"
    with running_processes(["services.editor", "services.text", "services.image", "gateway"], env, log, ready,
                           start_timeout_s=300):
        yield Stack(url=url, log=log)


async def sign_up(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    """A new account (random keys: the server cannot tell them from real ones); its auth headers."""
    body = {"username": username, "salt": base64.b64encode(os.urandom(16)).decode(),
            "kdf": {"opslimit": 1, "memlimit": 8192}, "auth_key": base64.b64encode(os.urandom(32)).decode(),
            "keystore": base64.b64encode(os.urandom(120)).decode()}
    reply = await client.post("/user/register", json=body)
    reply.raise_for_status()
    return {"Authorization": f"Bearer {reply.json()['token']}"}


@dataclass
class Outcomes:
    """What one side's requests got: status → count, the latencies of the successful ones and, for
    text, the parts of each the service reports: waiting in its queue, and all its own time."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    queue_s: list[float] = field(default_factory=list)
    service_s: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def record(self, status: int, seconds: float, body: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.latencies_s.append(seconds)
            stats = json.loads(body).get("stats")
            if stats and "queue_ms" in stats:
                self.queue_s.append(stats["queue_ms"] / 1000)
                self.service_s.append(stats["total_ms"] / 1000)
        elif len(self.messages) < 20:
            self.messages.append(body[:300])


async def timed_post(client: httpx.AsyncClient, path: str, body: dict, headers: dict, outcomes: Outcomes) -> int:
    started = time.perf_counter()
    reply = await client.post(path, json=body, headers=headers)
    outcomes.record(reply.status_code, time.perf_counter() - started, reply.text)
    return reply.status_code


async def flood(client: httpx.AsyncClient, headers: dict, stop: asyncio.Event, outcomes: Outcomes, *,
                text_streams: int, image_streams: int, refusal_pause_s: float = 0.02) -> None:
    """The attacker: `text_streams` + `image_streams` loops (more than its caps), each sending its
    next long generation the moment the last one ended, or `refusal_pause_s` after a refusal."""

    async def loop(path: str, body: dict) -> None:
        while not stop.is_set():
            try:
                status = await timed_post(client, path, body, headers, outcomes)
            except httpx.HTTPError:
                status = 0
            if status != 200:
                await asyncio.sleep(refusal_pause_s)

    await asyncio.gather(*[loop("/ai/generate", ATTACK_TEXT) for _ in range(text_streams)],
                         *[loop("/ai/generate-image", ATTACK_IMAGE) for _ in range(image_streams)])


async def victim(client: httpx.AsyncClient, headers: dict, outcomes: Outcomes, *, text_requests: int,
                 image_requests: int = 0, pause_s: float = 0.05) -> None:
    """The victim: short generations one after another (text, then images), each timed."""
    for _ in range(text_requests):
        await timed_post(client, "/ai/generate", VICTIM_TEXT, headers, outcomes)
        await asyncio.sleep(pause_s)
    for _ in range(image_requests):
        await timed_post(client, "/ai/generate-image", VICTIM_IMAGE, headers, outcomes)
        await asyncio.sleep(pause_s)


async def until_saturated(client: httpx.AsyncClient, headers: dict, outcomes: Outcomes, timeout_s: float = 60.0) -> None:
    """Wait until the attacker has been refused at least once: it is at its caps."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not outcomes.statuses.get(429):
        await asyncio.sleep(0.05)
    if not outcomes.statuses.get(429):
        raise RuntimeError(f"the attacker was never refused in {timeout_s:.0f}s: {outcomes.statuses}")


class FloodProcess:
    """`flood` in a process of its own, as the attacker is another client than the victim: were
    both one event loop, the victim's measured latency would include the attacker's own client
    work (encoding its requests, reading its answers) done in between. The process still shares
    the machine's cores with the victim and the stack, as a real attacker's load would.

    `wait_until_saturated()` returns once the attacker was refused (it is at its caps);
    `finish()` stops it and returns its statuses (status → count)."""

    def __init__(self, url: str, headers: dict, *, text_streams: int, image_streams: int,
                 refusal_pause_s: float, call_timeout_s: float) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._stop, self._saturated, self._results = context.Event(), context.Event(), context.Queue()
        self._call_timeout_s = call_timeout_s
        self._process = context.Process(
            target=_flood_process_main, daemon=True,
            args=(url, headers, text_streams, image_streams, refusal_pause_s, call_timeout_s,
                  self._stop, self._saturated, self._results))
        self._process.start()

    def wait_until_saturated(self, timeout_s: float = 60.0) -> None:
        if not self._saturated.wait(timeout_s):
            self.finish()
            raise RuntimeError(f"the attacker was never refused in {timeout_s:.0f}s")

    def finish(self) -> dict[int, int]:
        self._stop.set()
        try:
            statuses = self._results.get(timeout=self._call_timeout_s + 30)
        finally:
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
        return statuses


def _flood_process_main(url: str, headers: dict, text_streams: int, image_streams: int, refusal_pause_s: float,
                        call_timeout_s: float, stop, saturated, results) -> None:
    async def main() -> dict[int, int]:
        outcomes, stopping = Outcomes(), asyncio.Event()
        async with httpx.AsyncClient(base_url=url, timeout=call_timeout_s,
                                     limits=httpx.Limits(max_connections=64)) as client:
            flooding = asyncio.create_task(flood(client, headers, stopping, outcomes, text_streams=text_streams,
                                                 image_streams=image_streams, refusal_pause_s=refusal_pause_s))
            while not stop.is_set():
                if outcomes.statuses.get(429):
                    saturated.set()
                await asyncio.sleep(0.05)
            stopping.set()
            await flooding
        return outcomes.statuses

    results.put(asyncio.run(main()))
