"""ratelimit: token buckets stepped in virtual time (no real sleeping)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from millimetric_nb import contract
from millimetric_nb.contract import RateLimit
from millimetric_nb.ratelimit import RateLimiter, TokenBucket


class VirtualTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(coro)


def test_burst_then_refill_rate():
    vt = VirtualTime()
    bucket = TokenBucket(RateLimit(50.0, 200), clock=vt, sleep=vt.sleep)

    async def go() -> list[float]:
        times = []
        for _ in range(300):
            await bucket.acquire()
            times.append(vt.now)
        return times

    times = run(go())
    assert times[199] == 0.0  # the burst is free
    assert times[200] == pytest.approx(0.02)
    assert times[-1] == pytest.approx(100 / 50)  # (300 - 200) / 50 s


def test_concurrent_callers_never_exceed_the_limit_in_any_window():
    vt = VirtualTime()
    bucket = TokenBucket(RateLimit(5.0, 20), clock=vt, sleep=vt.sleep)
    stamps: list[float] = []

    async def one() -> None:
        await bucket.acquire()
        stamps.append(vt.now)

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(70)))

    run(go())
    assert len(stamps) == 70
    assert max(stamps) == pytest.approx(50 / 5.0)
    # In any window [t, t + w], at most burst + w * refill acquisitions.
    for t in stamps:
        for w in (0.0, 0.5, 1.0, 3.0):
            inside = sum(1 for s in stamps if t <= s <= t + w + 1e-9)
            assert inside <= 20 + w * 5.0 + 1e-6


def test_fifo_order_under_concurrency():
    vt = VirtualTime()
    bucket = TokenBucket(RateLimit(1.0, 1), clock=vt, sleep=vt.sleep)
    order: list[int] = []

    async def one(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    async def go() -> None:
        tasks = []
        for i in range(10):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0)  # arrive in order
        await asyncio.gather(*tasks)

    run(go())
    assert order == list(range(10))


def test_pause_holds_every_caller_and_empties_the_bucket():
    vt = VirtualTime()
    limiter = RateLimiter({"track": RateLimit(50.0, 200)}, clock=vt, sleep=vt.sleep)
    waits: list[tuple[float, str]] = []

    async def go() -> list[float]:
        await limiter.acquire("track")
        limiter.pause("track", 3.0)
        stamps = []

        async def one() -> None:
            await limiter.acquire("track", on_wait=lambda s, r: waits.append((s, r)))
            stamps.append(vt.now)

        await asyncio.gather(*(one() for _ in range(5)))
        return stamps

    stamps = run(go())
    assert min(stamps) >= 3.0  # nobody went during the pause
    assert waits[0] == (pytest.approx(3.0), "retry_after")
    # the bucket was emptied, then refilled during the pause: 150 tokens at t=3
    assert limiter.bucket("track").tokens <= 150.0


def test_pause_only_extends():
    vt = VirtualTime()
    b = TokenBucket(RateLimit(1.0, 1), clock=vt, sleep=vt.sleep)
    b.pause(5.0)
    b.pause(1.0)
    assert b.paused_for == pytest.approx(5.0)


def test_unlimited_routes_are_free_but_pausable():
    vt = VirtualTime()
    limiter = RateLimiter("off", clock=vt, sleep=vt.sleep)

    async def go() -> None:
        for _ in range(10_000):
            await limiter.acquire("batch")
        assert vt.now == 0.0
        limiter.pause("identify", 2.0)
        await limiter.acquire("identify")

    run(go())
    assert vt.now == pytest.approx(2.0)


def test_limiter_tables_and_scaling():
    assert RateLimiter().limits == contract.RATE_LIMITS
    assert RateLimiter("production").limits == contract.RATE_LIMITS
    assert RateLimiter("off").limits == {}
    half = RateLimiter(scale=0.5).limits
    assert half["track"] == RateLimit(25.0, 100) and half["batch"] == RateLimit(2.5, 10)
    custom = RateLimiter({"batch": RateLimit(50.0, 200)})
    assert custom.bucket("batch").limit == RateLimit(50.0, 200)
    assert custom.bucket("track").limit is None
    with pytest.raises(ValueError):
        RateLimiter("fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RateLimiter(scale=0)
    with pytest.raises(ValueError):
        TokenBucket(RateLimit(0.0, 1))


def test_cancelled_waiter_does_not_block_the_next():
    vt = VirtualTime()
    b = TokenBucket(RateLimit(1.0, 1), clock=vt, sleep=vt.sleep)

    async def go() -> None:
        await b.acquire()
        t = asyncio.create_task(b.acquire())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.wait_for(b.acquire(), timeout=5)

    run(go())


def test_limiter_keeps_a_reserve_for_the_servers_head_start():
    vt = VirtualTime()
    limiter = RateLimiter({"batch": RateLimit(5.0, 20)}, lag_s=0.25, clock=vt, sleep=vt.sleep)
    stamps: list[float] = []

    async def go() -> None:
        for i in range(40):
            await limiter.acquire("batch")
            if i == 0:
                limiter.confirm("batch")  # the first answer came back at once
            stamps.append(vt.now)

    run(go())
    free = sum(1 for t in stamps if t == 0.0)
    assert free == 18  # 20 - ceil(1.25 reserve)
    # the sustained rate is unchanged: one every 0.2 s after the burst
    gaps = [b - a for a, b in itertools.pairwise(stamps[19:])]
    assert all(g == pytest.approx(0.2) for g in gaps)
    # and the reserve is always there, even in a bucket of one
    assert TokenBucket(RateLimit(1.0, 1), reserve=5.0).reserve == 0.0


def test_burst_from_full_refills_only_after_the_first_answer():
    vt = VirtualTime()
    limiter = RateLimiter({"batch": RateLimit(5.0, 2)}, lag_s=0.0, hold_max_s=2.0,
                          clock=vt, sleep=vt.sleep)
    waits: list[tuple[float, str]] = []

    async def go() -> list[float]:
        stamps = []

        async def answer_later() -> None:
            await vt.sleep(0.5)  # the server's first answer arrives at t=0.5
            limiter.confirm("batch")

        await limiter.acquire("batch")
        stamps.append(vt.now)
        await limiter.acquire("batch")
        stamps.append(vt.now)
        answer = asyncio.create_task(answer_later())
        await limiter.acquire("batch", on_wait=lambda s, r: waits.append((s, r)))
        stamps.append(vt.now)
        await answer
        return stamps

    stamps = run(go())
    # no refill counted before the answer: the third token comes 0.2 s after t=0.5
    assert stamps[:2] == [0.0, 0.0]
    assert stamps[2] == pytest.approx(0.7, abs=0.011)
    assert len(waits) == 1 and waits[0][1] == "rate_limit"


def test_hold_gives_up_after_hold_max():
    vt = VirtualTime()
    b = TokenBucket(RateLimit(5.0, 2), clock=vt, sleep=vt.sleep, hold=True, hold_max_s=1.0)

    async def go() -> None:
        await b.acquire()
        assert b.held
        await b.acquire()
        await b.acquire()  # never confirmed: refill starts at t=1.0

    run(go())
    assert vt.now == pytest.approx(1.2, abs=0.011)
    assert not b.held
