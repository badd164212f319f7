"""The whole stack for end-to-end tests: the real editor (SQLite file and PostgreSQL, through the
shared `editor` fixture), the real gateway served by uvicorn on a free port, and the SDK.

The SDK is synchronous while the servers run in the test's event loop, so each test runs its
SDK side in a worker thread (`await in_thread(...)`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest

from fabula_sdk import FabulaClient, MINIMUM_KDF
from tests.e2e.database import Database
from tests.integration.gateway.harness import gateway_settings, serve_gateway

PASSWORD = "correct horse battery staple"


async def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(functools.partial(function, *args, **kwargs))


@pytest.fixture
async def gateway(editor):
    async with serve_gateway(gateway_settings(editor.address)) as live:
        yield live


@pytest.fixture
def database(editor) -> Database:
    return Database(editor.settings.database_url)


@pytest.fixture
def connect(gateway):
    """Makes SDK clients of the live gateway (libsodium's minimum Argon2id cost); closes them after."""
    clients: list[FabulaClient] = []

    def make(url: str | None = None) -> FabulaClient:
        client = FabulaClient.connect(url or gateway.url, kdf=MINIMUM_KDF)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
