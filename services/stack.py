"""`make run`: every Fabula process on localhost with its embedded defaults, until Ctrl-C.

Starts each service that exists (editor, text, image) and the gateway as child processes (with a
caller-token key pair made for this run: the gateway signs, the services verify), waits
until each reports SERVING on the standard gRPC health service, prints the URLs, and on Ctrl-C
(or SIGTERM) asks every child to stop, giving it its drain grace before killing it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import sys
import time
from dataclasses import dataclass

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.toolkit.callers import new_key_pair, public_key_of

STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class Process:
    name: str
    module: str
    env_prefix: str
    default_port: int
    speaks_grpc: bool = True  # the gateway speaks HTTP

    @property
    def port(self) -> int:
        # The same variable the process's own settings read, so an override moves both.
        return int(os.environ.get(f"{self.env_prefix}PORT", self.default_port))


PROCESSES = (
    Process("editor", "services.editor", "FABULA_EDITOR_", 50051),
    Process("text", "services.text", "FABULA_TEXT_", 50052),
    Process("image", "services.image", "FABULA_IMAGE_", 50053),
    Process("gateway", "gateway", "FABULA_GATEWAY_", 8000, speaks_grpc=False),
)


def _child_environment() -> dict[str, str]:
    """Point the gateway at the services' ports, and give it a caller-token signing key generated
    for this run with its public key to every service, unless the user set them."""
    env = dict(os.environ)
    signing_key = env.get("FABULA_GATEWAY_CALLER_SIGNING_KEY") or new_key_pair()[0]
    env["FABULA_GATEWAY_CALLER_SIGNING_KEY"] = signing_key
    for process in PROCESSES:
        if process.speaks_grpc:
            env.setdefault(f"FABULA_GATEWAY_{process.name.upper()}_ADDRESS", f"127.0.0.1:{process.port}")
            env.setdefault(f"{process.env_prefix}CALLER_KEYS", public_key_of(signing_key))
    return env


def _exists(process: Process) -> bool:
    return importlib.util.find_spec(f"{process.module}.__main__") is not None


async def _wait_grpc_serving(port: int, child: asyncio.subprocess.Process, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and child.returncode is None:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.5)
    return False


async def _wait_http_live(port: int, child: asyncio.subprocess.Process, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline and child.returncode is None:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/health/live", timeout=1.0)).is_success:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    return False


async def _stop(children: dict[str, asyncio.subprocess.Process]) -> None:
    for child in children.values():
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    for name, child in children.items():
        try:
            await asyncio.wait_for(child.wait(), STOP_GRACE_S)
        except TimeoutError:
            print(f"  {name} did not stop within {STOP_GRACE_S:.0f}s; killing it", flush=True)
            child.kill()
            await child.wait()


async def run(only: list[str] | None, ready_timeout_s: float) -> int:
    wanted = [p for p in PROCESSES if _exists(p) and (not only or p.name in only)]
    os.makedirs("data", exist_ok=True)
    children: dict[str, asyncio.subprocess.Process] = {}
    env = _child_environment()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for process in wanted:
            # Each child gets its own process group so Ctrl-C reaches only this launcher, which
            # then stops the children in order with their drain grace.
            children[process.name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", process.module, env=env, start_new_session=True)
        print("Starting Fabula:", ", ".join(p.name for p in wanted), flush=True)
        for process in wanted:
            child = children[process.name]
            if process.speaks_grpc:
                ok = await _wait_grpc_serving(process.port, child, ready_timeout_s)
                where = f"grpc://127.0.0.1:{process.port}"
            else:
                ok = await _wait_http_live(process.port, child, ready_timeout_s)
                where = f"http://127.0.0.1:{process.port}  (API docs: /docs)"
            if not ok:
                print(f"  {process.name} did not become ready (exit code {child.returncode})", flush=True)
                return 1
            print(f"  {process.name:8} {where}", flush=True)
        print("Fabula is running. Press Ctrl-C to stop.", flush=True)
        waiters = [asyncio.create_task(child.wait()) for child in children.values()]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
        if stopper not in done:
            dead = [name for name, child in children.items() if child.returncode is not None]
            print(f"  {', '.join(dead)} exited unexpectedly; stopping the rest", flush=True)
            return 1
        return 0
    finally:
        print("Stopping Fabula...", flush=True)
        await _stop(children)
        print("Stopped.", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="start only these processes (editor text image gateway)")
    parser.add_argument("--ready-timeout", type=float, default=600.0,
                        help="seconds each process gets to load its models and report SERVING")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.only, args.ready_timeout)))


if __name__ == "__main__":
    main()
