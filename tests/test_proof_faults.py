"""Proof: 200,000 events through ``mm.backfill`` to a local server that fails 15% of
writes, writes-then-fails 5% and drops 5% of connections, resumed with the same
journal until done: nothing lost, every stored duplicate flagged, and the result's
counts equal the server's stored count minus the flagged duplicates.

Figures go to ``artifacts/reliability/fault_injection.json`` (RELIABILITY.md).
"""

from __future__ import annotations

import pandas as pd
import pytest
from reliability import copies_by_id, events_frame, record

import millimetric_nb as mm

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_retries")]

EVENTS = 200_000
NOW = pd.Timestamp("2026-06-01T00:00:00Z")


def test_200k_events_under_faults_resumed_until_done_lose_nothing(mm_server_factory, tmp_path):
    srv = mm_server_factory(limits="off", fail_rate=0.15, ambiguous_rate=0.05, reset_rate=0.05,
                            seed=10)
    df = events_frame(EVENTS, seed=10)
    journal = tmp_path / "journal.sqlite"
    runs: list[mm.SendResult] = []
    flagged: set[str] = set()
    # two attempts per request: about 6% of the requests fail for good in each run
    # (maybe written), so the journal's resume is exercised, not only the retries
    with mm.Client(srv.keys["sk"], srv.url, rate_limits="off", max_attempts=2) as client:
        for _ in range(10):
            res = mm.backfill(df, client=client, journal=journal, progress=False, now=NOW,
                              on_ambiguous="resend", concurrency=4)
            runs.append(res)
            rows = res.rows
            flagged |= set(rows.loc[rows["ambiguous"] | (rows["status"] == "ambiguous"),
                                    "event_id"])
            counts = res.counts
            assert counts["total"] == EVENTS
            assert counts["invalid"] == 0
            if counts["sent"] + counts["skipped"] == EVENTS:
                break
    final = runs[-1]
    assert final.counts["sent"] + final.counts["skipped"] == EVENTS, final.counts
    ids = set(final.rows["event_id"])
    assert len(ids) == EVENTS

    copies = copies_by_id(srv)
    lost = ids - set(copies)
    assert lost == set()  # 0 lost: every row's event_id is stored
    assert set(copies) == ids  # and nothing else is
    duplicated = {eid for eid, n in copies.items() if n > 1}
    assert duplicated <= flagged  # every stored duplicate was flagged ambiguous
    # the final run's flags carry every earlier flag (the journal keeps them)
    assert flagged <= set(final.rows.loc[final.rows["ambiguous"], "event_id"])
    extra = sum(n - 1 for n in copies.values())
    stored = srv.count()
    assert final.counts["sent"] + final.counts["skipped"] == stored - extra
    faults = srv.fault_counts()
    assert faults["fail"] > 0 and faults["ambiguous"] > 0 and faults["reset"] > 0
    assert extra > 0, "the ambiguous writes should have stored some rows twice"
    record(
        "fault_injection",
        events_sent=EVENTS,
        server_options="--limits off --fail-rate 0.15 --ambiguous-rate 0.05 "
                       "--reset-rate 0.05 --seed 10",
        client_max_attempts=2,
        runs=len(runs),
        requests_answered=sum(sum(c.values()) for c in srv.status_counts().values()),
        faults_injected=sum(faults.values()),
        faults_by_kind=faults,
        stored_rows=stored,
        stored_duplicate_rows=extra,
        duplicate_ids=len(duplicated),
        duplicates_flagged=len(flagged),
        unflagged_duplicates=len(duplicated - flagged),
        rows_lost=len(lost),
        per_run_counts=[{k: v for k, v in r.counts.items() if v} for r in runs],
    )
