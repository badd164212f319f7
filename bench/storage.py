"""Storage: saves and loads of 64 KiB encrypted stories, full HTTP stack against the back end alone.

The full stack is what a client meets: a real gateway process (uvicorn) in front of a real editor
process on SQLite, driven by httpx clients over keep-alive connections, one user (logged in once)
per client. The back end alone is the editor's storage object in this process, on its own SQLite
file with the same settings, doing the same writes and reads. Both run at 1 and 16 concurrent
clients, alternating in rounds so that machine noise hits both alike; ratios are full-stack ops/s
divided by back-end ops/s.

The editor runs with production settings except the Argon2id cost of hashing authentication
keys (libsodium's minimum; it is paid once per login, never per operation measured here), and
the gateway's per-user rate limit is raised above what 16 clients can do.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import percentile

REPO = Path(__file__).resolve().parent.parent
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
        from fabula_sdk.models import ObjectType as SdkObjectType
    except ImportError:
        return os.urandom(STORY_BYTES), False
    blob = seal_object(os.urandom(32), SdkObjectType.STORY, story_id, os.urandom(STORY_BYTES - OVERHEAD_BYTES),
                       revision=1)
    return blob, True


@dataclass
class Measurement:
    latencies_s: list[float] = field(default_factory=list)
    ops_per_s: list[float] = field(default_factory=list)

    def add_round(self, latencies: list[float], wall_s: float) -> None:
        self.latencies_s += latencies
        self.ops_per_s.append(len(latencies) / wall_s)

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
    http: httpx.AsyncClient | None = None
    user_id: str = ""


async def _run_round(clients: list[Client], ops_per_client: int,
                     operation: Callable[[Client, str], Awaitable[None]]) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def drive(client: Client) -> None:
        for number in range(ops_per_client):
            story_id = client.story_ids[number % len(client.story_ids)]
            started = time.perf_counter()
            await operation(client, story_id)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(drive(client) for client in clients))
    return latencies, time.perf_counter() - started


# The full stack -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_stack(workdir: Path) -> Iterator[str]:
    """The editor and gateway processes on free ports; yields the gateway's URL."""
    editor_port, gateway_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "FABULA_EDITOR_PORT": str(editor_port),
        "FABULA_EDITOR_METRICS_PORT": "0",
        "FABULA_EDITOR_DATABASE_URL": f"sqlite:///{workdir / 'stack.db'}",
        "FABULA_EDITOR_AUTH_HASH_OPSLIMIT": "1",
        "FABULA_EDITOR_AUTH_HASH_MEMLIMIT": "8192",
        "FABULA_EDITOR_LOG_LEVEL": "WARNING",
        "FABULA_GATEWAY_PORT": str(gateway_port),
        "FABULA_GATEWAY_EDITOR_ADDRESS": f"127.0.0.1:{editor_port}",
        "FABULA_GATEWAY_RATE_LIMIT": "10000000/minute",
        "FABULA_GATEWAY_ANONYMOUS_RATE_LIMIT": "10000000/minute",
        "FABULA_GATEWAY_LOG_LEVEL": "WARNING",
    }
    log_path = workdir / "stack.log"
    processes: list[subprocess.Popen] = []
    with open(log_path, "wb") as log:
        try:
            for module in ("services.editor", "gateway"):
                processes.append(subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=env,
                                                  stdout=log, stderr=subprocess.STDOUT))
            url = f"http://127.0.0.1:{gateway_port}"
            _wait_until_ready(url, processes, log_path)
            yield url
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_until_ready(url: str, processes: list[subprocess.Popen], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            break
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:  # 200 once the editor serves
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the stack did not start; its log:\n{log_path.read_text()[-3000:]}")


async def _http_setup(url: str, clients: list[Client]) -> None:
    import base64

    for client in clients:
        client.http = httpx.AsyncClient(base_url=url, timeout=60.0, limits=httpx.Limits(max_connections=1))
        reply = await client.http.post("/user/register", json={
            "username": client.name, "salt": base64.b64encode(os.urandom(16)).decode(),
            "kdf": {"opslimit": 1, "memlimit": 8192}, "auth_key": base64.b64encode(os.urandom(32)).decode(),
            "keystore": base64.b64encode(os.urandom(200)).decode()})
        reply.raise_for_status()
        client.http.headers["Authorization"] = f"Bearer {reply.json()['token']}"
        for story_id in client.story_ids:
            await _http_save(client, story_id)


async def _http_save(client: Client, story_id: str) -> None:
    import base64

    expected = client.indexes.get(story_id, 0)
    reply = await client.http.put(f"/user/objects/stories/{story_id}", json={
        "data": base64.b64encode(client.blobs[story_id]).decode(), "expected_change_index": expected})
    if reply.status_code not in (200, 201):
        raise RuntimeError(f"save failed: {reply.status_code} {reply.text}")
    client.indexes[story_id] = reply.json()["change_index"]


async def _http_load(client: Client, story_id: str) -> None:
    reply = await client.http.get(f"/user/objects/stories/{story_id}")
    if reply.status_code != 200 or reply.json()["size"] != len(client.blobs[story_id]):
        raise RuntimeError(f"load failed: {reply.status_code} {reply.text[:200]}")


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
        from services.editor.models import Account, KdfParams, NewSession

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
        from services.editor.models import ObjectType, Quota
        from services.editor.storage.base import ObjectWrite

        data = client.blobs[story_id]
        # What the editor's domain layer does per save: hash the data, then the conditional write.
        write = ObjectWrite(type=ObjectType.STORY, id=story_id, data=data, sha256=hashlib.sha256(data).digest())
        quota = Quota(max_objects=self.settings.max_objects_per_user, max_bytes=self.settings.max_bytes_per_user)
        meta = await self.storage.put_object(client.user_id, write, client.indexes.get(story_id, 0), quota,
                                             self.now_us())
        client.indexes[story_id] = meta.change_index

    async def load(self, client: Client, story_id: str) -> None:
        from services.editor.models import ObjectType

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


async def _measure(workdir: Path, url: str) -> tuple[dict[str, Measurement], bool]:
    most = max(CONCURRENCY)
    http_clients, sealed_by_sdk = _clients("bench-http", most)
    backend_clients, _ = _clients("bench-backend", most)
    for http_client, backend_client in zip(http_clients, backend_clients, strict=True):
        backend_client.blobs = http_client.blobs  # the very same ciphertexts on both paths
    backend = Backend(f"sqlite:///{workdir / 'backend.db'}")
    await backend.setup(backend_clients)
    await _http_setup(url, http_clients)
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
                        latencies, wall = await _run_round(clients[:concurrency], OPS_PER_CLIENT[concurrency],
                                                           operations[target, kind])
                        results.setdefault(f"{target}_{kind}_{concurrency}", Measurement()).add_round(latencies, wall)
                line = ", ".join(f"{target} {results[f'{target}_{kind}_{concurrency}'].ops:.0f} ops/s "
                                 f"p99 {results[f'{target}_{kind}_{concurrency}'].ms(0.99):.1f} ms"
                                 for target in ("backend", "http"))
                print(f"   {kind}s at {concurrency:2d} clients: {line}", flush=True)
    finally:
        await backend.storage.close()
        for client in http_clients:
            await client.http.aclose()
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
            ratios[f"http_vs_backend_{kind}s_{concurrency}"] = round(
                results[f"http_{kind}_{concurrency}"].ops / results[f"backend_{kind}_{concurrency}"].ops, 3)
    rows = ["| clients | operation | full stack ops/s | back end ops/s | ratio | full stack p50 / p99 ms |",
            "| --- | --- | --- | --- | --- | --- |"]
    for concurrency in CONCURRENCY:
        for kind in ("save", "load"):
            rows.append(
                f"| {concurrency} | {kind} | {figures[f'http_{kind}_ops_s_{concurrency}']:.0f} "
                f"| {figures[f'backend_{kind}_ops_s_{concurrency}']:.0f} "
                f"| {ratios[f'http_vs_backend_{kind}s_{concurrency}']:.2f} "
                f"| {figures[f'http_{kind}_p50_ms_{concurrency}']:.1f} "
                f"/ {figures[f'http_{kind}_p99_ms_{concurrency}']:.1f} |")
    summary = (
        f"Saves and loads of {STORY_BYTES // 1024} KiB encrypted stories "
        f"({'sealed by the SDK' if sealed_by_sdk else 'random bytes: the SDK was not importable'}): "
        "the full stack (httpx → uvicorn gateway process → editor process → SQLite) against the editor's "
        f"storage back end alone, in-process, on the same machine in the same run ({ROUNDS} alternating rounds; "
        "ops/s is the median round, percentiles pool every round). The load generator, gateway and editor "
        "share this machine's cores; its 1-minute load average (other work included) was "
        f"{load_average[0]:.1f} at the start and {load_average[1]:.1f} at the end.\n\n" + "\n".join(rows))
    return {"figures": figures, "ratios": ratios, "summary": summary}


def run() -> dict:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fabula-bench-storage-") as directory:
        workdir = Path(directory)
        with running_stack(workdir) as url:
            results, sealed_by_sdk = asyncio.run(_measure(workdir, url))
    return _report(results, sealed_by_sdk, (load_before, os.getloadavg()[0]))
