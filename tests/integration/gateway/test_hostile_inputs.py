"""Hostile and malformed requests: each gets a 4xx naming the field at fault, never a 500.

The gateway's checks do not depend on the storage back end, so this table runs against one
stack (SQLite) shared by the module; the editor's own hostile-input tests cover both back ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx
import pytest
import pytest_asyncio

from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import HttpUser, b64, gateway_settings, register_user, serve_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

GOOD_KDF = {"opslimit": 1, "memlimit": 8192}
SALT, KEY, BLOB = b64(b"s" * 16), b64(b"k" * 32), b64(b"ciphertext")


def register_body(**changes) -> dict:
    return {"username": "someone", "salt": SALT, "kdf": GOOD_KDF, "auth_key": KEY, "keystore": BLOB} | changes


def change_password_body(**changes) -> dict:
    return {"old_auth_key": KEY, "new_salt": SALT, "new_kdf": GOOD_KDF, "new_auth_key": KEY,
            "keystore": BLOB, "expected_keystore_change_index": 1} | changes


@dataclass
class Case:
    method: str
    path: str
    status: int
    field: str | None
    json: object = None
    raw: bytes | None = None  # sent as an application/json body, byte for byte
    headers: dict[str, str | bytes] = field(default_factory=dict)
    signed_in: bool = False


CASES = {
    # The body as a whole.
    "no body": Case("POST", "/user/register", 400, "body"),
    "invalid JSON": Case("POST", "/user/register", 400, "body", raw=b'{"username": '),
    "JSON array": Case("POST", "/user/register", 400, "body", json=[1, 2]),
    "not UTF-8": Case("POST", "/user/register", 400, "body", raw=b'{"username": "\xff\xfe"}'),
    "text/plain body": Case("POST", "/user/login", 400, "body", raw=None, json=None,
                            headers={"Content-Type": "text/plain"}),
    # Types and base64, top level and nested.
    "username a number": Case("POST", "/user/register", 400, "username", json=register_body(username=42)),
    "username null": Case("POST", "/user/login", 400, "username", json={"username": None, "auth_key": KEY}),
    "username missing": Case("POST", "/user/salt", 400, "username", json={}),
    "lone surrogate": Case("POST", "/user/salt", 400, "username", raw=b'{"username": "a\\ud800b"}'),
    "salt not base64": Case("POST", "/user/register", 400, "salt", json=register_body(salt="not base64!")),
    "salt unpadded": Case("POST", "/user/register", 400, "salt", json=register_body(salt="c3NzcwZ")),
    "auth_key a number": Case("POST", "/user/register", 400, "auth_key", json=register_body(auth_key=123)),
    "kdf missing": Case("POST", "/user/register", 400, "kdf", json={**register_body(), "kdf": None}),
    "kdf a string": Case("POST", "/user/register", 400, "kdf", json=register_body(kdf="fast")),
    "opslimit a string": Case("POST", "/user/register", 400, "kdf.opslimit",
                              json=register_body(kdf={"opslimit": "1", "memlimit": 8192})),
    "opslimit a boolean": Case("POST", "/user/register", 400, "kdf.opslimit",
                               json=register_body(kdf={"opslimit": True, "memlimit": 8192})),
    "opslimit negative": Case("POST", "/user/register", 400, "kdf.opslimit",
                              json=register_body(kdf={"opslimit": -1, "memlimit": 8192})),
    "memlimit beyond uint64": Case("POST", "/user/register", 400, "kdf.memlimit",
                                   json=register_body(kdf={"opslimit": 1, "memlimit": 2**70})),
    "memlimit a float": Case("POST", "/user/register", 400, "kdf.memlimit",
                             json=register_body(kdf={"opslimit": 1, "memlimit": 8192.5})),
    # Values the editor refuses (the gateway passes its field through).
    "username empty": Case("POST", "/user/register", 400, "username", json=register_body(username="")),
    "username too long": Case("POST", "/user/register", 400, "username", json=register_body(username="é" * 65)),
    "username control char": Case("POST", "/user/salt", 400, "username", json={"username": "a\u0000b"}),
    "salt 15 bytes": Case("POST", "/user/register", 400, "salt", json=register_body(salt=b64(b"s" * 15))),
    "auth_key 31 bytes": Case("POST", "/user/login", 400, "auth_key",
                              json={"username": "someone", "auth_key": b64(b"k" * 31)}),
    "keystore empty": Case("POST", "/user/register", 400, "keystore", json=register_body(keystore="")),
    "kdf below libsodium": Case("POST", "/user/register", 400, "kdf.memlimit",
                                json=register_body(kdf={"opslimit": 1, "memlimit": 1})),
    # Paths and queries.
    "unknown type": Case("GET", "/user/objects/bogus", 400, "type", signed_in=True),
    "type in capitals": Case("GET", "/user/objects/STORIES", 400, "type", signed_in=True),
    "page_size negative": Case("GET", "/user/objects/stories?page_size=-1", 400, "page_size", signed_in=True),
    "page_size zero": Case("GET", "/user/objects/stories?page_size=0", 400, "page_size", signed_in=True),
    "page_size huge": Case("GET", "/user/objects/stories?page_size=99999999999999999999999", 400, "page_size",
                           signed_in=True),
    "page_size above max": Case("GET", "/user/objects/stories?page_size=1001", 400, "page_size", signed_in=True),
    "page_size a word": Case("GET", "/user/objects/stories?page_size=ten", 400, "page_size", signed_in=True),
    "page_token forged": Case("GET", "/user/objects/stories?page_token=%F0%9F%90%89forged", 400, "page_token",
                              signed_in=True),
    "id with a space": Case("PUT", "/user/objects/stories/bad%20id", 400, "id",
                            json={"data": BLOB, "expected_change_index": 0}, signed_in=True),
    "id unicode": Case("GET", "/user/objects/stories/caf%C3%A9", 400, "id", signed_in=True),
    "id too long": Case("DELETE", "/user/objects/stories/" + "a" * 65, 400, "id", signed_in=True),
    "data not base64": Case("PUT", "/user/objects/stories/s1", 400, "data",
                            json={"data": "@@@", "expected_change_index": 0}, signed_in=True),
    "data empty": Case("PUT", "/user/objects/stories/s1", 400, "data",
                       json={"data": "", "expected_change_index": 0}, signed_in=True),
    "data missing": Case("PUT", "/user/objects/stories/s1", 400, "data",
                         json={"expected_change_index": 0}, signed_in=True),
    "index negative": Case("PUT", "/user/objects/stories/s1", 400, "expected_change_index",
                           json={"data": BLOB, "expected_change_index": -1}, signed_in=True),
    "index beyond uint64": Case("PUT", "/user/objects/stories/s1", 400, "expected_change_index",
                                json={"data": BLOB, "expected_change_index": 2**64}, signed_in=True),
    "index a float": Case("PUT", "/user/objects/stories/s1", 400, "expected_change_index",
                          json={"data": BLOB, "expected_change_index": 1.5}, signed_in=True),
    "index a string": Case("PUT", "/user/objects/stories/s1", 400, "expected_change_index",
                           json={"data": BLOB, "expected_change_index": "0"}, signed_in=True),
    "delete index negative": Case("DELETE", "/user/objects/stories/s1?expected_change_index=-3", 400,
                                  "expected_change_index", signed_in=True),
    "keystore not base64": Case("PUT", "/user/keystore", 400, "keystore",
                                json={"keystore": "%%%", "expected_change_index": 1}, signed_in=True),
    "new_kdf.memlimit a string": Case("POST", "/user/change-password", 400, "new_kdf.memlimit",
                                      json=change_password_body(new_kdf={"opslimit": 1, "memlimit": "x"}),
                                      signed_in=True),
    "new_salt 3 bytes": Case("POST", "/user/change-password", 400, "new_salt",
                             json=change_password_body(new_salt=b64(b"abc")), signed_in=True),
    "delete auth_key not base64": Case("POST", "/user/delete", 400, "auth_key", json={"auth_key": "short"},
                                       signed_in=True),
    # Tokens.
    "token not ASCII": Case("GET", "/user/me", 401, "authorization",
                            headers={"Authorization": "Bearer café".encode("latin-1")}),
    "token with a space": Case("GET", "/user/me", 401, "authorization", headers={"Authorization": "Bearer a b"}),
    "token huge": Case("GET", "/user/me", 401, "authorization", headers={"Authorization": "Bearer " + "t" * 5000}),
    "wrong scheme": Case("GET", "/user/keystore", 401, "authorization", headers={"Authorization": "Basic YTpi"}),
    # Routes.
    "unknown route": Case("GET", "/user/objects/stories/a/b", 404, None, signed_in=True),
    "wrong method": Case("PATCH", "/user/objects/stories/a", 405, None, signed_in=True),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):
    database = tmp_path_factory.mktemp("hostile") / "editor.db"
    async with embedded_editor(fast_settings(f"sqlite:///{database}")) as editor:
        async with serve_gateway(gateway_settings(editor.address)) as live:
            async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
                yield client, await register_user(client, "target")


async def _send(client: httpx.AsyncClient, user: HttpUser, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.signed_in:
        headers.update(user.headers)
    if case.raw is not None:
        return await client.request(case.method, case.path, content=case.raw,
                                    headers={"Content-Type": "application/json", **headers})
    if case.json is not None:
        return await client.request(case.method, case.path, content=json.dumps(case.json).encode(),
                                    headers={"Content-Type": "application/json", **headers})
    if headers.get("Content-Type") == "text/plain":
        return await client.request(case.method, case.path, content=b"username=a", headers=headers)
    return await client.request(case.method, case.path, headers=headers)


@pytest.mark.parametrize("name", list(CASES))
async def test_refused_naming_the_field(stack, name: str):
    client, user = stack
    case = CASES[name]
    reply = await _send(client, user, case)
    assert reply.status_code != 500, reply.text
    assert reply.status_code == case.status, reply.text
    error = reply.json()["error"]
    assert error["code"] and error["message"]
    assert error.get("field") == case.field, reply.text
    if case.field:
        assert case.field in error["message"], error["message"]


async def test_nothing_was_written_by_the_hostile_requests(stack):
    client, user = stack
    listing = await client.get("/user/objects/stories", headers=user.headers)
    assert listing.status_code == 200 and listing.json()["objects"] == []
    keystore = await client.get("/user/keystore", headers=user.headers)
    assert keystore.json()["change_index"] == 1
    assert (await client.post("/user/salt", json={"username": "someone"})).status_code == 200
