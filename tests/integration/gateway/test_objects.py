"""Objects through HTTP: create/update/read/list/delete, optimistic concurrency, isolation."""

from __future__ import annotations

import base64
import os

import httpx
import pytest

from gateway.main import create_app
from gateway.raw_objects import RawObjectData
from tests.integration.gateway.harness import HttpUser, b64, serve_gateway

KINDS = ["stories", "storycontent", "lorebooks", "presets", "images"]
META_FIELDS = {"id", "type", "size", "change_index", "created_at", "updated_at"}


async def _put(client, user: HttpUser, path: str, data: bytes, expected: int):
    return await client.put(f"/user/objects/{path}", headers=user.headers,
                            json={"data": b64(data), "expected_change_index": expected})


@pytest.mark.parametrize("kind", KINDS)
async def test_object_life_cycle(client, alice: HttpUser, kind: str):
    first, second = os.urandom(1000), os.urandom(2000)
    created = await _put(client, alice, f"{kind}/obj-1", first, 0)
    assert created.status_code == 201
    meta = created.json()
    assert set(meta) == META_FIELDS
    assert (meta["id"], meta["type"], meta["size"], meta["change_index"]) == ("obj-1", kind, 1000, 1)

    updated = await _put(client, alice, f"{kind}/obj-1", second, 1)
    assert updated.status_code == 200
    assert (updated.json()["size"], updated.json()["change_index"]) == (2000, 2)
    assert updated.json()["created_at"] == meta["created_at"]

    read = await client.get(f"/user/objects/{kind}/obj-1", headers=alice.headers)
    assert read.status_code == 200
    assert set(read.json()) == META_FIELDS | {"data"}
    assert base64.b64decode(read.json()["data"]) == second

    deleted = await client.delete(f"/user/objects/{kind}/obj-1", headers=alice.headers)
    assert deleted.status_code == 204
    gone = await client.get(f"/user/objects/{kind}/obj-1", headers=alice.headers)
    assert gone.status_code == 404


async def test_stale_writes_conflict_and_change_nothing(client, alice: HttpUser):
    original = b"version one"
    assert (await _put(client, alice, "stories/s", original, 0)).status_code == 201
    again = await _put(client, alice, "stories/s", b"create again", 0)
    assert again.status_code == 409 and again.json()["error"]["field"] == "expected_change_index"
    stale = await _put(client, alice, "stories/s", b"stale", 5)
    assert stale.status_code == 409
    missing = await _put(client, alice, "stories/absent", b"update of nothing", 1)
    assert missing.status_code == 404

    stale_delete = await client.delete("/user/objects/stories/s", headers=alice.headers,
                                       params={"expected_change_index": 3})
    assert stale_delete.status_code == 409
    read = await client.get("/user/objects/stories/s", headers=alice.headers)
    assert base64.b64decode(read.json()["data"]) == original and read.json()["change_index"] == 1

    delete = await client.delete("/user/objects/stories/s", headers=alice.headers,
                                 params={"expected_change_index": 1})
    assert delete.status_code == 204
    assert (await client.delete("/user/objects/stories/s", headers=alice.headers)).status_code == 404


async def test_listing_pages_through_every_object_in_id_order(client, alice: HttpUser):
    ids = [f"story-{index:02d}" for index in range(7)]
    for object_id in reversed(ids):
        assert (await _put(client, alice, f"stories/{object_id}", object_id.encode(), 0)).status_code == 201
    assert (await _put(client, alice, "presets/not-a-story", b"p", 0)).status_code == 201

    seen, token, pages = [], "", 0
    while True:
        params = {"page_size": 3} | ({"page_token": token} if token else {})
        page = await client.get("/user/objects/stories", headers=alice.headers, params=params)
        assert page.status_code == 200
        body = page.json()
        assert len(body["objects"]) <= 3
        assert all(set(meta) == META_FIELDS and meta["type"] == "stories" for meta in body["objects"])
        seen += [meta["id"] for meta in body["objects"]]
        pages += 1
        token = body["next_page_token"]
        if not token:
            break
    assert seen == ids and pages == 3

    default = await client.get("/user/objects/stories", headers=alice.headers)
    assert [meta["id"] for meta in default.json()["objects"]] == ids


async def test_users_never_see_or_touch_each_others_objects(client, alice: HttpUser, bob: HttpUser):
    secret = os.urandom(500)
    assert (await _put(client, alice, "stories/diary", secret, 0)).status_code == 201

    listing = await client.get("/user/objects/stories", headers=bob.headers)
    assert listing.status_code == 200 and listing.json()["objects"] == []
    assert (await client.get("/user/objects/stories/diary", headers=bob.headers)).status_code == 404
    assert (await _put(client, bob, "stories/diary", b"overwrite", 1)).status_code == 404
    assert (await client.delete("/user/objects/stories/diary", headers=bob.headers)).status_code == 404

    # Bob may use the same id: it is his own object, and Alice's stays as it was.
    assert (await _put(client, bob, "stories/diary", b"bob's diary", 0)).status_code == 201
    assert (await client.delete("/user/objects/stories/diary", headers=bob.headers)).status_code == 204
    alices = await client.get("/user/objects/stories/diary", headers=alice.headers)
    assert alices.status_code == 200
    assert base64.b64decode(alices.json()["data"]) == secret and alices.json()["change_index"] == 1


async def test_calls_without_a_valid_token_are_refused(client, alice: HttpUser):
    assert (await _put(client, alice, "stories/s", b"x", 0)).status_code == 201
    for headers in ({}, {"Authorization": "Bearer not-a-real-token"}, {"Authorization": "Basic YTpi"}):
        for method, path in (("GET", "/user/objects/stories"), ("GET", "/user/objects/stories/s"),
                             ("DELETE", "/user/objects/stories/s"), ("GET", "/user/keystore"),
                             ("GET", "/user/export"), ("GET", "/user/objects/stories/s/data"),
                             ("PUT", "/user/objects/stories/s/data?expected_change_index=1")):
            reply = await client.request(method, path, headers=headers)
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.json()["error"]["field"] == "authorization"
    assert (await client.get("/user/objects/stories/s", headers=alice.headers)).status_code == 200


async def test_raw_bytes_routes_share_objects_with_the_json_routes(client, alice: HttpUser, bob: HttpUser):
    first, second = os.urandom(3000), os.urandom(70_000)
    raw = {**alice.headers, "Content-Type": "application/octet-stream"}
    created = await client.put("/user/objects/stories/raw-1/data", params={"expected_change_index": 0},
                               content=first, headers=raw)
    assert created.status_code == 201 and set(created.json()) == META_FIELDS
    assert (created.json()["size"], created.json()["change_index"]) == (3000, 1)
    # The JSON route reads what the raw route wrote, and the other way round.
    as_json = await client.get("/user/objects/stories/raw-1", headers=alice.headers)
    assert base64.b64decode(as_json.json()["data"]) == first
    assert (await _put(client, alice, "stories/raw-1", second, 1)).status_code == 200
    read = await client.get("/user/objects/stories/raw-1/data", headers=alice.headers)
    assert read.status_code == 200 and read.content == second
    assert read.headers["content-type"] == "application/octet-stream"
    assert read.headers["x-fabula-change-index"] == "2"
    assert read.headers["x-fabula-created-at"] == created.json()["created_at"]
    rewritten = (await client.get("/user/objects/stories/raw-1", headers=alice.headers)).json()
    assert read.headers["x-fabula-updated-at"] == rewritten["updated_at"]
    # The same rules as the JSON route: stale writes, missing objects, other users, bad input.
    stale = await client.put("/user/objects/stories/raw-1/data", params={"expected_change_index": 1},
                             content=b"stale", headers=raw)
    assert stale.status_code == 409 and stale.json()["error"]["field"] == "expected_change_index"
    assert (await client.get("/user/objects/stories/raw-1/data", headers=bob.headers)).status_code == 404
    missing_index = await client.put("/user/objects/stories/raw-2/data", content=b"x", headers=raw)
    assert missing_index.status_code == 400 and missing_index.json()["error"]["field"] == "expected_change_index"
    empty = await client.put("/user/objects/stories/raw-2/data", params={"expected_change_index": 0},
                             content=b"", headers=raw)
    assert empty.status_code == 400 and empty.json()["error"]["field"] == "data"
    bad_kind = await client.get("/user/objects/secrets/raw-1/data", headers=alice.headers)
    assert bad_kind.status_code == 400 and bad_kind.json()["error"]["field"] == "type"
    assert (await client.get("/user/objects/stories/raw-1/data")).status_code == 401


async def test_the_lean_raw_routes_answer_as_the_fastapi_routes_do(gateway, client, alice: HttpUser, bob: HttpUser):
    """gateway/raw_objects.py serves the plainly valid raw-bytes requests itself; a second gateway
    without it (every request through the FastAPI routes) must answer every case alike."""
    app = create_app(gateway.settings)
    app.user_middleware = [entry for entry in app.user_middleware if entry.cls is not RawObjectData]
    async with serve_gateway(gateway.settings, app) as plain, httpx.AsyncClient(base_url=plain.url) as routed:
        raw = {**alice.headers, "Content-Type": "application/octet-stream"}

        async def both(method: str, path: str, headers: dict[str, str], content: bytes = b"") -> None:
            lean, fastapi = [await http.request(method, path, headers=headers, content=content)
                             for http in (client, routed)]
            assert (lean.status_code, lean.content) == (fastapi.status_code, fastapi.content), (method, path)
            names = ("content-type", "content-length", "retry-after", "x-fabula-change-index",
                     "x-fabula-created-at", "x-fabula-updated-at")
            assert {n: lean.headers.get(n) for n in names} == {n: fastapi.headers.get(n) for n in names}

        # Writes differ in their times; each is made on one gateway and compared without them.
        for http, id in ((client, "lean"), (routed, "routed")):
            for expected, status in ((0, 201), (1, 200), (1, 409), (0, 409)):
                reply = await http.put(f"/user/objects/stories/{id}/data?expected_change_index={expected}",
                                       content=b"x" * (expected + 5), headers=raw)
                assert reply.status_code == status
        await both("GET", "/user/objects/stories/lean/data", alice.headers)  # written by the lean path
        await both("GET", "/user/objects/stories/routed/data", alice.headers)  # by FastAPI's route
        for method, path, headers, content in (
                ("GET", "/user/objects/stories/absent/data", alice.headers, b""),
                ("GET", "/user/objects/stories/lean/data", bob.headers, b""),
                ("GET", "/user/objects/lorebooks/lean/data", alice.headers, b""),
                ("GET", "/user/objects/stories/lean/data", {"Authorization": "Bearer unknown-token"}, b""),
                ("GET", "/user/objects/stories/lean/data", {"Authorization": "bearer " + alice.token}, b""),
                ("PUT", "/user/objects/stories/lean/data?expected_change_index=1", raw, b"stale"),
                ("PUT", "/user/objects/stories/absent/data?expected_change_index=7", raw, b"x"),
                ("PUT", "/user/objects/stories/empty/data?expected_change_index=0", raw, b""),
                ("PUT", f"/user/objects/stories/lean/data?expected_change_index={2**63}", raw, b"x"),
                ("PUT", "/user/objects/stories/lean/data?expected_change_index=1",
                 {"Authorization": "Bearer unknown-token"}, b"x")):
            await both(method, path, headers, content)
