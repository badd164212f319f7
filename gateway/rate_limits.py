"""Rate limits: per user, per client address before login, failed logins and unknown tokens.

The counters live in Redis when `redis_url` is set, so that N gateway replicas allow the rate
once rather than N times; otherwise in this process (one replica, `make run`). A sliding window
counter keeps two counters per key; a moving window would keep (and scan, in worker threads) one
timestamp per request in the window, which at busy users' rates cost more CPU than the rest of
the request (bench/storage.py).

When Redis cannot be reached the limited calls answer 503: letting them through unlimited would
hand an attacker who can slow Redis down every limit at once.

In this process the counters are `MemorySlidingWindows`: the same sliding window counter as
`limits`' (same weighting, same answers), without its in-memory storage's costs on every hit (an
expiry task started per hit, a lock, a chain of coroutines): the rate limit was about 3 % of the
gateway's CPU per save (docs/editor.md, "Round 2 on the saves' ratio").
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol

import grpc
from limits import RateLimitItem, WindowStats, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from gateway.settings import GatewaySettings
from gateway.errors import ApiError

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)


class Limiter(Protocol):
    """What RateLimits asks of its counters: `limits`' strategy API."""

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool: ...

    async def test(self, item: RateLimitItem, *identifiers: str) -> bool: ...

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats: ...


class MemorySlidingWindows:
    """`limits`' sliding window counter (SlidingWindowCounterRateLimiter over its MemoryStorage),
    kept in this process: per key, the hits of the current window and of the one before, the
    latter weighted by how much of it still overlaps the sliding window. Nothing here awaits, so
    each call is atomic on the event loop. Keys whose windows have passed are swept at most once
    per `SWEEP_INTERVAL_S`, inline, instead of by a task started on every hit."""

    SWEEP_INTERVAL_S = 1.0

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # key -> (index of the window `current` counts in, its hits, the previous window's hits)
        self._counts: dict[str, tuple[int, int, int]] = {}
        self._windows: dict[str, int] = {}  # key -> its item's window length in seconds
        self._next_sweep = 0.0

    def _window(self, key: str, expiry: int, now: float) -> tuple[int, int, int]:
        """(window index, hits in it, hits in the previous window) at `now`."""
        index = int(now / expiry)
        stored = self._counts.get(key)
        if stored is None or stored[0] < index - 1:
            return index, 0, 0
        if stored[0] == index - 1:
            return index, 0, stored[1]
        return stored

    @staticmethod
    def _previous_ttl(expiry: int, now: float) -> float:
        """How much of the previous window the sliding window still covers, in seconds."""
        return (1 - (((now - expiry) / expiry) % 1)) * expiry

    def _weighted(self, expiry: int, now: float, current: int, previous: int) -> float:
        # As limits: the previous window's hits count for the share of it still covered.
        return (previous * self._previous_ttl(expiry, now) / expiry if previous else 0.0) + current

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        key, expiry, now = item.key_for(*identifiers), item.get_expiry(), self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        index, current, previous = self._window(key, expiry, now)
        if math.floor(self._weighted(expiry, now, current, previous)) + 1 > item.amount:
            return False
        self._counts[key] = (index, current + 1, previous)
        self._windows[key] = expiry
        return True

    async def test(self, item: RateLimitItem, *identifiers: str) -> bool:
        expiry, now = item.get_expiry(), self._clock()
        _, current, previous = self._window(item.key_for(*identifiers), expiry, now)
        return self._weighted(expiry, now, current, previous) < item.amount

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        expiry, now = item.get_expiry(), self._clock()
        _, current, previous = self._window(item.key_for(*identifiers), expiry, now)
        remaining = max(0, item.amount - math.floor(self._weighted(expiry, now, current, previous)))
        if not (previous or current):
            return WindowStats(now, remaining)
        # As limits: the next moment a hit is forgotten, from the previous window or the current one.
        previous_reset_in = current_reset_in = math.inf
        if previous:
            previous_reset_in = self._previous_ttl(expiry, now) % (expiry / previous)
        if current:
            current_reset_in = ((1 - ((now / expiry) % 1)) * expiry + expiry) % expiry
        return WindowStats(now + min(previous_reset_in, current_reset_in), remaining)

    def _sweep(self, now: float) -> None:
        """Forget the keys whose hits have all left the sliding window (one pass over the keys a
        second; `limits` passed over them in the task it started on every hit)."""
        self._next_sweep = now + self.SWEEP_INTERVAL_S
        stale = [key for key, (index, _, _) in self._counts.items() if index < int(now / self._windows[key]) - 1]
        for key in stale:
            del self._counts[key], self._windows[key]


def _limiter(settings: GatewaySettings) -> tuple[Limiter, redis.asyncio.ConnectionPool | None]:
    """The counters and, for Redis, the connection pool to close at shutdown."""
    if not settings.redis_url:
        return MemorySlidingWindows(), None
    import redis.asyncio

    pool = redis.asyncio.ConnectionPool.from_url(
        settings.redis_url, socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s, health_check_interval=30)
    storage = RedisStorage(f"async+{settings.redis_url}", implementation="redispy", wrap_exceptions=True,
                           key_prefix=settings.rate_limit_key_prefix, connection_pool=pool)
    return SlidingWindowCounterRateLimiter(storage), pool


class RateLimits:
    def __init__(self, settings: GatewaySettings) -> None:
        self._limiter, self._pool = _limiter(settings)
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
