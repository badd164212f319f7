"""A real gateway for tests: uvicorn on a free port in the test's event loop, and HTTP users.

The gateway runs exactly as in production (uvicorn, the ASGI middleware stack, the lifespan that
opens the gRPC channels); only the socket is bound here, to port 0, so tests never collide.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from gateway.settings import GatewaySettings
from gateway.main import create_app

# Addresses where nothing listens: the user routes never need the text and image services.
NOWHERE = "127.0.0.1:9"


# A test that counts requests against a limit exactly gives the limit a window far longer than
# any test run: the sliding window counter weighs the previous window's count by the time left in
# it, so requests that straddle a window's boundary (a minute's, an hour's) count as fewer than
# they were, and the request meant to be refused is let through.
EXACT_WINDOW = "year"
EXACT_WINDOW_S = 360 * 24 * 3600  # the `limits` package's year


def exact_limit(count: int) -> str:
    """`count` requests in a window no test straddles (see EXACT_WINDOW)."""
    return f"{count}/{EXACT_WINDOW}"


def gateway_settings(editor_address: str, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = dict(editor_address=editor_address, text_address=NOWHERE, image_address=NOWHERE,
                                     rate_limit="100000/minute", anonymous_rate_limit="100000/minute",
                                     request_timeout_s=10.0, stream_timeout_s=30.0)
    values.update(overrides)
    return GatewaySettings(**values)


@dataclass
class LiveGateway:
    url: str
    settings: GatewaySettings
    server: uvicorn.Server


@asynccontextmanager
async def serve_gateway(settings: GatewaySettings, app: FastAPI | None = None) -> AsyncIterator[LiveGateway]:
    """uvicorn serving the gateway app (`app`, or one made from `settings`) on 127.0.0.1:<free port>
    until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app or create_app(settings), log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2, proxy_headers=False)  # as gateway/__main__.py
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # start-up failed: raise its error
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)
        yield LiveGateway(url=f"http://127.0.0.1:{port}", settings=settings, server=server)
    finally:
        server.should_exit = True
        await task
        sock.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class HttpUser:
    username: str
    auth_key: bytes
    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def registration(username: str, auth_key: bytes | None = None) -> dict:
    """A valid /user/register body (the keys are random: the server cannot tell them apart)."""
    return {"username": username, "salt": b64(os.urandom(16)), "kdf": {"opslimit": 1, "memlimit": 8192},
            "auth_key": b64(auth_key or os.urandom(32)), "keystore": b64(os.urandom(120))}


async def register_user(client: httpx.AsyncClient, username: str) -> HttpUser:
    body = registration(username)
    reply = await client.post("/user/register", json=body)
    assert reply.status_code == 201, reply.text
    session = reply.json()
    return HttpUser(username=username, auth_key=base64.b64decode(body["auth_key"]), token=session["token"],
                    user_id=session["user_id"])


def events_of(body: str) -> list[tuple[str, dict]]:
    """The (event, JSON data) pairs of a server-sent-events body, in order."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        kind, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                kind = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
        if kind:
            events.append((kind, json.loads("\n".join(data))))
    return events


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


async def raw_request(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                      timeout_s: float = 10.0) -> RawReply:
    """One HTTP/1.1 request on a fresh socket that sends `body` (possibly less than the declared
    Content-Length, or nothing) and reads the answer without waiting to send more: it shows
    whether the gateway answered before reading the body."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        lines = raw_head.decode("latin-1").split("\r\n")
        reply_headers = {name.strip().lower(): value.strip()
                         for name, _, value in (line.partition(":") for line in lines[1:] if line)}
        length = int(reply_headers.get("content-length", "0"))
        reply_body = await asyncio.wait_for(reader.readexactly(length), timeout_s)
        return RawReply(status=int(lines[0].split()[1]), headers=reply_headers, body=reply_body)
    finally:
        writer.close()


async def editor_span_chain(finished_spans, trace_id: str, method: str, expected_spans: int) -> list:
    """One trace's spans from the editor's SERVER span of `method` up through its parents, ending
    with the first whose parent is not in the trace (the caller's span is the test's own, never
    recorded): [editor, gateway CLIENT, (gateway HTTP SERVER,) ...]. Spans end just after the answer,
    so this waits (up to 30 s on a loaded machine) until `expected_spans` of the trace are there,
    and leaves the assertions to say what is missing should they never come."""
    import time

    from opentelemetry.trace import SpanKind

    def spans_of_the_trace() -> dict:
        return {span.context.span_id: span for span in finished_spans.get_finished_spans()
                if span.context.trace_id == int(trace_id, 16)}

    def editor_span():
        return next((span for span in spans_of_the_trace().values() if span.kind == SpanKind.SERVER
                     and span.name.endswith(f"EditorService/{method}")), None)

    waited_until = time.monotonic() + 30
    while time.monotonic() < waited_until:
        if editor_span() is not None and len(spans_of_the_trace()) >= expected_spans:
            break
        await asyncio.sleep(0.02)
    spans, span = spans_of_the_trace(), editor_span()
    assert span is not None, "the editor's span is not in the caller's trace"
    chain = [span]
    while chain[-1].parent is not None and chain[-1].parent.span_id in spans:
        chain.append(spans[chain[-1].parent.span_id])
    return chain
