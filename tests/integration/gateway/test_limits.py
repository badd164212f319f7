"""Request body limits (413 naming "body") and per-user / per-address rate limits (429)."""

from __future__ import annotations

import os

import httpx

from tests.integration.gateway.harness import (EXACT_WINDOW_S, b64, exact_limit, gateway_settings, register_user,
                                               registration, serve_gateway)


async def test_body_over_the_limit_is_413_declared_or_streamed(editor):
    async with serve_gateway(gateway_settings(editor.address, max_object_body_bytes=4096)) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            user = await register_user(client, "erin")
            body = f'{{"data": "{b64(os.urandom(6000))}", "expected_change_index": 0}}'.encode()
            headers = {**user.headers, "Content-Type": "application/json"}

            declared = await client.put("/user/objects/stories/big", headers=headers, content=body)
            assert declared.status_code == 413
            assert declared.json()["error"] == {"code": "PAYLOAD_TOO_LARGE", "field": "body",
                                                "message": declared.json()["error"]["message"]}

            async def chunked():
                for start in range(0, len(body), 1000):
                    yield body[start:start + 1000]

            # Without Content-Length the limit trips while FastAPI reads the body.
            streamed = await client.put("/user/objects/stories/big", headers=headers, content=chunked())
            assert streamed.status_code == 413
            assert streamed.json()["error"]["field"] == "body"

            assert (await client.get("/user/objects/stories/big", headers=user.headers)).status_code == 404
            small = await client.put("/user/objects/stories/small", headers=user.headers,
                                     json={"data": b64(b"fits"), "expected_change_index": 0})
            assert small.status_code == 201


async def test_per_user_rate_limit_answers_429_with_retry_after(editor):
    settings = gateway_settings(editor.address, rate_limit=exact_limit(3), anonymous_rate_limit="1000/minute")
    async with serve_gateway(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            frank, grace = await register_user(client, "frank"), await register_user(client, "grace")
            statuses = [(await client.get("/user/objects/stories", headers=frank.headers)).status_code
                        for _ in range(3)]
            assert statuses == [200, 200, 200]
            limited = await client.get("/user/objects/stories", headers=frank.headers)
            assert limited.status_code == 429
            assert limited.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
            assert 1 <= int(limited.headers["Retry-After"]) <= EXACT_WINDOW_S
            # Another user has a budget of their own.
            assert (await client.get("/user/objects/stories", headers=grace.headers)).status_code == 200


async def test_anonymous_calls_are_limited_per_address(editor):
    settings = gateway_settings(editor.address, anonymous_rate_limit=exact_limit(2))
    async with serve_gateway(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            assert (await client.post("/user/register", json=registration("henry"))).status_code == 201
            assert (await client.post("/user/salt", json={"username": "henry"})).status_code == 200
            limited = await client.post("/user/login", json={"username": "henry", "auth_key": b64(os.urandom(32))})
            assert limited.status_code == 429
            assert int(limited.headers["Retry-After"]) >= 1
