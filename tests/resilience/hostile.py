"""A gateway as a real process (`python -m gateway`) and a client that sends a hostile body."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class GatewayProcess:
    process: subprocess.Popen
    port: int

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise KeyError(field)

    def rss_mib(self) -> float:
        return self._status_kib("VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return self._status_kib("VmHWM") / 1024

    def reset_peak_rss(self) -> None:
        """From here on VmHWM is the peak since now (Linux: "5" to clear_refs)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


@contextmanager
def gateway_process(log_path: Path, **settings: str) -> Iterator[GatewayProcess]:
    """`python -m gateway` on a free port; the services' addresses lead nowhere (the routes used
    here answer before any service would be asked)."""
    port = free_port()
    env = {**os.environ, "FABULA_GATEWAY_PORT": str(port), "FABULA_GATEWAY_HOST": "127.0.0.1",
           "FABULA_GATEWAY_LOG_LEVEL": "WARNING", "FABULA_GATEWAY_EDITOR_ADDRESS": "127.0.0.1:9",
           "FABULA_GATEWAY_TEXT_ADDRESS": "127.0.0.1:9", "FABULA_GATEWAY_IMAGE_ADDRESS": "127.0.0.1:9",
           **{f"FABULA_GATEWAY_{key.upper()}": value for key, value in settings.items()}}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the gateway exited: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the gateway did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield GatewayProcess(process, port)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class HostileReply:
    status: int
    body: bytes
    sent_bytes: int
    seconds: float


def hostile_json(total_bytes: int) -> Iterator[bytes]:
    """A JSON body of `total_bytes`, nearly all of it empty objects: `{"username": [{},{},...]}`
    (parsed whole, each 3-byte `{},` becomes a dict of about 64 bytes)."""
    yield b'{"username": ['
    piece = b"{}," * (64 * 1024 // 3)
    sent = 14
    while sent + len(piece) + 4 < total_bytes:
        yield piece
        sent += len(piece)
    yield b"{}]}"


async def send_hostile_body(port: int, path: str, total_bytes: int, *, declare_length: bool,
                            timeout_s: float = 60.0) -> HostileReply:
    """POST a hostile JSON body of `total_bytes` (chunked unless `declare_length`), sending until
    the gateway answers or the body ends, and read the answer."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = f"Content-Length: {total_bytes}" if declare_length else "Transfer-Encoding: chunked"
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"{framing}\r\n\r\n".encode())
    sent = 0

    async def pump() -> None:
        nonlocal sent
        try:
            for piece in hostile_json(total_bytes):
                writer.write(piece if declare_length else b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                sent += len(piece)
            if not declare_length:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the gateway answered and closed the connection: exactly what is hoped for

    pumping = asyncio.create_task(pump())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout_s)
        return HostileReply(status=int(lines[0].split()[1]), body=body, sent_bytes=sent,
                            seconds=time.monotonic() - started)
    finally:
        pumping.cancel()
        writer.close()
