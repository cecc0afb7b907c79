"""The local server's read endpoints over real loopback HTTP: /v1/query, /v1/stats,
/v1/sources, their parameters and errors."""

from __future__ import annotations

import orjson
import pytest

from millimetric_nb import contract

EVENTS = [
    # 2024-01-01 is a Monday
    {"event": "view", "timestamp": "2024-01-01T10:15:00Z", "anonymous_id": "a1",
     "url": "https://s.test/?utm_source=news&utm_medium=email", "path": "/"},
    {"event": "view", "timestamp": "2024-01-01T10:45:00Z", "anonymous_id": "a1",
     "url": "https://s.test/?gclid=1", "path": "/p"},
    {"event": "buy", "timestamp": "2024-01-01T11:05:00Z", "anonymous_id": "a2",
     "user_id": "u2", "url": "https://s.test/?gclid=2", "properties": {"cents": 900}},
    {"event": "view", "timestamp": "2024-01-02T09:00:00Z", "anonymous_id": "a3",
     "referrer": "https://www.google.com/", "path": "/"},
    {"event": "view", "timestamp": "2024-01-08T00:00:00Z", "anonymous_id": "a1", "path": "/"},
    {"event": "buy", "timestamp": "2024-01-01T10:15:00Z", "anonymous_id": "a4",
     "user_id": "u4"},  # same instant as the first: insertion order breaks the tie
]
WINDOW = {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z"}


@pytest.fixture
def loaded(mm_server, mm_client):
    sk = mm_client(mm_server)
    r = sk.post("/v1/batch", json={"events": EVENTS})
    assert r.status_code == 202
    return mm_server, mm_client(mm_server, "rk")


def test_query_rows_columns_and_order(loaded):
    srv, rk = loaded
    r = rk.get("/v1/query", params=WINDOW)
    assert r.status_code == 200
    rows = r.json()["rows"]
    assert [row["timestamp"][:16] for row in rows] == [
        "2024-01-01T10:15", "2024-01-01T10:15", "2024-01-01T10:45", "2024-01-01T11:05",
        "2024-01-02T09:00", "2024-01-08T00:00"]
    assert [rows[0]["anonymous_id"], rows[1]["anonymous_id"]] == ["a1", "a4"]
    assert all(set(row) == set(contract.QUERY_COLUMNS) for row in rows)
    buy = rows[3]
    assert orjson.loads(buy["properties"]) == {"cents": 900}  # a JSON string
    assert (buy["source"], buy["medium"], buy["source_confidence"]) == ("google", "cpc", "high")
    stored_ids = {row["event_id"] for row in srv.stored_events()}
    assert {row["event_id"] for row in rows} == stored_ids
    assert rows[0]["session_id"] == srv.stored_events()[0]["session_id"]


def test_query_window_is_from_inclusive_to_exclusive(loaded):
    _, rk = loaded
    rows = rk.get("/v1/query", params={"from": "2024-01-01T10:45:00Z",
                                       "to": "2024-01-08T00:00:00Z"}).json()["rows"]
    assert [r["timestamp"][:16] for r in rows] == [
        "2024-01-01T10:45", "2024-01-01T11:05", "2024-01-02T09:00"]
    rows = rk.get("/v1/query", params={"from": "2024-01-01T12:00:00+01:00",
                                       "to": "2024-01-02"}).json()["rows"]
    assert [r["timestamp"][:16] for r in rows] == ["2024-01-01T11:05"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"event": "buy"}, 2),
        ({"source": "google"}, 3),
        ({"source": "google", "medium": "organic"}, 1),
        ({"medium": "email"}, 1),
        ({"user_id": "u2"}, 1),
        ({"limit": "2"}, 2),
        ({"event": "nothing"}, 0),
    ],
)
def test_query_filters_and_limit(loaded, params, expected):
    _, rk = loaded
    rows = rk.get("/v1/query", params={**WINDOW, **params}).json()["rows"]
    assert len(rows) == expected
    for key, value in params.items():
        if key != "limit":
            column = "event_name" if key == "event" else key
            assert all(row[column] == value for row in rows)


def test_query_limit_default_is_100(mm_server, mm_client):
    sk = mm_client(mm_server)
    sk.post("/v1/batch", json={"events": [{"event": "e", "timestamp": "2024-01-01T00:00:00Z"}]
                               * 150})
    assert len(sk.get("/v1/query", params=WINDOW).json()["rows"]) == contract.QUERY_LIMIT_DEFAULT
    assert len(sk.get("/v1/query", params={**WINDOW, "limit": 1000}).json()["rows"]) == 150


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/query", {"to": "2024-02-01"}, "from"),
        ("/v1/query", {"from": "2024-01-01"}, "to"),
        ("/v1/query", {"from": "last week", "to": "2024-02-01"}, "from"),
        ("/v1/query", {"from": "", "to": "2024-01-01"}, "from"),
        ("/v1/query", {"from": "2024-01-01", "to": ""}, "to"),
        ("/v1/query", {"from": "2023-02-29", "to": "2024-01-01"}, "from"),
        ("/v1/query", {**WINDOW, "limit": "1_0"}, "limit"),
        ("/v1/stats", {**WINDOW, "metric": ""}, "metric"),
        ("/v1/query", {**WINDOW, "limit": "0"}, "limit"),
        ("/v1/query", {**WINDOW, "limit": "1001"}, "limit"),
        ("/v1/query", {**WINDOW, "limit": "ten"}, "limit"),
        ("/v1/stats", {**WINDOW, "metric": "sum"}, "metric"),
        ("/v1/stats", {**WINDOW, "interval": "minute"}, "interval"),
        ("/v1/stats", {"from": "2024-13-01", "to": "2024-02-01"}, "from"),
        ("/v1/sources", {**WINDOW, "breakdown": "campaign"}, "breakdown"),
        ("/v1/sources", {**WINDOW, "limit": "201"}, "limit"),
    ],
)
def test_invalid_params(loaded, path, params, field):
    _, rk = loaded
    r = rk.get(path, params=params)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_params"
    assert field in r.json()["details"]["fieldErrors"]


def test_stats_count_and_uniques(loaded):
    _, rk = loaded
    r = rk.get("/v1/stats", params={**WINDOW, "metric": "count"}).json()
    assert r == {"metric": "count", "rows": [{"value": 6}]}
    r = rk.get("/v1/stats", params={**WINDOW, "metric": "uniques"}).json()
    assert r["rows"] == [{"value": 4}]
    r = rk.get("/v1/stats", params={**WINDOW, "metric": "uniques", "event": "view"}).json()
    assert r["rows"] == [{"value": 2}]


def test_stats_group_by(loaded):
    _, rk = loaded
    rows = rk.get("/v1/stats", params={**WINDOW, "group_by": "event_name,path"}).json()["rows"]
    as_set = {(r["event_name"], r["path"], r["value"]) for r in rows}
    assert as_set == {("view", "/", 3), ("view", "/p", 1), ("buy", None, 2)}
    assert rows[0] == {"event_name": "view", "path": "/", "value": 3}  # highest first
    rows = rk.get("/v1/stats", params={**WINDOW, "group_by": "source", "limit": 1}).json()["rows"]
    assert rows == [{"source": "google", "value": 3}]


def test_stats_invalid_group_by(loaded):
    _, rk = loaded
    r = rk.get("/v1/stats", params={**WINDOW, "group_by": "event_name,password"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_group_by"
    assert "password" in r.json()["details"]["fieldErrors"]["group_by"][0]


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("hour", {("2024-01-01T10:00:00.000000Z", 3), ("2024-01-01T11:00:00.000000Z", 1),
                  ("2024-01-02T09:00:00.000000Z", 1), ("2024-01-08T00:00:00.000000Z", 1)}),
        ("day", {("2024-01-01T00:00:00.000000Z", 4), ("2024-01-02T00:00:00.000000Z", 1),
                 ("2024-01-08T00:00:00.000000Z", 1)}),
        ("week", {("2024-01-01T00:00:00.000000Z", 5), ("2024-01-08T00:00:00.000000Z", 1)}),
    ],
)
def test_stats_intervals(loaded, interval, expected):
    _, rk = loaded
    rows = rk.get("/v1/stats", params={**WINDOW, "interval": interval}).json()["rows"]
    assert {(r["bucket"], r["value"]) for r in rows} == expected
    assert [r["bucket"] for r in rows] == sorted(r["bucket"] for r in rows)


def test_stats_interval_with_group(loaded):
    _, rk = loaded
    rows = rk.get("/v1/stats", params={**WINDOW, "interval": "day",
                                       "group_by": "event_name"}).json()["rows"]
    assert rows[:2] == [
        {"bucket": "2024-01-01T00:00:00.000000Z", "event_name": "buy", "value": 2},
        {"bucket": "2024-01-01T00:00:00.000000Z", "event_name": "view", "value": 2},
    ]


def test_sources_breakdowns(loaded):
    _, rk = loaded
    r = rk.get("/v1/sources", params=WINDOW).json()
    assert r["breakdown"] == "source_medium"
    rows = {(x["source"], x["medium"]): x for x in r["rows"]}
    assert rows[("google", "cpc")] == {"source": "google", "medium": "cpc", "events": 2,
                                       "uniques": 2, "paid_share": 1.0}
    assert rows[("google", "organic")]["paid_share"] == 0.0
    assert rows[("direct", "none")]["events"] == 2
    assert rows[("news", "email")]["uniques"] == 1
    r = rk.get("/v1/sources", params={**WINDOW, "breakdown": "source"}).json()
    google = next(x for x in r["rows"] if x["source"] == "google")
    assert google == {"source": "google", "medium": None, "events": 3, "uniques": 3,
                      "paid_share": pytest.approx(2 / 3)}
    assert [x["events"] for x in r["rows"]] == sorted((x["events"] for x in r["rows"]),
                                                       reverse=True)
    r = rk.get("/v1/sources", params={**WINDOW, "breakdown": "source", "limit": 1}).json()
    assert [x["source"] for x in r["rows"]] == ["google"]
