"""Fabula's processes as a deployment runs them (`python -m <module>`), for benchmarks that
measure the real thing: free ports, starting and stopping, waiting until ready, CPU time.

The services accept only calls signed by the gateway: the processes started here share one
caller-token key pair made for this benchmark run, and `signed_channel` opens a channel whose
calls carry tokens signed with it, for a benchmark that talks to a service directly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from services.toolkit.callers import TokenSigner, caller_token_interceptors, new_key_pair

REPO = Path(__file__).resolve().parent.parent
_SIGNING_KEY, _PUBLIC_KEY = new_key_pair()


def caller_keys_env() -> dict[str, str]:
    """The caller-token keys of this run, for every process (each reads its own)."""
    return {"FABULA_GATEWAY_CALLER_SIGNING_KEY": _SIGNING_KEY, "FABULA_EDITOR_CALLER_KEYS": _PUBLIC_KEY,
            "FABULA_TEXT_CALLER_KEYS": _PUBLIC_KEY, "FABULA_IMAGE_CALLER_KEYS": _PUBLIC_KEY}


def signed_channel(address: str, audience: str, user_id: str = "") -> grpc.aio.Channel:
    """A channel to the service `audience` at `address` whose calls the gateway might have made
    for `user_id` ("" = no user: no per-user cap applies)."""
    interceptors = caller_token_interceptors(TokenSigner(_SIGNING_KEY), audience, user_id)
    return grpc.aio.insecure_channel(address, interceptors=interceptors)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU time of a process (this one by default); None where /proc is missing."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def threads_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process's live threads, summed from the scheduler's nanosecond counters
    (/proc/<pid>/task/*/schedstat): fine enough to charge one request of a few milliseconds, where
    /proc/<pid>/stat counts in 10 ms ticks. A thread that ended takes its time with it, so this is
    for differences over a short span of a process whose threads live on (a server's)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    total_ns = 0
    for task in tasks:
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    return total_ns / 1e9


@contextmanager
def running_processes(modules: list[str], env: dict[str, str], log_path: Path, is_ready: Callable[[], bool],
                      start_timeout_s: float = 60.0) -> Iterator[list[subprocess.Popen]]:
    """Start `python -m module` for each module (with `env` over this process's environment), wait
    until `is_ready()` is true, and stop them all with SIGTERM (then SIGKILL) at the end."""
    processes: list[subprocess.Popen] = []
    with open(log_path, "wb") as log:
        try:
            for module in modules:
                processes.append(subprocess.Popen([sys.executable, "-m", module], cwd=REPO,
                                                  env={**os.environ, **caller_keys_env(), **env},
                                                  stdout=log, stderr=subprocess.STDOUT))
            _wait_until_ready(is_ready, processes, log_path, start_timeout_s)
            yield processes
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


def _wait_until_ready(is_ready: Callable[[], bool], processes: list[subprocess.Popen], log_path: Path,
                      timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            break
        if is_ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{' and '.join(str(p.args[-1]) for p in processes)} did not start; the log:\n"
                       f"{log_path.read_text(errors='replace')[-3000:]}")


def grpc_serving(address: str) -> bool:
    """Whether the gRPC server at `address` answers its standard health check with SERVING (the
    services do once their models are loaded and warmed up)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
