"""Rate limits shared by every replica through Redis, forwarded-header trust, failed logins."""

from __future__ import annotations

import base64
import os
from contextlib import AsyncExitStack

import httpx
import pytest

from tests.integration.gateway.harness import (b64, exact_limit, gateway_settings, register_user, registration,
                                               serve_gateway)


async def _two_gateways(stack: AsyncExitStack, editor_address: str, **settings: object) -> list[httpx.AsyncClient]:
    clients = []
    for _ in range(2):
        live = await stack.enter_async_context(serve_gateway(gateway_settings(editor_address, **settings)))
        clients.append(await stack.enter_async_context(httpx.AsyncClient(base_url=live.url, timeout=30.0)))
    return clients


async def test_two_gateways_sharing_redis_allow_the_rate_once(editor, redis_url, redis_prefix):
    async with AsyncExitStack() as stack:
        first, second = await _two_gateways(stack, editor.address, rate_limit=exact_limit(4),
                                            redis_url=redis_url, rate_limit_key_prefix=redis_prefix)
        user = await register_user(first, "quinn")
        statuses = [(await gateway.get("/user/objects/stories", headers=user.headers)).status_code
                    for gateway in (first, second, first, second, first, second)]
        assert statuses == [200, 200, 200, 200, 429, 429]


async def test_without_redis_each_gateway_counts_alone(editor):
    """The contrast that shows the test above measures sharing: in memory, two replicas allow twice."""
    async with AsyncExitStack() as stack:
        first, second = await _two_gateways(stack, editor.address, rate_limit=exact_limit(2))
        user = await register_user(first, "rita")
        statuses = [(await gateway.get("/user/objects/stories", headers=user.headers)).status_code
                    for gateway in (first, second, first, second, first)]
        assert statuses == [200, 200, 200, 200, 429]


async def test_an_unreachable_redis_answers_503_not_unlimited(editor):
    settings = gateway_settings(editor.address, redis_url="redis://127.0.0.1:9/0", redis_timeout_s=0.5)
    async with serve_gateway(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            reply = await client.post("/user/salt", json={"username": "sam"})
            assert reply.status_code == 503
            assert reply.json()["error"]["code"] == "UNAVAILABLE"
            assert int(reply.headers["Retry-After"]) >= 1


async def _login(client: httpx.AsyncClient, username: str, auth_key: bytes, **headers: str) -> int:
    reply = await client.post("/user/login", json={"username": username, "auth_key": b64(auth_key)},
                              headers=headers)
    return reply.status_code


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_failed_logins_are_limited_per_username(editor, redis_url, redis_prefix, storage):
    shared = {"redis_url": redis_url, "rate_limit_key_prefix": redis_prefix} if storage == "redis" else {}
    settings = gateway_settings(editor.address, failed_login_limit_per_username=exact_limit(3), **shared)
    async with serve_gateway(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            body = registration("tess")
            assert (await client.post("/user/register", json=body)).status_code == 201
            right = base64.b64decode(body["auth_key"])
            # Successes never count.
            assert [await _login(client, "tess", right) for _ in range(4)] == [200] * 4
            assert [await _login(client, "tess", os.urandom(32)) for _ in range(3)] == [401] * 3
            # Spent: even the right key waits, and the name's case does not open a new budget.
            assert await _login(client, "tess", right) == 429
            assert await _login(client, "TESS", os.urandom(32)) == 429
            # An unknown username is counted the same way, so 429 tells nothing about accounts.
            assert [await _login(client, "nobody", os.urandom(32)) for _ in range(4)] == [401] * 3 + [429]
            # Another account is untouched.
            other = await register_user(client, "uma")
            assert await _login(client, "uma", other.auth_key) == 200


async def test_failed_logins_are_limited_per_address(editor, redis_url, redis_prefix):
    settings = gateway_settings(editor.address, failed_login_limit_per_address=exact_limit(3),
                                redis_url=redis_url, rate_limit_key_prefix=redis_prefix)
    async with serve_gateway(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            victim = await register_user(client, "vera")
            statuses = [await _login(client, f"guess{i}", os.urandom(32)) for i in range(3)]
            assert statuses == [401] * 3
            # Spraying one password over many usernames from one address stops here.
            assert await _login(client, "vera", victim.auth_key) == 429


async def test_forwarded_for_counts_only_from_trusted_proxies(editor, redis_url, redis_prefix):
    common = {"anonymous_rate_limit": exact_limit(2), "redis_url": redis_url}
    untrusted = gateway_settings(editor.address, rate_limit_key_prefix=f"{redis_prefix}-a", **common)
    async with serve_gateway(untrusted) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            # Each request poses as another address; all are counted as the real peer.
            statuses = [(await client.post("/user/salt", json={"username": "w"},
                                           headers={"X-Forwarded-For": f"203.0.113.{i}"})).status_code
                        for i in range(3)]
            assert statuses == [200, 200, 429]

    trusted = gateway_settings(editor.address, rate_limit_key_prefix=f"{redis_prefix}-b",
                               trusted_proxies=["127.0.0.0/8"], **common)
    async with serve_gateway(trusted) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            async def salt(forwarded_for: str) -> int:
                reply = await client.post("/user/salt", json={"username": "w"},
                                          headers={"X-Forwarded-For": forwarded_for})
                return reply.status_code

            # Behind a trusted proxy each client has its own budget...
            assert [await salt("203.0.113.1") for _ in range(3)] == [200, 200, 429]
            assert await salt("203.0.113.2") == 200
            # ...and what a client writes to the left of the proxy's entry changes nothing.
            assert await salt("198.51.100.77, 203.0.113.1") == 429
