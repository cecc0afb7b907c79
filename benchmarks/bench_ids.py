"""``prepare_chunk`` before and after column-wise ids and payloads (issue 9), side by side.

"Before" is the code of a git commit (default ``7a45c77``: ids hashed row by row with
``hashlib``, ``EventIdState`` kept by ``np.insert``, payloads as a list of bytes),
extracted with ``git archive`` into a temporary folder; "after" is this tree. Each
(code, mode) runs in a child process of its own on the same frame (the 1,000,000-row x
10-column frame of ``bench_validate_encode``, its text columns as pandas ``str``, or as
``object`` with ``--object``), chunks of 25,000 rows through one ``EventIdState`` as
the engine sends them, after one warm-up call of 100 rows (the first call loads polars'
plugins). Printed per run: rows/s (time inside ``prepare_chunk`` only),
CPU seconds, the peak RSS above the child's baseline (after the frame is built; a
thread samples RSS every 10 ms) and a digest of every event id and every payload, so
the two codes are seen to give the same output on the whole frame.

Modes: ``encode=True`` (payloads), ``"lengths"`` (a dry run: ids and sizes only; after
only) and ``encode=False`` (validation only).

Usage: ``python benchmarks/bench_ids.py [ROWS] [CHUNK] [--before REF] [--object]``
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(rows: int, chunk: int, mode: str, as_object: bool) -> dict[str, Any]:
    """Runs in the child: build the frame, then time ``prepare_chunk`` over it."""
    import gc

    import pandas as pd
    import psutil

    sys.path.insert(0, str(HERE))
    from bench_validate_encode import build

    from millimetric_nb.frame import EventIdState, prepare_chunk, resolve_mapping

    df = build(rows)
    if as_object:
        df = df.astype({c: object for c in df.columns if pd.api.types.is_string_dtype(df[c])})
    mapping, _ = resolve_mapping(list(df.columns))
    now = pd.Timestamp("2026-06-01", tz="UTC")
    encode: bool | str = {"payloads": True, "lengths": "lengths", "validate": False}[mode]
    # first use loads the polars plugins and warms the caches: not part of the rate
    prepare_chunk(df.iloc[:100], mapping, now=now, ids=EventIdState(), encode=encode)
    gc.collect()
    proc = psutil.Process(os.getpid())
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ids, ids_sha, payload_sha = EventIdState(), hashlib.sha256(), hashlib.sha256()
    wall = cpu = 0.0
    nbytes = valid = 0
    for start in range(0, len(df), chunk):
        part = df.iloc[start : start + chunk]
        t, c = time.perf_counter(), time.process_time()
        p = prepare_chunk(part, mapping, offset=start, now=now, ids=ids, encode=encode)
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        valid += p.n_valid
        nbytes += p.payload_bytes
        ids_sha.update("\n".join(map(str, p.event_ids.tolist())).encode() + b"\n")
        if mode == "payloads":  # the old PreparedChunk has no blob: join its list
            blob = getattr(p, "blob", None)
            payload_sha.update((blob if blob is not None else b",".join(p.payloads)) + b";")
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return {
        "rows": rows, "wall": wall, "cpu": cpu, "valid": valid, "bytes": nbytes,
        "base_mb": base / 1e6, "peak_above_mb": (peak[0] - base) / 1e6,
        "ids": ids_sha.hexdigest()[:16],
        "payloads": payload_sha.hexdigest()[:16] if mode == "payloads" else "-",
    }


def run(code: Path, rows: int, chunk: int, mode: str, as_object: bool) -> dict[str, Any]:
    """One child process with ``code`` first on its path."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    args = [sys.executable, str(Path(__file__).resolve()), "--child", str(rows), str(chunk), mode]
    out = subprocess.run([*args, *(["--object"] if as_object else [])], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    as_object = "--object" in argv
    before = argv[argv.index("--before") + 1] if "--before" in argv else "7a45c77"
    plain = [a for i, a in enumerate(argv) if not a.startswith("--")
             and (i == 0 or argv[i - 1] != "--before")]
    rows = int(plain[0]) if plain else 1_000_000
    chunk = int(plain[1]) if len(plain) > 1 else 25_000
    print(f"prepare_chunk over {rows:,} rows x 10 columns ({'object' if as_object else 'str'}"
          f" text columns), chunks of {chunk:,}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", before, "millimetric_nb"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        header = (f"{'code':<16} {'mode':<9} {'rows/s':>10} {'wall s':>7} {'CPU s':>7} "
                  f"{'peak MB':>8} {'MB JSON':>8}  ids / payloads digest")
        print(header)
        for name, code, modes in (
            (f"before {before}", Path(tmp), ("payloads", "validate")),
            ("after (here)", ROOT, ("payloads", "lengths", "validate")),
        ):
            for mode in modes:
                r = run(code, rows, chunk, mode, as_object)
                print(f"{name:<16} {mode:<9} {r['rows'] / r['wall']:>10,.0f} {r['wall']:>7.2f} "
                      f"{r['cpu']:>7.2f} {r['peak_above_mb']:>8.0f} {r['bytes'] / 1e6:>8.0f}  "
                      f"{r['ids']} / {r['payloads']}", flush=True)
    print("peak MB: RSS above the child's baseline (frame built); rows/s: time inside "
          "prepare_chunk only")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        args = sys.argv[2:]
        print(json.dumps(child(int(args[0]), int(args[1]), args[2], "--object" in args)))
    else:
        main(sys.argv[1:])
