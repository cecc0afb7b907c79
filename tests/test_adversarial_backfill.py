"""Adversarial backfill scenarios an analyst meets, over real loopback HTTP against the
local server: resending ``result.failed``, reusing a journal with another mapping."""

from __future__ import annotations

import collections

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


_CHILD = """
import sys
import pandas as pd
import millimetric_nb as mm
from millimetric_nb.contract import RateLimit

url, key, journal = sys.argv[1:4]
n = 10_000
df = pd.DataFrame({"event": ["page_view"] * n, "user_id": [f"u{i}" for i in range(n)],
                   "timestamp": ["2026-01-01T00:00:00Z"] * n})
client = mm.Client(key=key, host=url, rate_limits={"batch": RateLimit(refill=0.1, burst=2)})
print("sending", flush=True)
df.millimetric.send_batch(client=client, journal=journal, progress=False)
"""


def test_ctrl_c_flags_only_requests_that_left_not_those_waiting_for_a_token(
    mm_server, tmp_path
):
    # Ctrl-C while most requests wait on the rate limiter: on resume, only rows whose
    # request actually left may be duplicates; rows that never left are plain resends.
    import signal
    import subprocess
    import sys
    import time

    journal = tmp_path / "j.sqlite"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    key = mm_server.keys["sk"]
    proc = subprocess.Popen(
        [sys.executable, str(script), mm_server.url, key, str(journal)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while mm_server.count() < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the 8 other requests are now waiting for a token
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # the first Ctrl-C drains: a SendInterrupted (a KeyboardInterrupt) with the account
    assert "SendInterrupted" in out and "0 cut off in flight" in out and key not in out
    assert mm_server.count() == 2000  # the burst; nothing left after the interrupt
    df = _frame(10_000)
    with _client(mm_server) as client:
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert res.error is None
    assert res.counts["skipped"] == 2000 and res.counts["sent"] == 8000
    # the 8,000 rows that never left are not "possible duplicates"
    assert res.counts["possible_duplicates"] == 0
    assert not res.rows["ambiguous"].any()
    stored = collections.Counter(e["event_id"] for e in mm_server.stored_events())
    assert set(stored) == set(res.rows["event_id"]) and max(stored.values()) == 1


def test_journal_that_cannot_mark_pending_keeps_the_request_from_leaving(mm_server, tmp_path):
    # with the real client the pending mark is written as the request leaves; if it
    # cannot be written, that request (and every later one) is not sent
    import sqlite3

    from millimetric_nb.journal import Journal

    class FullDisk(Journal):
        calls = 0

        def begin(self, ids):
            FullDisk.calls += 1
            if FullDisk.calls >= 2:
                raise sqlite3.OperationalError("database or disk is full")
            super().begin(ids)

    df = _frame(5000)
    with FullDisk(tmp_path / "j.sqlite") as jr, _client(mm_server) as client:
        res = df.millimetric.send_batch(client=client, journal=jr, progress=False,
                                        concurrency=1)
        acked = set(jr.ids("acked"))
    assert res.error is not None and res.error.code == "journal_failed"
    assert res.counts["sent"] == 1000 and res.counts["failed"] == 4000
    stored = {e["event_id"] for e in mm_server.stored_events()}
    assert stored == acked == set(res.rows.loc[res.rows.status == "sent", "event_id"])


def test_rerun_after_ctrl_c_on_the_same_client_does_not_revive_the_interrupted_run(
    mm_server, tmp_path
):
    # A notebook user interrupts a send and runs the cell again with the same client:
    # the interrupted run must not wake up on the client's loop and send its rows
    # alongside the new run (unflagged duplicates, a wrong account).
    from millimetric_nb.contract import RateLimit
    from millimetric_nb.progress import Acknowledged

    df = _frame(10_000)
    journal = tmp_path / "j.sqlite"
    client = mm.Client(key=mm_server.keys["sk"], host=mm_server.url,
                       rate_limits={"batch": RateLimit(refill=2, burst=2)})
    acked = 0

    def ctrl_c_after_two_requests(event: object) -> None:
        # Ctrl-C at a point fixed by progress, not by the clock (the machine may be busy);
        # raised where the run's own code is running, as a signal may land
        nonlocal acked
        if isinstance(event, Acknowledged) and acked < 2000:
            acked += event.events
            if acked >= 2000:
                raise KeyboardInterrupt

    with client:
        try:
            outcome = df.millimetric.send_batch(client=client, journal=journal, progress=False,
                                                observer=ctrl_c_after_two_requests)
        except KeyboardInterrupt:
            pass
        else:
            pytest.fail(f"Ctrl-C did not stop the send: {outcome!r}")
        before = mm_server.count()
        assert 2000 <= before < 10_000
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert res.error is None and res.counts["sent"] + res.counts["skipped"] == 10_000
    stored = collections.Counter(e["event_id"] for e in mm_server.stored_events())
    assert set(stored) == set(res.rows["event_id"])
    twice = {i for i, n in stored.items() if n > 1}
    assert twice <= set(res.rows.loc[res.rows["ambiguous"], "event_id"])
    assert sum(stored.values()) <= 10_000 + 1000  # at most the one request in flight


def test_properties_read_from_csv_as_json_text_say_how_to_parse_them(mm_server, tmp_path):
    import io
    import json

    text = (
        'event,user_id,timestamp,properties\n'
        'signup,u1,2026-01-01T00:00:00Z,"{""plan"": ""pro""}"\n'
        'signup,u2,2026-01-01T00:00:00Z,\n'
    )
    df = pd.read_csv(io.StringIO(text))
    report = df.millimetric.validate()
    assert not report.ok
    [msg] = report.errors.loc[report.errors["field"] == "properties", "message"]
    assert "JSON text" in msg and "json.loads" in msg
    df["properties"] = df["properties"].map(json.loads, na_action="ignore")
    with _client(mm_server) as client:
        res = df.millimetric.send_batch(client=client, progress=False)
    assert res.counts["sent"] == 2
    props = {e["user_id"]: e["properties"] for e in mm_server.stored_events()}
    assert props == {"u1": {"plan": "pro"}, "u2": {}}  # no properties: stored as {}


def test_a_journal_in_use_by_another_run_is_refused_before_sending(mm_server, tmp_path):
    # two runs on one journal would both look up, both send everything: duplicates
    # that neither account flags. The second run is refused until the first ends.
    from millimetric_nb.journal import Journal

    path = tmp_path / "j.sqlite"
    df = _frame(30)
    with _client(mm_server) as client:
        with Journal(path) as other:
            other.start_run()  # another run (notebook, process) is using it
            with pytest.raises(ConfigurationError) as ei:
                df.millimetric.send_batch(client=client, journal=path, progress=False)
            assert ei.value.code == "journal_busy" and str(path) in str(ei.value)
            assert mm_server.count() == 0
            # a dry run only reads: allowed
            dry = df.millimetric.send_batch(client=client, journal=path, progress=False,
                                            dry_run=True)
            assert dry.counts["planned"] == 30
        res = df.millimetric.send_batch(client=client, journal=path, progress=False)
        again = df.millimetric.send_batch(client=client, journal=path, progress=False)
    assert res.counts["sent"] == 30 and again.counts["skipped"] == 30
    assert mm_server.count() == 30


def _export_rows() -> list[dict]:
    rows = [{"event": "signup", "user_id": "00123", "anonymous_id": "7",
             "timestamp": "2026-01-01T10:00:00+02:00", "amount": 5,
             "created_at": 1767261600}] * 3
    rows += [{"event": "signup", "user_id": None, "anonymous_id": "a1",
              "timestamp": "2026-01-01T10:00:00Z", "amount": 7, "created_at": 1767261600}]
    rows += [{"event": "signup", "user_id": "456", "anonymous_id": "a2",
              "timestamp": "2026-01-01", "amount": 7, "created_at": 1767261600}] * 2
    return rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_file_sources_keep_ids_as_written_and_json_types(mm_server, tmp_path, fmt):
    # pandas' inference, chunk by chunk, turned "00123" into 123, a chunk with one blank
    # user_id into floats (every id in it invalid), and a JSON number in a column
    # named *_at into a date
    import json

    rows = _export_rows()
    path = tmp_path / f"export.{fmt}"
    if fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with _client(mm_server) as client:
        res = mm.backfill(path, client=client, chunksize=3, progress=False)
    assert res.counts["sent"] == 6 and res.counts["invalid"] == 0, res.errors
    stored = sorted(
        (e["user_id"] or "", e["anonymous_id"], e["properties"]["created_at"],
         e["properties"]["amount"])
        for e in mm_server.stored_events()
    )
    assert stored == sorted(
        (r["user_id"] or "", r["anonymous_id"], 1767261600, r["amount"]) for r in rows
    )


def test_jsonl_numeric_ids_with_nulls_are_sent_as_their_digits(mm_server, tmp_path):
    import json

    rows = [{"event": "e", "user_id": 123, "timestamp": "2026-01-01T00:00:00Z"},
            {"event": "e", "user_id": None, "anonymous_id": "a",
             "timestamp": "2026-01-01T00:00:00Z"}]
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with _client(mm_server) as client:
        res = mm.backfill(path, client=client, progress=False)
    assert res.counts["sent"] == 2
    assert sorted(str(e["user_id"]) for e in mm_server.stored_events()) == ["123", "None"]


def test_identify_with_changed_traits_is_sent_again_through_the_same_journal(
    mm_server, tmp_path
):
    journal = tmp_path / "j.sqlite"
    df = pd.DataFrame({"anonymous_id": ["a1", "a2"], "user_id": ["u1", "u2"],
                       "plan": ["free", "free"]})

    def identifies() -> int:
        return sum(n for s, n in mm_server.status_counts().get("identify", {}).items()
                   if 200 <= s < 300)

    with _client(mm_server) as client:
        first = df.millimetric.identify(traits=["plan"], client=client, journal=journal,
                                        progress=False)
        same = df.millimetric.identify(traits=["plan"], client=client, journal=journal,
                                       progress=False)
        assert first.counts["sent"] == 2 and same.counts["skipped"] == 2
        assert identifies() == 2
        upgraded = df.assign(plan=["pro", "free"]).millimetric.identify(
            traits=["plan"], client=client, journal=journal, progress=False)
    # the changed traits are sent, the unchanged row is still recognised
    assert upgraded.rows["status"].tolist() == ["sent", "skipped"]
    assert identifies() == 3


def test_a_mistyped_mapping_keyword_is_refused_up_front_by_name(mm_server):
    df = _frame(5)
    with _client(mm_server) as client:
        with pytest.raises(ConfigurationError) as ei:
            df.millimetric.send_batch(client=client, user_col="user_id", progress=False)
        assert ei.value.code == "invalid_mapping"
        assert "user_col" in str(ei.value) and "user_id_col" in str(ei.value)
        with pytest.raises(ConfigurationError, match="user_col"):
            mm.backfill(df, client=client, user_col="user_id", dry_run=True, progress=False)
    assert mm_server.count() == 0


@pytest.mark.parametrize("kind", ["series", "polars", "records", "dict"])
def test_a_source_that_is_not_frames_is_refused_up_front_with_a_hint(mm_server, kind):
    import polars as pl

    df = _frame(5)
    source = {
        "series": df["event"],
        "polars": pl.from_pandas(df),
        "records": df.to_dict("records"),
        "dict": {"a": df},
    }[kind]
    with _client(mm_server) as client, pytest.raises(ConfigurationError) as ei:
        mm.backfill(source, client=client, progress=False)
    assert ei.value.code == "invalid_source"
    hint = {"series": "to_frame", "polars": "to_pandas", "records": "pd.DataFrame",
            "dict": "values"}[kind]
    assert hint in str(ei.value)
    assert mm_server.count() == 0


def test_validate_names_a_mistyped_mapping_keyword():
    with pytest.raises(ConfigurationError, match="did you mean 'user_id_col'"):
        _frame(2).millimetric.validate(user_col="user_id")


def test_a_column_that_appears_in_a_later_chunk_is_sent_like_in_one_frame(mm_server):
    # monthly exports gaining a column: its values were silently dropped, because the
    # mapping was fixed by the first chunk's columns
    first = _frame(3).assign(plan="free")
    later = _frame(3).assign(plan="pro", coupon="X1", user_id=["v0", "v1", "v2"])
    whole = pd.concat([first, later], ignore_index=True)
    with _client(mm_server) as client:
        res = mm.backfill(iter([first, later]), client=client, progress=False)
        as_one = mm.backfill(whole, client=client, dry_run=True, progress=False)
    assert res.counts["sent"] == 6
    props = {e["user_id"]: e["properties"] for e in mm_server.stored_events()}
    assert props["u0"] == {"plan": "free"}
    assert props["v0"] == {"plan": "pro", "coupon": "X1"}
    # the same ids as the concatenated frame would get
    assert res.rows["event_id"].tolist() == as_one.rows["event_id"].tolist()


def test_failed_rows_with_a_partly_empty_event_id_column_get_the_derived_ids(mm_server):
    df = _frame(4).assign(event_id=["e0", None, "e2", None])
    mm_server.inject("batch", "upstream_failed", 1)
    client = mm.Client(key=mm_server.keys["sk"], host=mm_server.url, rate_limits="off",
                       max_attempts=1)
    with client:
        first = df.millimetric.send_batch(client=client, progress=False)
        assert first.counts["ambiguous"] == 4
        failed = first.failed
        assert list(failed.columns) == list(df.columns)  # no column added
        assert failed["event_id"].tolist() == first.rows["event_id"].tolist()
        assert failed["event_id"].tolist()[0::2] == ["e0", "e2"]
        again = failed.millimetric.send_batch(client=client, progress=False)
    assert again.counts["sent"] == 4
    assert again.rows["event_id"].tolist() == first.rows["event_id"].tolist()
    assert sorted(e["event_id"] for e in mm_server.stored_events()) == sorted(
        first.rows["event_id"])


def test_spreadsheet_csv_files_semicolons_and_a_non_utf8_encoding(mm_server, tmp_path):
    semi = tmp_path / "semi.csv"
    semi.write_text("event;user_id;timestamp\nsignup;00042;2026-01-01T00:00:00Z\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"event,user_id,timestamp,city\nsignup,u1,2026-01-01,M\xfcnchen\n")
    with _client(mm_server) as client:
        ok = mm.backfill(semi, client=client, progress=False)
        bad = mm.backfill(latin, client=client, progress=False)
        fixed = mm.backfill(pd.read_csv(latin, encoding="cp1252", chunksize=10),
                            client=client, progress=False)
    assert ok.counts["sent"] == 1
    assert bad.error is not None and bad.error.code == "source_read_failed"
    assert "encoding=" in str(bad.error)
    assert fixed.counts["sent"] == 1
    stored = {e["user_id"]: e["properties"] for e in mm_server.stored_events()}
    assert stored == {"00042": {}, "u1": {"city": "München"}}


def test_rows_the_server_refuses_in_a_batch_do_not_take_their_neighbours_down(
    mm_server, monkeypatch, tmp_path
):
    # A batch is all-or-nothing: if the server refuses an event the client accepted
    # (a stricter or newer server rule), the 400 names it (events.N.field); the other
    # events of that request must still get in, and the refused rows be reported
    # invalid with the server's rule.
    import dataclasses
    import types

    from millimetric_nb import contract
    from millimetric_nb.server import checks

    stricter = dict(contract.EVENT_FIELDS)
    stricter["user_id"] = dataclasses.replace(contract.EVENT_FIELDS["user_id"], max_length=8)
    server_contract = types.SimpleNamespace(**{
        k: getattr(contract, k) for k in dir(contract) if not k.startswith("__")
    })
    server_contract.EVENT_FIELDS = stricter
    monkeypatch.setattr(checks, "contract", server_contract)

    df = _frame(2500)
    long_rows = [3, 1500, 1501, 2499]
    df.loc[long_rows, "user_id"] = "a-much-longer-user-id"
    df.loc[1500, "event"] = "other"  # not identical to 1501
    journal = tmp_path / "j.sqlite"
    with _client(mm_server) as client:
        res = df.millimetric.send_batch(client=client, journal=journal, progress=False)
        again = df.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert res.counts["sent"] == 2496 and res.counts["invalid"] == 4
    assert res.counts["failed"] == 0 and res.counts["ambiguous"] == 0
    bad = res.rows.loc[long_rows]
    assert (bad["status"] == "invalid").all() and (bad["error"] == "too_long").all()
    assert bad["message"].str.contains("user_id").all()
    assert bad["message"].str.contains("server").all()
    assert sorted(res.failed.index) == long_rows
    stored = collections.Counter(e["event_id"] for e in mm_server.stored_events())
    assert set(stored) == set(res.rows.loc[res.rows.status == "sent", "event_id"])
    assert max(stored.values()) == 1
    # the refused rows were journaled as failed, not acknowledged: a rerun tries them
    assert again.counts["skipped"] == 2496 and again.counts["invalid"] == 4


def test_a_journal_that_holds_no_derived_ids_takes_the_new_columns(mm_server, tmp_path):
    # a first run that sent nothing (a refused key) does not pin the columns
    journal = tmp_path / "j.sqlite"
    df = _frame(10)
    bad_key = mm.Client(key="sk_live_1a2b3c4d_notakeyofthisserver", host=mm_server.url,
                        rate_limits="off")
    with bad_key:
        first = df.millimetric.send_batch(client=bad_key, journal=journal, progress=False)
    assert first.error is not None and first.counts["sent"] == 0
    with _client(mm_server) as client:
        res = df.assign(plan="pro").millimetric.send_batch(client=client, journal=journal,
                                                           progress=False)
        changed = df.millimetric.send_batch(client=client, journal=journal, progress=False)
    assert res.error is None and res.counts["sent"] == 10
    assert changed.error is not None and changed.error.code == "journal_mismatch"
    assert "properties removed: 'plan'" in str(changed.error)
    assert mm_server.count() == 10


@pytest.mark.parametrize("index", [
    pd.Index([0, 0, 1, 1, 2, 2]),
    pd.MultiIndex.from_product([["x", "y"], [1, 1, 2]]),
])
def test_failed_rows_of_a_non_unique_index_keep_their_ids_and_labels(mm_server, index):
    df = _frame(6).set_axis(index)
    df.iloc[1, 0] = None  # invalid
    mm_server.inject("batch", "upstream_failed", 1)
    client = mm.Client(key=mm_server.keys["sk"], host=mm_server.url, rate_limits="off",
                       max_attempts=1)
    with client:
        first = df.millimetric.send_batch(client=client, progress=False)
        failed = first.failed
        assert failed.index.equals(df.index)
        assert failed["event_id"].isna().tolist() == [False, True, False, False, False, False]
        again = failed.fillna({"event": "fixed"}).millimetric.send_batch(
            client=client, progress=False)
    assert again.counts["sent"] == 6 and again.rows.index.equals(df.index)
    keep = [0, 2, 3, 4, 5]
    assert again.rows["event_id"].iloc[keep].tolist() == first.rows["event_id"].iloc[keep].tolist()
