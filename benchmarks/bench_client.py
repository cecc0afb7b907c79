"""Client benchmarks (prints its figures; asserts nothing about time).

1. The client's own overhead per event for ``batch``: validate + encode + split,
   measured alone (no network), as events/s and µs of CPU per event.
2. ``AsyncClient.batch`` end to end against the local server with limits off.
3. 1,000 ``track`` calls against the local server with *production* limits and
   the client's mirrored buckets: duration vs the (1000 - 200) / 50 = 16 s ideal,
   and the number of 429 answers (must be 0).

Run: ``.venv/bin/python benchmarks/bench_client.py [--events 100000] [--skip-track]``.
The server runs in a thread of this process (it shares the CPU and the GIL).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from millimetric_nb import contract
from millimetric_nb.client import _BATCH_CLOSE, _BATCH_OPEN, AsyncClient, _split
from millimetric_nb.events import check_event
from millimetric_nb.server import run_in_thread


def make_events(n: int) -> list[dict]:
    return [
        {
            "event": "purchase" if i % 5 == 0 else "pageview",
            "event_id": f"ev-{i}",
            "timestamp": f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            "anonymous_id": f"anon-{i % 5000}",
            "user_id": None if i % 3 else f"user-{i % 2000}",
            "url": f"https://shop.example.com/p/{i % 300}?utm_source=news&utm_medium=email",
            "path": f"/p/{i % 300}",
            "referrer": "https://www.google.com/",
            "properties": {"price": (i % 100) + 0.99, "sku": f"SKU-{i % 700}", "qty": i % 4},
        }
        for i in range(n)
    ]


def bench_overhead(events: list[dict]) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    encoded = []
    for i, ev in enumerate(events):
        raw, problems, _ = check_event(ev, prefix=f"events[{i}].")
        assert raw is not None, problems
        encoded.append(raw)
    plan = _split(encoded)
    bodies = [_BATCH_OPEN + b",".join(encoded[a:b]) + _BATCH_CLOSE for a, b in plan]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(events)
    print(f"[overhead] validate+encode+split of {n:,} events into {len(bodies)} bodies: "
          f"{n / wall:,.0f} events/s wall, {cpu / n * 1e6:.1f} µs CPU/event")


async def bench_batch(events: list[dict]) -> None:
    with run_in_thread(limits="off") as srv:
        async with AsyncClient(srv.keys["sk"], srv.url, rate_limits="off") as c:
            t0 = time.perf_counter()
            result = await c.batch(events)
            wall = time.perf_counter() - t0
        assert result.ok and srv.count() == len(events)
        print(f"[batch end-to-end, server --limits off] {len(events):,} events in "
              f"{len(result.requests)} requests: {wall:.2f} s, {len(events) / wall:,.0f} events/s "
              f"(server in the same process)")


async def bench_track_production() -> None:
    ideal = (1000 - contract.RATE_LIMITS["track"].burst) / contract.RATE_LIMITS["track"].refill
    with run_in_thread(limits="production") as srv:
        async with AsyncClient(srv.keys["sk"], srv.url) as c:
            t0 = time.perf_counter()
            await asyncio.gather(*(c.track("t", event_id=str(i)) for i in range(1000)))
            wall = time.perf_counter() - t0
        counts = srv.status_counts().get("track", {})
        print(f"[1,000 track, production limits] {wall:.2f} s (ideal {ideal:.0f} s), "
              f"429 answers: {counts.get(429, 0)}, 202 answers: {counts.get(202, 0)}, "
              f"stored: {srv.count()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--skip-track", action="store_true")
    args = parser.parse_args()
    events = make_events(args.events)
    bench_overhead(events)
    asyncio.run(bench_batch(events))
    if not args.skip_track:
        asyncio.run(bench_track_production())


if __name__ == "__main__":
    main()
