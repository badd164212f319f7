"""The whole stack as real processes on localhost, for fault tests and `python -m bench resilience`.

Each process is started as a deployment starts it (`python -m services.<name>`, `python -m
gateway`) with its settings in the environment, on free ports, its output in a log file. A
service can be killed (SIGKILL), restarted on the same port, or rolled: a replacement is started
on the same port (gRPC servers bind with SO_REUSEPORT, as two pods share a Service) and, once it
is SERVING, the old one gets SIGTERM and drains.

Load runs in threads (the SDK-like HTTP calls are blocking), and every answer is recorded with
its send and receive times so that a test can ask what happened after a fault.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.toolkit.callers import new_key_pair

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
SERVING_LINE = "serving (health SERVING)"

TEXT_BODY = {"prompt": "The knight", "max_new_tokens": 4, "seed": 9, "preset": "neutral"}
IMAGE_BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 1, "seed": 42, "sampler": "euler"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    """One `python -m module` child; `generation` counts restarts so each gets its own log."""

    name: str
    module: str
    port: int
    env: dict[str, str]
    workdir: Path
    child: subprocess.Popen | None = None
    generation: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.{self.generation}.log"

    def spawn(self) -> subprocess.Popen:
        """A new child on this process's port (beside a running one, if any: SO_REUSEPORT)."""
        self.generation += 1
        with self.log_path.open("wb") as log:
            return subprocess.Popen([sys.executable, "-m", self.module], cwd=REPO, env={**os.environ, **self.env},
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self.child = self.spawn()
        self.wait_ready(self.child)

    def wait_ready(self, child: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {child.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        # The service's own log line, not a health check on the port: during a rolling restart the
        # port is shared with the old process, which may be the one that answers.
        if self.module == "gateway":
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/health/live", timeout=1).is_success
            except httpx.HTTPError:
                return False
        return SERVING_LINE in self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, as when a node dies or the OOM killer strikes."""
        assert self.child is not None
        self.child.kill()
        self.child.wait()

    def roll(self) -> subprocess.Popen:
        """A rolling restart: the replacement starts beside the old child; once it is SERVING, the
        old one gets SIGTERM and drains. Returns the old child (already exited)."""
        assert self.child is not None
        old, new = self.child, self.spawn()
        self.wait_ready(new)
        self.child = new
        old.send_signal(signal.SIGTERM)
        old.wait(timeout=60)
        return old

    def stop(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@dataclass
class Stack:
    processes: dict[str, Process]
    url: str

    def __getitem__(self, name: str) -> Process:
        return self.processes[name]


def _tiny_text_model(workdir: Path) -> Path:
    from services.text.testing import build_tiny_model

    folder = workdir / "tiny-text"
    build_tiny_model(folder)
    return folder


@contextmanager
def running_stack(workdir: Path, *, database_url: str | None = None, drain_delay_s: float = 1.0) -> Iterator[Stack]:
    """Editor (SQLite by default), text (a tiny seeded model), image (the built-in tiny model)
    and the gateway, each a process of its own; all stopped at the end."""
    ports = {name: free_port() for name in ("editor", "text", "image", "gateway")}
    # The gateway signs every call with a key made for this stack; the services check its public half.
    signing_key, public_key = new_key_pair()
    common = {"METRICS_PORT": "0", "LOG_LEVEL": "INFO", "DRAIN_DELAY_S": str(drain_delay_s), "GRACE_S": "20",
              "CALLER_KEYS": public_key}
    service_env = {
        "editor": {"DATABASE_URL": database_url or f"sqlite:///{workdir / 'editor.db'}",
                   "AUTH_HASH_OPSLIMIT": "1", "AUTH_HASH_MEMLIMIT": "8192", "DEFAULT_KDF_OPSLIMIT": "1",
                   "DEFAULT_KDF_MEMLIMIT": "8192", "MIN_KDF_OPSLIMIT": "1", "MIN_KDF_MEMLIMIT": "8192"},
        "text": {"MODELS": f'{{"tiny": "{_tiny_text_model(workdir)}"}}', "CACHE_DIR": str(workdir / "text-cache"),
                 "DEVICE": "cpu", "QUANTIZATION": "none", "THREADS": "1", "WARMUP_TOKENS": "1", "MAX_QUEUE": "64"},
        "image": {"DEVICE": "cpu", "BACKEND": "eager", "THREADS": "1", "WARMUP_STEPS": "1", "MAX_QUEUE": "64"},
    }
    processes: dict[str, Process] = {}
    for name, extra in service_env.items():
        prefix = f"FABULA_{name.upper()}_"
        env = {prefix + key: value for key, value in {**common, **extra, "PORT": str(ports[name])}.items()}
        processes[name] = Process(name, f"services.{name}", ports[name], env, workdir)
    gateway_env = {"FABULA_GATEWAY_PORT": str(ports["gateway"]), "FABULA_GATEWAY_LOG_LEVEL": "WARNING",
                   "FABULA_GATEWAY_CALLER_SIGNING_KEY": signing_key,
                   "FABULA_GATEWAY_RATE_LIMIT": "1000000/minute",
                   "FABULA_GATEWAY_ANONYMOUS_RATE_LIMIT": "1000000/minute",
                   **{f"FABULA_GATEWAY_{name.upper()}_ADDRESS": f"127.0.0.1:{ports[name]}"
                      for name in ("editor", "text", "image")}}
    processes["gateway"] = Process("gateway", "gateway", ports["gateway"], gateway_env, workdir)
    try:
        for process in processes.values():
            process.start()
        yield Stack(processes, f"http://127.0.0.1:{ports['gateway']}")
    finally:
        for process in reversed(processes.values()):
            process.stop()


def register(url: str) -> dict[str, str]:
    """A fresh account (libsodium's minimum cost: the stack's floor is lowered); its auth headers."""
    import base64

    username = f"load-{uuid.uuid4().hex[:12]}"
    reply = httpx.post(f"{url}/user/register", timeout=30, json={
        "username": username, "salt": base64.b64encode(os.urandom(16)).decode(),
        "kdf": {"opslimit": 1, "memlimit": 8192}, "auth_key": base64.b64encode(os.urandom(32)).decode(),
        "keystore": base64.b64encode(b"keystore").decode()})
    reply.raise_for_status()
    return {"Authorization": f"Bearer {reply.json()['token']}"}


# --- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic()
    received: float
    status: int  # 0: no HTTP answer at all (connection error or client timeout)
    retry_after: str | None


@dataclass
class Load:
    """Workers calling one kind of request in a loop until stopped; every answer recorded."""

    answers: list[Answer] = field(default_factory=list)
    # Writes the gateway acknowledged: object id -> (the writer's auth headers, the data).
    acknowledged: dict[str, tuple[dict[str, str], bytes]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def after(self, moment: float) -> list[Answer]:
        with self._lock:
            return [answer for answer in self.answers if answer.sent >= moment]

    def server_errors(self) -> list[Answer]:
        with self._lock:
            return [answer for answer in self.answers if answer.status >= 500 or answer.status == 0]

    def describe(self, answers: list[Answer], origin: float) -> str:
        """Answers summarised for an assertion message: count by status, times from `origin`."""
        if not answers:
            return "none"
        by_status: dict[int, int] = {}
        for answer in answers:
            by_status[answer.status] = by_status.get(answer.status, 0) + 1
        return (f"{len(answers)} answers {by_status}, sent from {answers[0].sent - origin:+.2f}s to "
                f"{answers[-1].sent - origin:+.2f}s, slowest {max(a.received - a.sent for a in answers):.2f}s")

    def successes_after(self, moment: float) -> list[Answer]:
        return [answer for answer in self.after(moment) if 200 <= answer.status < 300]

    def wait_for_success_after(self, moment: float, timeout_s: float) -> Answer | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := self.successes_after(moment):
                return found[0]
            time.sleep(0.05)
        return None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()


def _call(load: Load, client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response | None:
    sent = time.monotonic()
    try:
        reply = client.request(method, path, **kwargs)
    except httpx.HTTPError:
        load.record(Answer(sent, time.monotonic(), 0, None))
        return None
    load.record(Answer(sent, time.monotonic(), reply.status_code, reply.headers.get("retry-after")))
    return reply


def _editor_worker(load: Load, client: httpx.Client) -> None:
    """Creates new objects (each write acknowledged or not, never ambiguous to the check) and
    reads each back, alternately by the JSON routes and by the raw-bytes routes (which the gateway
    sends on its ObjectData streams, gateway/object_stream.py)."""
    import base64

    raw = True
    while not load.stopped:
        object_id = uuid.uuid4().hex
        data = os.urandom(64)
        raw = not raw
        if raw:
            reply = _call(load, client, "PUT", f"/user/objects/stories/{object_id}/data?expected_change_index=0",
                          content=data, headers={"Content-Type": "application/octet-stream"})
        else:
            reply = _call(load, client, "PUT", f"/user/objects/stories/{object_id}",
                          json={"data": base64.b64encode(data).decode(), "expected_change_index": 0})
        if reply is not None and reply.status_code == 201:
            with load._lock:
                load.acknowledged[object_id] = (dict(client.headers), data)
        _call(load, client, "GET", f"/user/objects/stories/{object_id}" + ("/data" if raw else ""))


def _text_worker(load: Load, client: httpx.Client) -> None:
    while not load.stopped:
        _call(load, client, "POST", "/ai/generate", json=TEXT_BODY)


def _image_worker(load: Load, client: httpx.Client) -> None:
    while not load.stopped:
        _call(load, client, "POST", "/ai/generate-image", json=IMAGE_BODY)


WORKERS: dict[str, Callable[[Load, httpx.Client], None]] = {
    "editor": _editor_worker, "text": _text_worker, "image": _image_worker}


@contextmanager
def load_on(stack: Stack, service: str, *, workers: int = 3, timeout_s: float = 30.0) -> Iterator[Load]:
    """`workers` threads calling the gateway routes that need `service`, each as its own user."""
    load = Load()
    clients = [httpx.Client(base_url=stack.url, headers=register(stack.url), timeout=timeout_s)
               for _ in range(workers)]
    threads = [threading.Thread(target=WORKERS[service], args=(load, client), daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        load.stop()
        for thread in threads:
            thread.join(timeout=timeout_s + 5)
        for client in clients:
            client.close()


def missing_writes(stack: Stack, load: Load) -> list[str]:
    """Acknowledged objects that are gone, or whose stored data is not what was acknowledged."""
    import base64

    missing = []
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        for object_id, (headers, data) in load.acknowledged.items():
            reply = client.get(f"/user/objects/stories/{object_id}", headers=headers)
            if reply.status_code != 200 or base64.b64decode(reply.json()["data"]) != data:
                missing.append(f"{object_id}: {reply.status_code}")
    return missing
