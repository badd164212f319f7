"""Three exports read at a crawl do not block another user's calls: an export is spooled from its
snapshot first, so no download holds a database connection at the client's pace.

The real gateway (uvicorn) in front of the real editor, on each storage back end, with a pool of
two connections (SQLite: two readers): fewer than the slow downloads.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import tarfile

import httpx
import pytest

from services.editor.embedded import fast_settings
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway

OBJECT_BYTES = 12 * 1024 * 1024
# Bigger than what the sockets and gRPC windows between editor, gateway and client can buffer,
# so a download that stops reading really stalls its export mid-stream.
OBJECTS_PER_USER = 3


@pytest.fixture
def editor_settings(database_url):
    return fast_settings(database_url, database_pool_size=2, max_concurrent_transfers=4)


async def fill(client: httpx.AsyncClient, user) -> None:
    for number in range(OBJECTS_PER_USER):
        data = base64.b64encode(os.urandom(OBJECT_BYTES)).decode()
        reply = await client.put(f"/user/objects/images/img{number}", headers=user.headers,
                                 json={"data": data, "expected_change_index": 0})
        assert reply.status_code in (200, 201), reply.text


async def test_slow_exports_do_not_block_another_users_calls(editor):
    settings = gateway_settings(editor.address, request_timeout_s=10.0, stream_timeout_s=120.0)
    async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60.0) as client:
        exporters = [await register_user(client, f"exporter{n}") for n in range(3)]
        for user in exporters:
            await fill(client, user)
        bystander = await register_user(client, "bystander")

        streams = []
        try:
            for user in exporters:
                request = client.build_request("GET", "/user/export", headers=user.headers)
                response = await client.send(request, stream=True)
                assert response.status_code == 200
                pieces = response.aiter_raw()
                first = await anext(pieces)  # then this client stops reading
                streams.append((response, pieces, bytearray(first)))

            # Every slow download is open and stalled; another user's calls are answered.
            for _ in range(3):
                me = await client.get("/user/me", headers=bystander.headers, timeout=20.0)
                assert me.status_code == 200, me.text
            listing = await client.get("/user/objects/images", headers=bystander.headers, timeout=20.0)
            assert listing.status_code == 200

            # The stalled downloads were only paused: each finishes whole.
            for response, pieces, received in streams:
                async for piece in pieces:
                    received += piece
                with tarfile.open(fileobj=io.BytesIO(bytes(received)), mode="r:") as tar:
                    names = tar.getnames()
                assert sum(name.startswith("objects/images/") for name in names) == OBJECTS_PER_USER
        finally:
            await asyncio.gather(*(response.aclose() for response, _, _ in streams))
