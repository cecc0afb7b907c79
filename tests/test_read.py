"""Reading back over loopback against the local server: query, query_all, stats, sources."""

from __future__ import annotations

import asyncio
import datetime as dt
import warnings

import pandas as pd
import pytest

from millimetric_nb import AsyncClient, Client, read
from millimetric_nb import sync as mm_sync
from millimetric_nb.errors import KeyRefusedError, ValidationError
from millimetric_nb.server import run_in_thread

DAY1 = pd.Timestamp("2026-10-01T00:00:00Z")
DAY2 = pd.Timestamp("2026-10-02T00:00:00Z")
DAY3 = pd.Timestamp("2026-10-03T00:00:00Z")
# query_all's window: 2,600 events in one hour, 1,500 of them inside one second
BULK = pd.Timestamp("2026-09-01T10:00:00Z")
BULK_END = BULK + pd.Timedelta(hours=1)
# 1,001 events on one instant: more than one response can hold
CLUMP = pd.Timestamp("2026-08-01T12:00:00Z")


def _iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _small_events() -> list[dict]:
    """30 events over two days, with known sources and users."""
    events = []
    for i in range(30):
        ev = {
            "event": ["$pageview", "signup", "purchase"][i % 3],
            "event_id": f"small-{i:03d}",
            "timestamp": _iso(DAY1 + pd.Timedelta(minutes=90 * i)),
            "anonymous_id": f"anon-{i % 7}",
            "url": "https://shop.example.com/p",
            "properties": {"i": i, "tags": ["a", "b"], "nested": {"ok": True}},
        }
        if i % 3 == 2:
            ev["user_id"] = f"user-{i % 4}"
        if i % 5 == 0:
            ev["url"] += "?utm_source=newsletter&utm_medium=email&utm_campaign=fall"
        elif i % 5 == 1:
            ev["referrer"] = "https://www.google.com/"
        events.append(ev)
    return events


def _bulk_events() -> list[dict]:
    events = []
    for i in range(1100):  # spread over the hour
        events.append({"event": "$pageview", "event_id": f"bulk-spread-{i:05d}",
                       "timestamp": _iso(BULK + pd.Timedelta(seconds=3 * i + 1))})
    for i in range(1500):  # all inside one second, distinct microseconds
        events.append({"event": "$pageview", "event_id": f"bulk-dense-{i:05d}",
                       "timestamp": _iso(BULK + pd.Timedelta(minutes=30, microseconds=500 * i))})
    return events


def _clump_events() -> list[dict]:
    return [{"event": "$pageview", "event_id": f"clump-{i:05d}", "timestamp": _iso(CLUMP)}
            for i in range(1001)]


@pytest.fixture(scope="module")
def srv():
    with run_in_thread(limits="off") as handle:
        everything = _small_events() + _bulk_events() + _clump_events()
        with Client(handle.keys["sk"], host=handle.url, rate_limits="off") as writer:
            assert writer.batch(everything).ok
        assert handle.count() == len(everything)
        yield handle


@pytest.fixture(scope="module")
def client(srv):
    """A read-only (rk_) client: reads need no more."""
    with Client(srv.keys["rk"], host=srv.url) as c:
        yield c


def test_query_types_every_column(srv, client):
    df = read.query(DAY1, DAY3, limit=1000, client=client)
    sent = {e["event_id"]: e for e in _small_events()}
    assert len(df) == len(sent)
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert df["source_confidence"].dtype.name == "category"
    assert set(df["event_id"]) == set(sent)
    for row in df.itertuples():
        ev = sent[row.event_id]
        assert row.timestamp == pd.Timestamp(ev["timestamp"])
        assert row.properties == ev["properties"]  # parsed from the JSON string
        assert row.event_name == ev["event"]
        assert (row.user_id if isinstance(row.user_id, str) else None) == ev.get("user_id")
    assert df["timestamp"].is_monotonic_increasing


def test_query_filters(client):
    signups = read.query(DAY1, DAY3, event="signup", limit=1000, client=client)
    assert len(signups) == 10 and (signups["event_name"] == "signup").all()
    user = read.query(DAY1, DAY3, user_id="user-1", limit=1000, client=client)
    expected = {e["event_id"] for e in _small_events() if e.get("user_id") == "user-1"}
    assert set(user["event_id"]) == expected and expected
    mail = read.query(DAY1, DAY3, medium="email", limit=1000, client=client)
    expected = {e["event_id"] for e in _small_events() if "utm_medium=email" in e["url"]}
    assert set(mail["event_id"]) == expected
    news = read.query(DAY1, DAY3, source="newsletter", medium="email", limit=1000, client=client)
    assert set(news["event_id"]) == expected


def test_query_window_is_from_inclusive_to_exclusive_and_accepts_any_time_type(client):
    first = pd.Timestamp(_small_events()[0]["timestamp"])
    second = pd.Timestamp(_small_events()[1]["timestamp"])
    got = read.query(first, second, client=client)
    assert list(got["event_id"]) == ["small-000"]
    # the same window spelt as a naive datetime (UTC), an aware datetime and a string
    naive = dt.datetime(2026, 10, 1)
    aware = dt.datetime(2026, 10, 1, 1, 30, tzinfo=dt.UTC)
    got2 = read.query(naive, "2026-10-01T01:30:00+00:00", client=client)
    got3 = read.query("2026-10-01", aware, client=client)
    assert list(got2["event_id"]) == list(got3["event_id"]) == ["small-000"]


def test_query_warns_when_the_limit_may_have_cut_rows(client):
    with pytest.warns(read.PossiblyTruncatedWarning, match="query_all"):
        df = read.query(DAY1, DAY3, limit=5, client=client)
    assert len(df) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read.query(DAY1, DAY3, limit=31, client=client)  # 30 rows: no warning


def test_empty_answer_keeps_columns_and_types(client):
    df = read.query("2020-01-01", "2020-01-02", client=client)
    assert len(df) == 0
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert "event_id" in df.columns and "properties" in df.columns


def test_query_all_reads_every_row_of_a_window_larger_than_1000(client):
    sent = [e["event_id"] for e in _bulk_events()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete: no warning at all
        df = read.query_all(BULK, BULK_END, client=client)
    assert len(df) == len(sent) == 2600
    assert sorted(df["event_id"]) == sorted(sent)  # each exactly once
    assert df["timestamp"].is_monotonic_increasing
    assert df.attrs["complete"] is True
    assert df.attrs["requests"] > 3


def test_query_all_with_a_filter_and_a_small_window(client):
    df = read.query_all(DAY1, DAY3, event="purchase", client=client)
    assert sorted(df["event_id"]) == sorted(
        e["event_id"] for e in _small_events() if e["event"] == "purchase"
    )
    assert df.attrs["requests"] == 1


def test_query_all_max_rows_returns_the_earliest_and_warns(client):
    with pytest.warns(read.IncompleteReadWarning, match="max_rows=700"):
        df = read.query_all(BULK, BULK_END, max_rows=700, client=client)
    assert len(df) == 700
    everything = read.query_all(BULK, BULK_END, client=client)
    assert list(df["event_id"]) == list(everything["event_id"][:700])
    assert df.attrs["complete"] is False


def test_query_all_says_when_one_instant_holds_more_than_1000(client):
    with pytest.warns(read.IncompleteReadWarning, match="share one instant"):
        df = read.query_all(CLUMP - pd.Timedelta(hours=1), CLUMP + pd.Timedelta(hours=1),
                            client=client)
    assert len(df) == 1000
    assert df["event_id"].is_unique
    assert df.attrs["complete"] is False


def test_async_variants(srv):
    async def main():
        async with AsyncClient(srv.keys["sk"], host=srv.url) as ac:
            a = await read.aquery(DAY1, DAY3, limit=1000, client=ac)
            b = await read.aquery_all(BULK, BULK_END, client=ac)
            c = await read.astats("count", DAY1, DAY3, client=ac)
            d = await read.asources(DAY1, DAY3, client=ac)
            return a, b, c, d

    a, b, c, d = asyncio.run(main())
    assert len(a) == 30 and len(b) == 2600
    assert int(c["value"].sum()) == 30 and int(d["events"].sum()) == 30


def test_default_client_from_connect(srv, monkeypatch):
    monkeypatch.setattr(mm_sync, "_default", None)  # restored after the test
    mm_sync.connect(srv.keys["rk"], host=srv.url)
    try:
        df = read.query(DAY1, DAY3, event="signup", limit=1000)
    finally:
        mm_sync.default_client().close()
    assert len(df) == 10


def test_a_browser_key_is_refused_before_reading(srv):
    before = srv.status_counts()
    with pytest.raises(KeyRefusedError):
        read.query(DAY1, DAY3, client=Client(srv.keys["pk"], host=srv.url))
    assert srv.status_counts() == before


def test_stats_group_by_and_interval(client):
    small = pd.DataFrame(_small_events())
    by_name = read.stats("count", DAY1, DAY3, group_by="event_name", client=client)
    assert dict(zip(by_name["event_name"], by_name["value"], strict=True)) == (
        small["event"].value_counts().to_dict()
    )
    assert by_name["value"].dtype == "int64"

    daily = read.stats("count", DAY1, DAY3, group_by=["event_name"], interval="day",
                       client=client)
    assert str(daily["bucket"].dtype) == "datetime64[ns, UTC]"
    ts = pd.to_datetime(small["timestamp"], utc=True)
    expected = small.groupby([ts.dt.floor("D"), small["event"]]).size()
    got = daily.set_index(["bucket", "event_name"])["value"]
    assert got.sort_index().to_dict() == expected.sort_index().to_dict()

    uniques = read.stats("uniques", DAY1, DAY3, client=client)
    assert int(uniques["value"].iloc[0]) == small["anonymous_id"].nunique()


def test_sources_sum_to_the_window(client):
    src = read.sources(DAY1, DAY3, client=client)
    assert list(src.columns[:5]) == ["source", "medium", "events", "uniques", "paid_share"]
    assert int(src["events"].sum()) == 30
    news = src[(src["source"] == "newsletter") & (src["medium"] == "email")]
    assert int(news["events"].iloc[0]) == 6
    by_source = read.sources(DAY1, DAY3, breakdown="source", client=client)
    assert "medium" not in by_source.columns
    assert int(by_source["events"].sum()) == 30


@pytest.mark.parametrize(
    ("call", "param", "code"),
    [
        (lambda c: read.query(DAY1, DAY3, limit=0, client=c), "limit", "invalid_params"),
        (lambda c: read.query(DAY1, DAY3, limit=1001, client=c), "limit", "invalid_params"),
        (lambda c: read.query(DAY1, DAY3, limit="10", client=c), "limit", "invalid_params"),
        (lambda c: read.query(DAY3, DAY1, client=c), "to", "invalid_params"),
        (lambda c: read.query("yesterday", DAY1, client=c), "from_", "invalid_params"),
        (lambda c: read.query(DAY1, DAY3, event="", client=c), "event", "invalid_params"),
        (lambda c: read.stats("sum", DAY1, DAY3, client=c), "metric", "invalid_params"),
        (lambda c: read.stats("count", DAY1, DAY3, group_by="source,city", client=c),
         "group_by", "invalid_group_by"),
        (lambda c: read.stats("count", DAY1, DAY3, interval="month", client=c),
         "interval", "invalid_params"),
        (lambda c: read.stats("count", None, DAY3, client=c), "from_", "invalid_params"),
        (lambda c: read.stats("count", DAY1, DAY3, limit=1001, client=c), "limit",
         "invalid_params"),
        (lambda c: read.sources(DAY1, DAY3, limit=201, client=c), "limit", "invalid_params"),
        (lambda c: read.sources(DAY1, DAY3, breakdown="medium", client=c),
         "breakdown", "invalid_params"),
        (lambda c: read.query_all(DAY1, DAY3, max_rows=0, client=c), "max_rows",
         "invalid_params"),
    ],
)
def test_bad_parameters_are_refused_before_any_request(srv, client, call, param, code):
    before = srv.status_counts()
    with pytest.raises(ValidationError) as info:
        call(client)
    err = info.value
    assert err.code == code
    assert str(err).startswith(f"[{code}] {param}:")
    assert [p[0] for p in err.problems] == [param]
    assert srv.status_counts() == before  # nothing reached the server


def test_verify_finds_missing_unexpected_and_duplicated(srv, client):
    sent = [e["event_id"] for e in _bulk_events()]
    good = read.verify(sent, BULK, BULK_END, client=client)
    assert good.ok and good.expected == good.stored == 2600
    assert "verified" in str(good)

    claimed = [*sent[5:], "never-sent-1"]
    bad = read.verify(claimed, BULK, BULK_END, client=client)
    assert not bad.ok
    assert bad.missing == ["never-sent-1"]
    assert bad.unexpected == sorted(sent[:5])
    assert bad.duplicated == {}


def test_verify_sees_a_duplicate_replay():
    with run_in_thread(limits="off") as s:
        ev = {"event": "x", "event_id": "dup-1", "timestamp": _iso(DAY1)}
        with Client(s.keys["sk"], host=s.url) as c:
            for _ in range(2):  # the server does not deduplicate
                assert c.batch([ev]).ok
            got = read.verify(["dup-1"], DAY1, DAY2, client=c)
    assert got.duplicated == {"dup-1": 2} and not got.ok and not got.missing


def test_each_truncated_read_warns_not_just_the_first(client):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own: once per text and location
        read.query(DAY1, DAY3, limit=3, client=client)
        read.query(DAY1, DAY2, limit=3, client=client)
    hits = [w for w in caught if issubclass(w.category, read.PossiblyTruncatedWarning)]
    assert len(hits) == 2
    with pytest.warns(read.PossiblyTruncatedWarning, match="/v1/stats returned 2 rows"):
        read.stats("count", DAY1, DAY3, group_by="event_name", limit=2, client=client)


def test_sync_functions_take_an_async_client_too(srv):
    ac = AsyncClient(srv.keys["rk"], host=srv.url)
    df = read.query(DAY1, DAY3, event="purchase", limit=1000, client=ac)
    assert sorted(df["event_id"]) == sorted(
        e["event_id"] for e in _small_events() if e["event"] == "purchase"
    )
    mm_sync.run_sync(ac.aclose())
