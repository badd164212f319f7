"""The export archive format: a POSIX tar whose first member is `manifest.json`.

Layout (shared with the SDK; see docs/editor.md):
    manifest.json                  {"format": "fabula-export", "version": 1, "exported_at",
                                    "user_id", "username", "salt" (base64), "kdf": {opslimit,
                                    memlimit}, "keystore_change_index", "objects": [{"id", "type",
                                    "size", "change_index", "sha256"}]}
    keystore.bin                   the encrypted keystore (optional on import)
    objects/<type>/<id>.bin        each object's encrypted bytes; <type> is the path name
                                   ("stories", "storycontent", "lorebooks", "presets", "images")

Writing streams one member at a time; reading checks every byte of a hostile archive before
anything is handed to storage.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from fabula_wire import ObjectType
from services.editor import validation
from services.editor.types import Account, ImportedObject, Keystore, ObjectMeta
from services.toolkit.errors import InvalidArgument

FORMAT = "fabula-export"
VERSION = 1
MANIFEST = "manifest.json"
KEYSTORE = "keystore.bin"
_OBJECT_PATH = re.compile(r"objects/([a-z]+)/([A-Za-z0-9_-]{1,64})\.bin")
_DIRECTORY_PATH = re.compile(r"objects(/[a-z]+)?/?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_BLOCK = tarfile.BLOCKSIZE
_READ_CHUNK = 1024 * 1024
FIELD = "archive"
# Tar header bounds, checked on every header before tarfile acts on it. tarfile reads a pax or
# GNU long-name header's whole data into memory, and some Python versions loop for ever on a
# negative size; nothing Fabula writes needs more than a short ustar name.
MAX_NAME_CHARS = 256
MAX_EXTENSION_HEADER_BYTES = 8 * 1024
_EXTENSION_TYPES = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}


def rfc3339(microseconds: int) -> str:
    return datetime.fromtimestamp(microseconds / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def _object_type(name: Any) -> ObjectType | None:
    """The object type an archive names (manifest entry or member path), or None for any other value."""
    if not isinstance(name, str):
        return None
    try:
        return ObjectType(name)
    except ValueError:
        return None


def object_path(type: ObjectType, id: str) -> str:
    return f"objects/{type.value}/{id}.bin"


def manifest(account: Account, keystore: Keystore, objects: list[ObjectMeta], exported_at_us: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": rfc3339(exported_at_us),
        "user_id": account.user_id,
        "username": account.username,
        "salt": base64.b64encode(account.salt).decode(),
        "kdf": {"opslimit": account.kdf.opslimit, "memlimit": account.kdf.memlimit},
        "keystore_change_index": keystore.change_index,
        "objects": [{"id": meta.id, "type": meta.type.value, "size": meta.size,
                     "change_index": meta.change_index, "sha256": meta.sha256.hex()} for meta in objects],
    }


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def archive_size(manifest_bytes: int, keystore_bytes: int, object_sizes: list[int]) -> int:
    """The exact size of the archive `ArchiveWriter` produces (headers, padding, end blocks)."""
    members = [manifest_bytes, keystore_bytes, *object_sizes]
    body = sum(_BLOCK + _padded(size) for size in members) + 2 * _BLOCK
    return -(-body // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _Sink(io.RawIOBase):
    """Collects what tarfile writes so it can be handed out as chunks."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = bytearray()
        self.written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.written

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.pending += data
        self.written += len(data)
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.pending)
        self.pending.clear()
        return data


class ArchiveWriter:
    """Writes members one at a time; `take()` returns the bytes produced since the last call."""

    def __init__(self, mtime_s: int) -> None:
        self._sink = _Sink()
        self._mtime = mtime_s
        # ustar headers: every name here is short ASCII, and plain ustar is the most portable tar.
        self._tar = tarfile.open(fileobj=self._sink, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.type = len(data), self._mtime, 0o600, tarfile.REGTYPE
        self._tar.addfile(info, io.BytesIO(data))

    def finish(self) -> None:
        self._tar.close()

    def take(self) -> bytes:
        return self._sink.take()


@dataclass
class ParsedArchive:
    manifest: dict[str, Any]
    objects: list[ImportedObject]
    keystore: bytes | None
    total_bytes: int = 0


def _refuse(message: str, value: Any = "", reason: str = "BAD_ARCHIVE") -> InvalidArgument:
    return InvalidArgument(FIELD, value, message, reason=reason)


def _int(entry: dict[str, Any], key: str, where: str, minimum: int, maximum: int) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise _refuse(f"{where}.{key} must be an integer between {minimum} and {maximum}", value)
    return value


def _check_manifest(data: dict[str, Any], *, max_objects: int, max_object_bytes: int) -> dict[tuple[ObjectType, str], dict[str, Any]]:
    if data.get("format") != FORMAT:
        raise _refuse(f'manifest.format must be "{FORMAT}"', data.get("format"))
    if data.get("version") != VERSION:
        raise _refuse(f"manifest.version {data.get('version')!r} is not supported (only {VERSION})",
                      data.get("version"), reason="UNSUPPORTED_VERSION")
    for key in ("exported_at", "user_id", "username", "salt"):
        if key in data and not isinstance(data[key], str):
            raise _refuse(f"manifest.{key} must be a string", data[key])
    if "kdf" in data and not isinstance(data["kdf"], dict):
        raise _refuse("manifest.kdf must be an object", data["kdf"])
    objects = data.get("objects")
    if not isinstance(objects, list):
        raise _refuse("manifest.objects must be a list", type(objects).__name__)
    if len(objects) > max_objects:
        raise _refuse(f"manifest lists {len(objects)} objects, more than the quota of {max_objects}",
                      len(objects), reason="OBJECT_COUNT_QUOTA")
    entries: dict[tuple[ObjectType, str], dict[str, Any]] = {}
    for position, entry in enumerate(objects):
        where = f"manifest.objects[{position}]"
        if not isinstance(entry, dict):
            raise _refuse(f"{where} must be an object", entry)
        kind = _object_type(entry.get("type"))
        if kind is None:
            raise _refuse(f"{where}.type must be one of {', '.join(t.value for t in ObjectType)}",
                          entry.get("type"))
        id = entry.get("id")
        if not isinstance(id, str) or not validation.ID_PATTERN.fullmatch(id):
            raise _refuse(f"{where}.id must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'", id)
        _int(entry, "size", where, 1, max_object_bytes)
        _int(entry, "change_index", where, 1, 2**63 - 1)
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise _refuse(f"{where}.sha256 must be 64 lowercase hex digits", digest)
        if (kind, id) in entries:
            raise _refuse(f"{where} repeats {kind.value}/{id}", id)
        entries[(kind, id)] = entry
    return entries


def _read_member(file: IO[bytes], offset: int, size: int) -> Iterator[bytes]:
    file.seek(offset)
    left = size
    while left:
        piece = file.read(min(left, _READ_CHUNK))
        if not piece:
            raise _refuse("archive is truncated")
        left -= len(piece)
        yield piece


def _loader(file: IO[bytes], offset: int, size: int, sha256: bytes, name: str):
    def load() -> bytes:
        data = b"".join(_read_member(file, offset, size))
        if hashlib.sha256(data).digest() != sha256:  # the spool is ours; a mismatch is a bug or bad disk
            raise RuntimeError(f"{name} changed after validation")
        return data

    return load


def _check_header(info: tarfile.TarInfo) -> None:
    if info.size < 0:
        raise _refuse("a tar header has a negative size", info.size)
    if info.type in _EXTENSION_TYPES and info.size > MAX_EXTENSION_HEADER_BYTES:
        raise _refuse(f"a pax or long-name header is larger than {MAX_EXTENSION_HEADER_BYTES} bytes", info.size,
                      reason="HEADER_TOO_LARGE")
    if len(info.name) > MAX_NAME_CHARS:
        raise _refuse(f"a member name is longer than {MAX_NAME_CHARS} characters", info.name,
                      reason="HEADER_TOO_LARGE")


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo whose every header, extension headers included, is checked before it is used."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        # tarfile's own steps, with checks on the raw header (before an extension header's data is
        # read) and on the member it describes (after pax values were applied).
        counted = getattr(tar, "headers_read", 0) + 1
        tar.headers_read = counted  # type: ignore[attr-defined]
        if counted > tar.max_headers:  # type: ignore[attr-defined]
            raise _refuse(f"the archive has more than {tar.max_headers} tar headers",  # type: ignore[attr-defined]
                          reason="HEADER_TOO_LARGE")
        buf = tar.fileobj.read(_BLOCK)
        header = cls.frombuf(buf, tar.encoding, tar.errors)
        header.offset = tar.fileobj.tell() - _BLOCK
        _check_header(header)
        member = header._proc_member(tar)
        _check_header(member)
        return member


def _open_bounded(file: IO[bytes], max_members: int) -> tarfile.TarFile:
    """A plain-tar reader (no decompression bombs) that refuses oversized or too many headers."""

    class BoundedTarFile(tarfile.TarFile):
        tarinfo = _BoundedTarInfo
        # Each member may come with one extension header.
        max_headers = 2 * max_members

    return BoundedTarFile(fileobj=file, mode="r")


def read_archive(file: IO[bytes], *, max_objects: int, max_object_bytes: int, max_keystore_bytes: int) -> ParsedArchive:
    """Validate a whole archive (seekable file) and describe its contents; InvalidArgument if bad.

    Objects are not loaded into memory: each ImportedObject reads its bytes from `file` later.
    """
    try:
        return _read_archive(file, max_objects=max_objects, max_object_bytes=max_object_bytes,
                             max_keystore_bytes=max_keystore_bytes)
    except InvalidArgument:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError, OverflowError) as error:
        raise _refuse(f"is not a valid tar archive ({error})") from None


def _read_archive(file: IO[bytes], *, max_objects: int, max_object_bytes: int, max_keystore_bytes: int) -> ParsedArchive:
    file.seek(0)
    tar = _open_bounded(file, max_members=max_objects + 16)
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg():
        raise _refuse(f"the first member must be {MANIFEST}", first.name if first else "(empty archive)")
    manifest_limit = 64 * 1024 + 512 * max_objects
    if first.size > manifest_limit:
        raise _refuse(f"{MANIFEST} is larger than {manifest_limit} bytes", first.size)
    try:
        data = json.loads(b"".join(_read_member(file, first.offset_data, first.size)))
    except (ValueError, UnicodeError) as error:
        raise _refuse(f"{MANIFEST} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise _refuse(f"{MANIFEST} must hold a JSON object")
    entries = _check_manifest(data, max_objects=max_objects, max_object_bytes=max_object_bytes)

    found: dict[tuple[ObjectType, str], ImportedObject] = {}
    keystore: bytes | None = None
    seen_keystore = False
    member_limit = len(entries) + 16  # objects, the keystore, and a few directory entries
    count = 1
    while (member := tar.next()) is not None:
        count += 1
        if count > member_limit:
            raise _refuse(f"the archive has more members than its manifest describes ({member_limit}+)")
        name = member.name
        if member.isdir() and _DIRECTORY_PATH.fullmatch(name):
            continue
        if not member.isreg():
            raise _refuse(f"member {name!r} is not a regular file", name)
        if name == KEYSTORE:
            if seen_keystore:
                raise _refuse(f"{KEYSTORE} appears twice", name)
            seen_keystore = True
            if not 1 <= member.size <= max_keystore_bytes:
                raise _refuse(f"{KEYSTORE} must be 1-{max_keystore_bytes} bytes", member.size)
            keystore = b"".join(_read_member(file, member.offset_data, member.size))
            continue
        match = _OBJECT_PATH.fullmatch(name)
        kind = _object_type(match.group(1)) if match else None
        if kind is None:
            raise _refuse(f"unexpected member {name!r} (expected {KEYSTORE} or objects/<type>/<id>.bin)", name)
        key = (kind, match.group(2))
        entry = entries.get(key)
        if entry is None:
            raise _refuse(f"member {name!r} is not listed in {MANIFEST}", name)
        if key in found:
            raise _refuse(f"member {name!r} appears twice", name)
        if member.size != entry["size"]:
            raise _refuse(f"member {name!r} has {member.size} bytes, the manifest says {entry['size']}", name)
        digest = hashlib.sha256()
        for piece in _read_member(file, member.offset_data, member.size):
            digest.update(piece)
        sha256 = bytes.fromhex(entry["sha256"])
        if digest.digest() != sha256:
            raise _refuse(f"member {name!r} does not match its sha256 in {MANIFEST}", name,
                          reason="CHECKSUM_MISMATCH")
        found[key] = ImportedObject(type=kind, id=key[1], size=member.size, sha256=sha256,
                                    load=_loader(file, member.offset_data, member.size, sha256, name))
    missing = [f"{kind.value}/{id}" for kind, id in entries if (kind, id) not in found]
    if missing:
        raise _refuse(f"objects listed in {MANIFEST} are missing from the archive: {', '.join(missing[:5])}",
                      missing[0])
    objects = [found[key] for key in entries]
    return ParsedArchive(manifest=data, objects=objects, keystore=keystore,
                         total_bytes=sum(o.size for o in objects))
