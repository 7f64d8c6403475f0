"""Per-caller limits: a request rate, and how many watch streams one caller holds open.

Both are keyed by principal name and live in one server process; on several replicas
each enforces its own share, as every in-memory limiter does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from runplane.server.config import Rate
from runplane.server.errors import RateLimited, TooManyWatches


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """A token bucket per principal: `rate.burst` calls at once, refilled at `rate.per_second`."""

    MAX_IDLE_BUCKETS = 10_000
    """Buckets kept before full ones (callers quiet for a while) are forgotten."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, principal: str) -> None:
        """Spend one call of `principal`'s allowance, or raise RateLimited with the wait."""
        now = self._clock()
        bucket = self._buckets.get(principal)
        if bucket is None:
            if len(self._buckets) >= self.MAX_IDLE_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[principal] = _Bucket(self._rate.burst, now)
        else:
            refill = (now - bucket.stamp) * self._rate.per_second
            bucket.tokens = min(self._rate.burst, bucket.tokens + refill)
            bucket.stamp = now
        if bucket.tokens < 1:
            raise RateLimited(principal, (1 - bucket.tokens) / self._rate.per_second)
        bucket.tokens -= 1

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: dropping it loses nothing.
        full_after = self._rate.burst / self._rate.per_second
        self._buckets = {
            name: bucket
            for name, bucket in self._buckets.items()
            if now - bucket.stamp < full_after
        }


class WatchCounter:
    """Open watch streams per principal, at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def open(self, principal: str) -> None:
        """Count one more open watch of `principal`, or raise TooManyWatches."""
        count = self._open.get(principal, 0)
        if count >= self._limit:
            raise TooManyWatches(principal, self._limit)
        self._open[principal] = count + 1

    def close(self, principal: str) -> None:
        count = self._open[principal] - 1
        if count:
            self._open[principal] = count
        else:
            del self._open[principal]
