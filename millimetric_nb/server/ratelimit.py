"""The server's token buckets: per project, per route, with an injectable clock.

Separate from the client's limiter on purpose (the two sides check each other).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from millimetric_nb import contract

#: Float slack: a client that waits exactly the advertised ``retry_after_s`` may find
#: 0.9999999 tokens; that is a whole token, not another 429 (with ``Retry-After: 1``).
_EPS = 1e-9


class ManualClock:
    """A clock that moves only when told: ``clock.advance(1.0)``. For tests."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


class TokenBucket:
    """``burst`` tokens at most, refilled at ``refill`` per second; one token per request."""

    __slots__ = ("burst", "refill", "stamp", "tokens")

    def __init__(self, limit: contract.RateLimit, now: float) -> None:
        self.refill = limit.refill
        self.burst = float(limit.burst)
        self.tokens = float(limit.burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if granted, else the seconds until one is available."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.refill)
            self.stamp = now
        if self.tokens >= 1.0 - _EPS:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.refill


class RateLimiter:
    """Every bucket of one server. ``scale=None`` disables limiting."""

    def __init__(self, scale: float | None, clock: Callable[[], float] | None = None) -> None:
        self.limits: dict[str, contract.RateLimit] = (
            {} if scale is None
            else {name: lim.scaled(scale) for name, lim in contract.RATE_LIMITS.items()}
        )
        self.clock = clock or time.monotonic
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def take(self, project: str, route: str) -> float:
        """0.0 when the request may go ahead, else the exact wait in seconds."""
        limit = self.limits.get(route)
        if limit is None:
            return 0.0
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get((project, route))
            if bucket is None:
                bucket = self._buckets[(project, route)] = TokenBucket(limit, now)
            return bucket.take(now)
