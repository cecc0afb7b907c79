"""Backfill of 100,000 events against the local server with production limits.

Starts `millimetric-nb serve --limits production --port 0 --db <tmp>` as a
subprocess, sends 100 requests of 1000 events through `backfill`, and prints the
elapsed time against the ideal (20 requests at once from the burst, then 5 per
second: 80 / 5 = 16.0 s), the % of that ceiling reached, and the number of 429s
seen (every Retrying/Waiting event the client emitted for a rate_limited answer).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from millimetric_nb import abackfill, contract
from millimetric_nb.client import AsyncClient
from millimetric_nb.progress import Retrying, Waiting

N = 100_000
KEY = "sk_live_bench001_" + "b" * 32


def frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "event": rng.choice(["page_view", "signup", "purchase"], n),
            "anonymous_id": [f"a{i % 5000}" for i in range(n)],
            "user_id": [f"u{i % 3000}" if i % 3 else None for i in range(n)],
            "timestamp": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86400 * 30, n), unit="s"),
            "url": [f"https://shop.example/p/{i % 400}?utm_source=news" for i in range(n)],
            "amount": rng.integers(1, 500, n),
        }
    )


def start_server(db: Path, limits: str = "production") -> tuple[subprocess.Popen[str], str]:
    """Run `millimetric-nb serve` on a free port; returns (process, base URL)."""
    exe = Path(sys.executable).with_name("millimetric-nb")
    proc = subprocess.Popen(
        [str(exe), "serve", "--limits", limits, "--port", "0", "--db", str(db),
         "--key", KEY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            # keep draining its output so a full pipe never blocks the server
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, m.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    df = frame(N)
    limit = contract.RATE_LIMITS["batch"]
    requests = -(-N // contract.BATCH_MAX_EVENTS)
    ideal = max(0, requests - limit.burst) / limit.refill
    rate_limited = {"retrying": 0, "waiting_retry_after": 0}

    def observe(ev: object) -> None:
        if isinstance(ev, Retrying) and ev.code == "rate_limited":
            rate_limited["retrying"] += 1
        if isinstance(ev, Waiting) and ev.reason == "retry_after":
            rate_limited["waiting_retry_after"] += 1

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "bench.sqlite")
        try:
            async def run() -> object:
                async with AsyncClient(key=KEY, host=url) as client:
                    return await abackfill(df, client=client, progress=False, observer=observe)

            t0 = time.perf_counter()
            res = asyncio.run(run())
            elapsed = time.perf_counter() - t0
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    counts = res.counts  # type: ignore[attr-defined]
    print(f"events: {N:,} in {requests} requests of up to 1000 (production limits: "
          f"burst {limit.burst}, {limit.refill:g}/s)")
    print(f"sent: {counts['sent']:,}  failed: {counts['failed']:,}  "
          f"ambiguous: {counts['ambiguous']:,}  invalid: {counts['invalid']:,}")
    print(f"elapsed: {elapsed:.2f} s   ideal: {ideal:.1f} s   "
          f"% of ceiling: {100 * ideal / elapsed:.1f}%")
    print(f"429 received: {rate_limited['retrying']} "
          f"(Retry-After waits: {rate_limited['waiting_retry_after']})")
    print(f"cpu count: {os.cpu_count()} (figures taken while other work shares the CPU)")


if __name__ == "__main__":
    main()
