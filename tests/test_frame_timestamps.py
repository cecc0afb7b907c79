"""The numpy timestamp writer (``_bytescan.iso_utc_series``) against polars' strftime.

``frame._format_ts`` writes ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` with digit tables over
the int64 microseconds; ``frame._format_ts_polars`` is the polars expression it
replaced, kept as the fallback and as the reference here. Every microsecond of the
years 1-9999 must give the same text (and the text ``encode.to_utc_iso`` gives), the
year check must agree with polars' ``dt.year``, and the timestamp column's rules
(out-of-range years, future timestamps, nulls) must hold as before.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millimetric_nb import _bytescan
from millimetric_nb.encode import to_utc_iso
from millimetric_nb.frame import (
    MissingTimestamp,
    PreparedChunk,
    _format_ts,
    _format_ts_polars,
    prepare_chunk,
    resolve_mapping,
)

EPOCH = dt.datetime(1970, 1, 1)
MIN_US = (dt.datetime(1, 1, 1) - EPOCH) // dt.timedelta(microseconds=1)
MAX_US = (dt.datetime(9999, 12, 31, 23, 59, 59, 999_999) - EPOCH) // dt.timedelta(microseconds=1)
NOW = pd.Timestamp("2026-06-01T00:00:00.5Z")


def us_of(*args: int) -> int:
    return (dt.datetime(*args) - EPOCH) // dt.timedelta(microseconds=1)


def series(values: list[int | None]) -> pl.Series:
    return pl.Series(values, dtype=pl.Int64).cast(pl.Datetime("us"))


def python_iso(us: int) -> str:
    return to_utc_iso(EPOCH + dt.timedelta(microseconds=us))


EDGES = [
    MIN_US, MIN_US + 1, MIN_US + 999_999, MIN_US + 1_000_000, MAX_US, MAX_US - 999_999,
    MAX_US - 1_000_000, 0, 1, -1, -999_999, -1_000_000, -1_000_001, -86_400_000_000,
    us_of(1969, 12, 31, 23, 59, 59), us_of(2000, 2, 29), us_of(2000, 2, 29, 23, 59, 59, 999_999),
    us_of(2000, 3, 1), us_of(1900, 2, 28, 12), us_of(1900, 3, 1), us_of(2024, 2, 29, 1, 2, 3, 4),
    us_of(1600, 2, 29), us_of(4, 2, 29), us_of(9996, 2, 29), us_of(1582, 10, 4),
    us_of(1582, 10, 15),
    us_of(1, 12, 31, 23, 59, 59, 100_000), us_of(9999, 1, 1), us_of(2026, 1, 1, 0, 0, 0, 10),
]


def test_edges_match_polars_and_python() -> None:
    got = _format_ts(series(EDGES)).to_list()
    assert got == _format_ts_polars(series(EDGES)).to_list()
    assert got == [python_iso(u) for u in EDGES]
    assert got[:3] == ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000001Z",
                       "0001-01-01T00:00:00.999999Z"]
    assert got[4] == "9999-12-31T23:59:59.999999Z"
    assert got[9] == "1969-12-31T23:59:59.999999Z"  # a negative epoch floors, never truncates
    assert "2000-02-29T00:00:00Z" in got


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(MIN_US, MAX_US), st.none(),
                          st.integers(MIN_US // 1_000_000, MAX_US // 1_000_000).map(
                              lambda s: s * 1_000_000)), max_size=40))
def test_any_microsecond_of_years_1_to_9999(values: list[int | None]) -> None:
    ps = series(values)
    got = _format_ts(ps)
    assert got.dtype == pl.String
    assert got.to_list() == _format_ts_polars(ps).to_list()
    assert got.to_list() == [None if u is None else python_iso(u) for u in values]
    us, present = _bytescan.datetime_us(ps)
    assert present.tolist() == [u is not None for u in values]
    years = _bytescan.civil_years(us)[present]
    assert years.tolist() == ps.dt.year().drop_nulls().to_list()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63) + 1, 2**63 - 1), min_size=1, max_size=20))
def test_civil_years_of_any_int64_agree_with_polars_where_it_has_one(values: list[int]) -> None:
    ps = series(values)
    ours = _bytescan.civil_years(np.asarray(values, dtype=np.int64))
    theirs = ps.dt.year().to_list()  # null beyond chrono's +-262,143 years
    for y, t in zip(ours.tolist(), theirs, strict=True):
        if t is not None:
            assert y == t
        else:
            assert not 1 <= y <= 9999


def test_outside_the_four_digit_years_and_time_zones_keep_the_polars_text() -> None:
    beyond = series([MAX_US + 1, 0])
    assert _format_ts(beyond).to_list() == _format_ts_polars(beyond).to_list()
    assert _format_ts(beyond)[0] != "9999-12-31T23:59:59.999999Z"
    aware = series([0, 1_500_000]).dt.replace_time_zone("Asia/Kolkata")
    assert _format_ts(aware).to_list() == _format_ts_polars(aware).to_list()


def test_empty_all_null_and_ns_input() -> None:
    assert _format_ts(series([])).to_list() == []
    assert _format_ts(series([None, None])).to_list() == [None, None]
    ns = pl.Series([1_999_999_999, -1], dtype=pl.Int64).cast(pl.Datetime("ns"))
    assert _format_ts(ns).to_list() == _format_ts_polars(ns).to_list()


def test_rows_split_over_several_data_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A string view's offsets are int32: past 2**31 bytes the rows go to more buffers."""
    monkeypatch.setattr(_bytescan, "_ROWS_PER_BUFFER", 3)
    values = [EDGES[i % len(EDGES)] for i in range(11)]
    values[4] = None
    got = _format_ts(series(values))
    assert got.to_list() == [None if u is None else python_iso(u) for u in values]


def _chunk(
    column: pd.Series, missing_timestamp: MissingTimestamp = "invalid"
) -> tuple[PreparedChunk, list[str]]:
    df = pd.DataFrame({"event": ["e"] * len(column), "timestamp": column, "anonymous_id": "a"})
    mapping, _ = resolve_mapping(df.columns, properties=[])
    p = prepare_chunk(df, mapping, now=NOW, pii="ignore", missing_timestamp=missing_timestamp)
    return p, [m for m in p.warnings if "future" in m]


def test_timestamp_column_rules_hold() -> None:
    col = pd.Series(pd.to_datetime([
        "2026-06-01T00:00:00.9",  # the same second as now: not in the future
        "2026-06-01T00:00:01",  # the next second: in the future
        "2000-02-29T12:00:00",
        None,
        "1969-12-31T23:59:59.999999",
    ], format="ISO8601"))
    p, future = _chunk(col, missing_timestamp="server_time")
    assert future == ["1 row(s) have a timestamp in the future (after "
                      "2026-06-01T00:00:00.500000Z) in column 'timestamp'"]
    stamps = [orjson.loads(b).get("timestamp") for b in p.payloads]
    assert stamps == ["2026-06-01T00:00:00.900000Z", "2026-06-01T00:00:01Z",
                      "2000-02-29T12:00:00Z", None, "1969-12-31T23:59:59.999999Z"]


def test_years_beyond_9999_and_parsed_one_by_one() -> None:
    secs = pd.Series(np.array([253_402_300_800, 0, 8_000_000_000_000], dtype="datetime64[s]"))
    p, _ = _chunk(secs)
    errors = p.errors
    assert errors["position"].tolist() == [0, 2]
    assert set(errors["rule"]) == {"invalid_timestamp"}
    # objects: a datetime goes one by one (to_utc_iso) and still counts as future
    objs = pd.Series([dt.datetime(2030, 1, 1), "2026-06-01T00:00:00Z", dt.datetime(2020, 1, 1)],
                     dtype=object)
    p, future = _chunk(objs)
    assert future and future[0].startswith("1 row(s)")
    assert [orjson.loads(b)["timestamp"] for b in p.payloads] == [
        "2030-01-01T00:00:00Z", "2026-06-01T00:00:00Z", "2020-01-01T00:00:00Z"]


def test_a_datetime_property_beyond_polars_years_is_an_error_not_a_panic() -> None:
    """datetime64[s] can hold years polars' dt.year cannot: the check reads the int64."""
    when = pd.Series(np.array([270_000 * 365 * 86_400, 0, 86_400 * 59], dtype="datetime64[s]"))
    df = pd.DataFrame({"event": ["a", "b", "c"], "when": when})
    mapping, _ = resolve_mapping(df.columns)
    p = prepare_chunk(df, mapping, pii="ignore", now=NOW)
    assert p.errors["rule"].tolist() == ["not_json"]
    assert p.errors["field"].tolist() == ["properties.when"]
    assert [orjson.loads(b)["properties"]["when"] for b in p.payloads] == [
        "1970-01-01T00:00:00Z", "1970-03-01T00:00:00Z"]

