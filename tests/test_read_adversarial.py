"""Reads against what real sends produce (found by probing over loopback)."""

from __future__ import annotations

import warnings

import pytest

import millimetric_nb as mm
from millimetric_nb import read


def _events_at(instant: str, n: int, name: str = "x", **fields: object) -> list[dict]:
    return [{"event": name, "timestamp": instant, **fields} for _ in range(n)]


def test_query_all_with_exactly_1000_events_at_one_instant_is_complete(mm_server):
    """A batch sent without timestamps is stamped with one server time: 1000 events at
    one instant. query_all reads all of them and must not warn that rows are missing
    (it used to say 'more than 1000 events share one instant' and complete=False)."""
    with mm.Client(mm_server.keys["sk"], mm_server.url) as client:
        client.batch(_events_at("2025-05-01T10:00:00.000001Z", 1000)
                     + _events_at("2025-05-01T10:00:00.000002Z", 1000)
                     + _events_at("2025-05-01T11:00:00Z", 10))
        with warnings.catch_warnings():
            warnings.simplefilter("error", read.IncompleteReadWarning)
            df = read.query_all("2025-05-01", "2025-05-02", client=client)
    assert len(df) == 2010
    assert df.attrs["complete"] is True


def test_query_all_still_warns_when_an_instant_holds_more_than_1000(mm_server):
    with mm.Client(mm_server.keys["sk"], mm_server.url) as client:
        client.batch(_events_at("2025-05-01T10:00:00Z", 1200))
        with pytest.warns(read.IncompleteReadWarning, match="1,200 events share") as rec:
            df = read.query_all("2025-05-01", "2025-05-02", client=client)
    assert len(df) == 1000 and df.attrs["complete"] is False
    # once (other warnings, e.g. a ResourceWarning from an earlier test's garbage, may
    # land in the same record and are not this test's business)
    ours = [w for w in rec if issubclass(w.category, read.IncompleteReadWarning)]
    assert len(ours) == 1, [(w.category.__name__, str(w.message)[:80]) for w in rec]


def test_query_all_filtered_exact_1000_is_complete(mm_server):
    """With an event filter, only the matching events of the instant count."""
    with mm.Client(mm_server.keys["sk"], mm_server.url) as client:
        client.batch(_events_at("2025-05-01T10:00:00Z", 1000, "a")
                     + _events_at("2025-05-01T10:00:00Z", 500, "b"))
        with warnings.catch_warnings():
            warnings.simplefilter("error", read.IncompleteReadWarning)
            df = read.query_all("2025-05-01", "2025-05-02", event="a", client=client)
    assert len(df) == 1000 and set(df.event_name) == {"a"}
    assert df.attrs["complete"] is True


def test_query_all_user_filter_cannot_be_checked_and_says_so(mm_server):
    """stats cannot filter by user_id: a full instant with a user filter stays
    'possibly incomplete' when other users' events share it."""
    with mm.Client(mm_server.keys["sk"], mm_server.url) as client:
        client.batch(_events_at("2025-05-01T10:00:00Z", 1000, user_id="u1")
                     + _events_at("2025-05-01T10:00:00Z", 5, user_id="u2"))
        with pytest.warns(read.IncompleteReadWarning):
            df = read.query_all("2025-05-01", "2025-05-02", user_id="u1", client=client)
    assert len(df) == 1000 and df.attrs["complete"] is False


def test_verify_of_a_batch_sent_without_timestamps_is_ok(mm_server):
    """The usual 'did everything get in?' check after a batch without timestamps:
    each request of 1000 events lands at one server instant. verify() used to say
    MISMATCH (read incomplete) although every event was stored exactly once."""
    ids = [f"ev-{i}" for i in range(2500)]
    with mm.Client(mm_server.keys["sk"], mm_server.url) as client:
        result = client.batch([{"event": "signup", "event_id": i} for i in ids])
        assert result.stored == 2500
        with warnings.catch_warnings():
            warnings.simplefilter("error", read.IncompleteReadWarning)
            check = read.verify(ids, "2000-01-01", "2100-01-01", client=client)
    assert check.ok, str(check)
    assert (check.expected, check.stored, check.missing) == (2500, 2500, [])
