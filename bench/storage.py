"""Storage: saves and loads of 64 KiB encrypted stories, full HTTP stack against the back end alone.

The full stack is what a client meets: a real gateway process (uvicorn) in front of a real editor
process on SQLite, driven by aiohttp clients over keep-alive connections (one connection and one
user, logged in once, per client). The back end alone is the editor's storage object in this process, on its own SQLite
file with the same settings, doing the same writes and reads. Both run at 1 and 16 concurrent
clients, alternating in rounds so that machine noise hits both alike; ratios are full-stack ops/s
divided by back-end ops/s.

Stories move as the SDK moves them: raw bytes through `/user/objects/{type}/{id}/data`
(`application/octet-stream`, metadata in headers), not base64 inside JSON.

The load generator shares the machine's cores with the stack, so it does as little as it can per
request: stories are sealed once with the real SDK, and aiohttp costs a fraction of httpx's CPU
per request.
Where the cores went is reported beside the speeds: CPU milliseconds per operation of the
client, the gateway and the editor processes (figures `*_cpu_ms_*`).

The editor runs with production settings except the Argon2id cost of hashing authentication
keys (libsodium's minimum; it is paid once per login, never per operation measured here), and
the gateway's per-user rate limit is raised above what 16 clients can do.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench.common import percentile
from bench.processes import cpu_seconds, free_port, running_processes

if TYPE_CHECKING:
    import aiohttp

STORY_BYTES = 64 * 1024
STORIES_PER_CLIENT = 4
CONCURRENCY = (1, 16)
# Operations each client does per round: enough for a stable p99 at each concurrency.
OPS_PER_CLIENT = {1: 300, 16: 40}
ROUNDS = 3
START_TIMEOUT_S = 60.0


def sealed_story(story_id: str) -> tuple[bytes, bool]:
    """A 64 KiB ciphertext as a client would upload it, and whether the SDK sealed it.

    With the SDK present, random (so incompressible) text is sealed with the real object format,
    sized so the blob is exactly 64 KiB; the server only ever sees ciphertext, so without the SDK
    random bytes of the same size are equivalent.
    """
    try:
        from fabula_sdk.envelope import OVERHEAD_BYTES, seal_object
        from fabula_wire import ObjectType
    except ImportError:
        return os.urandom(STORY_BYTES), False
    blob = seal_object(os.urandom(32), ObjectType.STORY, story_id, os.urandom(STORY_BYTES - OVERHEAD_BYTES),
                       revision=1)
    return blob, True


@dataclass
class Measurement:
    latencies_s: list[float] = field(default_factory=list)
    ops_per_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds, all rounds

    def add_round(self, latencies: list[float], wall_s: float, cpu_s: dict[str, float]) -> None:
        self.latencies_s += latencies
        self.ops_per_s.append(len(latencies) / wall_s)
        for name, seconds in cpu_s.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + seconds

    def cpu_ms_per_op(self, name: str) -> float:
        return self.cpu_s[name] * 1000 / len(self.latencies_s)

    @property
    def ops(self) -> float:
        return statistics.median(self.ops_per_s)

    def ms(self, fraction: float) -> float:
        return percentile(self.latencies_s, fraction) * 1000


@dataclass
class Client:
    """One simulated user: its stories, their change indexes, and how it reaches the server."""

    name: str
    story_ids: list[str]
    blobs: dict[str, bytes]
    indexes: dict[str, int] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    user_id: str = ""


async def _run_round(clients: list[Client], ops_per_client: int, operation: Callable[[Client, str], Awaitable[None]],
                     processes: dict[str, int | None] | None = None,
                     ) -> tuple[list[float], float, dict[str, float]]:
    """Latencies, wall time, and CPU seconds used meanwhile by `processes` (name -> pid, None for
    this process)."""
    processes = processes or {}
    latencies: list[float] = []

    async def drive(client: Client) -> None:
        for number in range(ops_per_client):
            story_id = client.story_ids[number % len(client.story_ids)]
            started = time.perf_counter()
            await operation(client, story_id)
            latencies.append(time.perf_counter() - started)

    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = time.perf_counter()
    await asyncio.gather(*(drive(client) for client in clients))
    wall = time.perf_counter() - started
    cpu_used = {}
    for name, pid in processes.items():
        before, after = cpu_before[name], cpu_seconds(pid)
        if before is not None and after is not None:
            cpu_used[name] = after - before
    return latencies, wall, cpu_used


# The full stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    url: str
    pids: dict[str, int]  # "gateway" / "editor" -> process id


@contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    """The editor and gateway processes on free ports."""
    editor_port, gateway_port = free_port(), free_port()
    env = {
        "FABULA_EDITOR_PORT": str(editor_port),
        "FABULA_EDITOR_METRICS_PORT": "0",
        "FABULA_EDITOR_DATABASE_URL": f"sqlite:///{workdir / 'stack.db'}",
        "FABULA_EDITOR_AUTH_HASH_OPSLIMIT": "1",
        "FABULA_EDITOR_AUTH_HASH_MEMLIMIT": "8192",
        "FABULA_EDITOR_MIN_KDF_OPSLIMIT": "1",
        "FABULA_EDITOR_MIN_KDF_MEMLIMIT": "8192",
        "FABULA_EDITOR_LOG_LEVEL": "WARNING",
        "FABULA_GATEWAY_PORT": str(gateway_port),
        "FABULA_GATEWAY_EDITOR_ADDRESS": f"127.0.0.1:{editor_port}",
        "FABULA_GATEWAY_RATE_LIMIT": "10000000/minute",
        "FABULA_GATEWAY_ANONYMOUS_RATE_LIMIT": "10000000/minute",
        "FABULA_GATEWAY_LOG_LEVEL": "WARNING",
    }
    url = f"http://127.0.0.1:{gateway_port}"

    def serving() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1.0).status_code == 200  # 200 once the editor serves
        except httpx.HTTPError:
            return False

    with running_processes(["services.editor", "gateway"], env, workdir / "stack.log", serving,
                           START_TIMEOUT_S) as (editor, gateway):
        yield Stack(url=url, pids={"editor": editor.pid, "gateway": gateway.pid})


async def _http_setup(url: str, clients: list[Client]) -> None:
    import aiohttp

    for client in clients:
        # One keep-alive connection per client, as one browser tab or SDK client would hold.
        client.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                            timeout=aiohttp.ClientTimeout(total=60.0))
        client.url = f"{url}/user/objects/stories/"
        async with client.http.post(f"{url}/user/register", json={
            "username": client.name, "salt": base64.b64encode(os.urandom(16)).decode(),
            "kdf": {"opslimit": 1, "memlimit": 8192}, "auth_key": base64.b64encode(os.urandom(32)).decode(),
            "keystore": base64.b64encode(os.urandom(200)).decode()}) as reply:
            reply.raise_for_status()
            token = (await reply.json())["token"]
        client.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        for story_id in client.story_ids:
            await _http_save(client, story_id)


async def _http_save(client: Client, story_id: str) -> None:
    # The raw-bytes route, as the SDK saves: the ciphertext is the body.
    expected = client.indexes.get(story_id, 0)
    async with client.http.put(f"{client.url}{story_id}/data?expected_change_index={expected}",
                               data=client.blobs[story_id], headers=client.headers) as reply:
        answer = await reply.read()
        if reply.status not in (200, 201):
            raise RuntimeError(f"save failed: {reply.status} {answer[:200]!r}")
    client.indexes[story_id] = json.loads(answer)["change_index"]


async def _http_load(client: Client, story_id: str) -> None:
    async with client.http.get(f"{client.url}{story_id}/data", headers=client.headers) as reply:
        answer = await reply.read()
        if reply.status != 200:
            raise RuntimeError(f"load failed: {reply.status} {answer[:200]!r}")
        # What a client does with the answer short of decrypting it: read its change index,
        # check the data came.
        client.indexes[story_id] = int(reply.headers["X-Fabula-Change-Index"])
    if len(answer) != len(client.blobs[story_id]):
        raise RuntimeError("load failed: the data is not the story's")


# The back end alone ---------------------------------------------------------------------------


class Backend:
    """The editor's storage object in-process, configured as the editor process configures it."""

    def __init__(self, database_url: str) -> None:
        from services.editor.settings import EditorSettings
        from services.editor.storage import create_storage

        self.settings = EditorSettings(database_url=database_url)
        self.storage = create_storage(database_url, pool_size=self.settings.database_pool_size,
                                      connect_timeout_s=self.settings.database_connect_timeout_s)

    @staticmethod
    def now_us() -> int:
        return time.time_ns() // 1000

    async def setup(self, clients: list[Client]) -> None:
        from services.editor.types import Account, KdfParams, NewSession

        await self.storage.open()
        for client in clients:
            client.user_id = str(uuid.uuid4())
            account = Account(user_id=client.user_id, username=client.name, salt=os.urandom(16),
                              kdf=KdfParams(opslimit=1, memlimit=8192), auth_hash=b"unused",
                              created_at_us=self.now_us())
            await self.storage.create_account(account, os.urandom(200), NewSession(
                token_hash=os.urandom(32), expires_at_us=self.now_us() + 3600_000_000))
            for story_id in client.story_ids:
                await self.save(client, story_id)

    async def save(self, client: Client, story_id: str) -> None:
        from fabula_wire import ObjectType
        from services.editor.storage.base import ObjectWrite
        from services.editor.types import Quota

        data = client.blobs[story_id]
        # What the editor's domain layer does per save: hash the data, then the conditional write.
        write = ObjectWrite(type=ObjectType.STORY, id=story_id, data=data, sha256=hashlib.sha256(data).digest())
        quota = Quota(max_objects=self.settings.max_objects_per_user, max_bytes=self.settings.max_bytes_per_user)
        meta = await self.storage.put_object(client.user_id, write, client.indexes.get(story_id, 0), quota,
                                             self.now_us())
        client.indexes[story_id] = meta.change_index

    async def load(self, client: Client, story_id: str) -> None:
        from fabula_wire import ObjectType

        stored = await self.storage.get_object(client.user_id, ObjectType.STORY, story_id)
        if stored is None or len(stored.data) != len(client.blobs[story_id]):
            raise RuntimeError("load failed on the back end")


# The benchmark --------------------------------------------------------------------------------


def _clients(prefix: str, count: int) -> tuple[list[Client], bool]:
    clients, sealed_by_sdk = [], True
    for number in range(count):
        ids = [f"story-{number}-{index}" for index in range(STORIES_PER_CLIENT)]
        blobs = {}
        for story_id in ids:
            blobs[story_id], by_sdk = sealed_story(story_id)
            sealed_by_sdk &= by_sdk
        clients.append(Client(name=f"{prefix}-{number}", story_ids=ids, blobs=blobs))
    return clients, sealed_by_sdk


async def _measure(workdir: Path, stack: Stack) -> tuple[dict[str, Measurement], bool]:
    most = max(CONCURRENCY)
    http_clients, sealed_by_sdk = _clients("bench-http", most)
    backend_clients, _ = _clients("bench-backend", most)
    for http_client, backend_client in zip(http_clients, backend_clients, strict=True):
        backend_client.blobs = http_client.blobs  # the very same ciphertexts on both paths
    backend = Backend(f"sqlite:///{workdir / 'backend.db'}")
    await backend.setup(backend_clients)
    await _http_setup(stack.url, http_clients)
    # Whose CPU each path's rounds are charged with: the bench process is the HTTP clients' (or,
    # for the back end, the storage's own) CPU.
    processes = {"http": {"client": None, **stack.pids}, "backend": {"backend": None}}
    operations = {
        ("http", "save"): _http_save, ("http", "load"): _http_load,
        ("backend", "save"): backend.save, ("backend", "load"): backend.load,
    }
    results: dict[str, Measurement] = {}
    try:
        for concurrency in CONCURRENCY:
            for kind in ("save", "load"):
                # A short warm-up of each path, then alternating measured rounds.
                for target, clients in (("backend", backend_clients), ("http", http_clients)):
                    await _run_round(clients[:concurrency], 5, operations[target, kind])
                for _ in range(ROUNDS):
                    for target, clients in (("backend", backend_clients), ("http", http_clients)):
                        latencies, wall, cpu = await _run_round(clients[:concurrency], OPS_PER_CLIENT[concurrency],
                                                                operations[target, kind], processes[target])
                        results.setdefault(f"{target}_{kind}_{concurrency}", Measurement()).add_round(
                            latencies, wall, cpu)
                line = ", ".join(f"{target} {results[f'{target}_{kind}_{concurrency}'].ops:.0f} ops/s "
                                 f"p99 {results[f'{target}_{kind}_{concurrency}'].ms(0.99):.1f} ms"
                                 for target in ("backend", "http"))
                cpu = ", ".join(f"{name} {measurement.cpu_ms_per_op(name):.2f}"
                                for measurement in (results[f"http_{kind}_{concurrency}"],)
                                for name in measurement.cpu_s)
                print(f"   {kind}s at {concurrency:2d} clients: {line}; full stack CPU ms/op: {cpu}", flush=True)
    finally:
        await backend.storage.close()
        for client in http_clients:
            if client.http is not None:
                await client.http.close()
    return results, sealed_by_sdk


def _report(results: dict[str, Measurement], sealed_by_sdk: bool, load_average: tuple[float, float]) -> dict:
    figures: dict[str, float] = {"story_bytes": STORY_BYTES, "sealed_with_sdk": int(sealed_by_sdk)}
    ratios: dict[str, float] = {}
    for concurrency in CONCURRENCY:
        for kind in ("save", "load"):
            for target in ("http", "backend"):
                measurement = results[f"{target}_{kind}_{concurrency}"]
                figures[f"{target}_{kind}_ops_s_{concurrency}"] = round(measurement.ops, 1)
                figures[f"{target}_{kind}_p50_ms_{concurrency}"] = round(measurement.ms(0.50), 2)
                figures[f"{target}_{kind}_p99_ms_{concurrency}"] = round(measurement.ms(0.99), 2)
                for name in measurement.cpu_s:
                    figures[f"{target}_{kind}_cpu_ms_{name}_{concurrency}"] = round(measurement.cpu_ms_per_op(name), 3)
            ratios[f"http_vs_backend_{kind}s_{concurrency}"] = round(
                results[f"http_{kind}_{concurrency}"].ops / results[f"backend_{kind}_{concurrency}"].ops, 3)
    rows = ["| clients | operation | full stack ops/s | back end ops/s | ratio | full stack p50 / p99 ms "
            "| CPU ms/op: client + gateway + editor (back end alone) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for concurrency in CONCURRENCY:
        for kind in ("save", "load"):
            rows.append(
                f"| {concurrency} | {kind} | {figures[f'http_{kind}_ops_s_{concurrency}']:.0f} "
                f"| {figures[f'backend_{kind}_ops_s_{concurrency}']:.0f} "
                f"| {ratios[f'http_vs_backend_{kind}s_{concurrency}']:.2f} "
                f"| {figures[f'http_{kind}_p50_ms_{concurrency}']:.1f} "
                f"/ {figures[f'http_{kind}_p99_ms_{concurrency}']:.1f} | {_cpu_cell(figures, kind, concurrency)} |")
    summary = (
        f"Saves and loads of {STORY_BYTES // 1024} KiB encrypted stories "
        f"({'sealed by the SDK' if sealed_by_sdk else 'random bytes: the SDK was not importable'}): "
        "the full stack (aiohttp clients moving raw bytes through the /data routes, as the SDK does → uvicorn "
        "gateway process → editor process → SQLite) against the editor's "
        f"storage back end alone, in-process, on the same machine in the same run ({ROUNDS} alternating rounds; "
        "ops/s is the median round, percentiles pool every round). The load generator, gateway and editor "
        f"share this machine's {os.cpu_count()} cores; its 1-minute load average (other work included) was "
        f"{load_average[0]:.1f} at the start and {load_average[1]:.1f} at the end. CPU ms/op is each process's "
        "user + system CPU time over the measured rounds divided by the operations done, which other work on "
        "the machine disturbs far less than it does speeds.\n\n" + "\n".join(rows))
    return {"figures": figures, "ratios": ratios, "summary": summary}


def _cpu_cell(figures: dict[str, float], kind: str, concurrency: int) -> str:
    parts = [figures.get(f"http_{kind}_cpu_ms_{name}_{concurrency}") for name in ("client", "gateway", "editor")]
    backend = figures.get(f"backend_{kind}_cpu_ms_backend_{concurrency}")
    if None in parts or backend is None:
        return "n/a"
    return " + ".join(f"{part:.2f}" for part in parts) + f" ({backend:.2f})"


def run() -> dict:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fabula-bench-storage-") as directory:
        workdir = Path(directory)
        with running_stack(workdir) as stack:
            results, sealed_by_sdk = asyncio.run(_measure(workdir, stack))
    return _report(results, sealed_by_sdk, (load_before, os.getloadavg()[0]))
