"""Proof: a backfill in a child process SIGKILLed at 10 random (seeded) points and rerun
with the same journal each time until done loses nothing and leaves no unflagged
duplicate; against a ``--dedup`` server, or with ``on_ambiguous="verify"`` (the ids
left in flight read back before any resend), it stores no duplicate at all.

The child is ``python -c`` running ``mm.backfill`` with a journal against a local
server started here (real loopback HTTP; the server survives every kill). Figures
go to ``artifacts/reliability/crash_resume*.json`` (RELIABILITY.md).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pandas as pd
import pytest
from reliability import copies_by_id, events_frame, record

from millimetric_nb.server import run_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EVENTS = 100_000
KILLS = 10
SEED = 2026

CHILD = """
import sys
import millimetric_nb as mm
from millimetric_nb.progress import RequestSent
url, key, journal, source, rows_out, on_ambiguous = sys.argv[1:7]
said = []

def observer(event):
    if isinstance(event, RequestSent) and not said:
        said.append(print("sending", flush=True))  # the parent's clock starts here

with mm.Client(key, url, rate_limits="off") as client:
    res = mm.backfill(source, client=client, journal=journal, progress=False,
                      on_ambiguous=on_ambiguous, concurrency=2, observer=observer)
print("sending", flush=True)  # (a run with nothing left to send)
res.rows[["status", "event_id", "ambiguous"]].astype({"status": str}).to_parquet(rows_out)
print("counts", dict(res.counts), flush=True)
"""


def _run_child(url: str, key: str, journal: str, source: str, rows_out: str,
               on_ambiguous: str, kill_after: float | None) -> tuple[int, str, str]:
    """Run the child; SIGKILL it ``kill_after`` seconds after its first request left."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, key, journal, source, rows_out, on_ambiguous],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.strip() == "sending", (first, proc.stderr.read() if proc.stderr else "")
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)  # no cleanup, no flush: a hard crash
    out, err = proc.communicate(timeout=300)
    return proc.returncode, first + out, err


@pytest.mark.parametrize(("on_ambiguous", "dedup"),
                         [("resend", False), ("resend", True), ("verify", False)],
                         ids=["resend", "resend-dedup-server", "verify"])
def test_ten_sigkills_then_resume_lose_nothing_and_flag_every_duplicate(tmp_path, on_ambiguous,
                                                                        dedup):
    df = events_frame(EVENTS, seed=SEED)
    source = tmp_path / "events.parquet"
    df.to_parquet(source)
    journal = tmp_path / "journal.sqlite"
    rows_out = tmp_path / "final_rows.parquet"
    rng = random.Random(SEED)
    # 300 ms per answer and 2 requests in flight: ~15 s of sending in all, so that the
    # kills (0.1 to 1.5 s after the child's first request left) land before the end,
    # most of them with requests on the wire
    with run_in_thread(limits="off", latency_ms=300, dedup=dedup) as srv:
        kills = 0
        kill_points: list[float] = []
        attempts = 0
        while True:
            attempts += 1
            assert attempts <= KILLS + 10, "the backfill never finished"
            delay = rng.uniform(0.1, 1.5) if kills < KILLS else None
            code, out, err = _run_child(srv.url, srv.keys["sk"], str(journal), str(source),
                                        str(rows_out), on_ambiguous, delay)
            assert srv.keys["sk"].split("_")[3] not in out + err
            if code == -signal.SIGKILL:
                kills += 1
                kill_points.append(round(delay or 0.0, 3))
                continue
            assert code == 0, err[-3000:]
            if kills >= KILLS:
                break
            # finished before the kill: start again from an empty server and journal
            pytest.fail(f"the run finished before kill {kills + 1}; make it longer")
        counts = out.split("counts ", 1)[1].strip()
        copies = copies_by_id(srv)
        stored = srv.count()
    rows = pd.read_parquet(rows_out)
    assert len(rows) == EVENTS and rows["status"].isin(["sent", "skipped"]).all()
    ids = set(rows["event_id"])
    flagged = set(rows.loc[rows["ambiguous"], "event_id"])
    lost = ids - set(copies)
    assert len(ids) == EVENTS and lost == set()  # 0 lost: every row's id is stored
    assert set(copies) == ids
    duplicated = {eid for eid, n in copies.items() if n > 1}
    extra = stored - len(copies)
    assert duplicated <= flagged  # 0 unflagged duplicates
    if dedup or on_ambiguous == "verify":
        assert extra == 0 and not duplicated  # 0 duplicates at all
    record(
        f"crash_resume_{on_ambiguous}" + ("_dedup" if dedup else ""),
        events=EVENTS,
        on_ambiguous=on_ambiguous,
        server="--dedup" if dedup else "default (no dedup)",
        kills_survived=kills,
        kill_points_s_after_first_request=kill_points,
        child_runs=attempts,
        stored_rows=stored,
        stored_duplicate_rows=extra,
        duplicate_ids=len(duplicated),
        rows_flagged_ambiguous=len(flagged),
        unflagged_duplicates=len(duplicated - flagged),
        rows_lost=len(lost),
        final_run_counts=counts,
    )
