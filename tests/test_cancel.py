"""Stopping a send: Cancel (a handle, the panel's button) and the first interrupt drain
the requests in flight and give the full account; a second interrupt stops at once.

Every test sends over loopback to the local server under production limits (a burst
of 20 requests, then 5/s), so a send of tens of thousands of rows is still running
when it is stopped, and checks the server's stored rows against the account.
"""

from __future__ import annotations

import asyncio
import collections
import html
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb.progress import Stopping

pytest.importorskip("ipywidgets")
from millimetric_nb.ui.panel import SendPanel


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "event": ["page_view"] * n,
        "user_id": [f"u{i}" for i in range(n)],
        "timestamp": ["2026-01-01T00:00:00Z"] * n,
    })


def _settled_count(srv) -> int:
    """The server's stored count, checked not to move over a second after the stop."""
    first = srv.count()
    time.sleep(0.5)
    second = srv.count()
    time.sleep(0.5)
    third = srv.count()
    assert first == second == third, (first, second, third)
    return third


def _assert_accounted(res, srv, n: int, code: str) -> None:
    """Every row once; stored == sent (the same ids); the rest never sent; nothing ambiguous."""
    c = res.counts
    assert c["total"] == n and len(res.rows) == n and res.rows.index.is_unique
    assert c["sent"] + c["failed"] + c["ambiguous"] == n
    assert res.error is not None and res.error.code == code
    assert 0 < c["sent"] < n and c["ambiguous"] == 0 and c["possible_duplicates"] == 0
    never = res.rows[res.rows["status"] == "failed"]
    assert (never["error"] == code).all() and (never["attempts"] == 0).all()
    assert _settled_count(srv) == c["sent"]
    stored = collections.Counter(e["event_id"] for e in srv.stored_events())
    sent_ids = set(res.rows.loc[res.rows["status"] == "sent", "event_id"])
    assert set(stored) == sent_ids and max(stored.values()) == 1
    assert len(res.failed) == c["failed"]


def test_cancel_through_the_handle_of_a_background_send(mm_server_factory, tmp_path):
    srv = mm_server_factory(limits="production")
    n = 100_000
    journal = tmp_path / "j.sqlite"
    with mm.Client(key=srv.keys["sk"], host=srv.url) as client:
        handle = _frame(n).millimetric.send_batch(
            client=client, journal=journal, progress=False, background=True
        )
        assert isinstance(handle, mm.SendHandle) and not handle.done()
        deadline = time.monotonic() + 60
        while srv.count() < 22_000 and time.monotonic() < deadline:
            time.sleep(0.02)  # past the burst: requests now leave 5 a second
        handle.cancel()
        res = handle.result(timeout=60)
        assert handle.done()
        _assert_accounted(res, srv, n, "cancelled")
    # the journal holds exactly what was stored (a rerun skips it), nothing in doubt
    with mm.Journal(journal) as jr:
        acked, pending = set(jr.ids("acked")), jr.ids("pending") + jr.ids("ambiguous")
    assert acked == set(res.rows.loc[res.rows["status"] == "sent", "event_id"])
    assert pending == []


def test_panel_cancel_button_clicked_while_an_awaited_send_runs(mm_server_factory):
    srv = mm_server_factory(limits="production")
    n = 100_000
    panel = SendPanel("batch")
    seen: list[object] = []

    async def main():
        async with mm.AsyncClient(key=srv.keys["sk"], host=srv.url) as client:
            async def click_when_past_the_burst() -> None:
                while panel.counts["sent"] < 22_000:
                    await asyncio.sleep(0.02)
                # the button is live while the send runs (abackfill wired it)
                assert panel.cancel_button.layout.display != "none"
                assert not panel.cancel_button.disabled
                panel.cancel_button.click()

            clicker = asyncio.create_task(click_when_past_the_burst())
            res = await mm.abackfill(_frame(n), client=client, progress=panel,
                                     observer=seen.append)
            await clicker
            return res

    res = asyncio.run(main())
    _assert_accounted(res, srv, n, "cancelled")
    assert any(isinstance(e, Stopping) and e.reason == "cancel" for e in seen)
    # the panel's final account
    assert panel.result is res and panel.failed is res.failed
    # the bar stops where the send stopped: the rows kept back are "not sent", not
    # failures, and not done
    assert panel.bar.max == n and panel.bar.value == res.sent < n
    assert panel.bar.description == f"{100 * res.sent / n:.0f}%"
    assert panel.bar.bar_style == "warning"  # stopped, no real error: not red
    text = panel.counts_html.value
    assert f"{res.sent:,} / {n:,} rows" in text and f"sent {res.sent:,}" in text
    assert "failed 0" in text and f"not sent {res.failed_count:,}" in text
    assert panel.state_html.value.startswith(f"Cancelled: {res.failed_count:,} row(s) not sent")
    summary = panel.summary_html
    assert "mm-panel-summary-bad" in summary._dom_classes  # rows did not get in: red
    assert "Cancelled" in summary.value and "never sent" in summary.value
    assert f"{res.sent:,} rows stored" in summary.value and "to resume" in summary.value
    assert panel.cancel_button.layout.display == "none"
    assert "did not get in" in panel.failed_html.value


def test_a_stop_during_a_retry_backoff_calls_the_retry_off_and_keeps_the_doubt(mm_server):
    # the first request is written and then answered 500 (ambiguous); the stop comes
    # while its retry waits: the retry never leaves, and its rows are `ambiguous`
    # (stored, as the server shows), not "never sent"
    from millimetric_nb.progress import Retrying

    mm_server.inject("batch", "ambiguous_500", 1)
    n = 5000

    async def main():
        stop = mm.StopSignal()

        def observe(event: object) -> None:
            if isinstance(event, Retrying):
                stop.request()

        async with mm.AsyncClient(key=mm_server.keys["sk"], host=mm_server.url,
                                  rate_limits="off") as client:
            return await mm.abackfill(_frame(n), client=client, progress=False,
                                      observer=observe, stop=stop, concurrency=1)

    res = asyncio.run(main())
    c = res.counts
    assert res.error.code == "cancelled"
    assert c["ambiguous"] == 1000 and c["failed"] == n - 1000 and c["sent"] == 0
    assert (res.rows.loc[res.rows["status"] == "ambiguous", "ambiguous"]).all()
    assert mm_server.status_counts()["batch"] == {500: 1}  # the retry never left
    assert _settled_count(mm_server) == 1000


# --------------------------------------------------------------------------- interrupts

_CHILD = textwrap.dedent("""
    import sys, time
    import pandas as pd
    import millimetric_nb as mm
    from millimetric_nb.progress import RequestSent

    url, key, journal, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    df = pd.DataFrame({"event": ["page_view"] * n, "user_id": [f"u{i}" for i in range(n)],
                       "timestamp": ["2026-01-01T00:00:00Z"] * n})
    sent = 0
    def announce(event):
        global sent
        if isinstance(event, RequestSent):
            sent += 1
            if sent == 22:
                print("PAST-BURST", flush=True)
    client = mm.Client(key=key, host=url)
    try:
        df.millimetric.send_batch(client=client, journal=journal, progress="text",
                                  observer=announce)
    except KeyboardInterrupt as exc:
        result = getattr(exc, "result", None)
        if result is not None:
            c = result.counts
            print(f"RESULT {type(result).__name__} sent={c['sent']} failed={c['failed']} "
                  f"ambiguous={c['ambiguous']} total={c['total']}", flush=True)
        raise
""")


def _serve(tmp_path):
    key = "sk_dev_Stop1234_InterruptSecretValue"
    db = tmp_path / "server.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "millimetric_nb.cli", "serve", "--port", "0", "--db", str(db),
         "--key", key, "--limits", "production", "--latency-ms", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.match(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1), key, db
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"serve did not start: {proc.stderr.read() if proc.stderr else ''}")


def _stored(db) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute("select count(*) from events").fetchone()[0])


def _run_child(tmp_path, url, key, n, signals: int):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "MILLIMETRIC_PROGRESS": "text"}
    child = subprocess.Popen(
        [sys.executable, str(script), url, key, str(tmp_path / "j.sqlite"), str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert child.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        lines.append(line)
        if "PAST-BURST" in line or (not line and child.poll() is not None):
            break
    for i in range(signals):
        if i:
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
    started = time.monotonic()
    try:
        rest, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return "".join(lines) + rest, time.monotonic() - started, child.returncode


@pytest.mark.parametrize("signals", [1, 2], ids=["first-drains", "second-stops-at-once"])
def test_interrupting_a_script(tmp_path, signals):
    server, url, key, db = _serve(tmp_path)
    n = 40_000
    try:
        out, _took, code = _run_child(tmp_path, url, key, n, signals)
        time.sleep(1.0)
        stored = _stored(db)
        time.sleep(0.5)
        assert _stored(db) == stored  # nothing is sent after the stop
        # resumed with the journal, as the README says: every row once, no duplicate
        with mm.Client(key=key, host=url) as client:
            again = _frame(n).millimetric.send_batch(
                client=client, journal=tmp_path / "j.sqlite", progress=False)
        with sqlite3.connect(db) as con:
            total, distinct = con.execute(
                "select count(*), count(distinct event_id) from events").fetchone()
    finally:
        server.terminate()
        server.communicate(timeout=15)
    assert (code != 0 and "KeyboardInterrupt" in out) or "SendInterrupted" in out
    assert "InterruptSecretValue" not in out
    if signals == 1:
        m = re.search(r"RESULT SendResult sent=(\d+) failed=(\d+) ambiguous=(\d+) total=(\d+)",
                      out)
        assert m, out
        sent, failed, ambiguous, total = map(int, m.groups())
        assert total == n and sent + failed == n and ambiguous == 0
        assert stored == sent and sent >= 20_000
        # the one-line account, and the note, in the traceback
        assert re.search(r"SendInterrupted: Interrupted after [\d.]+ s: [\d,]+ rows stored, "
                         r"0 cut off in flight \(may be stored\), [\d,]+ never sent", out), out
        assert "journal=" in out and ".result is the account of every row" in out
        assert "stopping: nothing new is sent" in out
        # the drain left nothing in doubt: the resume sends the rest once, flags nothing
        assert again.counts["skipped"] == sent and again.counts["sent"] == n - sent
        assert again.counts["possible_duplicates"] == 0 and total == distinct == n
    else:
        # stopped at once: a plain KeyboardInterrupt, no account; the journal resumes
        assert "RESULT" not in out and "SendInterrupted" not in out, out
        assert 20_000 <= stored < n
        # a hard stop may leave requests in doubt: resent and flagged, none lost
        assert again.error is None and distinct == n
        flagged = again.counts["possible_duplicates"]
        assert total - distinct <= flagged


def test_a_cancel_keeps_invalid_rows_invalid_and_the_account_adds_up(mm_server_factory):
    # invalid rows in every chunk: those of the chunks validated before the Cancel stay
    # `invalid`; the chunks it kept from being validated are "not yet checked or sent"
    # (not claimed valid rows "never sent"); the account's numbers add up to the total
    from millimetric_nb.progress import Acknowledged
    from millimetric_nb.results import UNCHECKED, account_line, kept_back

    srv = mm_server_factory(limits="production")
    n, chunk = 40_000, 1000
    df = _frame(n)
    bad = [i for i in range(n) if i % chunk in (7, 500)]  # two per chunk
    df.loc[bad, "event"] = ""  # an empty event name breaks a rule

    async def main():
        stop = mm.StopSignal()

        def observe(event: object) -> None:
            if isinstance(event, Acknowledged):
                stop.request("cancel")

        async with mm.AsyncClient(key=srv.keys["sk"], host=srv.url) as client:
            return await mm.abackfill(df, client=client, progress=False, observer=observe,
                                      stop=stop, chunksize=chunk)

    res = asyncio.run(main())
    rows = res.rows
    assert res.error is not None and res.error.code == "cancelled"
    assert len(rows) == n and rows.index.is_unique
    unchecked = (rows["status"] == "failed") & rows["message"].str.startswith(UNCHECKED)
    checked_chunks = set(rows.index[~unchecked] // chunk)
    unchecked_chunks = set(rows.index[unchecked] // chunk)
    assert checked_chunks and unchecked_chunks and not checked_chunks & unchecked_chunks
    # a validated chunk's invalid rows are `invalid`, even where its valid rows never left
    in_checked = [i for i in bad if i // chunk in checked_chunks]
    assert (rows.loc[in_checked, "status"] == "invalid").all()
    assert res.invalid == len(in_checked)
    never_left = rows.index[(rows["status"] == "failed") & ~unchecked] // chunk
    assert set(never_left) - {0}, "no validated chunk was kept back whole"
    # every row once, in exactly one of the account's numbers
    never, not_checked = kept_back(res)
    assert not_checked == int(unchecked.sum()) == chunk * len(unchecked_chunks)
    c = res.counts
    assert c["sent"] + c["ambiguous"] + never + not_checked + c["invalid"] == n
    assert c["failed"] == never + not_checked and c["skipped"] == 0
    line = account_line(res)
    assert (f"{never:,} never sent, {not_checked:,} not yet checked or sent, "
            f"{c['invalid']:,} invalid" in line), line
    assert _settled_count(srv) == c["sent"]


def test_panel_after_a_first_interrupt_drain_counts_not_sent_and_stops_the_bar(mm_server):
    # the first interrupt's drain (stop.request("interrupt"), as interrupts_drain does):
    # the panel's account matches the engine's; the kept-back rows are "not sent"
    from millimetric_nb.progress import Acknowledged
    from millimetric_nb.results import account_line, kept_back

    n = 30_000
    panel = SendPanel("batch")

    async def main():
        stop = mm.StopSignal()

        def observe(event: object) -> None:
            if isinstance(event, Acknowledged):
                stop.request("interrupt")

        async with mm.AsyncClient(key=mm_server.keys["sk"], host=mm_server.url) as client:
            return await mm.abackfill(_frame(n), client=client, progress=panel,
                                      observer=observe, stop=stop, chunksize=1000)

    res = asyncio.run(main())
    assert res.error is not None and res.error.code == "interrupted"
    never, unchecked = kept_back(res)
    c = res.counts
    assert c["sent"] + c["ambiguous"] + never + unchecked == n and never + unchecked > 0
    assert panel.counts["not_sent"] == never + unchecked and panel.counts["failed"] == 0
    answered = c["sent"] + c["ambiguous"]
    assert panel.bar.max == n and panel.bar.value == answered < n
    text = panel.counts_html.value
    assert f"not sent {never + unchecked:,}" in text and "failed 0" in text
    assert panel.state_html.value.startswith(f"Interrupted: {never + unchecked:,} row(s)")
    assert account_line(res) in html.unescape(panel.summary_html.value)
