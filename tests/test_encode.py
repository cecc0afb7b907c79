"""encode: JSON rules for numpy/pandas/stdlib values, timestamps and missing values."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millimetric_nb import contract
from millimetric_nb.encode import EncodeError, dumps, is_missing, json_default, to_utc_iso


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, True),
        (float("nan"), True),
        (np.float32("nan"), True),
        (pd.NaT, True),
        (pd.NA, True),
        (np.datetime64("NaT"), True),
        (0.0, False),
        ("", False),
        ([], False),
        ({}, False),
        (np.array([np.nan]), False),
        ("nan", False),
    ],
)
def test_is_missing(value, expected):
    assert is_missing(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05Z"),  # naive = UTC
        (dt.datetime(2024, 1, 2, 3, 4, 5, 120000, tzinfo=dt.timezone(dt.timedelta(hours=2))),
         "2024-01-02T01:04:05.120000Z"),
        (dt.date(2024, 2, 29), "2024-02-29T00:00:00Z"),
        (pd.Timestamp("2024-06-01 12:00", tz="America/New_York"), "2024-06-01T16:00:00Z"),
        (pd.Timestamp("2024-06-01 12:00:00.000000999"), "2024-06-01T12:00:00Z"),  # ns truncated
        (np.datetime64("2024-03-01T01:02:03.5"), "2024-03-01T01:02:03.500000Z"),
        ("2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00Z"),
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z"),
        ("2024-01-01 10:00:00.25", "2024-01-01T10:00:00.250000Z"),
        ("2024-01-01", "2024-01-01T00:00:00Z"),
    ],
)
def test_to_utc_iso_normalises(value, expected):
    assert to_utc_iso(value) == expected


@pytest.mark.parametrize(
    "value",
    ["garbage", "2024-13-01", "2024-W01-1", "", "10:00", 1_700_000_000, 1.5, True, None,
     pd.NaT, float("nan"), b"2024-01-01", ["2024-01-01"]],
)
def test_to_utc_iso_refuses(value):
    with pytest.raises(ValueError):
        to_utc_iso(value)


def test_json_default_conversions():
    assert json_default(np.int64(7)) == 7 and type(json_default(np.int64(7))) is int
    assert json_default(np.bool_(True)) is True
    assert json_default(np.float32(0.5)) == 0.5
    assert json_default(Decimal("10.00")) == 10 and isinstance(json_default(Decimal("10")), int)
    assert json_default(Decimal("1.25")) == 1.25
    assert json_default(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert json_default({3, 1, 2}) == [1, 2, 3]
    assert sorted(json_default({1, "a"}), key=str) == [1, "a"]  # unsortable: still a list
    assert json_default(pd.NA) is None and json_default(pd.NaT) is None
    assert json_default(dt.date(2024, 1, 2)) == "2024-01-02"
    assert json_default(pd.Timestamp("2024-01-01", tz="UTC")) == "2024-01-01T00:00:00Z"
    with pytest.raises(TypeError, match="bytes"):
        json_default(b"x")
    with pytest.raises(TypeError, match="complex"):
        json_default(1j)
    with pytest.raises(TypeError, match="Decimal"):
        json_default(Decimal("NaN"))


def test_dumps_is_compact_and_handles_pandas_and_numpy():
    obj = {
        "n": np.int64(3),
        "arr": np.array([1.5, 2.0]),
        "ts": pd.Timestamp("2024-01-01 12:00", tz="Europe/Paris"),
        "dts": np.array(["2024-01-01", "NaT"], dtype="datetime64[s]"),
        "na": pd.NA,
        "s": frozenset({"b", "a"}),
    }
    out = dumps(obj)
    assert b" " not in out
    assert orjson.loads(out) == {
        "n": 3, "arr": [1.5, 2.0], "ts": "2024-01-01T11:00:00Z",
        "dts": ["2024-01-01T00:00:00Z", None], "na": None, "s": ["a", "b"],
    }


@pytest.mark.parametrize(
    ("obj", "path", "rule"),
    [
        ({"x": float("nan")}, "p.x", contract.RULE_NOT_JSON),
        ({"x": [1, float("inf")]}, "p.x[1]", contract.RULE_NOT_JSON),
        ({"x": np.array([1.0, np.nan])}, "p.x[1]", contract.RULE_NOT_JSON),
        ({"x": b"raw"}, "p.x", contract.RULE_NOT_JSON),
        ({"x": {"y": object()}}, "p.x.y", contract.RULE_NOT_JSON),
        ({"x": "ok\ud800"}, "p.x", contract.RULE_UNICODE),
        ({"\udc00": 1}, "p", contract.RULE_UNICODE),
        ({"x": 2**53}, "p.x", contract.RULE_INT_RANGE),
        ({"x": np.int64(-(2**60))}, "p.x", contract.RULE_INT_RANGE),
        ({1: "a"}, "p.1", contract.RULE_NOT_JSON),
        ({"x": Decimal("Infinity")}, "p.x", contract.RULE_NOT_JSON),
    ],
)
def test_dumps_refuses_with_path_and_rule(obj, path, rule):
    with pytest.raises(EncodeError) as info:
        dumps(obj, path="p")
    assert info.value.path == path
    assert info.value.rule == rule
    assert isinstance(info.value, ValueError)


def test_nan_as_null_only_for_nan_not_infinity():
    assert dumps({"x": float("nan"), "y": None}, nan_as_null=True) == b'{"x":null,"y":null}'
    with pytest.raises(EncodeError):
        dumps({"x": float("-inf")}, nan_as_null=True)


def test_null_in_strings_does_not_trip_detection():
    assert dumps({"null": "null", "v": None}) == b'{"null":"null","v":null}'


def test_self_reference_is_an_encode_error():
    a: list = []
    a.append(a)
    with pytest.raises(EncodeError) as info:
        dumps({"a": a})
    assert info.value.rule == contract.RULE_NOT_JSON


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_dumps_round_trips_any_json_value(value):
    try:
        out = dumps(value)
    except EncodeError as exc:
        # the only refusal for plain JSON values: lone surrogates from st.text()
        assert exc.rule == contract.RULE_UNICODE
        return
    assert orjson.loads(out) == value
