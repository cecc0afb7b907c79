"""Validation + encoding throughput: the user's path, and the frame layer alone.

Builds a realistic 1,000,000-row x 10-column frame (event, timestamp, anonymous_id,
user_id, url, referrer, path and three property columns of int, float and str) and
prints rows/s for:

* ``df.millimetric.send_batch(dry_run=True)`` through the accessor, as a user calls
  it (validation, encoding, stable ids, the engine's planning and its account),
  with the text columns as pandas ``str`` columns (what ``pd.read_csv`` gives in
  pandas 3) and as ``object`` columns. Target: >= 300,000 rows/s (aim 500,000);
* ``prepare_chunk`` alone over chunks of 100,000 rows (validation + encoding with
  stable ids, and validation only).

Usage: python benchmarks/bench_validate_encode.py [rows] [chunk]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

import millimetric_nb  # noqa: F401  (registers df.millimetric)
from millimetric_nb.frame import EventIdState, prepare_chunk, resolve_mapping


def build(n: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    visitors = rng.integers(0, n // 10 + 1, n)
    pages = np.array(["/", "/pricing", "/docs/start", "/blog/launch", "/signup", "/checkout"])
    refs = np.array([
        "https://www.google.com/", "https://t.co/x", "", "https://news.ycombinator.com/",
        "https://www.facebook.com/",
    ])
    page = pages[rng.integers(0, len(pages), n)]
    url = np.char.add("https://example.com", page)
    url = np.where(rng.random(n) < 0.3, np.char.add(url, "?utm_source=newsletter&utm_medium=email"),
                   url)
    ref = refs[rng.integers(0, len(refs), n)]
    user = np.where(rng.random(n) < 0.3, np.char.add("user-", visitors.astype(str)), None)
    return pd.DataFrame({
        "event": pd.Series(rng.choice(["$pageview", "signup", "purchase"], n, p=[0.9, 0.07, 0.03]),
                           dtype="str"),
        "timestamp": pd.Timestamp("2026-01-01")
        + pd.to_timedelta(rng.integers(0, 30 * 86400 * 1000, n), unit="ms"),
        "anonymous_id": pd.Series(np.char.add("anon-", visitors.astype(str)), dtype="str"),
        "user_id": pd.Series(user, dtype="str"),
        "url": pd.Series(url, dtype="str"),
        "referrer": pd.Series(np.where(ref == "", None, ref), dtype="str"),
        "path": pd.Series(page, dtype="str"),
        "items": rng.integers(1, 20, n),
        "amount": np.round(rng.random(n) * 200, 2),
        "plan": pd.Series(rng.choice(["free", "pro", "team"], n), dtype="str"),
    })


def run(df: pd.DataFrame, chunk: int, encode: bool) -> tuple[float, float, int, int]:
    mapping, _ = resolve_mapping(list(df.columns))
    ids = EventIdState()
    now = pd.Timestamp("2026-06-01", tz="UTC")
    valid = 0
    nbytes = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    for start in range(0, len(df), chunk):
        p = prepare_chunk(df.iloc[start:start + chunk], mapping, offset=start, now=now, ids=ids,
                          encode=encode)
        valid += p.n_valid
        nbytes += p.payload_bytes
    return time.perf_counter() - t0, time.process_time() - c0, valid, nbytes


def user_path(df: pd.DataFrame, label: str) -> None:
    """``send_batch(dry_run=True)`` through the accessor, timed as a user sees it."""
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = df.millimetric.send_batch(dry_run=True, progress=False)
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(df)
    print(f"send_batch(dry_run=True), {label:<7} columns: {n / el:,.0f} rows/s "
          f"({el:.2f} s wall, {cpu:.2f} s CPU, {res.planned:,} planned in "
          f"{res.plan.requests:,} requests)")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    chunk = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    t = time.perf_counter()
    df = build(n)
    print(f"built {n:,} rows x {df.shape[1]} columns in {time.perf_counter() - t:.1f} s "
          f"(text columns: {df['event'].dtype!r})")
    user_path(df, "str")
    objects = df.astype({c: object for c in df.columns if pd.api.types.is_string_dtype(df[c])})
    user_path(objects, "object")
    del objects
    print("target: >= 300,000 rows/s through the accessor (aim: 500,000)")
    el, cpu, valid, nbytes = run(df, chunk, encode=True)
    print(f"validate + encode + stable ids: {n / el:,.0f} rows/s "
          f"({el:.2f} s wall, {cpu:.2f} s CPU (all threads), {valid:,} valid rows, "
          f"{nbytes / 1e6:,.0f} MB of JSON, chunks of {chunk:,})")
    el, cpu, valid, _ = run(df, chunk, encode=False)
    print(f"validate only:                  {n / el:,.0f} rows/s "
          f"({el:.2f} s wall, {cpu:.2f} s CPU)")
    print("prepare_chunk alone: the frame layer's part of the above")


if __name__ == "__main__":
    main()
