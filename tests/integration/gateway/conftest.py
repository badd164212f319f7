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
