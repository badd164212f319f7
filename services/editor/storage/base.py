"""The one interface every storage back end implements, and the errors they share.

Back ends store ciphertext and the minimum metadata; they make no crypto decisions. Every
conditional write (change index checks, quotas) happens inside one transaction of the back end,
so that concurrent writers can never both succeed on the same expected state.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from fabula_wire import ObjectType
from services.editor.types import (
    Account,
    ApiToken,
    ImportedObject,
    ImportResult,
    Keystore,
    KdfParams,
    NewSession,
    ObjectMeta,
    Quota,
    StoredObject,
)
from services.toolkit.errors import Conflict, NotFound, ResourceExhausted

STALE_CHANGE_INDEX = "STALE_CHANGE_INDEX"
QUOTA_OBJECTS = "OBJECT_COUNT_QUOTA"
QUOTA_BYTES = "STORAGE_QUOTA"
# A quota frees only when the user deletes something; retrying within seconds will not help.
QUOTA_RETRY_AFTER_S = 60.0


def stale(what: str, expected: int, stored: int, field: str = "expected_change_index") -> Conflict:
    if expected == 0:
        message = f"{what} already exists with change index {stored}; nothing was written"
    else:
        message = f"{what}: expected change index {expected} is stale, stored is {stored}; nothing was written"
    return Conflict(message, field=field, value=expected, reason=STALE_CHANGE_INDEX)


def not_found(what: str) -> NotFound:
    return NotFound(f"{what} does not exist", field="id")


def check_objects(quota: Quota, objects: int) -> None:
    """Raise if an account would hold more objects than its quota after a write."""
    if objects > quota.max_objects:
        raise ResourceExhausted(f"object quota of {quota.max_objects} objects reached",
                                reason=QUOTA_OBJECTS, retry_after_s=QUOTA_RETRY_AFTER_S)


def check_bytes(quota: Quota, stored_bytes: int) -> None:
    """Raise if an account would store more bytes than its quota after a write."""
    if stored_bytes > quota.max_bytes:
        raise ResourceExhausted(f"storage quota of {quota.max_bytes} bytes reached "
                                f"(the write would make it {stored_bytes})",
                                reason=QUOTA_BYTES, retry_after_s=QUOTA_RETRY_AFTER_S)


@dataclass(frozen=True)
class Usage:
    objects: int
    stored_bytes: int


@dataclass(frozen=True)
class ObjectWrite:
    type: ObjectType
    id: str
    data: bytes
    sha256: bytes


class ExportSnapshot(abc.ABC):
    """A consistent, read-only view of one account, open for the length of an export."""

    account: Account
    keystore: Keystore
    objects: list[ObjectMeta]

    @abc.abstractmethod
    async def read(self, meta: ObjectMeta) -> bytes:
        """The data of one object of `objects`, as of the snapshot."""


class Storage(abc.ABC):
    """Accounts, sessions, keystores and encrypted objects."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent, safe with several replicas)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def check(self) -> None:
        """Reach the database afresh (not through a busy pool); raises when it is gone or broken."""

    # Accounts and sessions.
    @abc.abstractmethod
    async def create_account(self, account: Account, keystore: bytes, session: NewSession) -> None:
        """Store a new account with its keystore (change index 1) and first session.

        Raises AlreadyExists when the username is taken.
        """

    @abc.abstractmethod
    async def account_by_username(self, username: str) -> Account | None: ...

    @abc.abstractmethod
    async def account_by_id(self, user_id: str) -> Account | None: ...

    @abc.abstractmethod
    async def add_session(self, user_id: str, session: NewSession, now_us: int) -> None:
        """Store a session (and forget the user's expired ones)."""

    @abc.abstractmethod
    async def account_for_session(self, token_hash: bytes, now_us: int) -> Account | None:
        """The account of an unexpired session, or None."""

    @abc.abstractmethod
    async def delete_session(self, token_hash: bytes) -> None: ...

    # Personal API tokens.
    @abc.abstractmethod
    async def add_api_token(self, token: ApiToken, max_per_user: int) -> None:
        """Store a token; ResourceExhausted when the account already holds `max_per_user`."""

    @abc.abstractmethod
    async def list_api_tokens(self, user_id: str) -> list[ApiToken]:
        """The account's tokens, oldest first."""

    @abc.abstractmethod
    async def delete_api_token(self, user_id: str, id: str) -> bool:
        """Revoke one of the account's tokens; False when it has none with that id."""

    @abc.abstractmethod
    async def account_for_api_token(self, token_hash: bytes, now_us: int) -> Account | None:
        """The account of an unexpired API token, or None."""

    @abc.abstractmethod
    async def change_password(self, user_id: str, *, salt: bytes, kdf: KdfParams, auth_hash: bytes,
                              keystore: bytes, expected_keystore_index: int, session: NewSession,
                              now_us: int) -> int:
        """Replace credentials and keystore, revoke every session, add `session`; one transaction.

        Returns the keystore's new change index; Conflict if `expected_keystore_index` is stale.
        """

    @abc.abstractmethod
    async def delete_account(self, user_id: str) -> int:
        """Delete the account, its keystore, objects and sessions; returns the number of objects."""

    # Keystore.
    @abc.abstractmethod
    async def get_keystore(self, user_id: str) -> Keystore: ...

    @abc.abstractmethod
    async def put_keystore(self, user_id: str, data: bytes, expected_index: int, now_us: int) -> int:
        """Write if `expected_index` is the stored index (Conflict if not); returns the new index."""

    # Objects.
    @abc.abstractmethod
    async def put_object(self, user_id: str, write: ObjectWrite, expected_index: int, quota: Quota,
                         now_us: int) -> ObjectMeta:
        """Create (expected 0) or update (expected = stored index) one object, atomically.

        Conflict if the index is stale, NotFound when updating an absent object,
        ResourceExhausted when the account would exceed `quota`. Nothing is written on error.
        """

    async def put_object_for_session(self, token_hash: bytes, now_us: int, admit: Callable[[Account], object],
                                     write: ObjectWrite, expected_index: int,
                                     quota: Quota) -> tuple[Account | None, ObjectMeta | None]:
        """`put_object` for the session's account: (None, None) if the session is unknown or
        expired; `admit(account)` may raise to refuse the account before anything is written. A
        save's look-up and write, in one round trip where a back end can make it so."""
        account = await self.account_for_session(token_hash, now_us)
        if account is None:
            return None, None
        admit(account)
        return account, await self.put_object(account.user_id, write, expected_index, quota, now_us)

    @abc.abstractmethod
    async def get_object(self, user_id: str, type: ObjectType, id: str) -> StoredObject | None: ...

    async def object_for_session(self, token_hash: bytes, now_us: int, type: ObjectType,
                                 id: str) -> tuple[Account | None, StoredObject | None]:
        """The session's account (None if the session is unknown or expired) and, only when there
        is one, that account's object: a load's two look-ups, in one round trip where a back end
        can make it so."""
        account = await self.account_for_session(token_hash, now_us)
        if account is None:
            return None, None
        return account, await self.get_object(account.user_id, type, id)

    @abc.abstractmethod
    async def list_objects(self, user_id: str, type: ObjectType, after_id: str, limit: int) -> list[ObjectMeta]:
        """Up to `limit` objects of `type` with ids greater than `after_id`, ordered by id."""

    @abc.abstractmethod
    async def delete_object(self, user_id: str, type: ObjectType, id: str, expected_index: int | None) -> None:
        """NotFound if absent; Conflict if `expected_index` is given and stale."""

    @abc.abstractmethod
    async def usage(self, user_id: str) -> Usage: ...

    # Export and import.
    @abc.abstractmethod
    def export_snapshot(self, user_id: str) -> AbstractAsyncContextManager[ExportSnapshot]:
        """A consistent view of the account for streaming an export."""

    @abc.abstractmethod
    async def import_objects(self, user_id: str, objects: Sequence[ImportedObject], keystore: bytes | None,
                             expected_keystore_index: int, quota: Quota, now_us: int, *,
                             batch_bytes: int) -> ImportResult:
        """Store every object (replacing same ids, their change index incremented) and the keystore
        if given: all or nothing, visible at once. Conflict if `expected_keystore_index` is stale,
        ResourceExhausted beyond `quota`. The data may be staged in several short transactions of
        about `batch_bytes` each, so that a large import never holds the writer for its whole run."""

