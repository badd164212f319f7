"""Reading and rewriting export archives on the client (the format: docs/encryption.md, "Export
archive"; the server's side: services/editor/archive.py).

The SDK checks an archive it downloaded (complete, every member matches the manifest's sha256)
and, to import it, writes a copy whose keystore member is dropped: the keys travel separately,
merged into the destination's keystore under its change index (see client.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from fabula_sdk.errors import ArchiveError
from fabula_sdk.types import KdfParams
from fabula_wire import ObjectType

FORMAT = "fabula-export"
VERSION = 1
MANIFEST = "manifest.json"
KEYSTORE = "keystore.bin"
_OBJECT_PATH = re.compile(r"objects/([a-z]+)/([A-Za-z0-9_-]{1,64})\.bin")
_COPY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ArchivedObject:
    type: ObjectType
    id: str
    size: int
    change_index: int
    sha256: str

    @property
    def path(self) -> str:
        return f"objects/{self.type.value}/{self.id}.bin"


@dataclass(frozen=True)
class ArchiveContents:
    """What an archive holds: the source account's KDF inputs (so the source password unlocks
    its keystore), the keystore blob, and the objects' metadata."""

    manifest: dict[str, Any]
    username: str
    salt: bytes
    kdf: KdfParams
    keystore: bytes | None
    objects: list[ArchivedObject]


def _parse_manifest(data: dict[str, Any]) -> tuple[str, bytes, KdfParams, list[ArchivedObject]]:
    if data.get("format") != FORMAT:
        raise ArchiveError(f'manifest.format must be "{FORMAT}", not {data.get("format")!r}')
    if data.get("version") != VERSION:
        raise ArchiveError(f"manifest.version {data.get('version')!r} is not supported (this SDK reads {VERSION})")
    try:
        salt = base64.b64decode(data["salt"], validate=True)
        kdf = KdfParams(opslimit=int(data["kdf"]["opslimit"]), memlimit=int(data["kdf"]["memlimit"])).check()
        objects = [ArchivedObject(type=ObjectType(entry["type"]), id=str(entry["id"]), size=int(entry["size"]),
                                  change_index=int(entry["change_index"]), sha256=str(entry["sha256"]))
                   for entry in data["objects"]]
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        raise ArchiveError(f"manifest is malformed ({type(error).__name__}: {error})") from None
    if len(salt) != 16:
        raise ArchiveError(f"manifest.salt must be 16 bytes, not {len(salt)}")
    return str(data.get("username", "")), salt, kdf, objects


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        yield member


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    file = tar.extractfile(member)
    if file is None:
        raise ArchiveError(f"member {member.name!r} is not a regular file")
    return file.read()


def read_archive(path: Path) -> ArchiveContents:
    """Check the whole archive at `path` and describe it; ArchiveError if anything is off."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            return _read_archive(tar)
    except (tarfile.TarError, EOFError, OSError, UnicodeError) as error:
        raise ArchiveError(f"{path} is not a complete tar archive ({error})") from None


def _read_archive(tar: tarfile.TarFile) -> ArchiveContents:
    first = tar.next()
    if first is None or first.name != MANIFEST:
        raise ArchiveError(f"the first member must be {MANIFEST}")
    try:
        manifest = json.loads(_read(tar, first))
    except ValueError as error:
        raise ArchiveError(f"{MANIFEST} is not JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ArchiveError(f"{MANIFEST} must hold a JSON object")
    username, salt, kdf, objects = _parse_manifest(manifest)
    expected = {obj.path: obj for obj in objects}
    keystore: bytes | None = None
    seen: set[str] = set()
    for member in _members(tar):
        if member.isdir():
            continue
        if member.name == KEYSTORE:
            keystore = _read(tar, member)
            continue
        entry = expected.get(member.name)
        if entry is None or member.name in seen:
            raise ArchiveError(f"member {member.name!r} is not listed in {MANIFEST} (or appears twice)")
        seen.add(member.name)
        if hashlib.sha256(_read(tar, member)).hexdigest() != entry.sha256:
            raise ArchiveError(f"member {member.name!r} does not match its sha256 in {MANIFEST}")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ArchiveError(f"the archive lacks {len(missing)} listed objects, e.g. {missing[0]}")
    return ArchiveContents(manifest=manifest, username=username, salt=salt, kdf=kdf, keystore=keystore,
                           objects=objects)


def read_object(path: Path, obj: ArchivedObject) -> bytes:
    with tarfile.open(path, mode="r:") as tar:
        return _read(tar, tar.getmember(obj.path))


def iter_objects(path: Path) -> Iterator[tuple[ArchivedObject, bytes]]:
    """Every object of the archive with its encrypted bytes, one at a time."""
    objects = {obj.path: obj for obj in read_archive(path).objects}
    with tarfile.open(path, mode="r:") as tar:
        for member in _members(tar):
            if member.name in objects:
                yield objects[member.name], _read(tar, member)


def without_keystore(path: Path, sink: BinaryIO) -> None:
    """Copy the archive at `path` into `sink` member by member, leaving out keystore.bin."""
    with tarfile.open(path, mode="r:") as source, \
            tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as target:
        for member in _members(source):
            if member.name == KEYSTORE:
                continue
            file: IO[bytes] | None = source.extractfile(member) if member.isreg() else None
            target.addfile(member, file)


def pieces(file: BinaryIO, size: int = _COPY_BYTES) -> Iterator[bytes]:
    file.seek(0)
    while piece := file.read(size):
        yield piece
