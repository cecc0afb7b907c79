"""Async token buckets that mirror the server's, one per route.

A :class:`TokenBucket` holds at most ``burst`` tokens and refills ``refill`` per
second; each request takes one. Waiters are served strictly in arrival order
(FIFO: an ``asyncio.Lock`` is fair), so a steady stream of small calls cannot
starve an earlier one. :meth:`TokenBucket.pause` holds the whole route, for every
caller sharing the bucket, until a 429's ``Retry-After`` has passed, and empties
the bucket (the server's is empty too).

The clock and the sleep are injectable, so tests step virtual time instead of
sleeping. A :class:`RateLimiter` keeps one bucket per route, built from
``contract.RATE_LIMITS`` (production), another plan's limits, a scale factor,
or ``"off"``. Routes without a limit still get a pause-only gate, so a 429 on
them is honoured too.

Why the client's bucket waits for the first answer of a burst: a full server
bucket starts refilling when the burst's *first request arrives*, a full client
bucket when its first token is *taken*. If that first request is slow to arrive
(it opens the connection; the machine is busy), the server is behind the client
by that delay and would answer 429. So a bucket built with ``hold=True`` (as the
:class:`RateLimiter` builds them) that starts a burst from full does not refill
until :meth:`TokenBucket.confirm` reports an answer from the server (the client
calls it after every attempt): the server's bucket certainly started by then,
so the client's count of tokens never exceeds the server's. If no answer comes
within ``hold_max_s`` the refill starts anyway. On top of that a small reserve of
``refill * lag_s`` tokens absorbs clock and scheduling jitter; the sustained
rate is unchanged.

A bucket may be used from successive event loops (one at a time, e.g. a sync
``Client``'s own loop, then ``asyncio.run``): its FIFO lock is per loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from . import contract
from .contract import RateLimit

__all__ = [
    "ROUND_TRIP_S",
    "Clock",
    "RateLimiter",
    "RateLimitsArg",
    "Sleep",
    "TokenBucket",
    "WaitHook",
    "estimate_seconds",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
#: Called before each wait with ``(seconds, reason)``; reason is ``"rate_limit"``
#: (bucket empty) or ``"retry_after"`` (route paused by a 429).
WaitHook = Callable[[float, str], None]
RateLimitsArg = Mapping[str, RateLimit] | Literal["off", "production"] | None

# Float slack: after sleeping exactly the computed time, refill arithmetic may
# leave 0.9999999 tokens; that counts as one.
_EPS = 1e-9
#: How often a held bucket looks for the server's first answer.
_HOLD_POLL_S = 0.005


#: The assumed time one request takes from leaving to its answer, for estimates made
#: before any answer came back (a dry run's plan): a 1000-event batch on a good link.
ROUND_TRIP_S = 0.5


def estimate_seconds(
    requests: int,
    limit: RateLimit | None,
    *,
    tokens_available: float | None = None,
    round_trip_s: float = ROUND_TRIP_S,
    concurrency: int | None = None,
) -> float:
    """Seconds until the last of ``requests`` is answered, at a token bucket's pace.

    The bucket's model, not the rate so far (which a burst inflates): the first
    ``tokens_available`` requests leave at once (default: a full bucket, ``burst``),
    each later one when a token has refilled (``1 / refill`` s apart), and the last
    one is answered ``round_trip_s`` after it leaves. So 20 requests against the
    batch limit (burst 20, then 5/s) take one round trip, never 0 s; 100 take
    ``80 / 5 + round_trip_s``. With ``concurrency``, at most that many are in
    flight at once (each holds its place for a round trip). ``limit=None``
    (unlimited) leaves only the round trips.
    """
    if requests <= 0:
        return 0.0
    rounds = 0.0
    if concurrency is not None and concurrency > 0:
        rounds = ((requests - 1) // concurrency) * round_trip_s
    if limit is None:
        return rounds + round_trip_s
    tokens = float(limit.burst) if tokens_available is None else max(0.0, tokens_available)
    tokens = min(tokens, float(limit.burst))
    last_leaves = max(0.0, requests - tokens) / limit.refill
    return max(last_leaves, rounds) + round_trip_s


class TokenBucket:
    """One route's bucket. ``limit=None`` is unlimited (but still pausable).

    Args:
        limit: refill per second and burst; ``None`` for no limit.
        clock: monotonic seconds (default ``time.monotonic``).
        sleep: async sleep (default ``asyncio.sleep``).
        name: the route name, for reprs.
        reserve: tokens always left in the bucket (see the module docstring);
            capped at ``burst - 1``.
        hold: after a burst starts from a full bucket, refill only from the first
            :meth:`confirm` (or ``hold_max_s`` later at most).
        hold_max_s: the longest a refill waits for :meth:`confirm`.
    """

    def __init__(
        self,
        limit: RateLimit | None,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        name: str = "",
        reserve: float = 0.0,
        hold: bool = False,
        hold_max_s: float = 2.0,
    ) -> None:
        if limit is not None and (limit.refill <= 0 or limit.burst < 1):
            raise ValueError(f"a rate limit needs refill > 0 and burst >= 1, got {limit}")
        self.limit = limit
        self.reserve = 0.0 if limit is None else min(max(0.0, reserve), limit.burst - 1.0)
        self.name = name
        self._clock: Clock = clock or time.monotonic
        self._sleep: Sleep = sleep or asyncio.sleep
        self._tokens: float = float(limit.burst) if limit is not None else 0.0
        self._last = self._clock()
        self._paused_until = float("-inf")
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.hold = hold and limit is not None
        self.hold_max_s = hold_max_s
        self._held_since: float | None = None  # refill suspended since (awaiting confirm)

    def __repr__(self) -> str:
        return f"TokenBucket({self.name!r}, {self.limit!r}, tokens={self.tokens:.2f})"

    def _refill(self, now: float) -> None:
        if self.limit is None:
            return
        if self._held_since is not None:
            release = self._held_since + self.hold_max_s
            if now < release:
                self._last = now  # nothing accrues while held
                return
            self._held_since = None
            self._last = release
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(float(self.limit.burst), self._tokens + elapsed * self.limit.refill)
        self._last = now

    @property
    def tokens(self) -> float:
        """Tokens available now (``inf`` when unlimited)."""
        if self.limit is None:
            return float("inf")
        self._refill(self._clock())
        return self._tokens

    @property
    def held(self) -> bool:
        """Whether the refill waits for the server's first answer of a burst."""
        if self._held_since is not None:
            self._refill(self._clock())
        return self._held_since is not None

    def confirm(self) -> None:
        """The server answered a request of this route: its bucket has started refilling."""
        if self._held_since is not None:
            now = self._clock()
            self._held_since = None
            self._last = now

    @property
    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        """Hold the whole route for ``seconds`` (a 429's Retry-After) and empty the bucket.

        Pauses only extend, never shorten, one already running.
        """
        self.confirm()  # a 429 is an answer
        now = self._clock()
        self._refill(now)
        self._paused_until = max(self._paused_until, now + max(0.0, seconds))
        if self.limit is not None:
            self._tokens = 0.0

    async def acquire(self, *, on_wait: WaitHook | None = None) -> float:
        """Take one token, waiting (FIFO) as long as needed; return the seconds waited."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            # An asyncio.Lock belongs to the loop it first waited on; a client moved to
            # another loop (``asyncio.run`` after sync calls) gets a fresh lock there.
            # The tokens and pauses are plain numbers and carry over.
            self._lock, self._lock_loop = asyncio.Lock(), loop
        waited = 0.0
        reported = ""
        async with self._lock:
            while True:
                now = self._clock()
                self._refill(now)
                if now < self._paused_until:
                    delay, reason = self._paused_until - now, "retry_after"
                elif self.limit is None:
                    return waited
                elif self._tokens >= 1.0 + self.reserve - _EPS:
                    if self.hold and self._tokens >= self.limit.burst - _EPS:
                        self._held_since = now  # a burst starts from full
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return waited
                else:
                    need = 1.0 + self.reserve - self._tokens
                    delay, reason = need / self.limit.refill, "rate_limit"
                    if self._held_since is not None:
                        # Poll for the confirm; report the whole expected wait once.
                        left = self._held_since + self.hold_max_s - now
                        reported_delay = delay
                        delay = min(_HOLD_POLL_S, max(left, 0.0) or _HOLD_POLL_S)
                        if on_wait is not None and reported != reason:
                            on_wait(reported_delay, reason)
                            reported = reason
                if on_wait is not None and reported != reason:
                    on_wait(delay, reason)
                    reported = reason
                await self._sleep(delay)
                waited += delay


class RateLimiter:
    """One :class:`TokenBucket` per route, shared by every concurrent call of a client.

    Args:
        limits: ``None``/``"production"`` for ``contract.RATE_LIMITS``; ``"off"`` for
            no limits; or ``{route: RateLimit}`` for another plan (routes not named
            are unlimited).
        scale: multiply every refill and burst (e.g. ``0.5`` to stay well under a
            shared project's limits, ``10`` for a bigger plan).
        lag_s: seconds of refill kept in reserve in each bucket (module docstring).
        hold_max_s: the longest a bucket waits for the first answer of a burst.
        clock, sleep: injectable time, for tests.
    """

    def __init__(
        self,
        limits: RateLimitsArg = None,
        *,
        scale: float = 1.0,
        lag_s: float = 0.05,
        hold_max_s: float = 2.0,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if limits is None or limits == "production":
            table: Mapping[str, RateLimit] = contract.RATE_LIMITS
        elif limits == "off":
            table = {}
        elif isinstance(limits, Mapping):
            table = limits
        else:
            raise ValueError(
                f"rate_limits must be None, 'production', 'off' or a mapping of route to "
                f"RateLimit, got {limits!r}"
            )
        for route, lim in table.items():
            if not isinstance(lim, RateLimit) or lim.refill <= 0 or lim.burst < 1:
                raise ValueError(
                    f"the limit of {route!r} must be a RateLimit(refill > 0, burst >= 1), "
                    f"got {lim!r}"
                )
        self.limits: dict[str, RateLimit] = {
            route: (lim.scaled(scale) if scale != 1.0 else lim) for route, lim in table.items()
        }
        self.lag_s = lag_s
        self.hold_max_s = hold_max_s
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, TokenBucket] = {}

    def __repr__(self) -> str:
        return f"RateLimiter({self.limits!r})"

    def bucket(self, route: str) -> TokenBucket:
        """The route's bucket (created on first use)."""
        b = self._buckets.get(route)
        if b is None:
            limit = self.limits.get(route)
            reserve = limit.refill * self.lag_s if limit is not None else 0.0
            b = TokenBucket(
                limit, clock=self._clock, sleep=self._sleep, name=route, reserve=reserve,
                hold=True, hold_max_s=self.hold_max_s,
            )
            self._buckets[route] = b
        return b

    async def acquire(self, route: str, *, on_wait: WaitHook | None = None) -> float:
        """Take one token of ``route``; return the seconds waited."""
        return await self.bucket(route).acquire(on_wait=on_wait)

    def pause(self, route: str, seconds: float) -> None:
        """Hold ``route`` for every caller for ``seconds``."""
        self.bucket(route).pause(seconds)

    def confirm(self, route: str) -> None:
        """The server answered a request of ``route`` (see :meth:`TokenBucket.confirm`)."""
        b = self._buckets.get(route)
        if b is not None:
            b.confirm()
