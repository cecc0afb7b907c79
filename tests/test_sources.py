"""Every source kind sends the same events: the same 100,000 rows as pandas, a
hive-partitioned Parquet folder, compressed CSV and JSON Lines, Arrow, polars, DuckDB
and Dask go through the local server (real loopback HTTP) and must be stored
identically, with identical derived event ids and row numbers. Then the bad inputs:
one typed SourceError naming the source and the part, nothing sent from a part that
failed, and a journal that resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
from test_backfill_e2e import KILL_SCRIPT

import millimetric_nb as mm
from millimetric_nb import abackfill
from millimetric_nb.client import AsyncClient
from millimetric_nb.errors import ConfigurationError, SourceError
from millimetric_nb.server import run_in_thread
from millimetric_nb.server.storage import STORED_COLUMNS

N = 100_000
NOW = pd.Timestamp("2027-01-01T00:00:00Z")
INVALID = [5, 40_000, 99_999]  # no event name: invalid in every source
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


def events(n: int = N, seed: int = 7) -> pd.DataFrame:
    """Events over three days, sorted by time (so a day-partitioned folder keeps the
    row order), with repeats of identical content (numbered ids) and a few gaps."""
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2026-11-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.integers(0, 86400 * 3, n)), unit="s"
    )
    df = pd.DataFrame({
        "event": rng.choice(["page_view", "signup", "purchase"], n).astype(object),
        "user_id": [f"u{i % 997:05d}" for i in range(n)],
        "anonymous_id": [f"a{i % 131}" for i in range(n)],
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "url": [f"https://shop.example/p/{i % 50}?utm_source=news" for i in range(n)],
        "amount": rng.integers(1, 500, n),
        "price": np.round(rng.random(n) * 100, 2),
        "plan": rng.choice(["free", "pro", "team"], n).astype(object),
    })
    df.loc[df.index % 11 == 0, "plan"] = None  # a property missing in some rows
    df.loc[[5, n * 2 // 5, n - 1], "event"] = None  # INVALID for N rows
    df["day"] = df["timestamp"].str[:10]  # the hive partition column
    return df


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return events()


def write_zst(path: Path, text: str) -> Path:
    with pa.output_stream(str(path), compression="zstd") as out:
        out.write(text.encode())
    return path


@pytest.fixture(scope="module")
def files(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sources")
    # two files per day, as a writer with a row limit would leave them
    hive = d / "hive"
    for day in DAYS:
        part = frame[frame["day"] == day].drop(columns="day")
        (hive / f"day={day}").mkdir(parents=True)
        half = len(part) // 2
        part.iloc[:half].to_parquet(hive / f"day={day}" / "part-0.parquet", index=False)
        part.iloc[half:].to_parquet(hive / f"day={day}" / "part-1.parquet", index=False)
    (hive / "_SUCCESS").write_text("")  # a marker Spark leaves; not data
    csv = frame.to_csv(index=False)
    jsonl = frame.to_json(orient="records", lines=True)
    out = {"hive": hive}
    frame.to_csv(d / "events.csv.gz", index=False)
    out["csv.gz"] = d / "events.csv.gz"
    out["csv.zst"] = write_zst(d / "events.csv.zst", csv)
    frame.to_json(d / "events.jsonl.gz", orient="records", lines=True)
    out["jsonl.gz"] = d / "events.jsonl.gz"
    out["jsonl.zst"] = write_zst(d / "events.jsonl.zst", jsonl)
    return out


def table_of(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def duck(frame: pd.DataFrame) -> Any:
    import duckdb

    con = duckdb.connect()
    con.register("events", table_of(frame))
    return con


# each kind: (frame, files) -> source. Built lazily: readers and LazyFrames are one-shot.
KINDS: dict[str, Callable[[pd.DataFrame, dict[str, Path]], Any]] = {
    "pandas": lambda f, p: f,
    "parquet_hive_folder": lambda f, p: p["hive"],
    "csv.gz": lambda f, p: p["csv.gz"],
    "jsonl.zst": lambda f, p: p["jsonl.zst"],
    "arrow_table": lambda f, p: table_of(f),
    "arrow_reader": lambda f, p: pa.RecordBatchReader.from_batches(
        table_of(f).schema, table_of(f).to_batches(max_chunksize=7_000)),
    "arrow_dataset": lambda f, p: pads.dataset(table_of(f)),
    "polars_df": lambda f, p: __import__("polars").from_pandas(f),
    "polars_lazy": lambda f, p: __import__("polars").from_pandas(f).lazy(),
    "duckdb_relation": lambda f, p: duck(f).sql("SELECT * FROM events"),
    "duckdb_sql": lambda f, p: mm.sql("SELECT * FROM events", con=duck(f)),
    "dask": lambda f, p: __import__("dask.dataframe").dataframe.from_pandas(f, npartitions=7),
}
# read paths that differ only in how bytes are found: compared on derived ids (dry runs)
VARIANTS: dict[str, Callable[[pd.DataFrame, dict[str, Path]], Any]] = {
    "csv.zst": lambda f, p: p["csv.zst"],
    "jsonl.gz": lambda f, p: p["jsonl.gz"],
    "glob": lambda f, p: str(p["hive"] / "day=*" / "*.parquet"),
    "recursive_glob": lambda f, p: str(p["hive"] / "**" / "*.parquet"),
    "list_of_files": lambda f, p: sorted(p["hive"].rglob("*.parquet")),
    "filesystem_dataset": lambda f, p: pads.dataset(
        sorted(str(x) for x in p["hive"].rglob("*.parquet")), format="parquet",
        partitioning="hive", partition_base_dir=str(p["hive"])),
}


def send(srv: Any, source: Any, **kw: Any) -> mm.SendResult:
    kw.setdefault("progress", False)
    kw.setdefault("now", NOW)

    async def main() -> mm.SendResult:
        async with AsyncClient(key=srv.keys["sk"], host=srv.url, rate_limits="off") as c:
            return await abackfill(source, client=c, **kw)

    return asyncio.run(main())


def stored_digests(srv: Any) -> dict[str, bytes]:
    """``{event_id: digest of the stored row}``: every column as stored (properties as
    their JSON text) but the arrival time and the IP hash (salted per server)."""
    cols = [c for c in STORED_COLUMNS if c not in ("received_at", "ip_hash")]
    rows = srv.state.storage.fetch(
        f"SELECT {', '.join(cols)} FROM events WHERE project = 'dev'")
    out = {r["event_id"]: hashlib.blake2b(orjson.dumps(list(r.values())), digest_size=16)
           .digest() for r in rows}
    assert len(out) == len(rows), "an event was stored twice"
    return out


@pytest.fixture(scope="module")
def reference(frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, bytes]]:
    """The pandas frame's derived ids (by row) and stored rows (by id)."""
    with run_in_thread(limits="off") as srv:
        res = send(srv, frame)
        assert res.counts["sent"] == N - len(INVALID) and res.error is None
        ids = res.rows["event_id"].fillna("(none)").to_numpy(dtype=object)
        assert (ids == "(none)").sum() == len(INVALID)  # invalid rows have no id
        return ids, stored_digests(srv)


def same_ids(rows: pd.DataFrame, ref_ids: np.ndarray) -> None:
    assert rows.index.equals(pd.RangeIndex(N))  # global row numbers, from 0
    got = rows["event_id"].fillna("(none)").to_numpy(dtype=object)
    diff = np.flatnonzero(got != ref_ids)
    assert len(diff) == 0, f"{len(diff)} ids differ, first rows {diff[:5].tolist()}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_stores_the_same_events(kind, frame, files, reference, mm_server):
    ref_ids, ref_stored = reference
    res = send(mm_server, KINDS[kind](frame, files), chunksize=20_000)
    assert res.error is None, res.error
    assert res.counts["sent"] == N - len(INVALID) and res.counts["invalid"] == len(INVALID)
    assert list(res.failed.index) == INVALID
    same_ids(res.rows, ref_ids)
    stored = stored_digests(mm_server)
    assert stored.keys() == ref_stored.keys()
    changed = [k for k, v in stored.items() if ref_stored[k] != v]
    assert changed == [], f"{len(changed)} stored rows differ, e.g. {changed[:3]}"
    if kind == "parquet_hive_folder":  # the partition column reached the mapping
        first = mm_server.stored_events()[0]
        assert first["properties"]["day"] in DAYS


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_read_variants_derive_the_same_ids(kind, frame, files, reference):
    ref_ids, _ = reference
    res = mm.backfill(VARIANTS[kind](frame, files), dry_run=True, progress=False, now=NOW)
    assert res.error is None
    assert res.counts["planned"] == N - len(INVALID)
    same_ids(res.rows, ref_ids)


def test_validate_merges_one_report_with_global_positions(frame, files):
    expected = mm.validate_frame(frame, now=NOW, warn=False)
    assert len(expected.errors) == len(INVALID)
    for source in (files["hive"], files["csv.gz"], table_of(frame)):
        got = mm.validate(source, now=NOW, warn=False, chunksize=30_000)
        assert got.n_rows == N
        pd.testing.assert_frame_equal(
            got.errors.reset_index(drop=True).astype(object),
            expected.errors.reset_index(drop=True).astype(object),
        )
        assert got.warnings == expected.warnings
        assert got.summary["rows"].tolist() == [len(INVALID)]


def test_filter_is_pushed_down_to_the_partitions(frame, files, reference):
    day = DAYS[1]
    res = mm.backfill(files["hive"], filter=pc.field("day") == day, dry_run=True,
                      progress=False, now=NOW)
    subset = frame[frame["day"] == day].reset_index(drop=True)
    expected = mm.backfill(subset, dry_run=True, progress=False, now=NOW)
    assert len(res.rows) == len(subset) and res.rows.index.equals(pd.RangeIndex(len(subset)))
    assert res.rows["event_id"].equals(expected.rows["event_id"])
    # the day is part of every event's content: a slice gets the ids the whole run gave
    ref_ids, _ = reference
    whole = ref_ids[(frame["day"] == day).to_numpy()]
    assert (res.rows["event_id"].fillna("(none)").to_numpy(dtype=object) == whole).all()
    in_table = mm.validate(table_of(frame), filter=pc.field("day") == day, warn=False)
    assert in_table.n_rows == len(subset)
    # one partition's folder (or a glob in it) reads the same columns, so the same ids
    one_day = mm.backfill(files["hive"] / f"day={day}", dry_run=True, progress=False, now=NOW)
    assert one_day.rows["event_id"].equals(expected.rows["event_id"])
    # a filter that excludes every partition reads no row at all
    none = mm.validate(files["hive"], filter=pc.field("day") == "1999-01-01", warn=False)
    assert none.n_rows == 0
    with pytest.raises(ConfigurationError) as info:
        mm.backfill(frame, filter=pc.field("day") == day, dry_run=True, progress=False)
    assert info.value.code == "invalid_filter"


# --------------------------------------------------------------------------- reading rules


def test_folder_files_are_read_in_sorted_path_order(tmp_path):
    for name, first in (("b.parquet", "b0"), ("a.parquet", "a0"), ("c/z.parquet", "c0")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        pd.DataFrame({"event": [first, first[0] + "1"], "k": [1, 2]}).to_parquet(tmp_path / name)
    (tmp_path / ".hidden.parquet").write_bytes(b"not parquet")  # skipped, never opened
    chunks, total = mm.datasources.iter_source(tmp_path, chunksize=10)
    got = pd.concat(list(chunks))
    assert total == 6 and got.index.equals(pd.RangeIndex(6))
    assert got["event"].tolist() == ["a0", "a1", "b0", "b1", "c0", "c1"]


def test_arrow_nulls_keep_integers_whole(mm_server, tmp_path):
    path = tmp_path / "n.parquet"
    pd.DataFrame({"event": ["e"] * 3, "n": pd.array([1, None, 2**40], dtype="Int64"),
                  "flag": pd.array([True, None, False], dtype="boolean"),
                  "m": [1, 2, 3]}).to_parquet(path)
    res = send(mm_server, path)
    assert res.counts["sent"] == 3
    props = [e["properties"] for e in mm_server.stored_events()]
    assert props == [{"n": 1, "flag": True, "m": 1}, {"m": 2},
                     {"n": 2**40, "flag": False, "m": 3}]
    assert all(isinstance(p.get("n", 0), int) for p in props)


def test_semicolon_csv_compressed(tmp_path):
    path = write_zst(tmp_path / "s.csv.zst", "event;user_id;price\nbuy;00123;1,5\nview;7;2\n")
    chunks, _ = mm.datasources.iter_source(path, 10, mm.datasources.field_columns({}))
    df = next(chunks)
    assert df.columns.tolist() == ["event", "user_id", "price"]
    assert df["user_id"].tolist() == ["00123", "7"]  # string fields read as text


def test_non_utf8_compressed_csv_stops_with_the_hint(mm_server, tmp_path):
    raw = "event,city\n" + "buy,Paris\n" * 3 + "buy,Z\xfcrich\n"
    path = tmp_path / "latin.csv.zst"
    with pa.output_stream(str(path), compression="zstd") as out:
        out.write(raw.encode("latin-1"))
    res = send(mm_server, path)
    assert res.error is not None and "not UTF-8" in str(res.error)
    assert mm_server.count() == res.counts["sent"]


# --------------------------------------------------------------------------- bad input


def test_folder_without_parquet_and_empty_glob(tmp_path):
    (tmp_path / "notes.csv").write_text("event\nx\n")
    with pytest.raises(SourceError) as info:
        mm.backfill(tmp_path, dry_run=True, progress=False)
    assert info.value.code == "source_empty" and str(tmp_path) in str(info.value)
    assert info.value.details["source"] == str(tmp_path)
    pattern = str(tmp_path / "nothing" / "*.parquet")
    with pytest.raises(SourceError) as info:
        mm.validate(pattern)
    assert info.value.code == "source_empty" and pattern in str(info.value)


def test_clashing_schemas_send_nothing_and_leave_the_journal_resumable(mm_server, tmp_path):
    data = tmp_path / "data"
    for day, amount in (("2026-11-01", [1, 2]), ("2026-11-02", ["x", "y"])):
        (data / f"day={day}").mkdir(parents=True)
        pd.DataFrame({"event": ["e", "f"], "amount": amount}).to_parquet(
            data / f"day={day}" / "part-0.parquet")
    journal = tmp_path / "j.sqlite"
    with pytest.raises(SourceError) as info:
        send(mm_server, data, journal=journal)
    err = info.value
    assert err.code == "source_schema_mismatch"
    assert err.details["part"].endswith("day=2026-11-02/part-0.parquet")
    assert "day=2026-11-02" in str(err) and "amount" in str(err)
    assert mm_server.count() == 0
    # the fixed data resumes with the same journal
    pd.DataFrame({"event": ["e", "f"], "amount": [3, 4]}).to_parquet(
        data / "day=2026-11-02" / "part-0.parquet")
    assert send(mm_server, data, journal=journal).counts["sent"] == 4
    assert send(mm_server, data, journal=journal).counts["skipped"] == 4
    assert mm_server.count() == 4


def test_corrupt_part_is_named_before_anything_is_read(mm_server, tmp_path):
    pd.DataFrame({"event": ["e"] * 5}).to_parquet(tmp_path / "part-0.parquet")
    (tmp_path / "part-1.parquet").write_bytes(b"PAR1 this is not a footer")
    with pytest.raises(SourceError) as info:
        send(mm_server, tmp_path)
    assert info.value.code == "source_part_failed"
    assert info.value.details["part"].endswith("part-1.parquet")
    assert mm_server.count() == 0


def test_failing_duckdb_query_is_typed(frame):
    import duckdb

    con = duckdb.connect()
    with pytest.raises(SourceError) as info:
        mm.backfill(mm.sql("SELECT * FROM no_such_table", con=con), dry_run=True,
                    progress=False)
    assert info.value.code == "source_query_failed"
    assert "no_such_table" in str(info.value) and info.value.details["part"] == "query"
    with pytest.raises(ConfigurationError) as info:
        mm.sql("SELECT 1", con=object())
    assert info.value.code == "invalid_source" and "duckdb connection" in str(info.value)
    # a failure while the rows stream (a cast of a later row) ends the reading: typed
    rel = con.sql("SELECT 'e' AS event, CAST(CASE WHEN range < 5000 THEN '1' ELSE 'x' END "
                  "AS INTEGER) AS n FROM range(10000)")
    try:
        res = mm.backfill(rel, dry_run=True, progress=False, chunksize=1000)
    except SourceError as exc:  # DuckDB may fail before the first batch
        assert exc.code == "source_query_failed"
    else:
        assert isinstance(res.error, SourceError) and res.error.code == "source_query_failed"


class Boom(RuntimeError):
    pass


def explode(part: pd.DataFrame) -> pd.DataFrame:
    if len(part) and part["event"].iloc[0] == "boom":
        raise Boom("partition cannot be computed")
    return part


def test_dask_partition_that_raises_sends_nothing_of_it_and_resumes(mm_server, tmp_path):
    import dask.dataframe as dd

    df = pd.DataFrame({"event": [f"e{i % 3}" for i in range(4000)],
                       "user_id": [f"u{i}" for i in range(4000)]})
    bad = df.copy()
    bad.loc[2000, "event"] = "boom"  # first row of partition 2 (of 4 of 1000 rows)
    ddf = dd.from_pandas(bad, npartitions=4).map_partitions(explode, meta=bad.iloc[:0])
    journal = tmp_path / "j.sqlite"
    res = send(mm_server, ddf, journal=journal, chunksize=500)
    err = res.error
    assert isinstance(err, SourceError) and err.code == "source_part_failed"
    assert err.details["part"] == "partition 2" and "Boom" in str(err)
    assert res.counts["sent"] == 2000 and len(res.rows) == 2000  # partitions 0 and 1
    assert mm_server.count() == 2000
    stored = {e["user_id"] for e in mm_server.stored_events()}
    assert stored == {f"u{i}" for i in range(2000)}  # nothing of partition 2
    fixed = dd.from_pandas(df, npartitions=4)
    res2 = send(mm_server, fixed, journal=journal, chunksize=500)
    assert res2.counts["skipped"] == 2000 and res2.counts["sent"] == 2000
    assert mm_server.count() == 4000


def test_missing_extras_name_the_extra(monkeypatch, frame):
    import dask.dataframe as dd

    ddf = dd.from_pandas(frame.head(10), npartitions=1)
    monkeypatch.setitem(sys.modules, "duckdb", None)  # as if not installed
    with pytest.raises(ConfigurationError) as info:
        mm.sql("SELECT 1")
    assert info.value.code == "missing_dependency"
    assert "pip install 'millimetric-nb[duckdb]'" in str(info.value)
    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    for call in (lambda: mm.validate(ddf),
                 lambda: mm.backfill(ddf, dry_run=True, progress=False)):
        with pytest.raises(ConfigurationError) as info:
            call()
        assert info.value.code == "missing_dependency"
        assert "pip install 'millimetric-nb[dask]'" in str(info.value)


def test_mm_validate_is_the_function_and_the_module_still_imports():
    from millimetric_nb.validate import ValidationReport, validate_frame

    assert callable(mm.validate) and mm.validate is mm.datasources.validate
    assert mm.validate_frame is validate_frame and ValidationReport is mm.ValidationReport
    assert callable(mm.sources)  # the read function, not a module


# --------------------------------------------------------------------------- kill and resume


def test_sigkill_over_a_partitioned_dataset_then_resume(mm_server, tmp_path):
    df = events(12_000, seed=3)
    data = tmp_path / "data"
    for day in DAYS:
        (data / f"day={day}").mkdir(parents=True)
        df[df["day"] == day].drop(columns="day").to_parquet(data / f"day={day}" / "p.parquet")
    journal = tmp_path / "j.sqlite"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)  # SIGKILLs itself at the 4th acknowledged request
    proc = subprocess.run(
        [sys.executable, str(script), mm_server.url, mm_server.keys["sk"], str(journal),
         str(data)],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = mm_server.count()
    assert 2000 <= partial < 12_000 - 3  # 4 requests acknowledged, the rest never sent
    res = send(mm_server, data, journal=journal, chunksize=1000)
    assert res.counts["skipped"] >= 2000  # every acknowledgement survived the kill
    assert res.counts["skipped"] + res.counts["sent"] == 12_000 - 3
    stored: dict[str, int] = {}
    for e in mm_server.stored_events():
        stored[e["event_id"]] = stored.get(e["event_id"], 0) + 1
    assert set(stored) == set(res.rows["event_id"].dropna())
    flagged = set(res.rows.loc[res.rows["ambiguous"], "event_id"])
    twice = {k for k, v in stored.items() if v > 1}
    assert twice <= flagged  # only in-flight (never acknowledged) rows may repeat


def test_validate_of_a_file_judges_as_a_send_does(tmp_path):
    # mm.validate takes a send's defaults: personal data refused, empty timestamps
    # invalid unless missing_timestamp="server_time"
    path = tmp_path / "events.csv"
    pd.DataFrame({
        "event": ["a", "b", "c"],
        "timestamp": ["2026-11-01T00:00:00Z", "", "2026-11-02T00:00:00Z"],
        "plan": ["pro", "free", "pro"],
    }).to_csv(path, index=False)
    strict = mm.validate(path, now=NOW, warn=False)
    assert strict.errors[["position", "field", "rule"]].values.tolist() == [
        [1, "timestamp", "required"]]
    lenient = mm.validate(path, now=NOW, warn=False, missing_timestamp="server_time")
    assert lenient.errors.empty and lenient.n_rows == 3
    with pytest.raises(mm.errors.MillimetricError) as info:
        mm.validate(path, now=NOW, warn=False, missing_timestamp="later")
    assert info.value.code == "invalid_missing_timestamp"

    personal = tmp_path / "personal.csv"
    pd.DataFrame({"event": ["a"], "email": ["ann@example.com"]}).to_csv(personal, index=False)
    with pytest.raises(mm.errors.ValidationError) as info:
        mm.validate(personal, now=NOW, warn=False)
    assert info.value.code == "personal_data" and "email" in str(info.value)
    assert mm.validate(personal, now=NOW, warn=False, pii="allow").errors.empty
