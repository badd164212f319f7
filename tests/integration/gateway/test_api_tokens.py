"""Personal API tokens over HTTP: a session creates, lists and revokes them; the token itself is
refused by every story and account route (403, decided by the editor) and by the token routes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import b64, gateway_settings, register_user, serve_gateway


@pytest.fixture
async def client(tmp_path):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor:
        # No auth cache: a revoked token is refused on the very next request.
        async with serve_gateway(gateway_settings(editor.address, auth_cache_s=0)) as live, \
                httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            user = await register_user(http, "writer")
            http.headers.update(user.headers)
            yield http


async def test_create_list_revoke(client):
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    created = await client.post("/user/tokens", json={"name": "SillyTavern", "expires_at": expires.isoformat()})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["token"].startswith("fabula_pat_") and body["name"] == "SillyTavern"
    assert datetime.fromisoformat(body["expires_at"]) == expires
    listed = (await client.get("/user/tokens")).json()
    assert [(item["id"], item["name"]) for item in listed] == [(body["id"], "SillyTavern")]
    assert "token" not in listed[0]
    token_headers = {"Authorization": f"Bearer {body['token']}"}
    assert (await client.get("/user/me", headers=token_headers)).json()["scope"] == "generation"
    assert (await client.get("/user/me")).json()["scope"] == "session"
    keystore = await client.get("/user/keystore", headers=token_headers)
    assert keystore.status_code == 403 and keystore.json()["error"]["field"] == "authorization"
    assert (await client.delete(f"/user/tokens/{body['id']}")).status_code == 204
    assert (await client.get("/user/tokens")).json() == []
    assert (await client.delete(f"/user/tokens/{body['id']}")).status_code == 404


async def test_token_never_reaches_stories(client):
    await client.put("/user/objects/stories/s1", json={"data": b64(b"ciphertext"), "expected_change_index": 0})
    token = (await client.post("/user/tokens", json={"name": "script"})).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    for method, path, body in (("GET", "/user/objects/stories/s1", None), ("GET", "/user/objects/stories", None),
                               ("PUT", "/user/objects/stories/s2", {"data": b64(b"x"), "expected_change_index": 0}),
                               ("GET", "/user/keystore", None), ("GET", "/user/export", None),
                               ("POST", "/user/tokens", {"name": "more"}), ("GET", "/user/tokens", None)):
        reply = await client.request(method, path, json=body, headers=headers)
        assert reply.status_code == 403, (method, path, reply.status_code, reply.text)


async def test_bad_requests_name_the_field(client):
    for body, field in (({"name": ""}, "name"), ({"name": "x" * 65}, "name"),
                        ({"name": "a", "expires_at": "2020-01-01T00:00:00"}, "expires_at"),
                        ({"name": "a", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at")):
        reply = await client.post("/user/tokens", json=body)
        assert reply.status_code == 400 and reply.json()["error"]["field"] == field, (body, reply.text)
    assert (await client.delete("/user/tokens/not-hex!")).status_code == 400
