"""Reading sources at scale: a dry run over a 10,000,000-row hive-partitioned Parquet
dataset (generated on the fly), and validation of a Dask DataFrame on a 2-worker
cluster against one process.

1. The dataset: 20 day partitions (``day=2026-11-01/part-0.parquet``...) of 500,000
   rows each, written to a temporary folder.
2. In a child process each (so that nothing of the generator counts; a thread
   samples its RSS every 20 ms): the stream alone (read, validate, encode, derive
   ids for every chunk, keeping nothing: bounded by the chunk size), then
   ``mm.backfill(folder, dry_run=True)``, whose account grows with the rows: kept
   compactly (a status code and a derived id's 16 bytes: 17 bytes a row in a dry
   run) until ``result.rows`` is first read, which builds the frame (about
   49 bytes a row: the ids become strings). Printed: rows/s and the peak RSS of the
   run above the child's baseline (after imports), against 500 MB; then, apart, the
   peak once ``result.rows`` is built. ``ru_maxrss`` is printed too as a cross-check.
3. ``mm.validate`` of a Dask DataFrame over the same folder (``dd.read_parquet``), on a
   ``LocalCluster(n_workers=2, processes=True, threads_per_worker=1)`` on loopback,
   against ``mm.validate`` of the same folder in one process (chunk by chunk).

Usage: ``python benchmarks/bench_sources.py [ROWS] [read,stream,dry_run,validate]``
(default 10,000,000 rows, every part; ``read`` is the reading alone, chunks dropped).
Prints the machine's load average, since the figures depend on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
PARTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["read", "stream", "dry_run", "validate"]
DAYS = 20
LIMIT_MB = 500
NOW = "2027-01-01T00:00:00Z"


def generate(folder: Path, rows: int) -> None:
    """``rows`` events in ``DAYS`` hive partitions, built with Arrow compute (fast)."""
    rng = np.random.default_rng(5)
    per_day = rows // DAYS
    users = pa.array([f"u{i:06d}" for i in range(50_000)])
    paths = pa.array([f"/p/{i}" for i in range(400)])
    names = pa.array(["page_view", "signup", "purchase"])
    plans = pa.array(["free", "pro", "team"])
    for d in range(DAYS):
        n = per_day if d < DAYS - 1 else rows - per_day * (DAYS - 1)
        day = f"2026-11-{d + 1:02d}"
        start = np.datetime64(day, "us").astype(np.int64)
        ts = np.sort(start + rng.integers(0, 86_400_000_000, n))
        table = pa.table({
            "event": pc.take(names, pa.array(rng.integers(0, 3, n))),
            "user_id": pc.take(users, pa.array(rng.integers(0, 50_000, n))),
            "timestamp": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
            "path": pc.take(paths, pa.array(rng.integers(0, 400, n))),
            "amount": pa.array(rng.integers(1, 500, n)),
            "plan": pc.take(plans, pa.array(rng.integers(0, 3, n))),
            "score": pa.array(rng.random(n)),
        })
        (folder / f"day={day}").mkdir(parents=True)
        pq.write_table(table, folder / f"day={day}" / "part-0.parquet", row_group_size=100_000)


CHILD = r'''
import json, os, resource, sys, threading, time
import psutil
import millimetric_nb as mm

folder, now = sys.argv[1], sys.argv[2]
proc = psutil.Process(os.getpid())
base = proc.memory_info().rss
peak = base
stop = threading.Event()

def sample():
    global peak
    while not stop.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.02)

def stream_only():
    # what the engine does to every chunk (read, validate, encode, derive ids), with
    # nothing kept: the part of a run whose memory is bounded by the chunk size
    from millimetric_nb.datasources import iter_source
    from millimetric_nb.frame import EventIdState, prepare_chunk, resolve_mapping

    chunks, _ = iter_source(folder, 25_000)
    ids, mapping, rows = EventIdState(), None, 0
    for chunk in chunks:
        if mapping is None:
            mapping, _w = resolve_mapping(list(chunk.columns))
        prepare_chunk(chunk, mapping, offset=rows, now=now, ids=ids)
        rows += len(chunk)
    return rows

t = threading.Thread(target=sample, daemon=True)
t.start()
started = time.perf_counter()
built = None
if sys.argv[3] == "dry_run":
    result = mm.backfill(folder, dry_run=True, progress=False, now=now)
    rows = result.counts["total"]  # the account as the run left it (rows not built yet)
elif sys.argv[3] == "read":
    rows = sum(len(c) for c in mm.datasources.iter_source(folder, 25_000)[0])
else:
    rows = stream_only()
elapsed = time.perf_counter() - started
peak = max(peak, proc.memory_info().rss)
run_peak = peak
if sys.argv[3] == "dry_run":  # then the per-row frame, built on first access
    t_rows = time.perf_counter()
    assert len(result.rows) == rows
    built = {"seconds": time.perf_counter() - t_rows}
stop.set(); t.join()
peak = max(peak, proc.memory_info().rss)
if built is not None:
    built["peak_above_mb"] = (peak - base) / 1e6
print(json.dumps({
    "rows": rows, "elapsed": elapsed,
    "base_mb": base / 1e6, "peak_above_mb": (run_peak - base) / 1e6, "built": built,
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
}))
'''


def measure(folder: Path, what: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), NOW, what],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def validation(folder: Path) -> tuple[float, float, int]:
    """Seconds to validate the folder in one process, and as Dask on 2 workers."""
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    import millimetric_nb as mm

    started = time.perf_counter()
    one = mm.validate(folder, now=NOW, warn=False)
    t_one = time.perf_counter() - started
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        ddf = dd.read_parquet(str(folder), split_row_groups=True)
        started = time.perf_counter()
        two = mm.validate(ddf, now=NOW, warn=False)
        t_two = time.perf_counter() - started
    assert two.n_rows == one.n_rows == ROWS, (one.n_rows, two.n_rows)
    assert len(two.errors) == len(one.errors)
    return t_one, t_two, ddf.npartitions


def main() -> None:
    print(f"load average before: {os.getloadavg()} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "events"
        started = time.perf_counter()
        generate(folder, ROWS)
        size = sum(f.stat().st_size for f in folder.rglob("*.parquet")) / 1e6
        print(f"generated {ROWS:,} rows in {DAYS} partitions ({size:,.0f} MB of Parquet) "
              f"in {time.perf_counter() - started:.1f} s")
        for what, label in (("read", "reading alone (pandas chunks of 25,000, dropped)"),
                            ("stream", "read + validate + encode + ids, nothing kept"),
                            ("dry_run", "mm.backfill(folder, dry_run=True)")):
            if what not in PARTS:
                continue
            r = measure(folder, what)
            ok = "under" if r["peak_above_mb"] < LIMIT_MB else "OVER"
            print(f"{label}: {r['rows']:,} rows in {r['elapsed']:.1f} s = "
                  f"{r['rows'] / r['elapsed']:,.0f} rows/s; peak RSS "
                  f"{r['peak_above_mb']:.0f} MB above a {r['base_mb']:.0f} MB baseline "
                  f"({ok} {LIMIT_MB} MB); ru_maxrss {r['maxrss_mb']:.0f} MB")
            if r.get("built"):
                b = r["built"]
                print(f"  then result.rows built on first access in {b['seconds']:.1f} s: "
                      f"peak RSS {b['peak_above_mb']:.0f} MB above the baseline "
                      "(the run's and the frame's together; ru_maxrss above is this peak)")
        if "validate" in PARTS:
            t_one, t_two, parts = validation(folder)
            print(f"validate, one process (chunks of 25,000): {ROWS / t_one:,.0f} rows/s "
                  f"({t_one:.1f} s)")
            print(f"validate, Dask LocalCluster 2 workers x 1 thread ({parts} partitions): "
                  f"{ROWS / t_two:,.0f} rows/s ({t_two:.1f} s), x{t_one / t_two:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
