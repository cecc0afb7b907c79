"""The same 100,000 events sent through this toolkit, PostHog's Python SDK and
Segment's Python SDK to one loopback sink: wall time, client CPU per event, ratios.

- The sink is a tiny HTTP/1.1 server (``http.server``, keep-alive) in its own
  process on 127.0.0.1: it answers every POST ``200 {"ok": true, "count": N}`` at
  once, after counting the events of its JSON body (``events``, or ``batch``), so
  that the benchmark checks every event arrived. Its own CPU per event is printed:
  it is not the bound when it is far below the clients'.
- Each client runs in its own new process (``--peer NAME``): the events are built
  first, then the clock starts, every event is handed to the SDK, and the clock
  stops once the SDK says all were delivered (``Client.batch`` returned; PostHog's
  ``flush()``/``shutdown()``; Segment's ``flush()``/``shutdown()``). Client CPU is
  ``time.process_time()`` of that process over that span, every thread included
  (the SDKs' background senders too), the sink's excluded.
- Configuration, so that each SDK delivers every event at its best: this toolkit
  with ``rate_limits="off"`` (its 1000-event, 5 MB batches); PostHog with
  ``flush_at`` = the number of events (its 5 MB batch cap then bounds a request),
  a queue holding every event, ``gzip=False``, ``disable_geoip``; Segment with
  ``upload_size`` = the number of events (its 475 KB batch cap then bounds a request),
  a queue holding every event, ``gzip=False``.
- The same events: name, id (a UUID: PostHog refuses ids that are not), user,
  timestamp, url, path and three properties. Timestamps are ISO strings for this
  toolkit and ``datetime`` objects for the two SDKs (Segment takes nothing else).

A peer whose package is missing is skipped with a message (``pip install
'millimetric-nb[bench]'`` installs both).

    .venv/bin/python benchmarks/bench_peers.py [--events 100000]
        [--peers millimetric,posthog,segment]
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import orjson

PEERS = ("millimetric", "posthog", "segment")
PACKAGES = {"millimetric": ("millimetric_nb", "millimetric-nb"),
            "posthog": ("posthog", "posthog"),
            "segment": ("segment.analytics", "segment-analytics-python")}
KEY = "sk_bench_abcd1234_benchmarksecret"
_TICKS = os.sysconf("SC_CLK_TCK")
_START = datetime(2024, 3, 1, tzinfo=UTC)


# ------------------------------------------------------------------------ sink


class _Sink(http.server.BaseHTTPRequestHandler):
    """Counts events and answers at once."""

    protocol_version = "HTTP/1.1"
    counts: ClassVar[dict[str, int]] = {"requests": 0, "events": 0, "bytes": 0}
    lock: ClassVar[threading.Lock] = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        events = body.get("events", body.get("batch", [])) if isinstance(body, dict) else []
        n = len(events) if isinstance(events, list) else 0
        with self.lock:
            self.counts["requests"] += 1
            self.counts["events"] += n
            self.counts["bytes"] += len(raw)
        self._answer(orjson.dumps({"ok": True, "count": n, "status": 1}))

    def do_GET(self) -> None:
        with self.lock:
            counts = dict(self.counts)
        self._answer(orjson.dumps(counts))


def serve_sink() -> None:
    """Run the sink on a free loopback port; print its URL; serve until killed."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    server.daemon_threads = True
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def sink_counts(url: str) -> dict[str, int]:
    """The sink's counters so far."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/counts", timeout=30) as resp:  # loopback only
        counts: dict[str, int] = orjson.loads(resp.read())
    return counts


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# ------------------------------------------------------------------------ events


def make_events(n: int) -> list[dict[str, Any]]:
    """``n`` events, each SDK's input built from these."""
    return [
        {
            "event": ("purchase", "$pageview", "signup")[k % 3],
            "id": str(uuid.UUID(int=k + 1)),
            "user_id": f"user-{k % 2000}",
            "timestamp": _START + timedelta(seconds=k),
            "url": f"https://shop.example/p/{k % 300}",
            "path": f"/p/{k % 300}",
            "properties": {"amount_cents": k % 10_000, "plan": "pro", "n": k},
        }
        for k in range(n)
    ]


def send_millimetric(url: str, events: list[dict[str, Any]]) -> tuple[float, float]:
    """``Client.batch`` with limits off; (wall s, CPU s)."""
    import millimetric_nb as mm

    rows = [{"event": e["event"], "event_id": e["id"], "user_id": e["user_id"],
             "timestamp": e["timestamp"].isoformat().replace("+00:00", "Z"),
             "url": e["url"], "path": e["path"], "properties": e["properties"]}
            for e in events]
    with mm.Client(KEY, url, rate_limits="off") as client:
        t0, c0 = time.perf_counter(), time.process_time()
        result = client.batch(rows)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not result.ok:
        raise SystemExit(f"millimetric: not every event was accepted: {result!r}")
    return wall, cpu


def send_posthog(url: str, events: list[dict[str, Any]]) -> tuple[float, float]:
    """``Posthog.capture`` for each event, then ``flush`` and ``shutdown``."""
    from posthog import Posthog

    client = Posthog("phc_bench", host=url, flush_at=len(events), flush_interval=0.5,
                     max_queue_size=len(events) + 1, gzip=False, disable_geoip=True,
                     enable_exception_autocapture=False, max_retries=0)
    t0, c0 = time.perf_counter(), time.process_time()
    for e in events:
        client.capture(e["event"], distinct_id=e["user_id"], uuid=e["id"],
                       timestamp=e["timestamp"],
                       properties={"url": e["url"], "path": e["path"], **e["properties"]})
    client.flush(timeout_seconds=None)
    client.shutdown()
    return time.perf_counter() - t0, time.process_time() - c0


def send_segment(url: str, events: list[dict[str, Any]]) -> tuple[float, float]:
    """Segment's ``Client.track`` for each event, then ``flush`` and ``shutdown``."""
    from segment.analytics import Client

    client = Client("bench-write-key", host=url, upload_size=len(events),
                    max_queue_size=len(events) + 1, gzip=False, max_retries=0)
    t0, c0 = time.perf_counter(), time.process_time()
    for e in events:
        client.track(user_id=e["user_id"], event=e["event"], message_id=e["id"],
                     timestamp=e["timestamp"],
                     properties={"url": e["url"], "path": e["path"], **e["properties"]})
    client.flush()
    client.shutdown()
    return time.perf_counter() - t0, time.process_time() - c0


def child(peer: str, url: str, n: int) -> None:
    """Send ``n`` events through ``peer``; print ``{"wall": s, "cpu": s}``."""
    events = make_events(n)
    send = {"millimetric": send_millimetric, "posthog": send_posthog,
            "segment": send_segment}[peer]
    wall, cpu = send(url, events)
    print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


# ------------------------------------------------------------------------ driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        serve_sink()
        return 0
    if args.peer:
        child(args.peer, args.url, args.events)
        return 0

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"--peers takes {', '.join(PEERS)}, not {', '.join(unknown)}")
    here = str(Path(__file__).resolve())
    sink = subprocess.Popen([sys.executable, here, "--sink"], stdout=subprocess.PIPE, text=True)
    results: dict[str, dict[str, float]] = {}
    ok = True
    try:
        assert sink.stdout is not None
        url = sink.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise SystemExit("the sink did not start")
        for peer in peers:
            module, package = PACKAGES[peer]
            if importlib.util.find_spec(module.split(".")[0]) is None or (
                "." in module and importlib.util.find_spec(module) is None
            ):
                print(f"[{peer}] skipped: {package} is not installed "
                      "(pip install 'millimetric-nb[bench]')")
                continue
            before, sink_cpu = sink_counts(url), cpu_seconds(sink.pid)
            done = subprocess.run(
                [sys.executable, here, "--peer", peer, "--url", url,
                 "--events", str(args.events)],
                capture_output=True, text=True, timeout=900,
            )
            if done.returncode != 0:
                print(f"[{peer}] failed: {done.stderr.strip()[-500:]}")
                ok = False
                continue
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            after = sink_counts(url)
            figures["sink_cpu"] = cpu_seconds(sink.pid) - sink_cpu
            figures.update({k: after[k] - before[k] for k in ("requests", "events", "bytes")})
            results[peer] = figures
            delivered = figures["events"] == args.events
            ok &= delivered
            print(f"[{peer}] {args.events:,} events: wall {figures['wall']:.2f} s "
                  f"({args.events / figures['wall']:,.0f} events/s), client CPU "
                  f"{figures['cpu'] / args.events * 1e6:.1f} µs/event; sink got "
                  f"{figures['events']:,} events in {figures['requests']:,} requests "
                  f"({figures['bytes'] / 1e6:.1f} MB), sink CPU "
                  f"{figures['sink_cpu'] / args.events * 1e6:.1f} µs/event"
                  + ("" if delivered else "  <- NOT every event delivered"), flush=True)
    finally:
        sink.terminate()
        sink.wait(timeout=30)
    if "millimetric" in results:
        base = results["millimetric"]
        for peer, figures in results.items():
            if peer != "millimetric":
                print(f"{peer} / millimetric: wall x{figures['wall'] / base['wall']:.1f}, "
                      f"client CPU x{figures['cpu'] / base['cpu']:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
