"""df.millimetric over real loopback HTTP: send_batch, track, identify, forget, validate,
through the synchronous Client and the default client."""

from __future__ import annotations

import asyncio
import io

import pandas as pd
import pytest

import millimetric_nb
from millimetric_nb import sync
from millimetric_nb.api import observer_for
from millimetric_nb.contract import RateLimit
from millimetric_nb.errors import ConfigurationError, KeyRefusedError
from millimetric_nb.frame import RULE_PII, DataWarning
from millimetric_nb.progress import Acknowledged, Done, Failed, RequestSent, Retrying, Waiting
from millimetric_nb.ratelimit import ROUND_TRIP_S
from millimetric_nb.results import SendResult
from millimetric_nb.sync import Client
from millimetric_nb.ui import TqdmProgress

NOW = pd.Timestamp("2026-06-01T00:00:00Z")


def events(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event": ["signup" if i % 5 == 0 else "page_view" for i in range(n)],
            "anonymous_id": [f"anon-{i % 7}" for i in range(n)],
            "user_id": [f"user-{i % 4}" for i in range(n)],
            "timestamp": pd.date_range("2026-03-01", periods=n, freq="min", tz="UTC"),
            "path": [f"/p/{i}" for i in range(n)],
        },
        index=pd.Index([f"r{i}" for i in range(n)], name="label"),
    )


@pytest.fixture
def client(mm_server):
    with Client(mm_server.keys["sk"], mm_server.url, rate_limits="off") as c:
        yield c


def test_accessor_registered_on_import():
    assert hasattr(pd.DataFrame(), "millimetric")
    assert millimetric_nb.SendResult is SendResult
    assert callable(millimetric_nb.backfill) and callable(millimetric_nb.abackfill)


def test_validate_delegates_to_the_frame_layer():
    df = events(5)
    df.loc["r2", "event"] = None
    report = df.millimetric.validate()
    assert not report.ok
    assert list(report.errors["row"]) == ["r2"] and list(report.errors["field"]) == ["event"]


def test_send_batch_stores_valid_rows(mm_server, client):
    df = events(40)
    df.loc["r3", "event"] = "x" * 200
    res = df.millimetric.send_batch(client=client, progress=False, now=NOW)
    assert res.counts["sent"] == 39 and res.counts["invalid"] == 1
    assert res.rows.index.equals(df.index)
    assert res.rows.loc["r3", "error"] == "too_long"
    stored = {e["event_id"]: e for e in mm_server.stored_events()}
    for label, eid in res.rows.loc[res.rows.status == "sent", "event_id"].items():
        assert stored[eid]["path"] == df.loc[label, "path"]
        assert stored[eid]["event_name"] == df.loc[label, "event"]
    assert mm_server.status_counts() == {"batch": {202: 1}}
    assert list(res.failed.index) == ["r3"]
    html = res._repr_html_()
    assert "sent" in html and "<script" not in html


def test_send_batch_with_default_client_and_journal(mm_server, tmp_path, monkeypatch):
    monkeypatch.setattr(sync, "_default", None)
    c = millimetric_nb.sync.connect(mm_server.keys["sk"], mm_server.url, rate_limits="off")
    try:
        df = events(30)
        j = tmp_path / "j.sqlite"
        first = df.millimetric.send_batch(journal=j, progress=False, now=NOW)
        again = df.millimetric.send_batch(journal=j, progress=False, now=NOW)
        assert first.counts["sent"] == 30 and again.counts["skipped"] == 30
        assert mm_server.count() == 30
    finally:
        c.close()


def test_backfill_sync_face(mm_server, client, tmp_path):
    df = events(25)
    path = tmp_path / "e.csv"
    df.to_csv(path)
    res = millimetric_nb.backfill(path, client=client, progress=False, chunksize=10,
                                  properties=[], now=NOW)
    assert res.counts["sent"] == 25 and mm_server.count() == 25


def test_track_one_request_per_row(mm_server, client):
    df = events(12)
    df.loc["r4", "user_id"] = ""  # too short
    res = df.millimetric.track(client=client, event_col="event", progress=False)
    assert res.counts["sent"] == 11 and res.counts["invalid"] == 1
    assert mm_server.status_counts() == {"track": {202: 11}}
    assert {e["event_id"] for e in mm_server.stored_events()} == set(
        res.rows.loc[res.rows.status == "sent", "event_id"])


def test_track_constant_event_and_large_frame_warning(mm_server, client):
    df = events(3)
    res = df.millimetric.track("custom", client=client, progress=False)
    assert {e["event_name"] for e in mm_server.stored_events()} == {"custom"}
    assert res.sent == 3
    with pytest.warns(UserWarning, match="send_batch would take"):
        big = events(2500).millimetric.track(dry_run=True, progress=False)
    assert big.counts["planned"] == 2500 and big.plan.requests == 2500
    assert big.plan.estimated_s == pytest.approx((2500 - 200) / 50 + ROUND_TRIP_S)
    assert any("send_batch" in w for w in big.warnings)


def test_identify_one_per_row(mm_server, client):
    df = pd.DataFrame(
        {"anonymous_id": ["a1", "a2", "a3", None], "user_id": ["u1", "u2", "u3", "u4"],
         "plan": ["pro", None, "free", "pro"]}
    )
    res = df.millimetric.identify(traits=["plan"], client=client, progress=False)
    assert res.counts["sent"] == 3 and res.counts["invalid"] == 1
    assert res.rows.loc[3, "error"] == "required" and "anonymous_id" in res.rows.loc[3, "message"]
    stored = mm_server.stored_events()
    assert sorted((e["anonymous_id"], e["user_id"]) for e in stored) == [
        ("a1", "u1"), ("a2", "u2"), ("a3", "u3")]
    assert {e["event_name"] for e in stored} == {"$identify"}
    assert mm_server.status_counts() == {"identify": {200: 3}}


def test_forget_refuses_without_confirm_and_non_sk(mm_server, client):
    df = pd.DataFrame({"user_id": ["u1"]})
    with pytest.raises(ConfigurationError) as ei:
        df.millimetric.forget(client=client)
    assert ei.value.code == "confirmation_required"
    for send in (lambda: df.millimetric.forget(client=client, confirm=True, pii="maybe"),
                 lambda: df.assign(anonymous_id="a").millimetric.identify(client=client,
                                                                          pii="maybe"),
                 lambda: events(2).millimetric.send_batch(client=client, pii="maybe"),
                 lambda: events(2).millimetric.validate(pii="maybe")):
        with pytest.raises(ConfigurationError) as ei:
            send()
        assert ei.value.code == "invalid_pii" and "maybe" in str(ei.value)
    with Client(mm_server.keys["rk"], mm_server.url) as rk:
        with pytest.raises(KeyRefusedError):
            df.millimetric.forget(client=rk, confirm=True, progress=False)
    assert mm_server.status_counts() == {}


def test_forget_one_request_per_distinct_user(mm_server, client):
    events(40).millimetric.send_batch(client=client, progress=False, now=NOW)
    before = [e for e in mm_server.stored_events() if e["user_id"] in ("user-1", "user-2")]
    assert before
    df = pd.DataFrame({"user_id": ["user-1", "user-2", "user-1", None]})
    res = df.millimetric.forget(confirm=True, client=client, progress=False)
    assert res.counts["sent"] == 3 and res.counts["invalid"] == 1
    assert mm_server.status_counts()["forget"] == {200: 2}
    left = {e["user_id"] for e in mm_server.stored_events()}
    assert "user-1" not in left and "user-2" not in left and "user-0" in left


def test_progress_bar_text(mm_server, client):
    out = io.StringIO()
    bar = TqdmProgress("send", file=out)
    res = events(30).millimetric.send_batch(client=client, progress=bar, now=NOW)
    assert res.sent == 30
    text = out.getvalue()
    assert "30/30" in text and "sent=30" in text
    assert bar.counts["sent"] == 30 and bar.done == 30


def test_sync_face_inside_running_loop(mm_server):
    df = events(10)

    async def notebook_cell():
        with Client(mm_server.keys["sk"], mm_server.url, rate_limits="off") as c:
            return df.millimetric.send_batch(client=c, progress=False, now=NOW)

    res = asyncio.run(notebook_cell())
    assert res.sent == 10 and mm_server.count() == 10


def test_dry_run_needs_no_client(mm_server, monkeypatch):
    monkeypatch.delenv("MILLIMETRIC_KEY", raising=False)
    monkeypatch.setattr(sync, "_default", None)
    res = events(10).millimetric.send_batch(dry_run=True, progress=False)
    assert res.counts["planned"] == 10 and res.plan.requests == 1
    assert mm_server.status_counts() == {}


def test_identify_personal_traits_warn_or_refuse(mm_server, client):
    df = pd.DataFrame({"anonymous_id": ["a1"], "user_id": ["u1"],
                       "email": ["someone@example.com"], "plan": ["pro"]})
    with pytest.raises(millimetric_nb.ValidationError) as ei:
        df.millimetric.identify(traits=["email", "plan"], pii="error", client=client,
                                progress=False)
    assert "email" in str(ei.value)
    # the same rule code as personal-looking property columns
    assert [(path, rule) for path, rule, _ in ei.value.problems] == [
        ("traits.email", RULE_PII)
    ]
    assert mm_server.status_counts() == {}
    with pytest.warns(DataWarning, match="personal data"):
        res = df.millimetric.identify(traits=["email", "plan"], client=client, progress=False)
    assert res.sent == 1 and any("email" in w for w in res.warnings)
    res = df.millimetric.identify(traits=["plan"], client=client, progress=False)
    assert res.sent == 1 and not res.warnings


def test_per_row_sends_report_waiting_and_retries_once_each(mm_server, mm_server_factory):
    # /v1/track's limit scaled down (a bucket of 4, 100/s): rows past the burst wait;
    # the engine passes the client's attempt events on, and counts each row once
    n = 30
    seen = []
    bar = TqdmProgress("track", file=io.StringIO())
    limits = {"track": RateLimit(refill=100.0, burst=4)}
    with Client(mm_server.keys["sk"], mm_server.url, rate_limits=limits) as c:
        res = events(n).millimetric.track(client=c, progress=bar, observer=seen.append)
    assert res.sent == n and mm_server.status_counts() == {"track": {202: n}}
    waits = [e for e in seen if isinstance(e, Waiting)]
    assert waits and {w.route for w in waits} == {"track"}
    assert {w.reason for w in waits} == {"rate_limit"}
    assert sum(e.events for e in seen if isinstance(e, RequestSent)) == n
    assert sum(e.events for e in seen if isinstance(e, Acknowledged)) == n  # not twice
    assert bar.counts["sent"] == n and bar.done == n

    # identify against a server that fails some writes: the retries reach the observer
    srv = mm_server_factory(limits="off", fail_rate=0.4, seed=5)
    df = pd.DataFrame({"anonymous_id": [f"a{i}" for i in range(12)],
                       "user_id": [f"u{i}" for i in range(12)]})
    seen.clear()
    with Client(srv.keys["sk"], srv.url, rate_limits="off", max_attempts=8,
                backoff_initial=0.001, backoff_max=0.005) as c:
        res = df.millimetric.identify(client=c, progress=False, observer=seen.append)
    assert res.sent == 12 and len(srv.stored_events()) == 12
    retries = [e for e in seen if isinstance(e, Retrying)]
    assert retries and {r.route for r in retries} == {"identify"}
    assert res.rows["attempts"].sum() == 12 + len(retries)
    assert sum(e.events for e in seen if isinstance(e, Acknowledged)) == 12
    assert not any(isinstance(e, Failed) for e in seen)


def test_progress_true_draws_the_bar_and_false_draws_nothing(mm_server, client, capsys):
    # the faces choose the display: progress=True is the tqdm bar (text, on stderr here)
    events(7).millimetric.send_batch(client=client, now=NOW)
    err = capsys.readouterr().err
    assert "/v1/batch" in err and "7/7" in err and "sent=7" in err
    events(3).millimetric.track(client=client)
    assert "/v1/track" in capsys.readouterr().err
    events(2).millimetric.send_batch(client=client, progress=False, now=NOW)
    assert "/v1/batch" not in capsys.readouterr().err
    assert observer_for(False, None, "batch") is None
    seen = []
    obs = observer_for(seen.append, None, "batch")
    obs(Done())
    assert seen == [Done()]
