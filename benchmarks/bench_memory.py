"""Peak memory above the frame itself while sending a 1,000,000-row frame.

The frame is built first and the process RSS measured (the baseline); then
`backfill` sends it to a loopback sink (a subprocess answering 202 and storing
nothing, `benchmarks/sink.py`; limits off) while a thread samples this process's RSS
every 20 ms. Prints the peak above the baseline in MB (target: under 300 MB), then,
apart, the peak once ``result.rows`` is built (on first access).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil

from millimetric_nb import abackfill
from millimetric_nb.client import AsyncClient

sys.path.insert(0, os.path.dirname(__file__))
from bench_backfill import KEY
from sink import start_sink, stop_sink

N = 1_000_000


def frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame(
        {
            "event": rng.choice(["page_view", "signup", "purchase"], n),
            "anonymous_id": [f"a{i % 50_000}" for i in range(n)],
            "user_id": [f"u{i % 30_000}" for i in range(n)],
            "timestamp": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86400 * 30, n), unit="s"),
            "path": [f"/p/{i % 400}" for i in range(n)],
            "amount": rng.integers(1, 500, n),
            "plan": rng.choice(["free", "pro", "team"], n),
            "score": rng.random(n),
        }
    )


def main() -> None:
    proc = psutil.Process(os.getpid())
    srv, url = start_sink()
    try:
        df = frame(N)
        gc.collect()
        base = proc.memory_info().rss
        frame_mb = df.memory_usage(deep=True).sum() / 1e6
        peak = base
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.02)

        t = threading.Thread(target=sample, daemon=True)
        t.start()

        async def run() -> object:
            async with AsyncClient(key=KEY, host=url, rate_limits="off") as c:
                return await abackfill(df, client=c, progress=False)

        t0 = time.perf_counter()
        res = asyncio.run(run())
        elapsed = time.perf_counter() - t0
        run_peak = peak = max(peak, proc.memory_info().rss)
        # then result.rows, built on first access (the run keeps its account compactly)
        t1 = time.perf_counter()
        assert len(res.rows) == N  # type: ignore[attr-defined]
        rows_s = time.perf_counter() - t1
        stop.set()
        t.join()
        peak = max(peak, proc.memory_info().rss)
    finally:
        stop_sink(srv)
    counts = res.counts  # type: ignore[attr-defined]
    print(f"rows: {N:,}  frame: {frame_mb:.0f} MB (deep)  sent: {counts['sent']:,}  "
          f"elapsed: {elapsed:.1f} s ({N / elapsed:,.0f} rows/s)")
    print(f"RSS before send: {base / 1e6:.0f} MB  peak: {run_peak / 1e6:.0f} MB")
    print(f"peak above the frame: {(run_peak - base) / 1e6:.0f} MB (target <= 300 MB)")
    print(f"then result.rows built in {rows_s:.2f} s: peak {(peak - base) / 1e6:.0f} MB "
          "above the frame")


if __name__ == "__main__":
    main()
