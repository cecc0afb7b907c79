"""The column-wise validator and the single-event validator must agree.

For generated rows, ``prepare_chunk`` flags a row invalid iff
``events.prepare_event`` raises for the same event (with either
``missing_timestamp`` option; the timestamp's rule the same), and a valid row's payload
decodes to exactly ``prepare_event``'s output (with the row's event_id).

The one documented difference is normalised before comparing: the frame layer
turns integers in string-field columns into decimal strings.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from typing import Any

import numpy as np
import orjson
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millimetric_nb.encode import is_missing
from millimetric_nb.errors import ValidationError
from millimetric_nb.events import prepare_event
from millimetric_nb.frame import EventIdState, prepare_chunk, resolve_mapping

NOW = pd.Timestamp("2026-06-01T00:00:00Z")

missing = st.sampled_from([None, float("nan"), pd.NA])
short_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
good_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)
bad_string = st.one_of(
    st.just(""),
    st.text(alphabet="ab", min_size=125, max_size=260),  # around the limits
    st.floats(allow_nan=False, width=64),
    st.booleans(),
    st.binary(max_size=4),
)
# mostly valid cells, so that both verdicts are exercised often
string_cell = st.one_of(good_text, good_text, st.integers(-(10**20), 10**20), missing, bad_string)
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


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 8))

    def col(cells: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(cells, min_size=n, max_size=n))

    data: dict[str, Any] = {
        "event": pd.Series(col(st.one_of(good_text, string_cell)), dtype=object),
        "user_id": pd.Series(col(string_cell), dtype=object),
        "timestamp": pd.Series(col(timestamp_cell), dtype=object),
        "obj": pd.Series(col(property_cell), dtype=object),
    }
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


def _as_event(row: pd.Series) -> dict[str, Any]:
    """The single event a row stands for, with the frame layer's int -> str rule."""
    ev: dict[str, Any] = {}
    for f in ("event", "user_id"):
        v = row[f]
        if isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_):
            v = str(int(v))
        ev[f] = v
    ev["timestamp"] = row["timestamp"]
    props = {k: row[k] for k in ("obj", "typed") if not _missing_cell(row[k])}
    if props:
        ev["properties"] = {k: (v.item() if isinstance(v, np.generic) else v)
                            for k, v in props.items()}
    return ev


def _missing_cell(v: Any) -> bool:
    return not isinstance(v, list | dict | bytes) and is_missing(v)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.sampled_from(["invalid", "server_time"]))
def test_prepare_chunk_agrees_with_prepare_event(df: pd.DataFrame, missing_ts: str) -> None:
    m, _ = resolve_mapping(list(df.columns))
    chunk = prepare_chunk(df, m, pii="ignore", now=NOW, ids=EventIdState(),
                          missing_timestamp=missing_ts)
    payloads = iter(chunk.payloads)
    bad_rows = set(chunk.errors["position"].tolist())
    for i in range(len(df)):
        ev = _as_event(df.iloc[i])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = prepare_event(ev, missing_timestamp=missing_ts)
        except ValidationError as exc:
            assert not chunk.valid[i], (ev, exc.problems)
            assert i in bad_rows
            # both name the same fields
            here = chunk.errors[chunk.errors["position"] == i]
            got = set(here["field"])
            assert {p[0] for p in exc.problems} <= got | {"properties"}, (got, exc.problems)
            # and the same rule for the timestamp (required / invalid_timestamp)
            ts_rules = {p[1] for p in exc.problems if p[0] == "timestamp"}
            assert ts_rules == set(here.loc[here["field"] == "timestamp", "rule"]), (
                ts_rules, here.to_dict("records"))
            continue
        assert chunk.valid[i], (ev, chunk.errors[chunk.errors["position"] == i].to_dict("records"))
        decoded = orjson.loads(next(payloads))
        expected["event_id"] = chunk.event_ids[i]
        assert _same(decoded, expected), (decoded, expected)
    assert next(payloads, None) is None


def _same(a: Any, b: Any) -> bool:
    """Equality where floats compare by value and type (1.0 is not 1)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b
