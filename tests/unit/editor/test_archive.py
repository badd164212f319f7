"""The archive format on its own: exact size prediction, streaming writer, strict reader."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from fabula_wire import ObjectType
from services.editor import archive
from services.editor.types import Account, KdfParams, Keystore, ObjectMeta
from services.toolkit.errors import InvalidArgument

ACCOUNT = Account(user_id="u1", username="alice", salt=b"s" * 16, kdf=KdfParams(1, 8192), auth_hash=b"h",
                  created_at_us=0)
LIMITS = dict(max_objects=100, max_object_bytes=10_000, max_keystore_bytes=1000)


def _archive(objects: dict[tuple[ObjectType, str], bytes], keystore: bytes = b"keystore") -> bytes:
    metas = [ObjectMeta(type=t, id=i, size=len(d), change_index=3, sha256=hashlib.sha256(d).digest(),
                        created_at_us=0, updated_at_us=0) for (t, i), d in objects.items()]
    head = json.dumps(archive.manifest(ACCOUNT, Keystore(keystore, 4, 0), metas, 1_700_000_000_000_000)).encode()
    writer = archive.ArchiveWriter(mtime_s=1_700_000_000)
    writer.add(archive.MANIFEST, head)
    writer.add(archive.KEYSTORE, keystore)
    out = writer.take()
    for meta in metas:
        writer.add(archive.object_path(meta.type, meta.id), objects[(meta.type, meta.id)])
        out += writer.take()
    writer.finish()
    out += writer.take()
    assert len(out) == archive.archive_size(len(head), len(keystore), [m.size for m in metas])
    return out


@pytest.mark.parametrize("sizes", [[], [1], [511, 512, 513], [9999, 1, 1024]])
def test_written_archive_reads_back(sizes):
    objects = {(ObjectType.STORY, f"id{n}"): bytes([n]) * size for n, size in enumerate(sizes)}
    parsed = archive.read_archive(io.BytesIO(_archive(objects)), **LIMITS)
    assert parsed.keystore == b"keystore"
    assert parsed.manifest["kdf"] == {"opslimit": 1, "memlimit": 8192}
    assert {(o.type, o.id): o.load() for o in parsed.objects} == objects


def test_manifest_timestamps_are_rfc3339_utc():
    assert archive.rfc3339(1_700_000_000_123_456) == "2023-11-14T22:13:20.123456Z"


def test_object_limit_and_size_limit():
    objects = {(ObjectType.IMAGE, "big"): b"x" * 10_001}
    with pytest.raises(InvalidArgument) as raised:
        archive.read_archive(io.BytesIO(_archive(objects)), **LIMITS)
    assert raised.value.field == "archive" and "size" in raised.value.message
    many = {(ObjectType.STORY, f"i{n}"): b"x" for n in range(3)}
    with pytest.raises(InvalidArgument, match="quota"):
        archive.read_archive(io.BytesIO(_archive(many)), **{**LIMITS, "max_objects": 2})


def test_every_truncation_is_refused_cleanly():
    data = _archive({(ObjectType.STORY, "a"): b"a" * 700, (ObjectType.PRESET, "b"): b"b" * 100})
    for cut in range(0, len(data) - 1024, 97):
        try:
            archive.read_archive(io.BytesIO(data[:cut]), **LIMITS)
        except InvalidArgument as error:
            assert error.field == "archive"
        else:  # only a cut inside the trailing zero blocks can still be complete
            assert cut >= len(data) - 2 * 10240


# --- Tar header bounds: checked on every header before tarfile acts on it ---

def _good_archive() -> bytes:
    return _archive({(ObjectType.STORY, "a"): b"story"})


def _refused(data: bytes) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as raised:
        archive.read_archive(io.BytesIO(data), **LIMITS)
    return raised.value


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def test_a_large_pax_header_is_refused_before_it_is_read():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(archive.MANIFEST)
        info.size = 2
        info.pax_headers = {"comment": "x" * (archive.MAX_EXTENSION_HEADER_BYTES + 1)}
        tar.addfile(info, io.BytesIO(b"{}"))
    assert _refused(out.getvalue()).reason == "HEADER_TOO_LARGE"


def test_a_long_member_name_is_refused():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("n" * (archive.MAX_NAME_CHARS + 1))
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert _refused(out.getvalue()).reason == "HEADER_TOO_LARGE"


def test_a_negative_size_is_refused():
    data = bytearray(_good_archive())
    header = bytearray(data[:512])
    header[124:136] = b"\xff" * 12  # base-256: -1
    data[:512] = _with_checksum(header)
    assert "negative" in _refused(bytes(data)).message


def test_a_chain_of_extension_headers_is_bounded():
    block = tarfile.BLOCKSIZE
    long_name = tarfile.TarInfo("././@LongLink")
    long_name.type, long_name.size = tarfile.GNUTYPE_LONGNAME, 8
    chain = (long_name.tobuf(tarfile.USTAR_FORMAT) + b"manifest".ljust(block, b"\0")) * 400
    assert "tar headers" in _refused(chain + _good_archive()).message
