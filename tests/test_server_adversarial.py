"""The local server under unusual but possible requests (found by probing it over loopback)."""

from __future__ import annotations

import pytest

WINDOW = [("from", "2020-01-01T00:00:00Z"), ("to", "2031-01-01T00:00:00Z")]


@pytest.mark.parametrize(
    ("route", "params", "repeated"),
    [
        ("query", [("from", "2030-01-01T00:00:00Z"), *WINDOW], "from"),
        ("query", [*WINDOW, ("limit", "1"), ("limit", "5")], "limit"),
        ("stats", [("metric", "count"), *WINDOW, ("group_by", "source"),
                   ("group_by", "medium")], "group_by"),
        ("sources", [*WINDOW, ("breakdown", "source"), ("breakdown", "source_medium")],
         "breakdown"),
    ],
)
def test_a_repeated_read_parameter_is_refused_naming_it(mm_server, mm_client, route, params,
                                                        repeated):
    """``?from=a&from=b`` used to be answered with one of the two silently (rows for a
    window the caller may not have meant); now it is 400 invalid_params naming it."""
    c = mm_client(mm_server)
    c.post("/v1/track", json={"event": "seen", "timestamp": "2025-06-01T00:00:00Z"})
    r = c.get(f"/v1/{route}", params=params)
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_params"
    messages = body["details"]["fieldErrors"][repeated]
    assert any(m.startswith("repeated:") for m in messages)


def test_single_parameters_still_answer(mm_server, mm_client):
    c = mm_client(mm_server)
    c.post("/v1/track", json={"event": "seen", "timestamp": "2025-06-01T00:00:00Z"})
    r = c.get("/v1/query", params=[*WINDOW, ("limit", "5")])
    assert r.status_code == 200
    assert [row["event_name"] for row in r.json()["rows"]] == ["seen"]
