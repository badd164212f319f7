"""Export and import through HTTP: streamed in both directions, validated, all or nothing."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile

import httpx

from tests.integration.gateway.harness import HttpUser, b64, gateway_settings, register_user, serve_gateway

# A freshly registered account's keystore change index, which every import here is based on.
BASED_ON_FIRST_KEYSTORE = {"expected_keystore_change_index": 1}


async def _put(client, user: HttpUser, path: str, data: bytes, expected: int = 0) -> None:
    reply = await client.put(f"/user/objects/{path}", headers=user.headers,
                             json={"data": b64(data), "expected_change_index": expected})
    assert reply.status_code in (200, 201), reply.text


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}


async def _export(client, user: HttpUser) -> bytes:
    pieces = []
    async with client.stream("GET", "/user/export", headers=user.headers) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/x-tar"
        assert reply.headers["content-disposition"].startswith("attachment; filename=")
        async for piece in reply.aiter_raw():
            pieces.append(piece)
    return b"".join(pieces)


async def test_export_streams_the_whole_account(client, alice: HttpUser):
    # Over 1 MiB in all, so the editor sends the archive in several messages.
    story, image = os.urandom(700_000), os.urandom(600_000)
    await _put(client, alice, "stories/tale", story)
    await _put(client, alice, "images/cover", image)
    members = _members(await _export(client, alice))

    manifest = json.loads(members["manifest.json"])
    assert (manifest["format"], manifest["version"], manifest["user_id"]) == ("fabula-export", 1, alice.user_id)
    listed = {(entry["type"], entry["id"]): entry for entry in manifest["objects"]}
    assert set(listed) == {("stories", "tale"), ("images", "cover")}
    assert members["objects/stories/tale.bin"] == story
    assert members["objects/images/cover.bin"] == image
    assert listed["stories", "tale"]["sha256"] == hashlib.sha256(story).hexdigest()
    assert "keystore.bin" in members


async def test_import_into_another_account_and_over_existing_objects(client, alice: HttpUser, bob: HttpUser):
    story = os.urandom(3000)
    await _put(client, alice, "stories/tale", story)
    await _put(client, alice, "lorebooks/world", b"lore")
    archive = await _export(client, alice)
    alice_keystore = (await client.get("/user/keystore", headers=alice.headers)).json()["keystore"]

    await _put(client, bob, "stories/tale", b"bob's older tale")
    reply = await client.post("/user/import", params=BASED_ON_FIRST_KEYSTORE,
                              headers={**bob.headers, "Content-Type": "application/x-tar"},
                              content=archive)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"imported_objects": 2, "keystore_replaced": True}

    tale = (await client.get("/user/objects/stories/tale", headers=bob.headers)).json()
    assert base64.b64decode(tale["data"]) == story
    assert tale["change_index"] == 2  # replaced, so other devices see a change
    keystore = (await client.get("/user/keystore", headers=bob.headers)).json()
    assert keystore["keystore"] == alice_keystore and keystore["change_index"] == 2
    # Alice's own account is untouched by Bob's import.
    assert (await client.get("/user/objects/stories/tale", headers=alice.headers)).json()["change_index"] == 1


async def test_import_streams_a_chunked_body(client, alice: HttpUser, bob: HttpUser):
    await _put(client, alice, "stories/big", os.urandom(2_500_000))
    archive = await _export(client, alice)

    async def trickle():
        for start in range(0, len(archive), 100_000):
            yield archive[start:start + 100_000]

    # No Content-Length: the body arrives chunked and the gateway forwards it as it comes.
    reply = await client.post("/user/import", params=BASED_ON_FIRST_KEYSTORE,
                              headers={**bob.headers, "Content-Type": "application/x-tar"},
                              content=trickle())
    assert reply.status_code == 200, reply.text
    assert reply.json()["imported_objects"] == 1


async def test_a_broken_archive_is_refused_and_nothing_is_written(client, alice: HttpUser, bob: HttpUser):
    await _put(client, alice, "stories/a", b"a" * 100)
    await _put(client, alice, "stories/b", b"b" * 100)
    archive = bytearray(await _export(client, alice))
    # Flip one byte of the last object's data: its sha256 no longer matches the manifest.
    position = archive.rfind(b"b" * 100)
    archive[position] ^= 0xFF

    reply = await client.post("/user/import", params=BASED_ON_FIRST_KEYSTORE,
                              headers={**bob.headers, "Content-Type": "application/x-tar"},
                              content=bytes(archive))
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "INVALID_ARGUMENT"
    listing = await client.get("/user/objects/stories", headers=bob.headers)
    assert listing.json()["objects"] == []

    garbage = await client.post("/user/import", params=BASED_ON_FIRST_KEYSTORE,
                                headers={**bob.headers, "Content-Type": "application/x-tar"},
                                content=os.urandom(5000))
    assert garbage.status_code == 400
    empty = await client.post("/user/import", params=BASED_ON_FIRST_KEYSTORE,
                              headers={**bob.headers, "Content-Type": "application/x-tar"})
    assert empty.status_code == 400


async def test_import_needs_an_archive_media_type(client, alice: HttpUser):
    for content_type in (None, "application/json", "text/plain"):
        headers = alice.headers | ({"Content-Type": content_type} if content_type else {})
        reply = await client.post("/user/import", params=BASED_ON_FIRST_KEYSTORE,
                                  headers=headers, content=b"{}")
        assert reply.status_code == 415
        assert reply.json()["error"]["field"] == "content-type"


async def test_import_larger_than_its_limit_is_413(editor):
    async with serve_gateway(gateway_settings(editor.address, max_import_bytes=4096)) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
            user = await register_user(client, "dave")
            headers = {**user.headers, "Content-Type": "application/x-tar"}
            declared = await client.post("/user/import", params=BASED_ON_FIRST_KEYSTORE,
                                         headers=headers, content=os.urandom(5000))
            assert declared.status_code == 413
            assert declared.json()["error"]["field"] == "body"

            async def chunked():
                for _ in range(10):
                    yield os.urandom(1000)

            streamed = await client.post("/user/import", params=BASED_ON_FIRST_KEYSTORE,
                                         headers=headers, content=chunked())
            assert streamed.status_code == 413
            assert streamed.json()["error"]["field"] == "body"
            assert (await client.get("/user/me", headers=user.headers)).status_code == 200


async def test_import_is_based_on_the_keystore_change_index(client, alice: HttpUser, bob: HttpUser):
    await _put(client, alice, "stories/tale", b"tale")
    archive = await _export(client, alice)
    headers = {**bob.headers, "Content-Type": "application/x-tar"}
    missing = await client.post("/user/import", headers=headers, content=archive)
    assert missing.status_code == 400
    assert missing.json()["error"]["field"] == "expected_keystore_change_index"
    stale = await client.post("/user/import", headers=headers, content=archive,
                              params={"expected_keystore_change_index": 7})
    assert stale.status_code == 409, stale.text
    assert stale.json()["error"]["field"] == "expected_keystore_change_index"
    assert (await client.get("/user/objects/stories", headers=bob.headers)).json()["objects"] == []
