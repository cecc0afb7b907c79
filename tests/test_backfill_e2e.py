"""The backfill over real loopback HTTP against the local server: what the server
stored (srv.stored_events()) is checked against the input, row by row."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import decimal

import numpy as np
import pandas as pd
import pytest

from millimetric_nb import abackfill
from millimetric_nb.client import AsyncClient, no_backoff
from millimetric_nb.errors import MillimetricError
from millimetric_nb.progress import Acknowledged, Done, Planned, RequestSent

NOW = pd.Timestamp("2026-06-01T00:00:00Z")


def events_frame(n: int, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "event": rng.choice(["page_view", "signup", "purchase"], n),
            "user_id": [f"u{i % 97}" for i in range(n)],
            "anonymous_id": [f"a{i % 131}" for i in range(n)],
            "timestamp": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86400 * 30, n), unit="s"),
            "url": [f"https://shop.example/p/{i}?utm_source=news" for i in range(n)],
            "amount": rng.integers(1, 500, n),
            "plan": rng.choice(["free", "pro"], n),
        }
    )


def send(srv, source, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("now", NOW)

    async def main():
        async with AsyncClient(key=srv.keys["sk"], host=srv.url,
                               rate_limits=kw.pop("rate_limits", "off")) as client:
            return await abackfill(source, client=client, **kw)

    return asyncio.run(main())


def by_id(srv) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for e in srv.stored_events():
        out[e["event_id"]].append(e)
    return out


def test_stored_equals_valid_rows_field_by_field(mm_server):
    df = events_frame(2500)
    df.loc[7, "event"] = None  # invalid: required
    df.loc[1500, "url"] = "x" * 3000  # invalid: too long
    res = send(mm_server, df, chunksize=600, concurrency=5)
    assert res.counts["sent"] == 2498 and res.counts["invalid"] == 2
    assert list(res.rows.index) == list(df.index)
    assert res.rows.loc[7, "status"] == "invalid" and res.rows.loc[7, "error"] == "required"
    assert res.rows.loc[1500, "error"] == "too_long" and "url" in res.rows.loc[1500, "message"]
    assert list(res.failed.index) == [7, 1500]
    assert set(res.errors["field"]) == {"event", "url"}
    stored = by_id(mm_server)
    assert len(stored) == 2498 and all(len(v) == 1 for v in stored.values())
    sent = res.rows[res.rows.status == "sent"]
    for label, eid in sent["event_id"].items():
        row, got = df.loc[label], stored[eid][0]
        assert got["event_name"] == row["event"]
        assert got["user_id"] == row["user_id"]
        assert got["anonymous_id"] == row["anonymous_id"]
        assert pd.Timestamp(got["timestamp"]) == row["timestamp"]
        assert got["url"] == row["url"]
        assert got["properties"] == {"amount": int(row["amount"]), "plan": row["plan"]}


def test_second_run_with_journal_sends_nothing(mm_server, tmp_path):
    df = events_frame(1200)
    journal = tmp_path / "j.sqlite"
    first = send(mm_server, df, journal=journal)
    assert first.counts["sent"] == 1200
    before = mm_server.count()
    requests = mm_server.status_counts()
    second = send(mm_server, df, journal=journal)
    assert mm_server.count() == before == 1200
    assert mm_server.status_counts() == requests
    assert second.counts["skipped"] == 1200 and (second.rows.status == "skipped").all()
    # the ids are stable between runs
    assert list(second.rows.event_id) == list(first.rows.event_id)


def test_interrupted_run_resumes_to_exactly_once(mm_server, tmp_path):
    df = events_frame(8000)
    journal = tmp_path / "j.sqlite"
    acks = []

    def interrupt(ev):
        if isinstance(ev, Acknowledged):
            acks.append(ev)
            if len(acks) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        send(mm_server, df, journal=journal, observer=interrupt, chunksize=2000, concurrency=2)
    partial = mm_server.count()
    assert 3000 <= partial < 8000
    res = send(mm_server, df, journal=journal, chunksize=2000)
    assert res.counts["skipped"] >= 3000
    assert res.counts["skipped"] + res.counts["sent"] == 8000
    stored = by_id(mm_server)
    assert set(stored) == set(res.rows.event_id)  # every row stored
    flagged = set(res.rows.loc[res.rows.ambiguous, "event_id"])
    for eid, copies in stored.items():
        assert len(copies) == 1 or eid in flagged, eid


def test_faults_lose_nothing_and_flag_ambiguous(mm_server_factory):
    srv = mm_server_factory(limits="off", fail_rate=0.2, reset_rate=0.1,
                            ambiguous_rate=0.2, seed=7)
    df = events_frame(20_000)
    with no_backoff():
        res = send(srv, df, concurrency=4)
    assert sum(srv.fault_counts().values()) > 0
    stored = by_id(srv)
    # every row accounted; every row the result calls sent is stored
    assert res.counts["total"] == 20_000
    sent_ids = set(res.rows.loc[res.rows.status == "sent", "event_id"])
    assert sent_ids <= set(stored)
    # nothing lost silently: what is not stored is reported failed/ambiguous
    missing = set(res.rows.event_id) - set(stored)
    assert missing <= set(res.rows.loc[res.rows.status.isin(["failed", "ambiguous"]),
                                       "event_id"])
    # every duplicate is flagged
    flagged = set(res.rows.loc[res.rows.ambiguous, "event_id"])
    dups = {eid for eid, copies in stored.items() if len(copies) > 1}
    assert dups, "the seed should produce ambiguous writes"
    assert dups <= flagged
    # with this seed every request got through in the end: nothing lost
    assert res.counts["sent"] == 20_000 and set(stored) == set(res.rows.event_id)
    assert res.counts["possible_duplicates"] >= len(dups)


def test_dry_run_sends_nothing(mm_server):
    df = events_frame(3000)
    df.loc[0, "event"] = ""
    res = send(mm_server, df, dry_run=True)
    assert mm_server.status_counts() == {} or all(
        not v for v in mm_server.status_counts().values())
    assert mm_server.count() == 0
    assert res.counts["planned"] == 2999 and res.counts["invalid"] == 1
    assert res.plan.requests == 3 and res.plan.events == 2999 and res.plan.bytes > 2999 * 100


def test_bad_key_stops_with_account(mm_server):
    df = events_frame(3000)

    async def main():
        async with AsyncClient(key="sk_live_abcdefgh_notarealsecret0000", host=mm_server.url,
                               rate_limits="off") as client:
            return await abackfill(df, client=client, progress=False, now=NOW)

    res = asyncio.run(main())
    assert mm_server.count() == 0
    assert res.error is not None and res.error.status == 401
    assert res.counts["failed"] == 3000
    assert "notarealsecret" not in repr(res) and "notarealsecret" not in res._repr_html_()
    assert "STOPPED" in repr(res)
    assert not res.rows["message"].astype(str).str.contains("notarealsecret").any()
    assert "notarealsecret" not in str(res.error) and "notarealsecret" not in res.warnings[-1]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "iterable"])
def test_file_and_iterable_sources(mm_server, tmp_path, fmt):
    df = events_frame(1500)
    df["timestamp"] = df["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    df.loc[3, "event"] = None
    path = tmp_path / f"events.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
        source = path
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
        source = path
    elif fmt == "parquet":
        df.to_parquet(path)
        source = str(path)
    else:
        df.to_csv(path, index=False)
        source = pd.read_csv(path, chunksize=400)
    res = send(mm_server, source, chunksize=400)
    assert res.counts["sent"] == 1499 and res.counts["invalid"] == 1
    assert list(res.rows.index) == list(range(1500))
    assert list(res.failed.index) == [3] and "event" in res.failed.columns
    stored = by_id(mm_server)
    assert {e[0]["event_name"] for e in stored.values()} <= {"page_view", "signup", "purchase"}
    assert len(stored) == 1499


def bad_frames() -> dict[str, pd.DataFrame]:
    n = 6
    base = {"event": ["e"] * n, "user_id": [f"u{i}" for i in range(n)]}
    frames = {
        "mixed": pd.DataFrame({**base, "v": [1, "a", 2.5, None, True, b"x"]}),
        "missing": pd.DataFrame({**base, "event": ["e", None, np.nan, pd.NA, "ok", "ok"],
                                 "t": [pd.NaT, pd.Timestamp("2026-01-01"), None, None,
                                       None, None]}),
        "categorical": pd.DataFrame({**base, "event": pd.Categorical(["a", "b"] * 3),
                                     "c": pd.Categorical(["x", None] * 3)}),
        "tz": pd.DataFrame({**base, "timestamp": pd.date_range("2026-01-01", periods=n)}),
        "tz_aware": pd.DataFrame({**base, "timestamp": pd.date_range(
            "2026-01-01", periods=n, tz="Europe/Paris")}),
        "bad_dates": pd.DataFrame({**base, "timestamp": ["2026-01-01", "nope", "", None,
                                                         "2026-13-45", "2026-02-01T10:00Z"]}),
        "big_ints": pd.DataFrame({**base, "big": [2**53 + 1, 1, 2, 3, 4, -(2**60)]}),
        "decimal": pd.DataFrame({**base, "d": [decimal.Decimal("1.5"), decimal.Decimal("NaN"),
                                              decimal.Decimal(2), None, None, None]}),
        "nested": pd.DataFrame({**base, "n": [[1, 2], {"a": {"b": 1}}, None, [], {}, "s"]}),
        "bytes": pd.DataFrame({**base, "b": [b"x", b"\xff", None, "s", 1, 2]}),
        "dup_cols": pd.DataFrame([[f"e{i}", i, i] for i in range(n)],
                                 columns=["event", "x", "x"]),
        "non_unique_index": pd.DataFrame(base, index=[0, 0, 1, 1, 2, 2]),
        "multi_index": pd.DataFrame(base, index=pd.MultiIndex.from_product([[1, 2], [1, 2, 3]])),
        "empty": pd.DataFrame({"event": pd.Series([], dtype=object)}),
        "dates_py": pd.DataFrame({**base, "when": [dt.date(2026, 1, i + 1) for i in range(n)]}),
    }
    return frames


@pytest.mark.parametrize("name", list(bad_frames()))
def test_bad_input_every_row_accounted(mm_server, name):
    df = bad_frames()[name]
    res = send(mm_server, df, chunksize=4)
    assert len(res.rows) == len(df)
    assert res.rows.index.equals(df.index)
    assert res.rows.status.notna().all()
    c = res.counts
    assert c["sent"] + c["invalid"] + c["failed"] + c["ambiguous"] == len(df)
    assert c["failed"] == 0 and c["ambiguous"] == 0
    assert mm_server.count() == c["sent"]
    assert len(res.failed) == c["invalid"]
    invalid = res.rows[res.rows.status == "invalid"]
    assert invalid["error"].notna().all() and invalid["message"].notna().all()
    if name in ("dup_cols",):
        assert c["invalid"] == len(df) and res.error is None
        assert "x" in invalid["message"].iloc[0]
    if name == "big_ints":
        assert set(invalid.index) == {0, 5}
        assert set(invalid["error"]) == {"int_out_of_range"}


def test_progress_events_over_http(mm_server):
    df = events_frame(2100)
    seen = []
    res = send(mm_server, df, observer=seen.append)
    assert res.counts["sent"] == 2100
    # limits off and no faults: one attempt per request, so exactly one RequestSent each
    sent = [e for e in seen if isinstance(e, RequestSent)]
    assert sum(e.events for e in sent) == 2100 and {e.attempt for e in sent} == {1}
    assert sum(e.events for e in seen if isinstance(e, Acknowledged)) == 2100
    assert sum(e.rows for e in seen if isinstance(e, Planned)) == 2100
    assert isinstance(seen[-1], Done) and seen[-1].counts["sent"] == 2100
    assert sum(isinstance(e, Done) for e in seen) == 1


def test_unknown_source_type_is_typed():
    with pytest.raises(MillimetricError):
        asyncio.run(abackfill(123, dry_run=True, progress=False))  # type: ignore[arg-type]


KILL_SCRIPT = r'''
import asyncio, os, signal, sys
import pandas as pd
from millimetric_nb import abackfill
from millimetric_nb.client import AsyncClient
from millimetric_nb.progress import Acknowledged

url, key, journal, src = sys.argv[1:5]
acks = 0

def observer(ev):
    global acks
    if isinstance(ev, Acknowledged):
        acks += 1
        if acks == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a hard crash

async def main():
    async with AsyncClient(key=key, host=url, rate_limits="off") as c:
        await abackfill(src, client=c, journal=journal, progress=False, observer=observer,
                        chunksize=1000, concurrency=3)

asyncio.run(main())
'''


def test_sigkill_mid_run_then_resume(mm_server, tmp_path):
    import signal
    import subprocess
    import sys

    df = events_frame(9000)
    src = tmp_path / "events.parquet"
    df.to_parquet(src)
    journal = tmp_path / "j.sqlite"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), mm_server.url, mm_server.keys["sk"], str(journal),
         str(src)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = mm_server.count()
    assert 4000 <= partial < 9000
    res = send(mm_server, src, journal=journal, chunksize=1000)
    assert res.counts["skipped"] >= 4000  # every acknowledgement survived the kill
    assert res.counts["skipped"] + res.counts["sent"] == 9000
    stored = by_id(mm_server)
    assert set(stored) == set(res.rows.event_id)
    flagged = set(res.rows.loc[res.rows.ambiguous, "event_id"])
    for eid, copies in stored.items():
        assert len(copies) == 1 or eid in flagged, eid
    assert sum(len(c) for c in stored.values()) - 9000 <= len(flagged)


def test_injected_ambiguous_write_is_flagged_exactly(mm_server):
    mm_server.inject("batch", "ambiguous_500", 1)  # the first request: written, then 500
    df = events_frame(3000)
    with no_backoff():
        res = send(mm_server, df, concurrency=1, chunksize=1000)
    assert res.counts["sent"] == 3000 and res.counts["possible_duplicates"] == 1000
    flagged = res.rows[res.rows.ambiguous]
    assert list(flagged.index) == list(range(1000)) and (flagged.attempts == 2).all()
    stored = by_id(mm_server)
    assert all(len(stored[e]) == 2 for e in flagged.event_id)
    assert all(len(stored[e]) == 1 for e in res.rows.loc[~res.rows.ambiguous, "event_id"])


def test_final_ambiguous_failure_is_reported_not_lost(mm_server):
    mm_server.inject("batch", "ambiguous_drop", 2)  # written, connection dropped, twice
    df = events_frame(2000)

    async def main():
        async with AsyncClient(key=mm_server.keys["sk"], host=mm_server.url,
                               rate_limits="off", max_attempts=2) as client:
            return await abackfill(df, client=client, progress=False, concurrency=1,
                                   chunksize=1000, now=NOW)

    with no_backoff():
        res = asyncio.run(main())
    amb = res.rows[res.rows.status == "ambiguous"]
    assert list(amb.index) == list(range(1000))
    assert amb.ambiguous.all() and (amb.attempts == 2).all() and amb.error.notna().all()
    assert res.counts["ambiguous"] == 1000 and res.counts["sent"] == 1000
    assert list(res.failed.index) == list(range(1000))  # ready to resend, knowingly
    stored = by_id(mm_server)
    assert set(amb.event_id) <= set(stored)  # the server did write them: not lost


def test_track_route_with_a_journal_sends_each_derived_id_once(mm_server, tmp_path):
    # the per-row route reads the derived ids one row at a time from their bytes
    df = events_frame(120)
    df.loc[3, "event"] = None  # invalid: no id
    journal = tmp_path / "track.journal"
    res = send(mm_server, df, route="track", journal=journal, chunksize=50, concurrency=4)
    assert res.counts["sent"] == 119 and res.counts["invalid"] == 1
    dry = send(mm_server, df, dry_run=True, chunksize=50)
    sent = res.rows[res.rows.status == "sent"]["event_id"]
    assert sent.tolist() == dry.rows["event_id"].dropna().tolist()
    stored = by_id(mm_server)
    assert set(stored) == set(sent) and all(len(v) == 1 for v in stored.values())
    again = send(mm_server, df, route="track", journal=journal, chunksize=50)
    assert again.counts["skipped"] == 119 and len(mm_server.stored_events()) == 119
