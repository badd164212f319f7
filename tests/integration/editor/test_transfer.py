"""Export and import: round trips between accounts and back ends; bad archives change nothing."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sqlite3
import tarfile

import grpc

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from services.editor.embedded import embedded_editor, fast_settings
from tests.conftest import fresh_postgres_schema
from tests.integration.editor.client import User, refused, register

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OBJECTS = [(pb.OBJECT_TYPE_STORY, "story-1"), (pb.OBJECT_TYPE_STORY_CONTENT, "story-1"),
           (pb.OBJECT_TYPE_LOREBOOK, "lore"), (pb.OBJECT_TYPE_PRESET, "preset_a"), (pb.OBJECT_TYPE_IMAGE, "img-9")]


async def export(stub, user: User) -> bytes:
    return b"".join([reply.chunk async for reply in stub.ExportAccount(pb.ExportAccountRequest(),
                                                                       metadata=user.metadata)])


def import_(stub, user: User, archive: bytes, chunk: int = 7000, expected_keystore_index: int | None = 1):
    """ImportAccount of `archive`; the first message carries the expected keystore index (a
    freshly registered account's is 1) unless it is None."""
    async def requests():
        pieces = [archive[start:start + chunk] for start in range(0, len(archive), chunk)] or [b""]
        for number, piece in enumerate(pieces):
            request = pb.ImportAccountRequest(chunk=piece)
            if number == 0 and expected_keystore_index is not None:
                request.expected_keystore_change_index = expected_keystore_index
            yield request

    return stub.ImportAccount(requests(), metadata=user.metadata)


async def fill(stub, user: User) -> dict[tuple[int, str], bytes]:
    contents = {}
    for type_, id_ in OBJECTS:
        data = os.urandom(300 + len(contents) * 1000)
        await stub.PutObject(pb.PutObjectRequest(type=type_, id=id_, data=data), metadata=user.metadata)
        contents[(type_, id_)] = data
    return contents


async def contents_of(stub, user: User) -> dict[tuple[int, str], tuple[bytes, int]]:
    found = {}
    for type_ in (1, 2, 3, 4, 5):
        listing = await stub.ListObjects(pb.ListObjectsRequest(type=type_), metadata=user.metadata)
        for meta in listing.objects:
            got = await stub.GetObject(pb.GetObjectRequest(type=type_, id=meta.id), metadata=user.metadata)
            found[(type_, meta.id)] = (got.data, meta.change_index)
    return found


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def build(files: list[tuple[str, bytes]], *, kind: bytes = tarfile.REGTYPE) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


async def test_export_archive_layout(stub, alice: User, editor):
    contents = await fill(stub, alice)
    archive = await export(stub, alice)
    files = members(archive)
    names = list(files)
    assert names[0] == "manifest.json" and names[1] == "keystore.bin"
    manifest = json.loads(files["manifest.json"])
    assert (manifest["format"], manifest["version"], manifest["user_id"], manifest["username"]) == \
        ("fabula-export", 1, alice.user_id, "alice")
    assert manifest["salt"] and manifest["kdf"] == {"opslimit": 1, "memlimit": 8192}
    assert manifest["keystore_change_index"] == 1 and manifest["exported_at"].endswith("Z")
    assert files["keystore.bin"] == b"keystore-v1"
    path_names = {1: "stories", 2: "storycontent", 3: "lorebooks", 4: "presets", 5: "images"}
    assert len(manifest["objects"]) == len(contents)
    for entry in manifest["objects"]:
        type_ = next(number for number, name in path_names.items() if name == entry["type"])
        data = contents[(type_, entry["id"])]
        assert files[f"objects/{entry['type']}/{entry['id']}.bin"] == data
        assert (entry["size"], entry["change_index"], entry["sha256"]) == (len(data), 1,
                                                                          hashlib.sha256(data).hexdigest())


async def test_export_streams_in_chunks(database_url):
    settings = fast_settings(database_url, export_chunk_bytes=4096)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        user = await register(stub, "chunky")
        await fill(stub, user)
        chunks = [r.chunk async for r in stub.ExportAccount(pb.ExportAccountRequest(), metadata=user.metadata)]
        assert len(chunks) > 3 and all(len(c) <= 4096 for c in chunks)
        assert len(members(b"".join(chunks))) == 2 + len(OBJECTS)


async def test_round_trip_into_another_account(stub, alice: User, bob: User):
    contents = await fill(stub, alice)
    await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="story-1", data=b"bob's old",
                                             ), metadata=bob.metadata)
    await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="bob-only", data=b"kept"),
                         metadata=bob.metadata)
    reply = await import_(stub, bob, await export(stub, alice))
    assert (reply.imported_objects, reply.keystore_replaced) == (len(OBJECTS), True)
    found = await contents_of(stub, bob)
    for key, data in contents.items():
        expected_index = 2 if key == (pb.OBJECT_TYPE_STORY, "story-1") else 1  # replaced → incremented
        assert found[key] == (data, expected_index)
    assert found[(pb.OBJECT_TYPE_STORY, "bob-only")] == (b"kept", 1)
    keystore = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=bob.metadata)
    assert (keystore.keystore, keystore.change_index) == (b"keystore-v1", 2)
    # Alice's account is untouched.
    assert {k: v[0] for k, v in (await contents_of(stub, alice)).items()} == contents


async def test_round_trip_into_the_other_back_end(stub, alice: User, editor, tmp_path):
    contents = await fill(stub, alice)
    archive = await export(stub, alice)
    source_is_sqlite = editor.settings.database_url.startswith("sqlite")

    async def into(url: str) -> None:
        async with embedded_editor(fast_settings(url)) as target, grpc.aio.insecure_channel(target.address) as ch:
            target_stub = editor_pb2_grpc.EditorServiceStub(ch)
            carol = await register(target_stub, "carol", keystore=b"carol's")
            await import_(target_stub, carol, archive, chunk=100_000)
            assert {k: v[0] for k, v in (await contents_of(target_stub, carol)).items()} == contents
            assert members(await export(target_stub, carol))["keystore.bin"] == b"keystore-v1"

    if source_is_sqlite:
        with fresh_postgres_schema() as url:
            await into(url)
    else:
        await into(f"sqlite:///{tmp_path / 'target.db'}")


async def test_archive_without_keystore_keeps_the_keystore(stub, alice: User, bob: User):
    await fill(stub, alice)
    files = members(await export(stub, alice))
    del files["keystore.bin"]
    reply = await import_(stub, bob, build(list(files.items())))
    assert (reply.imported_objects, reply.keystore_replaced) == (len(OBJECTS), False)
    keystore = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=bob.metadata)
    assert keystore.change_index == 1


def _mutations(files: dict[str, bytes]) -> dict[str, bytes]:
    """Broken variants of a good archive, each of which must be refused whole."""
    manifest = json.loads(files["manifest.json"])
    object_names = [n for n in files if n.startswith("objects/")]
    first = object_names[0]

    def with_manifest(**changes) -> list[tuple[str, bytes]]:
        return [("manifest.json", json.dumps({**manifest, **changes}).encode()),
                *[(n, d) for n, d in files.items() if n != "manifest.json"]]

    def with_entry(**changes) -> list[tuple[str, bytes]]:
        entries = [dict(manifest["objects"][0], **changes), *manifest["objects"][1:]]
        return with_manifest(objects=entries)

    good = list(files.items())
    archive = build(good)
    return {
        "not a tar": b"this is not a tar archive" * 100,
        "random bytes": os.urandom(20_000),
        "truncated": archive[: len(archive) // 2],
        "gzip": __import__("gzip").compress(archive),
        "manifest not first": build(good[1:] + good[:1]),
        "manifest not json": build([("manifest.json", b"{nope"), *good[1:]]),
        "manifest a list": build([("manifest.json", b"[]"), *good[1:]]),
        "wrong format": build(with_manifest(format="zip")),
        "wrong version": build(with_manifest(version=2)),
        "objects not a list": build(with_manifest(objects={})),
        "bad id": build(with_entry(id="../../etc/passwd")),
        "bad type": build(with_entry(type="movies")),
        "negative size": build(with_entry(size=-1)),
        "size mismatch": build(with_entry(size=manifest["objects"][0]["size"] + 1)),
        "bad sha": build(with_entry(sha256="0" * 64)),
        "sha not hex": build(with_entry(sha256="zz")),
        "duplicate entry": build(with_manifest(objects=manifest["objects"] + manifest["objects"][:1])),
        "missing object": build([(n, d) for n, d in good if n != first]),
        "unlisted object": build(good + [("objects/stories/extra.bin", b"x")]),
        "duplicate member": build(good + [(first, files[first])]),
        "stray file": build(good + [("README", b"hi")]),
        "path traversal": build(good + [("../evil.bin", b"x")]),
        "empty keystore": build([(n, b"" if n == "keystore.bin" else d) for n, d in good]),
        "tampered object": build([(n, (b"X" + d[1:]) if n == first else d) for n, d in good]),
    }


async def test_malformed_archives_are_refused_and_change_nothing(stub, alice: User, bob: User):
    await fill(stub, alice)
    files = members(await export(stub, alice))
    await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="story-1", data=b"bob's"),
                         metadata=bob.metadata)
    before = await contents_of(stub, bob)
    for name, archive in _mutations(files).items():
        error = await refused(import_(stub, bob, archive), INVALID, field="archive")
        assert error.details(), name
        assert await contents_of(stub, bob) == before, name
        assert (await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=bob.metadata)).change_index == 1, name


async def test_symlink_member_is_refused(stub, alice: User, bob: User):
    files = members(await export(stub, alice))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("objects/stories/link.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    await refused(import_(stub, bob, out.getvalue()), INVALID, field="archive")


async def test_empty_import_is_refused(stub, alice: User):
    await refused(import_(stub, alice, b""), INVALID, field="archive")


async def test_archive_size_and_quota_limits(database_url):
    settings = fast_settings(database_url, max_archive_bytes=64 * 1024, max_objects_per_user=3)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        source, target = await register(stub, "source"), await register(stub, "target")
        for n in range(3):
            await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id=f"s{n}", data=os.urandom(100)),
                                 metadata=source.metadata)
        archive = await export(stub, source)
        await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="mine", data=b"x"),
                             metadata=target.metadata)
        await refused(import_(stub, target, archive), grpc.StatusCode.RESOURCE_EXHAUSTED, reason="OBJECT_COUNT_QUOTA")
        assert set(await contents_of(stub, target)) == {(pb.OBJECT_TYPE_STORY, "mine")}
        await refused(import_(stub, target, archive + b"\0" * 64 * 1024), INVALID, field="archive",
                      reason="ARCHIVE_TOO_LARGE")
        # An account too big for one archive cannot be exported either.
        big = await register(stub, "big")
        for n in range(2):
            await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_IMAGE, id=f"i{n}", data=os.urandom(40_000)),
                                 metadata=big.metadata)
        await refused(export(stub, big), grpc.StatusCode.FAILED_PRECONDITION, reason="ARCHIVE_TOO_LARGE")


async def test_import_needs_the_expected_keystore_index(stub, alice: User, bob: User):
    await fill(stub, alice)
    archive = await export(stub, alice)
    await refused(import_(stub, bob, archive, expected_keystore_index=None), INVALID,
                  field="expected_keystore_change_index")
    await refused(import_(stub, bob, archive, expected_keystore_index=2**63), INVALID,
                  field="expected_keystore_change_index")
    assert await contents_of(stub, bob) == {}


async def test_import_with_a_stale_keystore_index_is_aborted_and_writes_nothing(stub, alice: User, bob: User):
    await fill(stub, alice)
    archive = await export(stub, alice)
    # Another of Bob's devices changed his keystore since this import was prepared.
    await stub.PutKeystore(pb.PutKeystoreRequest(keystore=b"bob's newer keystore", expected_change_index=1),
                           metadata=bob.metadata)
    await refused(import_(stub, bob, archive, expected_keystore_index=1), grpc.StatusCode.ABORTED,
                  field="expected_keystore_change_index", reason="STALE_CHANGE_INDEX")
    assert await contents_of(stub, bob) == {}
    keystore = await stub.GetKeystore(pb.GetKeystoreRequest(), metadata=bob.metadata)
    assert (keystore.keystore, keystore.change_index) == (b"bob's newer keystore", 2)
    # Based on the current index, the same import goes through and says the keystore's new index.
    reply = await import_(stub, bob, archive, expected_keystore_index=2)
    assert (reply.imported_objects, reply.keystore_replaced, reply.keystore_change_index) == (len(OBJECTS), True, 3)


async def test_a_large_sqlite_import_lets_other_writers_through_and_appears_at_once(tmp_path):
    path = tmp_path / "editor.db"
    settings = fast_settings(f"sqlite:///{path}", import_batch_bytes=1024)
    async with embedded_editor(settings) as editor, grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        source, target, other = [await register(stub, name) for name in ("source", "target", "other")]
        for number in range(300):
            await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id=f"s{number}",
                                                     data=os.urandom(2000)), metadata=source.metadata)
        archive = await export(stub, source)
        watcher = sqlite3.connect(path)
        importing = asyncio.ensure_future(import_(stub, target, archive))
        try:
            while watcher.execute("SELECT COUNT(*) FROM import_staging").fetchone()[0] == 0:
                assert not importing.done(), await importing
                await asyncio.sleep(0.01)
            # Staging has begun, and nothing of the import is visible until all of it is ...
            listing = await stub.ListObjects(pb.ListObjectsRequest(type=pb.OBJECT_TYPE_STORY), metadata=target.metadata)
            assert list(listing.objects) == []
            # ... while it holds the one writer only batch by batch, so another account's write
            # goes through before the import is done.
            await stub.PutObject(pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="meanwhile", data=b"x"),
                                 metadata=other.metadata)
            assert not importing.done()
            reply = await importing
        finally:
            watcher.close()
        assert reply.imported_objects == 300
        listing = await stub.ListObjects(pb.ListObjectsRequest(type=pb.OBJECT_TYPE_STORY, page_size=1000),
                                         metadata=target.metadata)
        assert len(listing.objects) == 300
    check = sqlite3.connect(path)
    assert check.execute("SELECT COUNT(*) FROM import_staging").fetchone()[0] == 0
    check.close()
