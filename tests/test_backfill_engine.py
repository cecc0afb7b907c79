"""The engine's own logic (packing, sources, accounting, journal resume, stops),
with a tiny preparer and an in-process sender. End-to-end proof over HTTP is in
test_backfill_e2e.py; these pin the bookkeeping rules exactly."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import pytest

from millimetric_nb import contract
from millimetric_nb.engine import PreparedRows, body_of, iter_source, pack, run_rows
from millimetric_nb.errors import (
    AuthenticationError,
    InvalidRequestError,
    MillimetricError,
    ServerError,
)
from millimetric_nb.journal import Journal
from millimetric_nb.progress import Acknowledged, Done, Failed, Planned
from millimetric_nb.ratelimit import ROUND_TRIP_S

# --------------------------------------------------------------------------- packing


def test_pack_respects_event_and_byte_caps():
    sizes = [10] * 2500
    reqs = pack(sizes)
    assert [(a, b) for a, b, _ in reqs] == [(0, 1000), (1000, 2000), (2000, 2500)]
    payloads = [b"x" * 10] * 1000
    assert reqs[0][2] == len(body_of(payloads))

    big = [400_000] * 30  # 12 per 5 MB body at most
    reqs = pack(big)
    assert all(n <= contract.BATCH_MAX_BYTES for _, _, n in reqs)
    assert sum(b - a for a, b, _ in reqs) == 30
    assert reqs[0][1] - reqs[0][0] == 12


def test_pack_body_size_is_exact():
    payloads = [orjson.dumps({"event": "e", "n": i}) for i in range(37)]
    reqs = pack([len(p) for p in payloads], max_events=10)
    for a, b, n in reqs:
        body = body_of(payloads[a:b])
        assert len(body) == n
        assert len(orjson.loads(body)["events"]) == b - a
    assert pack([]) == []


def test_pack_oversized_single_payload_gets_own_request():
    reqs = pack([10, 100, 10], max_bytes=50)
    assert [(a, b) for a, b, _ in reqs] == [(0, 1), (1, 2), (2, 3)]


# --------------------------------------------------------------------------- sources


def test_iter_source_frame_csv_jsonl_parquet(tmp_path):
    df = pd.DataFrame({"event": [f"e{i}" for i in range(25)], "n": range(25)})
    chunks, total = iter_source(df, 10)
    got = list(chunks)
    assert total == 25 and [len(c) for c in got] == [10, 10, 5]  # chunks <= 1000 rows
    assert list(pd.concat(got).index) == list(range(25))

    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "a.parquet")
    for name in ("a.csv", "a.jsonl", "a.parquet"):
        chunks, _ = iter_source(tmp_path / name, 10)
        back = pd.concat(list(chunks))
        assert list(back["event"]) == list(df["event"]), name
        assert list(back.index) == list(range(25)), name

    (tmp_path / "a.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(MillimetricError) as ei:
        iter_source(tmp_path / "a.xlsx", 10)
    assert ei.value.code == "unknown_source_format"
    assert "a.xlsx" in str(ei.value) and ".csv" in str(ei.value)
    with pytest.raises(MillimetricError) as ei:
        iter_source(tmp_path / "missing.csv", 10)
    assert ei.value.code == "source_not_found"
    with pytest.raises(MillimetricError):
        iter_source(42, 10)  # type: ignore[arg-type]
    with pytest.raises(MillimetricError) as ei:
        list(iter_source([df, "nope"], 10)[0])
    assert ei.value.code == "invalid_source"


def test_empty_frame_yields_one_empty_chunk():
    chunks, total = iter_source(pd.DataFrame({"event": []}), 10)
    assert total == 0 and [len(c) for c in chunks] == [0]


# --------------------------------------------------------------------------- engine


def simple_prepare(frame: pd.DataFrame, offset: int) -> PreparedRows:
    ev = frame["event"].to_numpy(dtype=object)
    valid = np.array([isinstance(e, str) and 0 < len(e) <= 128 for e in ev], dtype=bool)
    keys = np.array([f"id-{offset + i}" for i in range(len(frame))], dtype=object)
    bad = np.flatnonzero(~valid)
    errors = pd.DataFrame(
        {
            "row": frame.index[bad],
            "position": bad + offset,
            "field": "event",
            "rule": "required",
            "message": "event is missing",
        }
    )
    payloads = [orjson.dumps({"event": ev[i], "event_id": keys[i]}) for i in np.flatnonzero(valid)]
    return PreparedRows(valid, keys, errors, ["a warning"], payloads=payloads)


@dataclass
class Outcome:
    attempts: int = 1
    ambiguous: bool = False


class FakeSender:
    """Stores events; fails requests according to a rule (by request number)."""

    def __init__(self, rule=None):
        self.stored: list[dict] = []
        self.calls = 0
        self.rule = rule

    async def __call__(self, req, observer):
        self.calls += 1
        n = self.calls
        await asyncio.sleep(0)
        events = orjson.loads(req.body)["events"]
        action = self.rule(n, events) if self.rule else None
        if action == "ambiguous-stored":
            self.stored.extend(events)
            raise ServerError("dropped after write", ambiguous=True, attempts=3)
        if action == "ambiguous-lost":
            raise ServerError("timeout", ambiguous=True, attempts=6)
        if action == "reject":
            raise InvalidRequestError("bad batch", status=400, attempts=1)
        if action == "auth":
            raise AuthenticationError("bad key", status=401, code="invalid_api_key")
        if action == "retried-ambiguous":
            self.stored.extend(events)
            self.stored.extend(events)
            return Outcome(attempts=2, ambiguous=True)
        self.stored.extend(events)
        return Outcome()


def frame(n, bad=()):
    ev = [f"e{i}" for i in range(n)]
    for b in bad:
        ev[b] = None
    return pd.DataFrame({"event": ev, "x": range(n)}, index=pd.RangeIndex(100, 100 + n))


def run(df, sender, chunksize=1000, **kw):
    chunks, total = iter_source(df, chunksize)
    return asyncio.run(
        run_rows(chunks, route="batch", prepare=simple_prepare, send=sender,
                 total_rows=total, **kw)
    )


def test_every_row_accounted_and_valid_ones_sent():
    df = frame(2500, bad=(3, 1700))
    events = []
    sender = FakeSender()
    res = run(df, sender, chunksize=700, observer=events.append, concurrency=4)
    assert len(res.rows) == 2500 and res.rows.index.equals(df.index)
    assert res.counts["sent"] == 2498 and res.counts["invalid"] == 2
    assert sorted(e["event_id"] for e in sender.stored) == sorted(
        f"id-{i}" for i in range(2500) if i not in (3, 1700)
    )
    assert res.rows.loc[103, "status"] == "invalid"
    assert res.rows.loc[103, "error"] == "required"
    assert "event" in res.rows.loc[103, "message"]
    assert list(res.failed.index) == [103, 1800]
    assert list(res.failed.columns) == ["event", "x", "status", "error_code", "field", "message"]
    assert res.warnings == ["a warning"]
    assert len(res.errors) == 2
    assert str(res.rows["status"].dtype) == "category"
    assert sum(e.events for e in events if isinstance(e, Acknowledged)) == 2498
    assert sum(e.rows for e in events if isinstance(e, Planned)) == 2500
    assert isinstance(events[-1], Done) and events[-1].counts["sent"] == 2498
    assert res.ok is False and res.plan.requests == sender.calls


def test_rejected_and_ambiguous_requests_are_marked():
    def rule(n, events):
        ids = {e["event_id"] for e in events}
        if "id-0" in ids:
            return "reject"
        if "id-1000" in ids:
            return "ambiguous-lost"
        if "id-2000" in ids:
            return "retried-ambiguous"
        return None

    sender = FakeSender(rule)
    res = run(frame(3500), sender, chunksize=1000)
    r = res.rows
    assert (r.loc[100:1099, "status"] == "failed").all()
    assert (r.loc[100:1099, "error"] == "invalid_payload").all()
    assert (r.loc[1100:2099, "status"] == "ambiguous").all()
    assert r.loc[1100:2099, "ambiguous"].all() and (r.loc[1100:2099, "attempts"] == 6).all()
    assert (r.loc[2100:3099, "status"] == "sent").all() and r.loc[2100:3099, "ambiguous"].all()
    assert (r.loc[3100:, "status"] == "sent").all() and not r.loc[3100:, "ambiguous"].any()
    c = res.counts
    assert (c["sent"], c["failed"], c["ambiguous"], c["possible_duplicates"]) == (
        1500, 1000, 1000, 1000)
    assert len(res.failed) == 2000


def test_auth_error_stops_run_and_keeps_account():
    def rule(n, events):
        return "auth" if n == 3 else None

    sender = FakeSender(rule)
    res = run(frame(10_000), sender, chunksize=1000, concurrency=1)
    assert res.error is not None and res.error.code == "invalid_api_key"
    assert res.counts["sent"] == 2000  # the first two requests got in
    assert res.counts["failed"] == 8000
    assert (res.rows.loc[res.rows.status == "failed", "error"] == "invalid_api_key").all()
    assert sender.calls == 3  # nothing sent after the stop
    assert "STOPPED" in repr(res)
    with pytest.raises(AuthenticationError):
        res.raise_for_error()


def test_journal_resume_skips_acknowledged_and_resends_uncertain(tmp_path):
    path = tmp_path / "j.sqlite"

    def rule(n, events):
        ids = {e["event_id"] for e in events}
        return "ambiguous-stored" if "id-1000" in ids else None

    first = FakeSender(rule)
    res1 = run(frame(3000), first, journal=path)
    assert res1.counts["sent"] == 2000 and res1.counts["ambiguous"] == 1000
    second = FakeSender()
    res2 = run(frame(3000), second, journal=path)
    assert res2.counts["skipped"] == 2000 and res2.counts["sent"] == 1000
    assert {e["event_id"] for e in second.stored} == {f"id-{i}" for i in range(1000, 2000)}
    assert res2.rows.loc[1100:2099, "ambiguous"].all()  # resent: possible duplicate
    assert any("uncertain" in w for w in res2.warnings)
    third = FakeSender()
    res3 = run(frame(3000), third, journal=path)
    assert third.calls == 0 and res3.counts["skipped"] == 3000


def test_on_ambiguous_skip(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.begin([f"id-{i}" for i in range(10)])  # interrupted in flight
    sender = FakeSender()
    res = run(frame(20), sender, journal=path, on_ambiguous="skip")
    assert res.counts["skipped"] == 10 and res.counts["sent"] == 10
    assert (res.rows.iloc[:10]["error"] == "ambiguous_earlier").all()
    assert any("may be missing" in w for w in res.warnings)


def test_dry_run_sends_nothing_and_plans():
    sender = FakeSender()
    res = run(frame(25_000, bad=(5,)), sender, chunksize=5000, dry_run=True)
    assert sender.calls == 0
    assert res.counts["planned"] == 24_999 and res.counts["invalid"] == 1
    assert res.plan.requests == 25 and res.plan.events == 24_999
    assert res.plan.bytes > 24_999 * 20
    assert res.plan.estimated_s == pytest.approx((25 - 20) / 5.0 + ROUND_TRIP_S)
    assert "Dry run" in repr(res)


def test_one_thread_reads_and_prepares_every_chunk_of_a_run():
    import threading

    read_on, prepared_on = [], []

    def chunks():
        for start in range(0, 12_000, 1000):
            read_on.append(threading.current_thread())
            yield frame(1000).set_axis(pd.RangeIndex(start, start + 1000))

    def prepare(chunk, offset):
        prepared_on.append(threading.current_thread())
        return simple_prepare(chunk, offset)

    async def main():
        loop_thread = threading.get_ident()
        res = await run_rows(chunks(), route="batch", prepare=prepare, send=FakeSender(),
                             total_rows=12_000)
        return loop_thread, res

    loop_thread, res = asyncio.run(main())
    assert res.counts["sent"] == 12_000 and len(prepared_on) == 12
    # the run's own thread for all of it (each thread keeps its own allocator caches),
    # not whichever of the loop's default pool is free when a step is handed over
    (worker,) = set(read_on) | set(prepared_on)
    assert worker.name.startswith("millimetric-run") and worker.ident != loop_thread
    worker.join(5)  # the run let it go: it ends once idle
    assert not worker.is_alive()


def test_interrupt_leaves_journal_consistent(tmp_path):
    path = tmp_path / "j.sqlite"
    acks = []

    def stop_after_three(ev):
        if isinstance(ev, Acknowledged):
            acks.append(ev)
            if len(acks) == 3:
                raise KeyboardInterrupt

    sender = FakeSender()
    with pytest.raises(KeyboardInterrupt):
        run(frame(10_000), sender, journal=path, observer=stop_after_three, concurrency=2)
    with Journal(path) as j:
        acked = set(j.ids("acked"))
    stored = {e["event_id"] for e in sender.stored}
    assert len(acked) >= 3000 and acked <= stored
    resume = FakeSender()
    res = run(frame(10_000), resume, journal=path)
    assert res.counts["skipped"] == len(acked)
    assert res.counts["sent"] == 10_000 - len(acked)
    # everything stored at least once; duplicates only among flagged rows
    all_ids = [e["event_id"] for e in sender.stored + resume.stored]
    assert set(all_ids) == {f"id-{i}" for i in range(10_000)}
    dup = {i for i in all_ids if all_ids.count(i) > 1} if len(all_ids) < 12_000 else set()
    flagged = set(res.rows.loc[res.rows["ambiguous"], "event_id"])
    assert dup <= flagged


def test_unexpected_exception_is_typed_and_ambiguous():
    async def boom(req, observer):
        raise RuntimeError("kaboom")

    res = run(frame(5), boom)
    assert (res.rows["status"] == "ambiguous").all()
    assert (res.rows["error"] == "unexpected_error").all()


def test_chunk_level_error_marks_rows_invalid():
    def prepare(frame, offset):
        raise MillimetricError("no event column", code="missing_event")

    chunks, _ = iter_source(frame(7), 3)
    res = asyncio.run(run_rows(chunks, route="batch", prepare=prepare, send=FakeSender()))
    assert (res.rows["status"] == "invalid").all() and len(res.rows) == 7
    assert (res.rows["error"] == "missing_event").all()


def test_failed_event_emitted_for_rejections():
    events = []
    res = run(frame(5), FakeSender(lambda n, e: "reject"), observer=events.append)
    fails = [e for e in events if isinstance(e, Failed)]
    assert fails and fails[0].code == "invalid_payload" and fails[0].events == 5
    assert res.counts["failed"] == 5


def test_frame_chunks_start_small_then_full_size():
    chunks, total = iter_source(pd.DataFrame({"event": ["e"] * 30_000}), 20_000)
    assert [len(c) for c in chunks] == [1000, 4000, 16_000, 9000] and total == 30_000


def test_task_cancellation_ends_promptly_and_keeps_journal(tmp_path):
    path = tmp_path / "j.sqlite"
    acks = []

    async def slow(req, observer):
        await asyncio.sleep(0.01)
        return Outcome()

    async def main():
        chunks, _ = iter_source(frame(20_000), 500)
        task = asyncio.create_task(run_rows(
            chunks, route="batch", prepare=simple_prepare, send=slow,
            journal=path, concurrency=1, observer=lambda e: acks.append(e)
            if isinstance(e, Acknowledged) else None))
        while len(acks) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)  # a hang would time out instead

    asyncio.run(main())
    with Journal(path) as j:
        counts = j.counts()
    assert counts.get("acked", 0) >= 3 * 500
    assert counts.get("acked", 0) + counts.get("pending", 0) < 20_000


class BrokenJournal(Journal):
    """A journal whose ``method`` fails (like a full disk) from its ``after``-th call on."""

    def __init__(self, path, method, after):
        super().__init__(path)
        self.method, self.after, self.seen = method, after, 0

    def _maybe_fail(self, method):
        if method == self.method:
            self.seen += 1
            if self.seen >= self.after:
                raise sqlite3.OperationalError("database or disk is full")

    def begin(self, ids):
        self._maybe_fail("begin")
        super().begin(ids)

    def acknowledge(self, ids, *, ambiguous=False):
        self._maybe_fail("acknowledge")
        super().acknowledge(ids, ambiguous=ambiguous)


def test_journal_write_failure_stops_the_run_and_keeps_every_row(tmp_path):
    path = tmp_path / "j.sqlite"
    sender = FakeSender()
    with BrokenJournal(path, "acknowledge", after=2) as jr:
        res = run(frame(3000), sender, journal=jr, concurrency=1)
    assert res.error is not None and res.error.code == "journal_failed"
    assert "disk is full" in str(res.error) and any("journal" in w for w in res.warnings)
    c = res.counts
    assert c["total"] == 3000 and c["sent"] + c["failed"] == 3000
    # what the sender stored is exactly what is reported sent, and nothing after the stop
    sent_ids = set(res.rows.loc[res.rows.status == "sent", "event_id"])
    assert sent_ids == {e["event_id"] for e in sender.stored}
    assert sender.calls == 2 and c["sent"] == 2000
    unjournaled = res.rows.iloc[1000:2000]
    assert unjournaled["message"].str.contains("journal could not record").all()
    assert (res.rows.loc[res.rows.status == "failed", "error"] == "journal_failed").all()

    # a resume with a working journal: the acknowledged batch is skipped, the one the
    # journal missed is resent and flagged, the rest is sent; every row got in once
    again = FakeSender()
    res2 = run(frame(3000), again, journal=path)
    assert res2.ok and res2.counts["skipped"] == 1000 and res2.counts["sent"] == 2000
    assert res2.rows.iloc[1000:2000]["ambiguous"].all()
    stored = [e["event_id"] for e in sender.stored + again.stored]
    assert sorted(set(stored)) == sorted(f"id-{i}" for i in range(3000))
    assert len(stored) == 4000  # the unjournaled 1000 twice, and flagged so


def test_journal_that_cannot_begin_sends_nothing(tmp_path):
    sender = FakeSender()
    with BrokenJournal(tmp_path / "j.sqlite", "begin", after=1) as jr:
        res = run(frame(50), sender, journal=jr)
    assert sender.calls == 0 and res.error.code == "journal_failed"
    assert (res.rows.status == "failed").all() and len(res.rows) == 50


def test_unusable_journal_path_is_a_typed_error(tmp_path):
    with pytest.raises(MillimetricError) as ei:
        run(frame(5), FakeSender(), journal=tmp_path / "missing-dir" / "j.sqlite")
    assert ei.value.code == "journal_failed"


def test_unreadable_source_midway_keeps_the_account_of_what_was_read():
    def source():
        yield frame(30)
        yield "not a frame"

    sender = FakeSender()

    async def slow(req, obs):  # the bad item is read while the rows before it are in flight
        await asyncio.sleep(0.05)
        return await sender(req, obs)

    chunks, _ = iter_source(source(), 10)
    res = asyncio.run(run_rows(chunks, route="batch", prepare=simple_prepare, send=slow))
    assert res.error is not None and res.error.code == "invalid_source"
    assert "after 30 rows" in str(res.error) and not res.ok
    assert res.counts["sent"] == 30 and len(sender.stored) == 30
