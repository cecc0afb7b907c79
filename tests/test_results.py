"""SendResult and Plan: counts partition the rows, honest reprs, escaped HTML."""

from __future__ import annotations

import pandas as pd
import pytest

from millimetric_nb.errors import AuthenticationError
from millimetric_nb.ratelimit import ROUND_TRIP_S
from millimetric_nb.results import STATUSES, Plan, SendResult, empty_rows


def result(statuses, ambiguous=None, **kw) -> SendResult:
    n = len(statuses)
    rows = pd.DataFrame(
        {
            "status": pd.Categorical(statuses, categories=STATUSES),
            "event_id": pd.array([f"id{i}" for i in range(n)], dtype="string"),
            "error": pd.Categorical([None] * n),
            "attempts": pd.Series([1] * n, dtype="int16"),
            "ambiguous": ambiguous if ambiguous is not None else [False] * n,
            "message": pd.array(["<script>alert(1)</script>"] * n, dtype="string"),
        }
    )
    return SendResult(rows=rows, failed=pd.DataFrame(), errors=pd.DataFrame(), **kw)


def test_counts_partition_rows_and_flag_duplicates():
    r = result(["sent", "sent", "failed", "ambiguous", "invalid", "skipped"],
               ambiguous=[True, False, False, True, False, False])
    c = r.counts
    assert (c["sent"], c["failed"], c["ambiguous"], c["invalid"], c["skipped"]) == (2, 1, 1, 1, 1)
    assert c["possible_duplicates"] == 1 and c["total"] == 6
    assert sum(c[s] for s in STATUSES) == c["total"]
    assert (r.sent, r.failed_count, r.ambiguous, r.invalid, r.skipped) == (2, 1, 1, 1, 1)
    assert r.possible_duplicates == 1 and not r.ok


def test_ok_and_repr():
    r = result(["sent", "skipped"], elapsed_s=1.25, warnings=["no timestamp column"])
    assert r.ok
    text = repr(r)
    assert "sent 1" in text and "skipped 1" in text and "no timestamp column" in text


def test_stop_error_shown_and_raised():
    err = AuthenticationError("key unknown", status=401, code="invalid_api_key")
    r = result(["failed"], error=err)
    assert not r.ok and "STOPPED" in repr(r) and "invalid_api_key" in repr(r)
    with pytest.raises(AuthenticationError):
        r.raise_for_error()
    assert result(["sent"]).raise_for_error().sent == 1


def test_html_is_escaped():
    r = result(["failed", "sent"], warnings=["<b>bold</b>"])
    html = r._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_dry_run_plan_estimates_burst_then_sustained():
    plan = Plan("batch", requests=100, events=100_000, bytes=25_000_000, refill_per_s=5.0,
                burst=20)
    # 80 requests after the burst at 5/s, then the last one's round trip
    assert plan.estimated_s == pytest.approx(16.0 + ROUND_TRIP_S)
    # within the burst: one round, never "about 0.0 s"
    assert Plan("batch", 20, 20_000, 1, 5.0, 20).estimated_s == pytest.approx(ROUND_TRIP_S)
    assert Plan("batch", 10, 10_000, 1, None, None).estimated_s == pytest.approx(ROUND_TRIP_S)
    assert Plan("batch", 0, 0, 0, 5.0, 20).estimated_s == 0.0
    assert "100 request(s)" in str(plan) and "16.5 s" in str(plan)
    assert "about 0.0 s" not in str(Plan("batch", 20, 20_000, 1, 5.0, 20))
    assert plan.as_dict()["estimated_s"] == pytest.approx(16.0 + ROUND_TRIP_S)
    r = result(["planned"] * 3, dry_run=True, plan=plan)
    assert r.planned == 3 and "Dry run" in repr(r) and "Plan:" in repr(r)


def test_empty_rows_has_stable_columns():
    rows = empty_rows()
    assert list(rows.columns) == ["status", "event_id", "error", "attempts", "ambiguous",
                                  "message"]
    r = SendResult(rows=rows, failed=pd.DataFrame(), errors=pd.DataFrame())
    assert r.counts["total"] == 0 and r.ok
