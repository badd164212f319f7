"""SIGKILL in the middle of a stream of writes loses no acknowledged write and leaves no torn object.

The editor runs as a real process (`python -m services.editor`); concurrent clients write objects
whose payload carries its own checksum; the process is killed at a random moment, restarted on
the same database, and everything is checked byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from services.toolkit.callers import new_key_pair
from tests.integration.editor.client import User, register

REPO = Path(__file__).resolve().parents[3]
WRITERS = 6
STORY = pb.OBJECT_TYPE_STORY


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def payload(key: str, version: int) -> bytes:
    """Random bytes prefixed with their SHA-256, so a stored object proves itself complete."""
    body = f"{key}:{version}:".encode() + os.urandom(random.randint(10, 200_000))
    return hashlib.sha256(body).digest() + body


def is_whole(data: bytes) -> bool:
    return len(data) > 32 and hashlib.sha256(data[32:]).digest() == data[:32]


def start_editor(database_url: str, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, FABULA_EDITOR_DATABASE_URL=database_url, FABULA_EDITOR_PORT=str(port),
               FABULA_EDITOR_METRICS_PORT="0", FABULA_EDITOR_AUTH_HASH_OPSLIMIT="1",
               FABULA_EDITOR_AUTH_HASH_MEMLIMIT="8192", FABULA_EDITOR_MIN_KDF_OPSLIMIT="1",
               FABULA_EDITOR_MIN_KDF_MEMLIMIT="8192", FABULA_EDITOR_GRACE_S="0",
               # The test is a direct client (sessions only); the editor still needs the gateway's key.
               FABULA_EDITOR_CALLER_KEYS=new_key_pair()[1])
    return subprocess.Popen([sys.executable, "-m", "services.editor"], cwd=REPO, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def wait_serving(address: str, process: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(int(timeout_s / 0.1)):
            assert process.poll() is None, f"the editor exited early:\n{log.read_text()[-3000:]}"
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the editor did not become SERVING:\n{log.read_text()[-3000:]}")


@dataclass
class Ledger:
    """What the client knows: the last acknowledged version of each object, and writes in flight."""

    acked: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    in_flight: dict[str, tuple[int, bytes]] = field(default_factory=dict)


async def writer(stub, user: User, number: int, ledger: Ledger) -> None:
    keys = [f"w{number}-{n}" for n in range(8)]
    step = 0
    while True:
        step += 1
        key = random.choice(keys)
        index = ledger.acked[key][0] if key in ledger.acked else 0
        data = payload(key, index + 1)
        ledger.in_flight[key] = (index + 1, data)
        try:
            reply = await stub.PutObject(pb.PutObjectRequest(type=STORY, id=key, data=data,
                                                             expected_change_index=index), metadata=user.metadata)
        except grpc.aio.AioRpcError:
            return  # the server is gone; this write's fate is unknown and stays in flight
        assert reply.meta.change_index == index + 1
        ledger.acked[key] = (index + 1, data)
        del ledger.in_flight[key]


async def run_crash_scenario(database_url: str, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "editor.log"
    address = f"127.0.0.1:{port}"
    process = start_editor(database_url, port, log)
    try:
        await wait_serving(address, process, log)
        ledger = Ledger()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = editor_pb2_grpc.EditorServiceStub(channel)
            user = await register(stub, "crash-test")
            tasks = [asyncio.create_task(writer(stub, user, n, ledger)) for n in range(WRITERS)]
            await asyncio.sleep(random.uniform(0.5, 2.0))
            process.send_signal(signal.SIGKILL)
            process.wait()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert len(ledger.acked) >= WRITERS, "too few writes were acknowledged before the kill"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    port = free_port()
    address = f"127.0.0.1:{port}"
    process = start_editor(database_url, port, log)
    try:
        await wait_serving(address, process, log)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = editor_pb2_grpc.EditorServiceStub(channel)
            # The session acknowledged before the crash survived it too.
            await stub.Authenticate(pb.AuthenticateRequest(), metadata=user.metadata)
            listing = await stub.ListObjects(pb.ListObjectsRequest(type=STORY, page_size=1000), metadata=user.metadata)
            stored = {}
            for meta in listing.objects:
                got = await stub.GetObject(pb.GetObjectRequest(type=STORY, id=meta.id), metadata=user.metadata)
                assert is_whole(got.data), f"{meta.id} is torn"
                assert got.meta.size == len(got.data)
                stored[meta.id] = (got.meta.change_index, got.data)
        for key, acked in ledger.acked.items():
            assert key in stored, f"acknowledged {key} was lost"
            # Either exactly what was acknowledged, or the write that was in flight at the kill.
            assert stored[key] == acked or stored[key] == ledger.in_flight.get(key), f"{key} differs"
        for key, version in stored.items():
            assert key in ledger.acked or ledger.in_flight.get(key) == version, f"{key} came from nowhere"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_sigkill_loses_no_acknowledged_write(database_url, tmp_path):
    await run_crash_scenario(database_url, tmp_path)
