"""How many events/s the local server stores from 1000-event batches over loopback,
on a fresh file database and averaged over 1,000,000 events into one file database.

Starts ``millimetric-nb serve --limits off --port 0 --db <tmpfile>`` as a subprocess
(the client load does not share its process or its GIL), then sends N pre-encoded
1000-event ``/v1/batch`` bodies over ``--concurrency`` keep-alive connections, each
driven by a thread with plain ``http.client`` (about 0.1 ms of client CPU per request:
the client is not the bound; the figures printed say how much CPU each side used).
The server's bound is its event loop's Python (reading, checking and enriching each
event, about 15 µs) with SQLite writing in a worker thread beside it; on a shared
2-core machine, whatever CPU other processes leave it ("cores busy" and the load
average are printed with each run).

Two runs, each on its own new file database:

1. fresh: ``--fresh`` events (default 100,000) into an empty database;
2. at scale: ``--events`` events (default 1,000,000) into one database, printed per
   slice of ``--slice`` events (default 100,000), so that the slope as the table and
   its indexes grow is visible, and overall.

Every event is checked stored (``/v1/stats`` count) and a few reads are timed on the
full database. Target (issue 9): at least 20,000 events/s averaged over 1,000,000.

    .venv/bin/python benchmarks/bench_server.py [--events 1000000] [--fresh 100000]
        [--slice 100000] [--concurrency 2] [--dedup] [--skip-fresh]
"""

from __future__ import annotations

import argparse
import http.client
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson

KEY = "sk_bench_abcd1234_benchmarksecret"
TARGET = 20_000
BATCH = 1000
_TICKS = os.sysconf("SC_CLK_TCK")
_REFERRERS = (None, "https://www.google.com/", "https://t.co/x", "https://blog.example/p")


def make_body(b: int, size: int = BATCH) -> bytes:
    """The ``b``-th realistic batch body (event ids unique across batches)."""
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
        ref = _REFERRERS[k % 4]
        if ref:
            ev["referrer"] = ref
        events.append(ev)
    return orjson.dumps({"events": events})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Run:
    """What one run measured."""

    events: int
    elapsed: float
    done_at: list[tuple[float, int]] = field(default_factory=list)  # (time, events done)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    stored: int = 0
    reads: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds per request, sorted


class Server:
    """``millimetric-nb serve`` in a subprocess on loopback, on a new file database."""

    def __init__(self, db: str, dedup: bool) -> None:
        cmd = [sys.executable, "-m", "millimetric_nb.cli", "serve", "--limits", "off",
               "--host", "127.0.0.1", "--port", "0", "--db", db, "--key", KEY]
        if dedup:
            cmd.append("--dedup")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.match(r"listening on (\S+)", line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise SystemExit("the server did not start")
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def connect(self) -> http.client.HTTPConnection:
        """A new keep-alive connection to the server."""
        return http.client.HTTPConnection(self.host, self.port, timeout=120)

    def get(self, path: str) -> tuple[float, dict]:
        """``GET path``: seconds taken and the decoded answer."""
        conn = self.connect()
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
        resp = conn.getresponse()
        body = resp.read()
        took = time.perf_counter() - t0
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"GET {path}: {resp.status} {body[:200]!r}")
        return took, orjson.loads(body)

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.proc.terminate()
        self.proc.wait(timeout=60)


_HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
_WINDOW = "from=2000-01-01&to=2100-01-01"


def run(n_events: int, concurrency: int, dedup: bool, tmp: str, name: str) -> Run:
    """Send ``n_events`` in 1000-event batches to a new server on a new file DB."""
    n_batches = n_events // BATCH
    print(f"[{name}] encoding {n_batches:,} bodies...", flush=True)
    bodies = [make_body(b) for b in range(n_batches + 1)]  # the last one: warm-up
    server = Server(str(Path(tmp) / f"{name}.sqlite3"), dedup)
    try:
        warm = server.connect()
        warm.request("POST", "/v1/batch", body=bodies[-1], headers=_HEADERS)
        if warm.getresponse().status != 202:
            raise SystemExit(f"[{name}] the warm-up batch was refused")
        warm.close()
        todo: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        for body in bodies[:-1]:
            todo.put(body)
        for _ in range(concurrency):
            todo.put(None)
        done_at: list[tuple[float, int]] = []
        latencies: list[float] = []
        lock = threading.Lock()
        failures: list[str] = []

        def worker() -> None:
            conn = server.connect()
            while (body := todo.get()) is not None:
                sent = time.perf_counter()
                conn.request("POST", "/v1/batch", body=body, headers=_HEADERS)
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status != 202:
                    failures.append(f"{resp.status}: {answer[:200]!r}")
                    return
                now = time.perf_counter()
                with lock:
                    done_at.append((now, BATCH))
                    latencies.append(now - sent)
            conn.close()

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        s0, c0 = cpu_seconds(server.proc.pid), time.process_time()
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        result = Run(n_batches * BATCH, elapsed, [(t - start, n) for t, n in done_at],
                     cpu_seconds(server.proc.pid) - s0, time.process_time() - c0,
                     latencies=sorted(latencies))
        if failures:
            raise SystemExit(f"[{name}] unexpected answer {failures[0]}")
        _, stats = server.get(f"/v1/stats?{_WINDOW}")
        result.stored = stats["rows"][0]["value"] - BATCH  # minus the warm-up
        for label, path in (
            ("query limit=1000", f"/v1/query?{_WINDOW}&limit=1000"),
            ("query one user", f"/v1/query?{_WINDOW}&user_id=user-7&limit=1000"),
            ("stats by day", f"/v1/stats?{_WINDOW}&interval=day"),
            ("sources", f"/v1/sources?{_WINDOW}"),
        ):
            result.reads[label] = server.get(path)[0]
    finally:
        server.stop()
    return result


def report(name: str, r: Run, slice_size: int) -> bool:
    """Print one run's figures; ``False`` when not every event was stored."""
    rate = r.events / r.elapsed
    print(f"[{name}] {r.events:,} events in {r.elapsed:.2f} s: {rate:,.0f} events/s "
          f"(server CPU {r.server_cpu / r.events * 1e6:.1f} µs/event, "
          f"client CPU {r.client_cpu / r.events * 1e6:.1f} µs/event; cores busy: server "
          f"{r.server_cpu / r.elapsed:.2f}, client {r.client_cpu / r.elapsed:.2f}, "
          f"machine load {os.getloadavg()[0]:.1f})")
    if r.events > slice_size:
        done, last_t, next_mark = 0, 0.0, slice_size
        for t, n in r.done_at:
            done += n
            if done >= next_mark:
                print(f"    events {next_mark - slice_size:>9,} - {next_mark:>9,}: "
                      f"{slice_size / (t - last_t):>8,.0f} events/s")
                last_t, next_mark = t, next_mark + slice_size
    lat = r.latencies
    print(f"    answer times per 1000-event request: median {lat[len(lat) // 2] * 1000:.0f} ms, "
          f"p99 {lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1000:.0f} ms, "
          f"slowest {lat[-1] * 1000:.0f} ms")
    print("    reads on the full database: " + ", ".join(
        f"{label} {took * 1000:.0f} ms" for label, took in r.reads.items()))
    if r.stored != r.events:
        print(f"FAIL: {r.stored:,} events stored, {r.events:,} sent")
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--fresh", type=int, default=100_000)
    parser.add_argument("--slice", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--dedup", action="store_true", help="serve with --dedup")
    parser.add_argument("--skip-fresh", action="store_true")
    args = parser.parse_args()
    ok = True
    print(f"1000-event batches, {args.concurrency} connections, dedup={args.dedup}, "
          f"body ~{len(make_body(0)) / 1e6:.2f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_fresh:
            fresh = run(args.fresh, args.concurrency, args.dedup, tmp, "fresh")
            ok &= report("fresh file DB", fresh, args.fresh)
        scale = run(args.events, args.concurrency, args.dedup, tmp, "scale")
        ok &= report(f"{args.events:,} events into one file DB", scale, args.slice)
    rate = scale.events / scale.elapsed
    print(f"server ingest over {scale.events:,} events: {rate:,.0f} events/s "
          f"(target >= {TARGET:,})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
