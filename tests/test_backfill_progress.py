"""The tqdm observer renders the engine's events (rows done, counts, totals)."""

from __future__ import annotations

import io

from millimetric_nb.progress import Acknowledged, Done, Failed, Planned, Retrying, Waiting
from millimetric_nb.ui import TqdmProgress, progress_observer


def test_bar_counts_rows_and_statuses():
    out = io.StringIO()
    bar = TqdmProgress("backfill", file=out)
    bar(Planned(rows=100, valid=90, invalid=10, skipped=20, requests=1, total_rows=250))
    bar(Acknowledged("batch", 70))
    bar(Waiting("batch", 2.0, "retry_after"))
    bar(Planned(rows=150, valid=150, invalid=0, requests=1, total_rows=250))
    bar(Failed("batch", 150, "invalid_payload", "bad"))
    bar(Done({"sent": 70}, 1.0))
    assert bar.total == 250 and bar.done == 250
    assert bar.counts == {"sent": 70, "failed": 150, "invalid": 10, "skipped": 20}
    text = out.getvalue()
    assert "250/250" in text and "sent=70" in text and "failed=150" in text


def test_streaming_total_grows_with_chunks():
    bar = TqdmProgress(file=io.StringIO())
    bar(Planned(rows=10, valid=10, invalid=0))
    bar(Planned(rows=5, valid=5, invalid=0))
    assert bar.total == 15
    bar(Done())


def test_progress_false_attaches_nothing():
    assert progress_observer(False) is None
    assert isinstance(progress_observer(True), TqdmProgress)


def test_retries_shown_and_waiting_note_cleared_when_rows_move():
    out = io.StringIO()
    bar = TqdmProgress("track", file=out)
    bar(Planned(rows=3, valid=3, invalid=0, requests=3))
    bar(Retrying("track", 1, 0.5, "http_503"))
    bar(Waiting("track", 3.0, "retry_after"))
    assert "waiting 3s: retry_after" in bar._bar.desc
    bar(Acknowledged("track", 3))
    assert bar._bar.desc == "track"
    bar(Done({"sent": 3}, 1.0))
    assert bar.retries == 1 and bar.counts["sent"] == 3
    assert "retries=1" in out.getvalue() and "sent=3" in out.getvalue()


def test_large_counts_read_as_whole_numbers():
    out = io.StringIO()
    bar = TqdmProgress("backfill", file=out)
    bar(Planned(rows=50_000, valid=50_000, invalid=0, requests=50, total_rows=50_000))
    bar(Acknowledged("batch", 20_000))
    bar(Acknowledged("batch", 30_000))
    bar(Done({"sent": 50_000}, 1.0))
    text = out.getvalue()
    assert "sent=50,000" in text and "e+" not in text
