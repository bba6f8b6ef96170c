"""Rate limits for endpoints that anyone on the internet can call (web chat sessions, messages).

The counting is the `limits` package's moving window: exact (no burst at a window boundary),
in this process's memory on the embedded store, and in Redis when the store is Redis, so a limit
holds for the whole cluster and not once per node. Rates are written as `limits` reads them:
`30/minute`, `5 per second`, `1000/day`.

A limiter that cannot reach its storage lets the request through (and logs it): the limit
protects the gateway from floods; refusing every visitor during a Redis hiccup would be the
outage it is meant to prevent. It then stands aside for `STAND_ASIDE` seconds before asking
again, and waits at most `LIMITER_TIMEOUT` for an answer: during a Redis hang, every visitor's
request would otherwise wait out the store's whole time-out first.
"""

from __future__ import annotations

import math
import time
import typing

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import AfterValidator
from redis.exceptions import RedisError

if typing.TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

log = structlog.get_logger("gateway.ratelimit")

LIMITER_TIMEOUT = 1.0
"""Longest wait, in seconds, for the limiter's Redis (a healthy one answers in milliseconds)."""
STAND_ASIDE = 5.0
"""Seconds the limiter lets every request through without asking, after its storage failed."""


def check_rate(text: str) -> str:
    """Validate a rate for the config model: the error names what is expected.

    A rate of 0 parses, but would refuse every request, which nobody means (`null` is how a
    limit is turned off): it is refused too.
    """
    try:
        item = parse(text)
    except ValueError:
        raise ValueError(
            "expected a rate such as '30/minute', '5 per second' or '1000/day'"
        ) from None
    if item.amount < 1:
        raise ValueError(
            "a rate of 0 would refuse every request: allow at least 1 (null turns the limit off)"
        )
    return text


Rate = typing.Annotated[str, AfterValidator(check_rate)]
"""A config value holding one rate (`30/minute`)."""


class RateLimiter:
    """Counts hits per (scope, key) and says how long a caller over its rate must wait."""

    def __init__(self, storage: Storage, pool: ConnectionPool | None = None) -> None:
        self._pool = pool
        self._strategy = MovingWindowRateLimiter(storage)
        self._rates: dict[str, RateLimitItem] = {}
        self._aside_until = 0.0
        self.monotonic: typing.Callable[[], float] = time.monotonic
        """The clock standing aside is timed by (tests set their own)."""

    @classmethod
    def in_memory(cls) -> RateLimiter:
        """One process (the embedded store): counters live in this process."""
        return cls(MemoryStorage())

    @classmethod
    def on_redis(cls, store_url: str) -> RateLimiter:
        """The cluster (the Redis store): every node counts in the same Redis."""
        # Only deployments on Redis import it.
        from redis.asyncio import ConnectionPool

        from gateway.store.redis_url import split_url

        plain, prefix = split_url(store_url)
        # Our own pool (not one `limits` makes from the URL), so that shutdown can close it,
        # bounded: a hung Redis must not hang the visitor's request.
        pool = ConnectionPool.from_url(
            plain, socket_timeout=LIMITER_TIMEOUT, socket_connect_timeout=LIMITER_TIMEOUT
        )
        scheme, _, rest = plain.partition("://")
        storage = RedisStorage(
            f"async+{scheme}://{rest}",
            implementation="redispy",
            key_prefix=f"{prefix}:rl",  # next to the store's keys, so one prefix isolates both
            connection_pool=typing.cast(typing.Any, pool),
        )
        return cls(storage, pool)

    @classmethod
    def for_store(cls, store_url: str) -> RateLimiter:
        return cls.in_memory() if store_url.startswith("sqlite:") else cls.on_redis(store_url)

    async def close(self) -> None:
        """Drop the Redis connections (shutdown); counters in memory just go away."""
        if self._pool is not None:
            await self._pool.disconnect()

    def _item(self, rate: str) -> RateLimitItem:
        item = self._rates.get(rate)
        if item is None:
            item = self._rates[rate] = parse(rate)
        return item

    async def hit(self, rate: str | None, scope: str, key: str) -> float | None:
        """Count one request of `key` in `scope`; None if it is within `rate` (or there is no
        rate), else the seconds until it would be (for `Retry-After`, at least 1)."""
        if rate is None or self.monotonic() < self._aside_until:
            return None
        item = self._item(rate)
        try:
            if await self._strategy.hit(item, scope, key):
                return None
            stats = await self._strategy.get_window_stats(item, scope, key)
        except (OSError, TimeoutError, RedisError) as exc:  # unreachable: let it through
            self._aside_until = self.monotonic() + STAND_ASIDE
            log.warning(
                "ratelimit.storage_unavailable",
                scope=scope,
                error=str(exc),
                stands_aside_s=STAND_ASIDE,
            )
            return None
        return float(max(1, math.ceil(stats.reset_time - time.time())))
