"""Accounts and sessions: register, salt look-up, login, logout, password change, deletion.

The server never sees a password: it receives a 32-byte authentication key derived from it on
the client and keeps only an Argon2id hash of that key. Nothing it answers tells an unknown
username from a known one (GetSalt returns a decoy; a failed login has one message and one cost).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fabula_wire import ObjectType
from services.editor import metrics, validation
from services.editor.api_tokens import is_api_token
from services.editor.credentials import Credentials, new_session, token_hash
from services.editor.settings import EditorSettings
from services.editor.storage.base import Storage
from services.editor.types import Account, Clock, KdfParams, Session, StoredObject
from services.toolkit.errors import Conflict, PermissionDenied, Unauthenticated

LOGIN_FAILED = "wrong username or authentication key"
BAD_TOKEN = "the session token is invalid, expired or revoked; log in again"
API_TOKEN_REFUSED = ("a personal API token is scoped to generation: it cannot read or write stories or the "
                     "account; use a session from login")
MAX_TOKEN_CHARS = 512
T = TypeVar("T")


class Accounts:
    def __init__(self, storage: Storage, settings: EditorSettings, credentials: Credentials, clock: Clock) -> None:
        self._storage, self._settings, self._credentials, self._clock = storage, settings, credentials, clock
        self._ttl_us = int(settings.session_ttl_s * 1_000_000)

    def _kdf(self, opslimit: int, memlimit: int, field: str) -> KdfParams:
        settings = self._settings
        return validation.kdf(opslimit, memlimit, min_opslimit=settings.min_kdf_opslimit,
                              min_memlimit=settings.min_kdf_memlimit, max_opslimit=settings.max_kdf_opslimit,
                              max_memlimit=settings.max_kdf_memlimit, field=field)

    async def get_salt(self, username: str) -> tuple[bytes, KdfParams]:
        name = validation.username(username)
        account = await self._storage.account_by_username(name)
        if account is not None:
            return account.salt, account.kdf
        return self._credentials.decoy_salt(name), KdfParams(self._settings.default_kdf_opslimit,
                                                             self._settings.default_kdf_memlimit)

    async def register(self, username: str, salt: bytes, opslimit: int, memlimit: int, auth_key: bytes,
                       keystore: bytes) -> Session:
        name = validation.username(username)
        validation.salt(salt)
        kdf = self._kdf(opslimit, memlimit, "kdf")
        validation.auth_key(auth_key)
        validation.blob(keystore, self._settings.max_keystore_bytes, "keystore")
        now = self._clock()
        account = Account(user_id=str(uuid.uuid4()), username=name, salt=salt, kdf=kdf,
                          auth_hash=await self._credentials.hash(auth_key), created_at_us=now)
        session, stored = new_session(account.user_id, now, self._ttl_us)
        await self._storage.create_account(account, keystore, stored)
        metrics.ACCOUNT_EVENTS.labels("registered").inc()
        return session

    async def login(self, username: str, auth_key: bytes) -> Session:
        name = validation.username(username)
        validation.auth_key(auth_key)
        account = await self._storage.account_by_username(name)
        # Verify even for an unknown user (against a dummy hash): same work, same answer.
        matches = await self._credentials.verify(account.auth_hash if account else None, auth_key)
        if account is None or not matches:
            metrics.AUTH_FAILURES.labels("unknown_user" if account is None else "wrong_key").inc()
            raise Unauthenticated(LOGIN_FAILED)
        now = self._clock()
        session, stored = new_session(account.user_id, now, self._ttl_us)
        await self._storage.add_session(account.user_id, stored, now)
        return session

    async def authenticate(self, token: str) -> Account:
        """The account a bearer token belongs to; Unauthenticated if it is unknown, expired or revoked."""
        account = None
        if self._may_look_up(token):
            account = await self._storage.account_for_session(token_hash(token), self._clock())
        return self._known(account)

    async def authenticate_and_get(self, token: str, type: ObjectType, id: str) -> tuple[Account, StoredObject | None]:
        """`authenticate`, and the account's object (None if absent) read in the same round trip."""
        return await self.authenticate_with(
            token, lambda hashed, now: self._storage.object_for_session(hashed, now, type, id))

    async def authenticate_with(self, token: str,
                                look_up: Callable[[bytes, int], Awaitable[tuple[Account | None, T]]]) -> tuple[Account, T]:
        """`authenticate`, where `look_up(token_hash, now)` finds the session's account (None when
        there is none) together with something else it does in the same trip to the database."""
        account, other = None, None
        if self._may_look_up(token):
            account, other = await look_up(token_hash(token), self._clock())
        return self._known(account), other

    @staticmethod
    def _may_look_up(token: str) -> bool:
        """Whether a token is worth a look-up; raises for one that may never reach storage."""
        if not token:
            metrics.AUTH_FAILURES.labels("missing_token").inc()
            raise Unauthenticated("missing session token: send 'authorization: Bearer <token>'",
                                  field="authorization")
        if is_api_token(token):
            # Refused without a look-up: whether it is valid or not, it may never reach storage.
            metrics.AUTH_FAILURES.labels("api_token_out_of_scope").inc()
            raise PermissionDenied(API_TOKEN_REFUSED, field="authorization")
        return len(token) <= MAX_TOKEN_CHARS

    @staticmethod
    def _known(account: Account | None) -> Account:
        if account is None:
            metrics.AUTH_FAILURES.labels("invalid_token").inc()
            raise Unauthenticated(BAD_TOKEN, field="authorization")
        return account

    async def logout(self, token: str) -> None:
        await self._storage.delete_session(token_hash(token))

    async def _prove(self, account: Account, auth_key: bytes, field: str) -> None:
        validation.auth_key(auth_key, field)
        if not await self._credentials.verify(account.auth_hash, auth_key):
            metrics.AUTH_FAILURES.labels("wrong_key").inc()
            raise Unauthenticated(f"{field}: wrong authentication key", field=field)

    async def change_password(self, account: Account, *, old_auth_key: bytes, new_salt: bytes,
                              new_opslimit: int, new_memlimit: int, new_auth_key: bytes, keystore: bytes,
                              expected_keystore_index: int) -> tuple[Session, int]:
        validation.auth_key(old_auth_key, "old_auth_key")
        validation.salt(new_salt, "new_salt")
        kdf = self._kdf(new_opslimit, new_memlimit, "new_kdf")
        validation.auth_key(new_auth_key, "new_auth_key")
        validation.blob(keystore, self._settings.max_keystore_bytes, "keystore")
        validation.change_index(expected_keystore_index, "expected_keystore_change_index")
        await self._prove(account, old_auth_key, "old_auth_key")
        new_hash = await self._credentials.hash(new_auth_key)
        now = self._clock()
        session, stored = new_session(account.user_id, now, self._ttl_us)
        try:
            index = await self._storage.change_password(
                account.user_id, salt=new_salt, kdf=kdf, auth_hash=new_hash, keystore=keystore,
                expected_keystore_index=expected_keystore_index, session=stored, now_us=now)
        except Conflict:
            metrics.STALE_WRITES.labels("keystore").inc()
            raise
        metrics.ACCOUNT_EVENTS.labels("password_changed").inc()
        return session, index

    async def delete_account(self, account: Account, auth_key: bytes) -> int:
        await self._prove(account, auth_key, "auth_key")
        deleted = await self._storage.delete_account(account.user_id)
        metrics.ACCOUNT_EVENTS.labels("deleted").inc()
        return deleted
