"""The server's side of authentication: Argon2id hashes of auth keys, session tokens, decoy salts.

Argon2id runs in worker threads (it takes tens of milliseconds and `memlimit` bytes by design),
at most `max_concurrent` at a time so a burst of logins cannot exhaust memory, with at most
`max_queued` more waiting: beyond that a call is refused at once (RESOURCE_EXHAUSTED), so a login
flood cannot hold real logins in line past their deadlines.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id

from services.editor.admission import BoundedQueue
from services.editor.types import NewSession, Session

TOKEN_BYTES = 32
HASH_QUEUE_FULL = "AUTH_HASH_QUEUE_FULL"


def token_hash(token: str) -> bytes:
    """What is stored of a session token; a database leak does not hand out live sessions."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_session(user_id: str, now_us: int, ttl_us: int) -> tuple[Session, NewSession]:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now_us + ttl_us
    return (Session(token=token, expires_at_us=expires, user_id=user_id),
            NewSession(token_hash=token_hash(token), expires_at_us=expires))


class Credentials:
    def __init__(self, *, server_secret: str, opslimit: int, memlimit: int, max_concurrent: int,
                 max_queued: int = 64) -> None:
        self._opslimit, self._memlimit = opslimit, memlimit
        self.queue = BoundedQueue(running=max_concurrent, waiting=max_queued, what="password hashing",
                                  reason=HASH_QUEUE_FULL)
        # BLAKE2b takes at most a 64-byte key; derive one from a secret of any length.
        self._decoy_key = hashlib.sha512(b"fabula-editor decoy salt\x00" + server_secret.encode()).digest()
        self._dummy_hash: bytes | None = None

    def decoy_salt(self, username: str) -> bytes:
        """A salt for an unknown username: stable across calls and replicas, unguessable without
        the server secret, so it looks exactly like a real account's random salt."""
        return hashlib.blake2b(username.encode("utf-8"), key=self._decoy_key, digest_size=argon2id.SALTBYTES,
                               person=b"fabula-decoy-v1").digest()

    async def hash(self, auth_key: bytes) -> bytes:
        async with self.queue.slot():
            return await asyncio.to_thread(argon2id.str, auth_key, opslimit=self._opslimit,
                                           memlimit=self._memlimit)

    async def verify(self, stored_hash: bytes | None, auth_key: bytes) -> bool:
        """Whether `auth_key` matches; with `stored_hash=None` (no such user) it checks against a
        dummy hash of the same cost, so an unknown user takes as long as a wrong key."""
        if stored_hash is None:
            stored_hash = await self.dummy_hash()
        async with self.queue.slot():
            try:
                return await asyncio.to_thread(argon2id.verify, stored_hash, auth_key)
            except nacl.exceptions.InvalidkeyError:
                return False

    async def dummy_hash(self) -> bytes:
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_bytes(32))
        return self._dummy_hash
