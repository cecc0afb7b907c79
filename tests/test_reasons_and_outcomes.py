"""``result.failed`` carries why each row failed, and a resend ignores those columns;
``track`` / ``identify`` outcomes show their event id. Over real HTTP."""

from __future__ import annotations

import pandas as pd

import millimetric_nb as mm
from millimetric_nb.results import reason_columns


def _client(srv):
    return mm.Client(key=srv.keys["sk"], host=srv.url, rate_limits="off", max_attempts=1)


def test_failed_rows_carry_their_reasons_and_a_fixed_export_resends_as_it_is(mm_server, tmp_path):
    df = pd.DataFrame({
        "event": ["a", None, "c", "d"],
        "user_id": ["u1", "u2", "x" * 300, "u4"],
        "timestamp": ["2026-10-01T00:00:00Z", "2026-10-01T00:00:01Z", "2026-10-01T00:00:02Z",
                      "2026-10-32T00:00:00Z"],
        "plan": ["free", "pro", "team", "pro"],
    })
    with _client(mm_server) as client:
        first = df.millimetric.send_batch(client=client, progress=False)
        failed = first.failed
        assert list(failed.columns) == [
            "event", "user_id", "timestamp", "plan", "event_id",
            "status", "error_code", "field", "message",
        ]
        assert failed.index.tolist() == [1, 2, 3]
        assert failed["status"].tolist() == ["invalid"] * 3
        assert failed["error_code"].tolist() == ["required", "too_long", "invalid_timestamp"]
        assert failed["field"].tolist() == ["event", "user_id", "timestamp"]
        assert failed.loc[2, "message"].startswith("must be at most 256 characters")
        assert not failed["message"].str.startswith("user_id:").any()  # no repeated prefix

        path = tmp_path / "failed.csv"
        fixed = failed.assign(event=["b", "c", "d"], user_id=["u2", "u3", "u4"],
                              timestamp="2026-10-02T00:00:00Z")
        fixed.to_csv(path, index=False)
        from_frame = fixed.iloc[:1].millimetric.send_batch(client=client, progress=False)
        from_csv = mm.backfill(path, client=client, progress=False)
    assert from_frame.counts["sent"] == 1 and from_csv.counts["sent"] == 3
    stored = mm_server.stored_events()
    assert len(stored) == 1 + 1 + 3
    for event in stored:
        assert set(event["properties"]) == {"plan"}  # the reasons never become properties


def test_an_input_with_a_status_column_gets_prefixed_reasons_and_keeps_its_own(mm_server):
    df = pd.DataFrame({"event": ["a", None], "status": ["paid", "refunded"]})
    with _client(mm_server) as client:
        first = df.millimetric.send_batch(client=client, progress=False)
        failed = first.failed
        assert list(failed.columns)[-4:] == ["mm_status", "mm_error_code", "mm_field",
                                             "mm_message"]
        assert failed.loc[1, "status"] == "refunded" and failed.loc[1, "mm_status"] == "invalid"
        assert reason_columns(failed.columns) == ["mm_status", "mm_error_code", "mm_field",
                                                  "mm_message"]
        again = failed.assign(event="b").millimetric.send_batch(client=client, progress=False)
    assert again.counts["sent"] == 1
    props = [e["properties"] for e in mm_server.stored_events()]
    assert props == [{"status": "paid"}, {"status": "refunded"}]  # the user's own column is sent


def test_a_frame_with_only_some_reason_names_sends_them_as_properties(mm_server):
    # "status" and "message" alone are ordinary columns: nothing of the user's is dropped
    df = pd.DataFrame({"event": ["a"], "status": ["ok"], "message": ["hello"]})
    with _client(mm_server) as client:
        res = df.millimetric.send_batch(client=client, progress=False)
    assert res.counts["sent"] == 1 and len(res.failed) == 0
    assert list(res.failed.columns) == ["event", "status", "message", "mm_status",
                                        "mm_error_code", "mm_field", "mm_message"]
    assert mm_server.stored_events()[0]["properties"] == {"status": "ok", "message": "hello"}


def test_track_and_identify_outcomes_show_the_event_id_in_one_line(mm_server):
    with _client(mm_server) as client:
        tracked = client.track("signup", user_id="u1")
        linked = client.identify("a1", "u1")
    stored = [e for e in mm_server.stored_events() if e["event_name"] == "signup"]
    assert tracked.event_id == stored[0]["event_id"] and tracked.event_id
    assert repr(tracked) == f"<SendOutcome /v1/track 202 event_id={tracked.event_id}>"
    assert tracked.event_id in tracked._repr_html_()
    assert "millimetric-outcome" in tracked._repr_html_()
    assert linked.event_id is None  # /v1/identify answers {"ok": true}
    assert "\n" not in repr(linked) and repr(linked).startswith("<SendOutcome /v1/identify 200")
