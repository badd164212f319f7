"""Rate limits: per user, per client address before login, failed logins and unknown tokens.

The counters live in Redis when `redis_url` is set, so that N gateway replicas allow the rate
once rather than N times; otherwise in this process (one replica, `make run`). A sliding window
counter keeps two counters per key; a moving window would keep (and scan, in worker threads) one
timestamp per request in the window, which at busy users' rates cost more CPU than the rest of
the request (bench/storage.py).

When Redis cannot be reached the limited calls answer 503: letting them through unlimited would
hand an attacker who can slow Redis down every limit at once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import grpc
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from gateway.settings import GatewaySettings
from gateway.errors import ApiError

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)


def _storage(settings: GatewaySettings) -> tuple[Storage, redis.asyncio.ConnectionPool | None]:
    """The counters' storage and, for Redis, the connection pool to close at shutdown."""
    if not settings.redis_url:
        return MemoryStorage(), None
    import redis.asyncio

    pool = redis.asyncio.ConnectionPool.from_url(
        settings.redis_url, socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s, health_check_interval=30)
    storage = RedisStorage(f"async+{settings.redis_url}", implementation="redispy", wrap_exceptions=True,
                           key_prefix=settings.rate_limit_key_prefix, connection_pool=pool)
    return storage, pool


class RateLimits:
    def __init__(self, settings: GatewaySettings) -> None:
        self._storage, self._pool = _storage(settings)
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self.per_user: RateLimitItem = parse(settings.rate_limit)
        self.per_address: RateLimitItem = parse(settings.anonymous_rate_limit)
        self.failed_logins_per_username: RateLimitItem = parse(settings.failed_login_limit_per_username)
        self.failed_logins_per_address: RateLimitItem = parse(settings.failed_login_limit_per_address)
        self.invalid_tokens: RateLimitItem = parse(settings.invalid_token_limit)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def check(self, item: RateLimitItem, key: str) -> None:
        """Count one request against `item` for `key`; 429 once the limit is spent."""
        # Every signed-in request passes here, so the storage error is caught in place rather
        # than by `_storage_errors_as_503`: an async context manager per request costs a third
        # of what the in-memory counter does (py-spy on bench/storage.py).
        try:
            allowed = await self._limiter.hit(item, key)
        except StorageError as error:
            raise _unavailable(error) from None
        if not allowed:
            await self._refuse(item, key)

    async def ensure_room(self, item: RateLimitItem, key: str) -> None:
        """429 if `key` has spent `item`, without counting anything (failures are counted later)."""
        async with _storage_errors_as_503():
            if not await self._limiter.test(item, key):
                await self._refuse(item, key)

    async def count(self, item: RateLimitItem, key: str) -> None:
        """Count one event (a failed login, an unknown token) whatever the limit's state."""
        async with _storage_errors_as_503():
            await self._limiter.hit(item, key)

    async def retry_after_s(self, item: RateLimitItem, key: str) -> float:
        async with _storage_errors_as_503():
            stats = await self._limiter.get_window_stats(item, key)
        return max(1.0, stats.reset_time - time.time())

    async def _refuse(self, item: RateLimitItem, key: str) -> None:
        retry_after = await self.retry_after_s(item, key)
        raise ApiError(429, f"rate limit of {item} exceeded; retry in {retry_after:.0f}s",
                       retry_after_s=retry_after)

    # Keys. Usernames are hashed so that a key's length is bounded whatever the name, and
    # case-folded so that "Alice" and "alice" share one failed-login budget.
    @staticmethod
    def user_key(user_id: str) -> str:
        return f"user:{user_id}"

    @staticmethod
    def address_key(address: str) -> str:
        return f"addr:{address}"

    @staticmethod
    def failed_login_username_key(username: str) -> str:
        return "login-user:" + hashlib.sha256(username.casefold().encode()).hexdigest()

    @staticmethod
    def failed_login_address_key(address: str) -> str:
        return f"login-addr:{address}"

    @staticmethod
    def invalid_token_key(address: str) -> str:
        return f"bad-token:{address}"

    @asynccontextmanager
    async def login_attempt(self, username: str, address: str) -> AsyncIterator[None]:
        """Refuses a login once the username or the address has spent its failed-login budget,
        and counts the attempt against both if the editor refuses the key.

        Unknown usernames are counted like known ones, so a 429 reveals nothing about accounts.
        Only failures count: a user who signs in often is never locked out by their own successes.
        """
        by_username = self.failed_login_username_key(username)
        by_address = self.failed_login_address_key(address)
        await self.ensure_room(self.failed_logins_per_username, by_username)
        await self.ensure_room(self.failed_logins_per_address, by_address)
        try:
            yield
        except (grpc.aio.AioRpcError, ApiError) as error:
            if _is_unauthenticated(error):
                await self.count(self.failed_logins_per_username, by_username)
                await self.count(self.failed_logins_per_address, by_address)
            raise


def _is_unauthenticated(error: grpc.aio.AioRpcError | ApiError) -> bool:
    """The editor refused the key: as its gRPC status, or already turned into the HTTP error."""
    if isinstance(error, ApiError):
        return error.status == 401
    return error.code() == grpc.StatusCode.UNAUTHENTICATED


@asynccontextmanager
async def _storage_errors_as_503() -> AsyncIterator[None]:
    try:
        yield
    except StorageError as error:
        raise _unavailable(error) from None


def _unavailable(error: StorageError) -> ApiError:
    log.warning("rate-limit storage failed: %s", error.storage_error)
    return ApiError(503, "rate limits unavailable, try again shortly", code="UNAVAILABLE", retry_after_s=1.0)
