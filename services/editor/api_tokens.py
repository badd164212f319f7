"""Personal API tokens: long-lived bearer tokens for the compatible generation APIs (OpenAI,
KoboldAI), whose clients cannot do Fabula's end-to-end sign-in.

A token is scoped to generation: the editor accepts it only in Authenticate (which reports the
scope to the gateway) and refuses it on every call that touches the account or its objects, so
a leaked API token can spend the owner's generation quota but never read or change a story. Only
a session can create, list or revoke tokens. Tokens are 256-bit random strings stored as their
SHA-256 (a database leak hands out no live token; a random token needs no slow hash).
"""

from __future__ import annotations

import secrets
import unicodedata

from services.editor import validation
from services.editor.credentials import TOKEN_BYTES, token_hash
from services.editor.settings import EditorSettings
from services.editor.storage.base import Storage
from services.editor.types import Account, ApiToken, Clock
from services.toolkit.errors import InvalidArgument, NotFound

# Marks an API token so the editor can tell it from a session token without a database look-up
# (and so that secret scanners can recognise one pasted somewhere it should not be).
API_TOKEN_PREFIX = "fabula_pat_"
NAME_MAX_CHARS = 64
MAX_TOKEN_CHARS = 512


def is_api_token(token: str) -> bool:
    return token.startswith(API_TOKEN_PREFIX)


def token_name(value: str, field: str = "name") -> str:
    """A token's name: 1-64 printable characters (the username rules, which forbid control characters)."""
    if not value.strip():
        raise InvalidArgument(field, value, "must not be empty")
    return validation.username(unicodedata.normalize("NFC", value), field)


class ApiTokens:
    def __init__(self, storage: Storage, settings: EditorSettings, clock: Clock) -> None:
        self._storage, self._settings, self._clock = storage, settings, clock

    async def create(self, account: Account, name: str, expires_at_us: int | None) -> tuple[str, ApiToken]:
        """The new token (shown once) and what is stored of it."""
        checked_name = token_name(name)
        now = self._clock()
        if expires_at_us is not None and expires_at_us <= now:
            raise InvalidArgument("expires_at", expires_at_us, "must lie in the future")
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        stored = ApiToken(id=secrets.token_hex(8), user_id=account.user_id, name=checked_name,
                          token_hash=token_hash(token), created_at_us=now, expires_at_us=expires_at_us)
        await self._storage.add_api_token(stored, self._settings.max_api_tokens_per_user)
        return token, stored

    async def list(self, account: Account) -> list[ApiToken]:
        return await self._storage.list_api_tokens(account.user_id)

    async def revoke(self, account: Account, id: str) -> None:
        if not id:
            raise InvalidArgument("id", id, "must not be empty")
        if not await self._storage.delete_api_token(account.user_id, id):
            raise NotFound(f"id: no API token {id!r} in this account", field="id", value=id)

    async def account(self, token: str) -> Account | None:
        """The account of an unexpired API token, or None."""
        if len(token) > MAX_TOKEN_CHARS:
            return None
        return await self._storage.account_for_api_token(token_hash(token), self._clock())
