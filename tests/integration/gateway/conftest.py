"""Fixtures for the gateway's integration tests: the real gateway (uvicorn on a free port) in
front of the real in-process editor, on each storage back end (`editor` is parametrized)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.gateway.harness import HttpUser, gateway_settings, register_user, serve_gateway


@pytest.fixture
async def gateway(editor):
    async with serve_gateway(gateway_settings(editor.address)) as live:
        yield live


@pytest.fixture
async def client(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as http:
        yield http


@pytest.fixture
async def alice(client) -> HttpUser:
    return await register_user(client, "alice")


@pytest.fixture
async def bob(client) -> HttpUser:
    return await register_user(client, "bob")


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis_url() -> str:
    """The local Redis; each test's gateways get a key prefix of their own (`redis_prefix`)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except redis.exceptions.ConnectionError as error:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({error}). Start it (CI does).", pytrace=False)
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
async def redis_prefix(redis_url):
    """A key prefix no other test (or parallel run) uses; its keys are deleted afterwards."""
    import uuid

    import redis.asyncio

    prefix = f"test-gateway-{uuid.uuid4().hex}"
    yield prefix
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
