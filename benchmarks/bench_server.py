"""How many events/s the local server stores from 1000-event batches over loopback.

Starts ``millimetric-nb serve --limits off --port 0 --db <tmpfile>`` as a subprocess
(so the client load does not share its process), sends N pre-encoded 1000-event
batches over a few concurrent httpx connections, checks every event was stored,
and prints events/s. Target (issue 2): at least 20,000 events/s on a 2-core machine.

    .venv/bin/python benchmarks/bench_server.py [--batches 60] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

KEY = "sk_bench_abcd1234_benchmarksecret"
TARGET = 20_000


def make_batches(n: int, size: int = 1000) -> list[bytes]:
    """``n`` realistic batch bodies, encoded once up front."""
    referrers = [None, "https://www.google.com/", "https://t.co/x", "https://blog.example/p"]
    bodies = []
    for b in range(n):
        events = []
        for i in range(size):
            k = b * size + i
            ev = {
                "event": ("purchase", "$pageview", "signup")[k % 3],
                "event_id": f"bench-{k}",
                "timestamp": f"2024-03-{1 + k % 28:02d}T{k % 24:02d}:{k % 60:02d}:00Z",
                "anonymous_id": f"anon-{k % 5000}",
                "user_id": f"user-{k % 2000}",
                "url": f"https://shop.example/p/{k % 300}"
                       + ("?utm_source=news&utm_medium=email" if k % 7 == 0 else ""),
                "path": f"/p/{k % 300}",
                "properties": {"amount_cents": k % 10_000, "plan": "pro", "n": k},
            }
            ref = referrers[k % 4]
            if ref:
                ev["referrer"] = ref
            events.append(ev)
        bodies.append(orjson.dumps({"events": events}))
    return bodies


async def send_all(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Send every body; return elapsed seconds."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                r = await client.post("/v1/batch", content=body)
                if r.status_code != 202:
                    raise SystemExit(f"unexpected answer {r.status_code}: {r.text[:200]}")

        # warm-up: one batch outside the timing
        await client.post("/v1/batch", content=bodies[0])
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    bodies = make_batches(args.batches)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.sqlite3")
        proc = subprocess.Popen(
            [sys.executable, "-m", "millimetric_nb.cli", "serve", "--limits", "off",
             "--port", "0", "--db", db, "--key", KEY],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            url = None
            for line in proc.stdout:
                m = re.match(r"listening on (\S+)", line)
                if m:
                    url = m.group(1)
                    break
            if url is None:
                raise SystemExit("the server did not start")
            elapsed = asyncio.run(send_all(url, bodies, args.concurrency))
            stored = httpx.get(f"{url}/v1/stats", params={"from": "2000-01-01",
                                                           "to": "2100-01-01"},
                               headers={"Authorization": f"Bearer {KEY}"}).json()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    n = args.batches * 1000
    rate = n / elapsed
    total = stored["rows"][0]["value"]
    print(f"batches: {args.batches} x 1000 events, {args.concurrency} connections, "
          f"body ~{len(bodies[0]) / 1e6:.2f} MB each")
    print(f"stored: {total} events (expected {n + 1000} incl. warm-up)")
    print(f"elapsed: {elapsed:.2f} s")
    print(f"server ingest: {rate:,.0f} events/s (target >= {TARGET:,})")
    if total != n + 1000:
        print("FAIL: stored count differs")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
