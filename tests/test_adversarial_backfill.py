"""Adversarial backfill scenarios an analyst meets, over real loopback HTTP against the
local server: resending ``result.failed``, reusing a journal with another mapping."""

from __future__ import annotations

import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb.errors import ConfigurationError
from millimetric_nb.progress import Acknowledged


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event": ["page_view"] * n,
            "user_id": [f"u{i}" for i in range(n)],
            "timestamp": ["2026-01-01T00:00:00Z"] * n,
        }
    )


def _fail_after_first_ack(srv):
    """An observer that makes the requests after the first acknowledged one fail (502)."""
    fired: list[bool] = []

    def observe(event: object) -> None:
        if isinstance(event, Acknowledged) and not fired:
            fired.append(True)
            srv.inject("batch", "upstream_failed", 1)

    return observe


def test_resending_failed_rows_keeps_their_ids_so_a_repeat_row_is_not_skipped(
    mm_server, tmp_path
):
    # rows 0 and 1000 have identical content: ids number the repeats (occurrence 0, 1).
    # Row 1000's request fails; resending result.failed alone must not give it
    # occurrence 0 (row 0's id, acknowledged in the journal) and skip it as sent.
    df = _frame(2000)
    df.loc[1000, "user_id"] = "u0"
    journal = tmp_path / "j.sqlite"
    client = mm.Client(key=mm_server.keys["sk"], host=mm_server.url, rate_limits="off",
                       max_attempts=1)
    with client:
        first = df.millimetric.send_batch(
            client=client, journal=journal, progress=False, concurrency=1,
            observer=_fail_after_first_ack(mm_server),
        )
        assert first.rows.loc[0, "status"] == "sent"
        assert first.rows.loc[1000, "status"] == "ambiguous"
        failed = first.failed
        assert list(failed.index) == list(range(1000, 2000))
        # the ids travel with the rows to resend
        assert (failed["event_id"] == first.rows.loc[failed.index, "event_id"]).all()
        second = failed.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert second.rows.loc[1000, "status"] == "sent"
    assert (second.rows["event_id"] == first.rows.loc[failed.index, "event_id"]).all()
    assert second.counts["sent"] == 1000 and second.counts["skipped"] == 0
    stored = [e for e in mm_server.stored_events() if e["user_id"] == "u0"]
    assert len(stored) == 2
    assert {e["event_id"] for e in stored} == set(first.rows.loc[[0, 1000], "event_id"])


def test_failed_keeps_no_id_for_invalid_rows_and_the_input_columns_first(mm_server):
    df = _frame(3)
    df.loc[1, "event"] = None
    client = mm.Client(key=mm_server.keys["sk"], host=mm_server.url, rate_limits="off")
    with client:
        res = df.millimetric.send_batch(client=client, progress=False)
    assert list(res.failed.columns) == ["event", "user_id", "timestamp", "event_id"]
    assert res.failed.index.tolist() == [1]
    assert pd.isna(res.failed.loc[1, "event_id"])
    assert len(mm_server.stored_events()) == 2


def _client(srv) -> mm.Client:
    return mm.Client(key=srv.keys["sk"], host=srv.url, rate_limits="off")


def test_journal_reused_with_other_columns_refuses_instead_of_resending_everything(
    mm_server, tmp_path
):
    # derived ids hash the event's content: another property column changes every id,
    # so the journal would recognise nothing and the whole frame would be stored twice
    df = _frame(50).assign(plan="pro")
    journal = tmp_path / "j.sqlite"
    with _client(mm_server) as client:
        first = df.millimetric.send_batch(client=client, journal=journal, progress=False)
        assert first.counts["sent"] == 50
        changed = df.assign(extra="x")
        dry = changed.millimetric.send_batch(client=client, journal=journal, progress=False,
                                             dry_run=True)
        assert dry.error is not None and dry.error.code == "journal_mismatch"
        assert dry.counts["planned"] == 0
        again = changed.millimetric.send_batch(client=client, journal=journal, progress=False)
        assert again.error is not None and again.error.code == "journal_mismatch"
        assert "'extra'" in str(again.error)
        assert again.counts["failed"] == 50 and again.counts["sent"] == 0
        assert set(again.rows["error"]) == {"journal_mismatch"}
        with pytest.raises(ConfigurationError, match="properties added: 'extra'"):
            again.raise_for_error()
        # the same columns in another order: recognised, nothing resent
        same = df[["plan", "timestamp", "user_id", "event"]]
        resumed = same.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert resumed.error is None
    assert resumed.counts["skipped"] == 50
    assert len(mm_server.stored_events()) == 50


def test_journal_with_given_event_ids_accepts_new_columns(mm_server, tmp_path):
    df = _frame(20).assign(event_id=[f"e{i}" for i in range(20)])
    journal = tmp_path / "j.sqlite"
    with _client(mm_server) as client:
        df.millimetric.send_batch(client=client, journal=journal, progress=False)
        again = df.assign(extra="x").millimetric.send_batch(
            client=client, journal=journal, progress=False)
    assert again.error is None and again.counts["skipped"] == 20
    assert len(mm_server.stored_events()) == 20
