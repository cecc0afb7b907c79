"""The column-wise validator and the single-event validator must agree.

For generated rows with a column for every field of the contract's table,
``prepare_chunk`` flags a row invalid iff ``events.violations`` finds a broken rule
for the same event (with either ``missing_timestamp`` option), both name the same
rule codes for the same fields (and show the same offending value), and a valid row's
payload decodes to exactly ``prepare_event``'s output (with the row's event_id). The
same holds for a table with a field added (a copy of the contract's, patched in).

The one documented difference is normalised before comparing: the frame layer
turns integers in string-field columns into decimal strings.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Mapping
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millimetric_nb import contract
from millimetric_nb.contract import FieldSpec
from millimetric_nb.encode import is_missing
from millimetric_nb.events import prepare_event, violations
from millimetric_nb.frame import EventIdState, prepare_chunk, resolve_mapping

NOW = pd.Timestamp("2026-06-01T00:00:00Z")

missing = st.sampled_from([None, float("nan"), pd.NA])
short_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
datetimes = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1))
timestamp_cell = st.one_of(
    datetimes,
    datetimes.map(lambda d: d.replace(tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))),
    datetimes.map(lambda d: d.isoformat()),
    datetimes.map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S") + "Z"),
    datetimes.map(lambda d: d.strftime("%Y-%m-%d")),
    datetimes.map(lambda d: d.isoformat(timespec="milliseconds") + "-07:00"),
    missing,
    st.one_of(
        st.sampled_from(["not a date", "2026-02-30T00:00:00", "2026-13-01", "2026-01-01T25:00",
                         "12/31/2026", ""]),
        st.integers(0, 2_000_000_000),
    ),
)
safe_leaf = st.one_of(
    st.integers(-(2**53 - 1), 2**53 - 1), st.floats(allow_nan=False, allow_infinity=False),
    short_text, st.booleans(), st.none(),
)
json_leaf = st.one_of(safe_leaf, st.integers(-(2**60), 2**60), st.floats(width=64))
property_cell = st.one_of(
    safe_leaf,
    safe_leaf,
    st.lists(json_leaf, max_size=3),
    st.dictionaries(short_text, json_leaf, max_size=3),
    st.one_of(st.binary(max_size=3), st.just(float("nan")), json_leaf),
)


def string_cells(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Cells for a string field of the contract's table, around its limits."""
    top = spec.max_length or 64
    good = st.text(alphabet=st.characters(codec="utf-8"), min_size=max(1, spec.min_length),
                   max_size=min(12, top))
    bad = st.one_of(
        st.just(""),  # too short where the field has a min_length, else valid
        st.text(alphabet="ab", min_size=max(0, top - 3), max_size=top + 3),  # around the limit
        st.floats(allow_nan=False, width=64),
        st.booleans(),
        st.binary(max_size=4),
        st.just("a\ud800b"),  # a lone surrogate
    )
    # mostly valid cells, so that both verdicts are exercised often
    return st.one_of(good, good, good, st.integers(-(10**20), 10**20), missing, bad)


@st.composite
def frames(draw: st.DrawFn, table: Mapping[str, FieldSpec] | None = None) -> pd.DataFrame:
    """A frame with a column for EVERY field of ``table`` (default: the contract's),
    named like the field, and two property columns (``obj``, ``typed``)."""
    table = contract.EVENT_FIELDS if table is None else table
    n = draw(st.integers(1, 8))

    def col(cells: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(cells, min_size=n, max_size=n))

    data: dict[str, Any] = {}
    for name, spec in table.items():
        if spec.kind == "string":
            cells = string_cells(spec)
            if name == "event":
                cells = st.one_of(string_cells(spec), st.text(min_size=1, max_size=8))
            data[name] = pd.Series(col(cells), dtype=object)
        elif spec.kind == "timestamp":
            data[name] = pd.Series(col(timestamp_cell), dtype=object)
    data["obj"] = pd.Series(col(property_cell), dtype=object)
    kind = draw(st.sampled_from(["int", "float", "str", "bool"]))
    if kind == "int":
        data["typed"] = np.array(col(st.one_of(
            st.integers(-(2**53), 2**53), st.integers(-(2**63), 2**63 - 1))), dtype=np.int64)
    elif kind == "float":
        data["typed"] = np.array(col(st.floats(width=64)), dtype=np.float64)
    elif kind == "str":
        data["typed"] = pd.Series(col(st.one_of(short_text, st.none())), dtype="str")
    else:
        data["typed"] = np.array(col(st.booleans()), dtype=bool)
    return pd.DataFrame(data)


PROPERTY_COLUMNS = ("obj", "typed")


def _as_event(row: pd.Series, table: Mapping[str, FieldSpec]) -> dict[str, Any]:
    """The single event a row stands for, with the frame layer's int -> str rule."""
    ev: dict[str, Any] = {}
    for f, spec in table.items():
        if spec.kind == "object":
            continue
        v = row[f]
        if spec.kind == "string" and isinstance(v, int | np.integer) and not isinstance(
            v, bool | np.bool_
        ):
            v = str(int(v))
        ev[f] = v
    props = {k: row[k] for k in PROPERTY_COLUMNS if not _missing_cell(row[k])}
    if props:
        ev["properties"] = {k: (v.item() if isinstance(v, np.generic) else v)
                            for k, v in props.items()}
    return ev


def _missing_cell(v: Any) -> bool:
    return not isinstance(v, list | dict | bytes) and is_missing(v)


def _is_property(path: str) -> bool:
    return path == "properties" or path.startswith("properties.")


def check_agreement(df: pd.DataFrame, missing_ts: str) -> None:
    """Row by row: the same verdict, the same rule codes for every field (a subset for
    properties: one event's encoder stops at its first bad member, the columns report
    each), the same offending value for the fields, and the same payload."""
    table = contract.EVENT_FIELDS
    m, _ = resolve_mapping(list(df.columns))
    assert set(m.columns) | {"event"} == {n for n, s in table.items() if s.kind != "object"}
    assert m.property_columns == list(PROPERTY_COLUMNS)
    chunk = prepare_chunk(df, m, pii="ignore", now=NOW, ids=EventIdState(),
                          missing_timestamp=missing_ts)
    payloads = iter(chunk.payloads)
    for i in range(len(df)):
        ev = _as_event(df.iloc[i], table)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, found, _ = violations(ev, drop_enriched=True, missing_timestamp=missing_ts)
        here = chunk.errors[chunk.errors["position"] == i]
        got = set(zip(here["field"], here["rule"], strict=True))
        want = {(v.path, v.rule) for v in found}
        assert bool(found) == (not chunk.valid[i]), (ev, found, here.to_dict("records"))
        fields_got = {p for p in got if not _is_property(p[0])}
        fields_want = {p for p in want if not _is_property(p[0])}
        assert fields_got == fields_want, (ev, here.to_dict("records"), found)
        props_want = want - fields_want
        assert props_want <= got, (ev, here.to_dict("records"), found)
        assert bool(props_want) == bool(got - fields_got), (ev, here.to_dict("records"), found)
        # the offending value, shown alike (cells whose int the frame turns into text aside)
        shown = dict(zip(zip(here["field"], here["rule"], strict=True), here["value"],
                         strict=True))
        for v in found:
            cell = df.iloc[i][v.path] if v.path in df.columns else None
            if not _is_property(v.path) and not isinstance(cell, int | np.integer):
                value = shown[(v.path, v.rule)]
                assert (None if pd.isna(value) else value) == v.value, (v, shown)
        if found:
            continue
        decoded = orjson.loads(next(payloads))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = prepare_event(ev, missing_timestamp=missing_ts)
        expected["event_id"] = chunk.event_ids[i]
        assert _same(decoded, expected), (decoded, expected)
    assert next(payloads, None) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.sampled_from(["invalid", "server_time"]))
def test_prepare_chunk_agrees_with_prepare_event(df: pd.DataFrame, missing_ts: str) -> None:
    check_agreement(df, missing_ts)


#: The contract's table with one more string field, as a maintainer would add it.
EXTENDED: dict[str, FieldSpec] = {
    **{k: v for k, v in contract.EVENT_FIELDS.items() if k != "properties"},
    "campaign_code": FieldSpec("campaign_code", "string", min_length=1, max_length=16),
    "properties": contract.EVENT_FIELDS["properties"],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(EXTENDED), st.sampled_from(["invalid", "server_time"]))
def test_a_field_added_to_the_table_is_checked_and_sent_alike(
    df: pd.DataFrame, missing_ts: str
) -> None:
    with mock.patch.object(contract, "EVENT_FIELDS", EXTENDED):
        check_agreement(df, missing_ts)


def _same(a: Any, b: Any) -> bool:
    """Equality where floats compare by value and type (1.0 is not 1)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b
