"""The calls of the user API, independent of how they travel (HTTP via the gateway, or gRPC
straight to the editor service). Transports move bytes and metadata only: every key and
ciphertext is made and checked by client.py."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import BinaryIO

from fabula_sdk.types import ImportResult, KdfParams, ObjectMeta, Salt, Session, StoredKeystore
from fabula_wire import ObjectType


class Transport(abc.ABC):
    """One connection to a Fabula server. `token` is sent with every call that needs a session."""

    token: str | None = None

    @abc.abstractmethod
    def get_salt(self, username: str) -> Salt: ...

    @abc.abstractmethod
    def register(self, username: str, salt: bytes, kdf: KdfParams, auth_key: bytes, keystore: bytes) -> Session: ...

    @abc.abstractmethod
    def login(self, username: str, auth_key: bytes) -> Session: ...

    @abc.abstractmethod
    def logout(self) -> None: ...

    @abc.abstractmethod
    def me(self) -> tuple[str, str]:
        """(user_id, username) of the session."""

    @abc.abstractmethod
    def change_password(self, old_auth_key: bytes, new_salt: bytes, new_kdf: KdfParams, new_auth_key: bytes,
                        keystore: bytes, expected_keystore_change_index: int) -> tuple[Session, int]:
        """The new session and the keystore's new change index."""

    @abc.abstractmethod
    def delete_account(self, auth_key: bytes) -> int:
        """How many objects were deleted."""

    @abc.abstractmethod
    def get_keystore(self) -> StoredKeystore: ...

    @abc.abstractmethod
    def put_keystore(self, blob: bytes, expected_change_index: int) -> int:
        """The keystore's new change index."""

    @abc.abstractmethod
    def list_objects(self, type: ObjectType, page_size: int | None = None,
                     page_token: str = "") -> tuple[list[ObjectMeta], str]:
        """One page of metadata and the token of the next page ("" on the last)."""

    @abc.abstractmethod
    def put_object(self, type: ObjectType, id: str, data: bytes, expected_change_index: int) -> ObjectMeta: ...

    @abc.abstractmethod
    def get_object(self, type: ObjectType, id: str) -> tuple[ObjectMeta, bytes]: ...

    @abc.abstractmethod
    def delete_object(self, type: ObjectType, id: str, expected_change_index: int | None = None) -> None: ...

    @abc.abstractmethod
    def export_account(self, sink: BinaryIO) -> int:
        """Write the account's archive to `sink`; the number of bytes written."""

    @abc.abstractmethod
    def import_account(self, pieces: Iterable[bytes], expected_keystore_change_index: int) -> ImportResult:
        """Store an archive in the account if its keystore change index is still the expected one."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
