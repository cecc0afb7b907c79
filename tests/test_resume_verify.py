"""``on_ambiguous="verify"``: a resume reads back the ids an earlier run left uncertain
and resends only those the server does not hold. Over real loopback HTTP against the
local server, whose ``/v1/query`` rows carry ``event_id``.

The Ctrl-C reproduction of issue 10 (a 20,000-row backfill whose 20 requests were all
stored, interrupted before their answers were journaled, then resumed with the
journal) is here as a regression test: 0 rows stored twice.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb.journal import Journal


def _frame(n: int, *, timestamps: bool = True) -> pd.DataFrame:
    df = pd.DataFrame({"event": ["purchase"] * n, "user_id": [f"u{i}" for i in range(n)],
                       "revenue": [float(i % 97) for i in range(n)]})
    if timestamps:  # one second apart: distinct instants, as in a real export
        df["timestamp"] = pd.date_range("2026-03-01", periods=n, freq="s", tz="UTC")
    return df


def _client(srv, kind: str = "sk", **kw) -> mm.Client:
    return mm.Client(key=srv.keys[kind], host=srv.url, rate_limits="off", **kw)


def _stored(srv) -> collections.Counter:
    return collections.Counter(e["event_id"] for e in srv.stored_events())


def _first_run_with_uncertain_requests(srv, journal, df) -> mm.SendResult:
    """5 requests of 1000: the 1st is written then answered 500, the 2nd's connection is
    dropped before anything is written; one attempt each, so both end ``ambiguous``."""
    srv.inject("batch", "ambiguous_500", 1)
    srv.inject("batch", "reset", 1)
    with _client(srv, max_attempts=1) as client:
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False,
                                        concurrency=1, chunksize=5000)
    assert res.counts["ambiguous"] == 2000 and res.counts["sent"] == 3000
    assert srv.count() == 4000  # the first request's 1000 were written, unacknowledged
    return res


def test_verify_resends_only_what_the_server_does_not_hold(mm_server, tmp_path):
    df = _frame(5000)
    journal = tmp_path / "j.sqlite"
    first = _first_run_with_uncertain_requests(mm_server, journal, df)
    written = set(first.rows.event_id[:1000])  # the request written without an answer
    with _client(mm_server) as client:
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert res.error is None
    # 3000 acknowledged + 1000 found stored by reading back: skipped; 1000 never stored: sent
    assert res.counts["skipped"] == 4000 and res.counts["sent"] == 1000
    assert set(res.rows.event_id[res.rows.status == "sent"]).isdisjoint(written)
    found = res.rows.message.astype(str).str.contains("found by reading back")
    assert set(res.rows.event_id[found]) == written
    # nothing stored twice, so nothing flagged; every row stored once
    stored = _stored(mm_server)
    assert set(stored) == set(df.index.map(lambda i: res.rows.event_id[i]))
    assert max(stored.values()) == 1 and mm_server.count() == 5000
    assert res.counts["possible_duplicates"] == 0
    assert not any("fell back" in w for w in res.warnings)
    with Journal(journal) as jr:  # the journal now knows: a third run sends nothing
        assert jr.counts() == {"acked": 5000}


def test_resend_instead_stores_and_flags_the_duplicates(mm_server, tmp_path):
    df = _frame(5000)
    journal = tmp_path / "j.sqlite"
    _first_run_with_uncertain_requests(mm_server, journal, df)
    with _client(mm_server) as client:
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False,
                                        on_ambiguous="resend")
    stored = _stored(mm_server)
    twice = {i for i, n in stored.items() if n > 1}
    assert len(twice) == 1000  # the written-but-unanswered request, stored again
    assert twice <= set(res.rows.event_id[res.rows.ambiguous])
    assert res.counts["possible_duplicates"] == 2000


class _ReadsWithoutEventId(httpx.AsyncBaseTransport):
    """Real loopback HTTP, but ``/v1/query`` rows lose ``event_id``, as the published
    API's rows do (the local server adds it)."""

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._real.handle_async_request(request)
        if request.url.path != "/v1/query":
            return response
        body = orjson.loads(await response.aread())
        for row in body.get("rows", []):
            row.pop("event_id", None)
        return httpx.Response(response.status_code, headers={"content-type": "application/json"},
                              content=orjson.dumps(body))

    async def aclose(self) -> None:
        await self._real.aclose()


@pytest.mark.parametrize("why", ["no_timestamps", "reads_without_event_id"])
def test_verify_falls_back_to_resend_where_reads_cannot_tell_and_says_so_once(
    mm_server, tmp_path, why
):
    df = _frame(3000, timestamps=why != "no_timestamps")
    journal = tmp_path / "j.sqlite"
    mm_server.inject("batch", "ambiguous_500", 1)
    with _client(mm_server, max_attempts=1) as client:
        df.millimetric.send_batch(client=client, journal=journal, progress=False,
                                  concurrency=1)
    kw = {"transport": _ReadsWithoutEventId()} if why == "reads_without_event_id" else {}
    with _client(mm_server, **kw) as client:
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False)
    fell_back = [w for w in res.warnings if "fell back to 'resend'" in w]
    assert len(fell_back) == 1 and "1,000 row(s)" in fell_back[0]
    assert ("without a timestamp" if why == "no_timestamps" else "carry no event_id") in (
        fell_back[0])
    stored = _stored(mm_server)
    twice = {i for i, n in stored.items() if n > 1}
    assert len(twice) == 1000 and twice <= set(res.rows.event_id[res.rows.ambiguous])


# ------------------------------------------------------------------ issue 10, item 3

_CHILD = """
import sys
import pandas as pd
import millimetric_nb as mm

url, key, journal, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
df = pd.DataFrame({"event": ["purchase"] * n, "user_id": [f"u{i}" for i in range(n)],
                   "revenue": [float(i % 97) for i in range(n)],
                   "timestamp": pd.date_range("2026-03-01", periods=n, freq="s", tz="UTC")})
client = mm.Client(key=key, host=url)  # the contract's limits: 20 requests at once
print("sending", flush=True)
df.millimetric.send_batch(client=client, journal=journal, progress=False)
print("finished", flush=True)
"""


@pytest.mark.parametrize("stop", ["sigint", "sigkill"])
def test_ctrl_c_after_the_burst_then_resume_stores_nothing_twice(
    mm_server_factory, tmp_path, stop
):
    # Issue 10's reproduction: 20,000 rows, 20 requests that all leave within the burst
    # and are all stored; the answers are slow (latency), and the run is stopped by
    # Ctrl-C (or killed) before any is journaled. A resume with the journal, as the
    # README says, must store none of them twice.
    n = 20_000
    srv = mm_server_factory(latency_ms=3000)
    journal = tmp_path / "j.sqlite"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), srv.url, srv.keys["sk"], str(journal), str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while srv.count() < n and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert srv.count() == n, "the 20 requests were not all stored"
        proc.send_signal(signal.SIGINT if stop == "sigint" else signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "finished" not in out  # it was stopped before the answers came
    df = pd.DataFrame({"event": ["purchase"] * n, "user_id": [f"u{i}" for i in range(n)],
                       "revenue": [float(i % 97) for i in range(n)],
                       "timestamp": pd.date_range("2026-03-01", periods=n, freq="s", tz="UTC")})
    srv.config.latency_ms = 0
    with _client(srv) as client:
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert res.error is None and res.counts["skipped"] == n and res.counts["sent"] == 0
    stored = _stored(srv)
    assert len(stored) == n and max(stored.values()) == 1  # 0 duplicates
    assert srv.count() == n
    assert not any("fell back" in w for w in res.warnings)


def test_verify_reads_sparse_windows_and_mixed_event_names(mm_server, tmp_path):
    # the uncertain rows alternate between two instants six years apart and two event
    # names: the read-back must cover both windows (not the years between) unfiltered
    df = _frame(5000)
    df["event"] = ["purchase", "refund"] * 2500
    far = pd.Timedelta(days=6 * 365)
    df["timestamp"] = df["timestamp"] + pd.Series([far * (i % 2) for i in range(5000)])
    journal = tmp_path / "j.sqlite"
    first = _first_run_with_uncertain_requests(mm_server, journal, df)
    written = set(first.rows.event_id[:1000])
    with _client(mm_server) as client:
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert res.counts["skipped"] == 4000 and res.counts["sent"] == 1000
    assert set(res.rows.event_id[res.rows.status == "sent"]).isdisjoint(written)
    assert max(_stored(mm_server).values()) == 1 and mm_server.count() == 5000
