"""The SDK's front door: an account's session and its end-to-end encrypted objects.

    client = FabulaClient.connect("http://127.0.0.1:8000")   # or FabulaClient.connect_grpc("host:50051")
    client.register("ada", "a long passphrase")
    meta = client.put(ObjectType.LOREBOOK, client.new_id(), b"...", expected_change_index=0)
    assert client.get(ObjectType.LOREBOOK, meta.id).plaintext == b"..."

Everything sent is ciphertext (envelope.py) under a per-object data key held in the keystore
(keystore.py); the keystore is sealed under the master key, which is wrapped by a key derived
from the password (kdf.py). Writes are optimistic: each names the change index it is based on,
and a stale one raises ConflictError without overwriting anything.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fabula_sdk import archive, envelope, kdf
from fabula_sdk.errors import ConflictError, DecryptionError, KeystoreError, ReplayError
from fabula_sdk.keystore import Keystore, check_object_id, rewrap
from fabula_sdk.transport import Transport
from fabula_sdk.types import DEFAULT_KDF, KDF_FLOOR, ImportResult, KdfParams, ObjectMeta, Session
from fabula_wire import ObjectType

if TYPE_CHECKING:
    from fabula_sdk.documents.store import DocumentStore

# How often a write that raced another device's keystore write is merged and retried.
KEYSTORE_RETRIES = 8


@dataclass(frozen=True)
class StoredObject:
    meta: ObjectMeta
    plaintext: bytes
    revision: int


class FabulaClient:
    """A signed-in user's view of the API, with every key kept on this side.

    `kdf`: the Argon2id cost new accounts and new passwords are given. Neither it nor the cost a
    server answers for a login may lie below KDF_FLOOR (WeakKdfError). `kdf_floor_for_tests`
    lowers that floor, and exists only so that tests can use libsodium's minimum cost against a
    test server: production code never sets it (docs/encryption.md, "The floor").
    """

    def __init__(self, transport: Transport, *, kdf: KdfParams = DEFAULT_KDF,
                 kdf_floor_for_tests: KdfParams | None = None) -> None:
        self.transport = transport
        self.kdf_floor = KDF_FLOOR if kdf_floor_for_tests is None else kdf_floor_for_tests.check()
        self.kdf = kdf.check()
        self.username: str | None = None
        self.user_id: str | None = None
        self.session: Session | None = None
        self._keystore: Keystore | None = None
        self._keystore_index = 0
        # The highest revision seen of each object: an older one is a replay (envelope.py).
        self.revisions: dict[tuple[ObjectType, str], int] = {}

    @classmethod
    def connect(cls, url: str, *, kdf: KdfParams = DEFAULT_KDF, timeout_s: float = 60.0,
                kdf_floor_for_tests: KdfParams | None = None) -> FabulaClient:
        """A client of the HTTP API at `url` (the gateway)."""
        from fabula_sdk.http_transport import HttpTransport

        return cls(HttpTransport(url, timeout_s=timeout_s), kdf=kdf, kdf_floor_for_tests=kdf_floor_for_tests)

    @classmethod
    def connect_grpc(cls, address: str, *, kdf: KdfParams = DEFAULT_KDF, timeout_s: float = 60.0,
                     kdf_floor_for_tests: KdfParams | None = None) -> FabulaClient:
        """A client of the editor service's gRPC API at `address` ("host:port"); needs the
        generated `fabula.editor.v1` modules (`make proto`)."""
        from fabula_sdk.grpc_transport import GrpcTransport

        return cls(GrpcTransport(address, timeout_s=timeout_s), kdf=kdf, kdf_floor_for_tests=kdf_floor_for_tests)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> FabulaClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    # --- the account --------------------------------------------------------------------------

    def register(self, username: str, password: str) -> Session:
        kdf.require_floor(self.kdf, self.kdf_floor, asked_by="this client's kdf setting")
        salt = kdf.new_salt()
        keys = kdf.derive_keys(password, salt, self.kdf)
        keystore = Keystore.create(keys.key_encryption_key)
        session = self.transport.register(username, salt, self.kdf, keys.auth_key, keystore.seal())
        self._signed_in(username, session)
        self._load_keystore(master_key=keystore.master_key)
        return session

    def login(self, username: str, password: str) -> Session:
        keys = self._password_keys(username, password)
        session = self.transport.login(username, keys.auth_key)
        self._signed_in(username, session)
        stored = self.transport.get_keystore()
        self._keystore = Keystore.open(stored.blob, key_encryption_key=keys.key_encryption_key)
        self._keystore_index = stored.change_index
        return session

    def resume(self, token: str, master_key: bytes, *, revisions: dict[tuple[ObjectType, str], int] | None = None) -> None:
        """Continue a session saved earlier (the CLI's): the token and the master key stand in
        for the password."""
        self.transport.token = token
        self.user_id, self.username = self.transport.me()
        self.revisions.update(revisions or {})
        self._load_keystore(master_key=master_key)

    @property
    def master_key(self) -> bytes:
        return self._unlocked().master_key

    @property
    def keystore(self) -> Keystore:
        """The unlocked keystore as last read or written (for inspection; change it through
        put/delete so that the server's copy stays in step)."""
        return self._unlocked()

    def logout(self) -> None:
        try:
            self.transport.logout()
        finally:
            self.transport.token = None
            self._keystore = None
            self.session = None

    def change_password(self, old_password: str, new_password: str) -> Session:
        """Re-wrap the master key under the new password; every object stays as it is. Every
        session, this one included, is revoked and replaced by the returned one."""
        username = self._username()
        kdf.require_floor(self.kdf, self.kdf_floor, asked_by="this client's kdf setting")
        old = self._password_keys(username, old_password)
        salt = kdf.new_salt()
        new = kdf.derive_keys(new_password, salt, self.kdf)
        for _ in range(KEYSTORE_RETRIES):
            stored = self.transport.get_keystore()
            blob = rewrap(stored.blob, old.key_encryption_key, new.key_encryption_key)
            try:
                session, index = self.transport.change_password(old.auth_key, salt, self.kdf, new.auth_key, blob,
                                                                stored.change_index)
            except ConflictError:
                continue  # another device wrote the keystore meanwhile: re-wrap its version
            self._signed_in(username, session)
            self._keystore = Keystore.open(blob, key_encryption_key=new.key_encryption_key)
            self._keystore_index = index
            return session
        raise ConflictError(409, "ABORTED", "the keystore kept changing during the password change; try again")

    def delete_account(self, password: str) -> int:
        deleted = self.transport.delete_account(self._password_keys(self._username(), password).auth_key)
        self.transport.token = None
        self._keystore, self.session = None, None
        self.revisions.clear()
        return deleted

    # --- objects ------------------------------------------------------------------------------

    def put(self, type: ObjectType, id: str, plaintext: bytes, *, expected_change_index: int,
            compress: bool = True) -> ObjectMeta:
        """Encrypt and store `plaintext` as object `type`/`id`: expected_change_index 0 creates it
        (ConflictError if it exists), otherwise it must be the stored change index (ConflictError
        if someone wrote since; nothing is overwritten)."""
        type = ObjectType.parse(type)
        check_object_id(id)
        key = self._data_key_for_write(type, id)
        revision = max(self.revisions.get((type, id), 0), expected_change_index) + 1
        blob = envelope.seal_object(key, type, id, plaintext, revision=revision, compress=compress)
        meta = self.transport.put_object(type, id, blob, expected_change_index)
        self.revisions[(type, id)] = revision
        return meta

    def get(self, type: ObjectType, id: str) -> StoredObject:
        """The decrypted object; DecryptionError if the server's answer is not authentic, ReplayError
        if it is older than a version this client has seen."""
        type = ObjectType.parse(type)
        check_object_id(id)
        meta, blob = self.transport.get_object(type, id)
        opened = envelope.open_object(self._data_key_for_read(type, id), type, id, blob)
        seen = self.revisions.get((type, id), 0)
        if opened.revision < seen:
            raise ReplayError(f"{type.value}/{id}: the server returned revision {opened.revision}, older than "
                              f"revision {seen} this client has already seen (a replayed or rolled-back version)")
        self.revisions[(type, id)] = opened.revision
        return StoredObject(meta=meta, plaintext=opened.plaintext, revision=opened.revision)

    def list(self, type: ObjectType, *, page_size: int | None = None) -> Iterator[ObjectMeta]:
        """Every object of `type` (metadata only), following pages."""
        type = ObjectType.parse(type)
        token = ""
        while True:
            page, token = self.transport.list_objects(type, page_size, token)
            yield from page
            if not token:
                return

    def delete(self, type: ObjectType, id: str, *, expected_change_index: int | None = None) -> None:
        """Delete the object, then forget its data key."""
        type = ObjectType.parse(type)
        self.transport.delete_object(type, id, expected_change_index)
        self.revisions.pop((type, id), None)
        if id not in self._unlocked().entries and self._unlocked().has_key(type, id):
            return  # a derived object: its key is computed from its parent's, never stored
        if id not in self._unlocked().entries:
            self.sync_keystore()  # another device may have added the key
        if id in self._unlocked().entries:
            self._update_keystore(lambda keystore: keystore.entries.pop(id, None))

    # --- the keystore -------------------------------------------------------------------------

    def sync_keystore(self) -> None:
        """Fetch the keystore again (another device may have added keys)."""
        self._load_keystore(master_key=self._unlocked().master_key)

    def _load_keystore(self, *, master_key: bytes) -> None:
        stored = self.transport.get_keystore()
        self._keystore = Keystore.open(stored.blob, master_key=master_key)
        self._keystore_index = stored.change_index

    def _update_keystore(self, change: Callable[[Keystore], object]) -> None:
        """Apply `change` and store the keystore under its change index; when another device wrote
        it first, apply `change` to theirs and try again, so neither device's keys are lost."""
        for _ in range(KEYSTORE_RETRIES):
            # Changed on a copy: the local keystore must never hold a key the server lacks.
            keystore = self._unlocked().copy()
            change(keystore)
            try:
                self._keystore_index = self.transport.put_keystore(keystore.seal(), self._keystore_index)
            except ConflictError:
                self.sync_keystore()
                continue
            self._keystore = keystore
            return
        raise ConflictError(409, "ABORTED", "the keystore kept changing on the server; try again")

    def _data_key_for_write(self, type: ObjectType, id: str) -> bytes:
        # The key is stored before the object: an object must never exist without its key (an
        # unused key left behind by a failed write costs nothing).
        keystore = self._unlocked()
        if not keystore.has_key(type, id):
            self.sync_keystore()
            keystore = self._unlocked()
        if not keystore.has_key(type, id):
            self._update_keystore(lambda ks: ks.add(type, id))
        return self._unlocked().key_for(type, id)

    def _data_key_for_read(self, type: ObjectType, id: str) -> bytes:
        if not self._unlocked().has_key(type, id):
            self.sync_keystore()
        try:
            return self._unlocked().key_for(type, id)
        except KeystoreError as error:
            raise DecryptionError(str(error)) from None

    def _unlocked(self) -> Keystore:
        if self._keystore is None:
            raise KeystoreError("not signed in: log in, register or resume a session first")
        return self._keystore

    @property
    def documents(self) -> DocumentStore:
        """Stories, lorebooks, presets and images as typed documents (documents/store.py)."""
        from fabula_sdk.documents.store import DocumentStore  # late: the store imports this module

        return DocumentStore(self)

    # --- export and import --------------------------------------------------------------------

    def export_archive(self, path: Path) -> archive.ArchiveContents:
        """Download the account's archive (still encrypted) to `path` and check it is complete."""
        path = Path(path)
        with path.open("wb") as file:
            self.transport.export_account(file)
        return archive.read_archive(path)

    def import_archive(self, path: Path, archive_password: str, *, verify: bool = True) -> ImportResult:
        """Store an archive exported from any account on any server in this account.

        The archive's keystore opens with the password its account had at export time (its salt
        and Argon2id cost are in the manifest). Its keys are merged into this account's keystore
        first, under the keystore's change index (so a concurrent change by another device is
        merged, never overwritten); then the archive, less its keystore, is uploaded and the server
        stores its objects unchanged. With `verify`, every object is decrypted before anything is
        sent, so an archive that was tampered with is refused whole.
        """
        path = Path(path)
        contents = archive.read_archive(path)
        if contents.keystore is None:
            raise DecryptionError("the archive holds no keystore, so its objects cannot be decrypted")
        # No floor here: these keys only open the archive's keystore on this machine and are
        # never sent, so a cheap cost gives a server nothing to guess against.
        keys = kdf.derive_keys(archive_password, contents.salt, contents.kdf)
        source = Keystore.open(contents.keystore, key_encryption_key=keys.key_encryption_key)
        if verify:
            for obj, blob in archive.iter_objects(path):
                envelope.open_object(_key_or_fail(source, obj.type, obj.id), obj.type, obj.id, blob)
        self._update_keystore(lambda keystore: keystore.merge(source))
        with tempfile.TemporaryFile() as upload:
            archive.without_keystore(path, upload)
            result = self.transport.import_account(archive.pieces(upload), self._keystore_index)
        for obj in contents.objects:
            # The archive's versions replace whatever this client saw of these objects.
            self.revisions.pop((obj.type, obj.id), None)
        return result

    # --- helpers ------------------------------------------------------------------------------

    def _password_keys(self, username: str, password: str) -> kdf.PasswordKeys:
        salt = self.transport.get_salt(username)
        kdf.require_floor(salt.kdf, self.kdf_floor, asked_by="the server")
        return kdf.derive_keys(password, salt.salt, salt.kdf)

    def _signed_in(self, username: str, session: Session) -> None:
        self.transport.token = session.token
        self.session = session
        self.user_id = session.user_id
        self.username = username

    def _username(self) -> str:
        if self.username is None:
            raise KeystoreError("not signed in")
        return self.username


def _key_or_fail(keystore: Keystore, type: ObjectType, id: str) -> bytes:
    try:
        return keystore.key_for(type, id)
    except KeystoreError as error:
        raise DecryptionError(f"the archive's keystore cannot open {type.value}/{id}: {error}") from None
