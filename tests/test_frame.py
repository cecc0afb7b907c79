"""The column-wise frame layer: mapping, per-row errors, exact payloads, stable ids, PII."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from decimal import Decimal

import numpy as np
import orjson
import pandas as pd
import pytest

from millimetric_nb import contract
from millimetric_nb.errors import ConfigurationError, ValidationError
from millimetric_nb.frame import (
    ERROR_COLUMNS,
    EventIdState,
    FieldMapping,
    prepare_chunk,
    resolve_mapping,
)

NOW = pd.Timestamp("2026-06-01T00:00:00Z")


def prep(df: pd.DataFrame, *, pii: str = "ignore", ids: EventIdState | None = None,
         offset: int = 0, encode: bool = True, missing_timestamp: str = "invalid", **mapping):
    m, _ = resolve_mapping(list(df.columns), **mapping)
    return prepare_chunk(df, m, pii=pii, now=NOW, ids=ids, offset=offset, encode=encode,
                         missing_timestamp=missing_timestamp)


def events_of(chunk) -> dict[int, dict]:
    """Decoded payloads keyed by local row position (valid rows only)."""
    pos = np.flatnonzero(chunk.valid)
    assert len(pos) == len(chunk.payloads)
    return {int(p): orjson.loads(b) for p, b in zip(pos, chunk.payloads, strict=True)}


def errs(chunk) -> set[tuple]:
    return {(r.row, r.field, r.rule) for r in chunk.errors.itertuples()}


# --------------------------------------------------------------------------- payloads


def test_payloads_are_exactly_the_expected_events():
    df = pd.DataFrame({
        "event": ["$pageview", "signup"],
        "timestamp": pd.to_datetime(["2026-01-02 03:04:05", "2026-01-02 03:04:05.25"],
                                    format="ISO8601"),
        "anonymous_id": ["a1", "a2"],
        "user_id": [None, "u2"],
        "session_id": ["s1", None],
        "url": ["https://x.test/?utm_source=n", "https://x.test/b"],
        "path": ["/", "/b"],
        "referrer": [None, "https://google.com/"],
        "plan": ["pro", None],
        "items": [3, 4],
        "amount": [9.5, np.nan],
    }, index=["r0", "r1"])
    c = prep(df)
    assert c.valid.tolist() == [True, True]
    assert c.errors.empty
    ev = events_of(c)
    id0, id1 = c.event_ids
    assert ev[0] == {
        "event_id": id0, "event": "$pageview", "timestamp": "2026-01-02T03:04:05Z",
        "anonymous_id": "a1", "session_id": "s1", "url": "https://x.test/?utm_source=n",
        "path": "/", "properties": {"amount": 9.5, "items": 3, "plan": "pro"},
    }
    assert ev[1] == {
        "event_id": id1, "event": "signup", "timestamp": "2026-01-02T03:04:05.250000Z",
        "anonymous_id": "a2", "user_id": "u2", "url": "https://x.test/b", "path": "/b",
        "referrer": "https://google.com/", "properties": {"items": 4},
    }
    assert isinstance(ev[0]["properties"]["amount"], float)
    assert isinstance(ev[0]["properties"]["items"], int)
    # compact JSON, properties in sorted key order
    assert b": " not in c.payloads[0] and b'"properties":{"amount":9.5,"items":3' in c.payloads[0]
    assert list(c.index) == ["r0", "r1"]


def test_strings_needing_escapes_and_unicode_round_trip():
    vals = ['say "hi"', "back\\slash", "tab\tnew\nline", "\x00\x1f", "ünï €😀", "\u2028"]
    df = pd.DataFrame({"event": vals, "note": vals})
    c = prep(df)
    ev = events_of(c)
    assert [ev[i]["event"] for i in range(len(vals))] == vals
    assert [ev[i]["properties"]["note"] for i in range(len(vals))] == vals


def test_all_missing_properties_omit_the_object_and_empty_frame_is_fine():
    df = pd.DataFrame({"event": ["a", "b"], "x": [np.nan, 1.0], "y": [None, None]})
    ev = events_of(prep(df))
    assert "properties" not in ev[0]
    assert ev[1]["properties"] == {"x": 1.0}
    empty = prep(pd.DataFrame({"event": pd.Series([], dtype=object), "x": []}))
    assert empty.valid.size == 0 and empty.payloads == [] and empty.errors.empty
    assert list(empty.errors.columns) == list(ERROR_COLUMNS)


def test_a_chunk_without_errors_gets_its_own_empty_errors_frame():
    df = pd.DataFrame({"event": ["a", "b"]})
    first, second = prep(df), prep(df)
    assert first.errors.empty and first.errors is not second.errors
    assert first.errors["position"].dtype == np.int64
    first.errors.loc[0] = [0, 0, "event", "required", "changed by the caller", None]
    assert len(first.errors) == 1 and prep(df).errors.empty  # no frame is shared


# --------------------------------------------------------------------------- field rules


def test_event_required_too_short_too_long_and_neighbours_survive():
    df = pd.DataFrame({"event": ["ok", None, "", "x" * 129, pd.NA, np.nan, "x" * 128]},
                      index=list("abcdefg"))
    c = prep(df)
    assert c.valid.tolist() == [True, False, False, False, False, False, True]
    assert errs(c) == {
        ("b", "event", "required"), ("c", "event", "too_short"), ("d", "event", "too_long"),
        ("e", "event", "required"), ("f", "event", "required"),
    }
    msg = c.errors.set_index("row").loc["d", "message"]
    assert "129" in msg and "128" in msg and "'event'" in msg
    ev = events_of(c)
    assert ev[0]["event"] == "ok" and ev[6]["event"] == "x" * 128


def test_string_field_types_ints_become_strings_floats_bools_bytes_are_type_errors():
    df = pd.DataFrame({
        "event": ["e"] * 6,
        "user_id": pd.array([1, 2, None, 4, 5, 6], dtype="Int64"),
        "anonymous_id": ["a", 7, 1.5, True, b"raw", np.int64(9)],
    })
    c = prep(df)
    assert errs(c) == {(2, "anonymous_id", "type"), (3, "anonymous_id", "type"),
                       (4, "anonymous_id", "type")}
    ev = events_of(c)
    assert ev[0]["user_id"] == "1" and ev[0]["anonymous_id"] == "a"
    assert ev[1]["anonymous_id"] == "7" and ev[5]["anonymous_id"] == "9"
    assert "bytes" in c.errors.set_index("row").loc[4, "message"]

    floats = pd.DataFrame({"event": ["e", "e"], "user_id": [1.0, np.nan]})
    c = prep(floats)
    assert errs(c) == {(0, "user_id", "type")}
    assert "Int64" in c.errors["message"].iloc[0]  # the useful hint
    assert events_of(c)[1] == {"event_id": c.event_ids[1], "event": "e"}


def test_categorical_and_length_limits_per_field():
    df = pd.DataFrame({
        "event": pd.Categorical(["a", "b", None, "a"]),
        "user_id": ["u" * 256, "u" * 257, "u", "u"],
        "anonymous_id": ["a" * 128, "a", "a" * 129, "a"],
        "url": ["h" * 2048, "h", "h", "h" * 2049],
    })
    c = prep(df)
    assert errs(c) == {(1, "user_id", "too_long"), (2, "event", "required"),
                       (2, "anonymous_id", "too_long"), (3, "url", "too_long")}
    assert events_of(c)[0]["event"] == "a"


def test_lone_surrogates_are_invalid_unicode_not_a_crash():
    df = pd.DataFrame({"event": ["ok", "bad\ud800", "ok"], "note": ["x", "y", "z\udfff"]},
                      dtype=object)  # pandas cannot store these as its Arrow "str" dtype
    c = prep(df)
    assert errs(c) == {(1, "event", "invalid_unicode"), (2, "properties.note", "invalid_unicode")}
    assert c.valid.tolist() == [True, False, False]


# --------------------------------------------------------------------------- timestamps


def test_timestamps_naive_aware_strings_and_bad_values():
    naive = pd.DataFrame({"event": ["e"] * 2, "timestamp": pd.to_datetime(
        ["2026-03-01 12:00:00.123456789", "2026-03-01"], format="ISO8601")})
    assert [e["timestamp"] for e in events_of(prep(naive)).values()] == [
        "2026-03-01T12:00:00.123456Z", "2026-03-01T00:00:00Z"]
    aware = naive.assign(timestamp=naive["timestamp"].dt.tz_localize("Europe/Paris"))
    assert [e["timestamp"] for e in events_of(prep(aware)).values()] == [
        "2026-03-01T11:00:00.123456Z", "2026-02-28T23:00:00Z"]
    strs = pd.DataFrame({"event": ["e"] * 9, "timestamp": [
        "2026-03-01T12:00:00Z", "2026-03-01 12:00:00+02:00", "2026-03-01", "not a date",
        "2026-02-30T00:00:00", None, 1767225600, dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC),
        pd.Timestamp("2026-03-01 12:00", tz="US/Eastern"),
    ]})
    c = prep(strs)
    assert errs(c) == {(3, "timestamp", "invalid_timestamp"), (4, "timestamp", "invalid_timestamp"),
                       (5, "timestamp", "required"), (6, "timestamp", "invalid_timestamp")}
    ev = events_of(c)
    assert ev[0]["timestamp"] == "2026-03-01T12:00:00Z"
    assert ev[1]["timestamp"] == "2026-03-01T10:00:00Z"
    assert ev[2]["timestamp"] == "2026-03-01T00:00:00Z"
    assert ev[7]["timestamp"] == "2026-03-01T12:00:00Z"
    assert ev[8]["timestamp"] == "2026-03-01T17:00:00Z"
    assert any("row 5 has no timestamp" in w and "invalid" in w for w in c.warnings)
    assert "epoch" in c.errors.set_index("row").loc[6, "message"]
    # missing_timestamp="server_time": the empty row is sent without a timestamp
    st = prep(strs, missing_timestamp="server_time")
    assert (5, "timestamp", "required") not in errs(st)
    assert "timestamp" not in events_of(st)[5]
    assert any("row 5 has no timestamp" in w and "server time" in w for w in st.warnings)


def test_empty_timestamps_are_invalid_and_the_warning_names_the_first_rows():
    ts = ["2026-03-01T12:00:00Z"] * 50
    for i in (3, 17, 42, 43, 44, 45, 46):
        ts[i] = None
    df = pd.DataFrame({"event": ["e"] * 50, "timestamp": ts}, index=range(100, 150))
    c = prep(df)
    bad = [100 + i for i in (3, 17, 42, 43, 44, 45, 46)]
    assert errs(c) == {(r, "timestamp", "required") for r in bad}
    assert c.valid.sum() == 43 and len(c.payloads) == 43
    msg = c.errors["message"].iloc[0]
    assert "column 'timestamp' is empty" in msg and "missing_timestamp='server_time'" in msg
    (w,) = [w for w in c.warnings if "no timestamp" in w]
    assert w.startswith("rows 103, 117, 142, 143, 144 ... (7 in all) have no timestamp")
    # a datetime column's NaT and a float column's NaN count the same
    nat = pd.DataFrame({"event": ["e", "e"], "timestamp": pd.to_datetime(["2026-01-01", None])})
    assert errs(prep(nat)) == {(1, "timestamp", "required")}
    num = pd.DataFrame({"event": ["e", "e"], "timestamp": [1.5e9, float("nan")]})
    assert errs(prep(num)) == {(0, "timestamp", "invalid_timestamp"), (1, "timestamp", "required")}
    assert errs(prep(num, missing_timestamp="server_time")) == {
        (0, "timestamp", "invalid_timestamp")}
    with pytest.raises(ConfigurationError, match="missing_timestamp must be"):
        prep(nat, missing_timestamp="now")


def test_a_string_of_digits_gets_the_epoch_hint():
    df = pd.DataFrame({"event": ["e"] * 3,
                       "timestamp": ["1731600000", "1731600000123", "N/A"]})
    c = prep(df)
    assert errs(c) == {(i, "timestamp", "invalid_timestamp") for i in range(3)}
    msgs = c.errors.set_index("row")["message"]
    assert "looks like a Unix epoch" in msgs[0] and "unit='s'" in msgs[0]
    assert "unit='ms'" in msgs[1]
    assert "epoch" not in msgs[2]


def test_numeric_timestamp_column_and_future_and_missing_timestamp_column_warnings():
    c = prep(pd.DataFrame({"event": ["e"], "timestamp": [1767225600]}))
    assert errs(c) == {(0, "timestamp", "invalid_timestamp")}
    fut = prep(pd.DataFrame({"event": ["e", "e"], "timestamp": pd.to_datetime(
        ["2026-05-31 23:59:59", "2026-06-01 00:00:01"])}))
    assert fut.valid.all()
    assert any("1 row(s) have a timestamp in the future" in w for w in fut.warnings)
    none = prep(pd.DataFrame({"event": ["e"], "anonymous_id": ["a"]}))
    assert any(w.startswith("no timestamp column") for w in none.warnings)


def test_rows_without_user_or_anonymous_id_are_warned():
    c = prep(pd.DataFrame({"event": ["e"] * 3, "user_id": ["u", None, None],
                           "anonymous_id": [None, "a", None]}))
    assert c.valid.all()
    assert any("1 row(s) have neither user_id nor anonymous_id" in w for w in c.warnings)


# --------------------------------------------------------------------------- properties


def test_property_values_json_cannot_carry_are_reported_per_row():
    big = 2**53
    df = pd.DataFrame({
        "event": ["e"] * 7,
        "n": [1, big, -big, 2, 3, 4, 5],
        "f": [1.5, 2.0, 3.0, np.inf, -np.inf, np.nan, 0.0],
        "obj": [Decimal("1.50"), {"a": [1, {"b": None}]}, [1, "x"], b"raw", Decimal("NaN"),
                float("nan"), object()],
    })
    c = prep(df)
    assert errs(c) == {
        (1, "properties.n", "int_out_of_range"), (2, "properties.n", "int_out_of_range"),
        (3, "properties.f", "not_json"), (4, "properties.f", "not_json"),
        (3, "properties.obj", "not_json"), (4, "properties.obj", "not_json"),
        (6, "properties.obj", "not_json"),
    }
    ev = events_of(c)
    assert ev[0]["properties"] == {"n": 1, "f": 1.5, "obj": 1.5}
    assert ev[5]["properties"] == {"n": 4}  # NaN float and NaN object: omitted
    assert set(ev) == {0, 5}
    ok = prep(pd.DataFrame({"event": ["e", "e"], "n": [2**53 - 1, -(2**53 - 1)],
                            "obj": [{"a": [1, {"b": None}]}, [1, "x"]]}))
    e = events_of(ok)
    assert e[0]["properties"] == {"n": 2**53 - 1, "obj": {"a": [1, {"b": None}]}}
    assert e[1]["properties"] == {"n": -(2**53 - 1), "obj": [1, "x"]}


def test_uint_bool_datetime_and_mixed_object_property_columns():
    df = pd.DataFrame({
        "event": ["e"] * 3,
        "u": np.array([1, 2**63, 3], dtype=np.uint64),
        "b": pd.array([True, None, False], dtype="boolean"),
        "when": pd.to_datetime(["2026-01-01 00:00:00.5", None, "2026-01-02"],
                               format="ISO8601").tz_localize("UTC"),
        "mix": [1, "two", 3.5],
    })
    c = prep(df)
    assert errs(c) == {(1, "properties.u", "int_out_of_range")}
    ev = events_of(c)
    assert ev[0]["properties"] == {"u": 1, "b": True, "when": "2026-01-01T00:00:00.500000Z",
                                   "mix": 1}
    assert ev[2]["properties"] == {"u": 3, "b": False, "when": "2026-01-02T00:00:00Z",
                                   "mix": 3.5}


def test_properties_larger_than_8kb_are_too_large():
    df = pd.DataFrame({"event": ["e", "e"], "blob": ["x" * 8000, "x" * 8200]})
    c = prep(df)
    assert errs(c) == {(1, "properties", "too_large")}
    assert c.errors["message"].iloc[0] == (
        "is 8,211 bytes once JSON-encoded (limit 8,192); largest: blob (8,209)")
    raw = orjson.dumps({"blob": "x" * 8000})
    assert len(raw) <= contract.PROPERTIES_MAX_BYTES
    assert orjson.loads(c.payloads[0])["properties"] == {"blob": "x" * 8000}


def test_dict_column_properties():
    df = pd.DataFrame({
        "event": ["e"] * 5,
        "properties": [{"a": 1, "nested": {"x": [1, 2]}}, {"n": float("nan")}, None, "nope",
                       {"big": 2**60}],
    })
    m, _ = resolve_mapping(list(df.columns))
    assert m.properties == "properties" and m.properties_is_dict_column
    c = prepare_chunk(df, m, now=NOW, pii="ignore")
    assert errs(c) == {(3, "properties", "type"), (4, "properties.big", "int_out_of_range")}
    ev = events_of(c)
    assert ev[0]["properties"] == {"a": 1, "nested": {"x": [1, 2]}}
    assert ev[1]["properties"] == {"n": None}  # NaN inside a dict: null, as encode.dumps
    assert "properties" not in ev[2]


# --------------------------------------------------------------------------- indexes


def test_multiindex_and_non_unique_index_labels_in_errors():
    mi = pd.MultiIndex.from_tuples([("x", 1), ("x", 2), ("y", 1)])
    c = prep(pd.DataFrame({"event": ["a", None, "c"]}, index=mi), offset=100)
    assert c.errors["row"].tolist() == [("x", 2)]
    assert c.errors["position"].tolist() == [101]
    dup = pd.DataFrame({"event": [None, "b", None]}, index=[7, 7, 7])
    c = prep(dup, offset=10)
    assert c.errors["row"].tolist() == [7, 7]
    assert c.errors["position"].tolist() == [10, 12]
    assert c.valid.tolist() == [False, True, False]


# --------------------------------------------------------------------------- stable ids


def _frame(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame({
        "event": ["view", "buy"] * (n // 2),
        "anonymous_id": [f"a{i % 3}" for i in range(n)],
        "timestamp": pd.to_datetime("2026-01-01") + pd.to_timedelta([i % 4 for i in range(n)],
                                                                      unit="h"),
        "amount": [float(i % 2) for i in range(n)],
    })


def test_stable_ids_equal_across_runs_chunkings_and_indexes():
    df = _frame(24)
    one = prep(df, ids=EventIdState()).event_ids.tolist()
    assert one == prep(df, ids=EventIdState()).event_ids.tolist()
    for size in (1, 5, 7, 24):
        state = EventIdState()
        got: list = []
        for start in range(0, len(df), size):
            got += prep(df.iloc[start:start + size], ids=state, offset=start).event_ids.tolist()
        assert got == one, size
    reindexed = df.set_axis([f"k{i}" for i in range(len(df))])
    assert prep(reindexed, ids=EventIdState()).event_ids.tolist() == one
    assert all(isinstance(i, str) and i.startswith("mm_") and len(i) == 35 for i in one)


def test_ids_do_not_depend_on_which_chunk_holds_the_missing_values():
    n = 40
    df = _frame(n).assign(
        user_id=[None if i % 5 else f"u{i % 2}" for i in range(n)],
        amount=[np.nan if i % 7 == 0 else float(i % 2) for i in range(n)],
        note=[None] * 20 + ["x"] * 20,  # whole chunks without any value
    )
    whole = prep(df, ids=EventIdState())
    for size in (3, 10, 20):
        state = EventIdState()
        got: list = []
        payloads: list = []
        for start in range(0, n, size):
            c = prep(df.iloc[start:start + size], ids=state, offset=start)
            got += c.event_ids.tolist()
            payloads += c.payloads
        assert got == whole.event_ids.tolist(), size
        assert payloads == whole.payloads, size


def test_identical_rows_get_distinct_ids_and_column_order_does_not_matter():
    df = _frame(24)  # rows repeat every 12
    assert df.duplicated().sum() == 12
    ids = prep(df, ids=EventIdState()).event_ids.tolist()
    assert len(set(ids)) == len(ids)
    swapped = df[["amount", "timestamp", "anonymous_id", "event"]]
    assert prep(swapped, ids=EventIdState()).event_ids.tolist() == ids
    # the id encodes content: a changed field changes the id of that row only
    changed = df.copy()
    changed.loc[3, "amount"] = 99.0
    ids2 = prep(changed, ids=EventIdState()).event_ids.tolist()
    assert ids2[3] != ids[3] and ids2[:3] == ids[:3]


def test_stable_ids_are_the_same_in_another_process():
    df = _frame(6)
    here = prep(df, ids=EventIdState()).event_ids.tolist()
    code = (
        "import pandas as pd, json\n"
        "from millimetric_nb.frame import resolve_mapping, prepare_chunk, EventIdState\n"
        "df = pd.DataFrame({'event': ['view', 'buy'] * 3,"
        " 'anonymous_id': [f'a{i % 3}' for i in range(6)],"
        " 'timestamp': pd.to_datetime('2026-01-01') + pd.to_timedelta([i % 4 for i in range(6)],"
        " unit='h'), 'amount': [float(i % 2) for i in range(6)]})\n"
        "m, _ = resolve_mapping(list(df.columns))\n"
        "print(json.dumps(prepare_chunk(df, m, ids=EventIdState()).event_ids.tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert orjson.loads(out.stdout) == here


def test_given_event_ids_are_kept_and_missing_ones_derived():
    df = pd.DataFrame({"event": ["a", "b", "c", "d"], "event_id": ["id-1", None, 'q"x', "id-1"]})
    c = prep(df)
    assert c.event_ids[0] == "id-1" and c.event_ids[2] == 'q"x'
    assert c.event_ids[1].startswith("mm_")
    ev = events_of(c)
    assert [ev[i]["event_id"] for i in range(4)] == list(c.event_ids)
    assert any("repeat an event_id" in w for w in c.warnings)
    bad = prep(pd.DataFrame({"event": ["a", "b"], "event_id": ["", "x" * 129]}))
    assert errs(bad) == {(0, "event_id", "too_short"), (1, "event_id", "too_long")}
    assert bad.event_ids.tolist() == [None, None]


def test_encode_false_validates_only():
    df = pd.DataFrame({"event": ["a", None]})
    c = prep(df, encode=False)
    assert c.payloads == [] and c.valid.tolist() == [True, False]
    assert errs(c) == {(1, "event", "required")}


# --------------------------------------------------------------------------- mapping


def test_mapping_auto_pickup_explicit_names_and_default_properties():
    cols = ["event", "user_id", "ts", "visitor", "source", "medium", "plan", "url"]
    m, warns = resolve_mapping(cols, timestamp_col="ts", anonymous_id_col="visitor")
    assert m == FieldMapping(
        event_col="event", event=None,
        columns={"timestamp": "ts", "anonymous_id": "visitor", "user_id": "user_id", "url": "url"},
        properties=["plan"], ignored_enriched=["source", "medium"],
    )
    assert len(warns) == 1 and "'source', 'medium'" in warns[0] and "not sent" in warns[0]


def test_enriched_columns_are_not_sent():
    df = pd.DataFrame({"event": ["e"], "source": ["google"], "country": ["FR"], "plan": ["p"]})
    ev = events_of(prep(df))[0]
    assert "source" not in ev and "country" not in ev
    assert ev["properties"] == {"plan": "p"}
    # listed explicitly, an enriched-named column is an ordinary property
    ev = events_of(prep(df, properties=["source"]))[0]
    assert ev["properties"] == {"source": "google"}


def test_constant_event_and_properties_list_and_empty_list():
    df = pd.DataFrame({"name_of_thing": ["x"], "a": [1], "b": [2], "event": ["ignored"]})
    m, warns = resolve_mapping(list(df.columns), event="signup", properties=["a"])
    assert m.event == "signup" and m.event_col is None
    assert any("column 'event' is not sent" in w for w in warns)
    ev = events_of(prepare_chunk(df, m, now=NOW, pii="ignore"))[0]
    assert ev["event"] == "signup" and ev["properties"] == {"a": 1}
    m, _ = resolve_mapping(list(df.columns), event="signup", properties=[])
    assert "properties" not in events_of(prepare_chunk(df, m, now=NOW))[0]


@pytest.mark.parametrize("kwargs, column", [
    ({"user_id_col": "nope"}, "nope"),
    ({"event_col": "kind"}, "kind"),
    ({"properties": ["a", "zz"]}, "zz"),
])
def test_mapping_names_a_missing_column(kwargs, column):
    with pytest.raises(ValidationError) as ei:
        resolve_mapping(["event", "a"], **kwargs)
    assert ei.value.code == "invalid_mapping"
    assert repr(column) in str(ei.value)


def test_mapping_refuses_duplicates_bad_constant_and_colliding_keys():
    with pytest.raises(ValidationError) as ei:
        resolve_mapping(["event", "a", "a"])
    assert ei.value.code == "invalid_mapping" and "'a'" in str(ei.value)
    df = pd.DataFrame([["e", 1, 2]], columns=["event", "a", "a"])
    with pytest.raises(ValidationError, match="duplicate"):
        prepare_chunk(df, FieldMapping("event", None, {}, ["a"]))
    with pytest.raises(ValidationError) as ei:
        resolve_mapping(["x"], event="")
    assert ei.value.problems[0][:2] == ("event", "too_short")
    with pytest.raises(ValidationError, match="both be sent as key '1'"):
        resolve_mapping(["event", 1, "1"])


def test_non_string_column_labels_become_string_keys():
    df = pd.DataFrame({"event": ["e"], 5: [1], ("a", "b"): [2]})
    ev = events_of(prep(df))[0]
    assert ev["properties"] == {"5": 1, "('a', 'b')": 2}


# --------------------------------------------------------------------------- PII


def test_pii_by_name_and_by_value_warn_error_ignore():
    df = pd.DataFrame({
        "event": ["e"] * 3,
        "contact": ["a@example.com", "x", None],
        "phone_number": ["1", "2", "3"],
        "contact2": ["+33 6 12 34 56 78", "no", None],
        "product_name": ["Shoe", "Hat", "Cap"],
        "plan": ["free", "pro", "team"],
    })
    c = prep(df, pii="warn")
    w = [x for x in c.warnings if "personal data" in x]
    assert len(w) == 1
    assert "'contact' (1 value(s) look like email addresses)" in w[0]
    assert "'phone_number' (its name" in w[0]
    assert "'contact2' (1 value(s) look like phone numbers)" in w[0]
    assert "product_name" not in w[0] and "'plan'" not in w[0]
    assert c.valid.all()
    with pytest.raises(ValidationError) as ei:
        prep(df, pii="error")
    fields = {p[0] for p in ei.value.problems}
    assert fields == {"properties.contact", "properties.phone_number", "properties.contact2"}
    assert all(p[1] == "personal_data" for p in ei.value.problems)
    assert not any("personal" in x for x in prep(df, pii="ignore").warnings)


def test_pii_in_dict_column_keys_and_values():
    df = pd.DataFrame({"event": ["e", "e"],
                       "properties": [{"email": "a@b.co"}, {"note": "write to z@y.org"}]})
    c = prep(df, pii="warn")
    assert any("'email'" in w for w in c.warnings)
    df2 = pd.DataFrame({"event": ["e"], "properties": [{"contact": "z@y.org"}]})
    assert any("email-looking" in w for w in prep(df2, pii="warn").warnings)


# --------------------------------------------------------------------------- unusual dtypes


@pytest.mark.parametrize("values, expected, rule", [
    (pd.arrays.SparseArray([0, 1]), [0, 1], None),
    (np.array([1, 2], dtype=np.int8), [1, 2], None),
    (np.array([1, 255], dtype=np.uint8), [1, 255], None),
    (np.array([0.1, 2.0], dtype=np.float32), [float(np.float32(0.1)), 2.0], None),
    (pd.array([1, None], dtype="int64[pyarrow]"), [1, None], None),
    (pd.array([True, None], dtype="bool[pyarrow]"), [True, None], None),
    (pd.array([dt.date(2020, 1, 1), None], dtype="date32[pyarrow]"), ["2020-01-01", None], None),
    (pd.Categorical([3, None]), [3, None], None),
    (pd.to_timedelta([1, 2], unit="s"), None, "not_json"),
    (pd.period_range("2020-01", periods=2, freq="M"), None, "not_json"),
    (np.array([1 + 2j, 3j]), None, "not_json"),
])
def test_unusual_property_dtypes(values, expected, rule):
    df = pd.DataFrame({"event": ["e", "e"], "v": values})
    c = prep(df)
    if rule is None:
        assert c.errors.empty
        got = [e.get("properties", {}).get("v") for e in events_of(c).values()]
        assert got == expected
        assert [type(x) for x in got] == [type(x) for x in expected]
    else:
        assert errs(c) == {(0, "properties.v", rule), (1, "properties.v", rule)}


def test_unusual_dtypes_in_string_and_timestamp_fields_are_typed_errors():
    df = pd.DataFrame({
        "event": ["e", "e"],
        "user_id": pd.to_timedelta([1, 2], unit="s"),
        "timestamp": pd.period_range("2020-01", periods=2, freq="M"),
    })
    c = prep(df)
    assert errs(c) == {(0, "user_id", "type"), (1, "user_id", "type"),
                       (0, "timestamp", "invalid_timestamp"), (1, "timestamp", "invalid_timestamp")}
    ok = prep(pd.DataFrame({"event": ["e"], "timestamp": pd.array(
        [pd.Timestamp("2020-01-01 05:00")], dtype="timestamp[us, UTC][pyarrow]")}))
    assert events_of(ok)[0]["timestamp"] == "2020-01-01T05:00:00Z"


def test_event_id_state_counts_occurrences_like_a_dict_across_any_split():
    rng = np.random.default_rng(1)
    for _ in range(100):
        keys = rng.integers(0, 20, rng.integers(0, 60)).astype(np.uint64)
        state, got, i = EventIdState(), [], 0
        while i < len(keys):
            k = int(rng.integers(1, 10))
            got += state.occurrences(keys[i:i + k]).tolist()
            i += k
        seen: dict[int, int] = {}
        expected = []
        for k in keys.tolist():
            expected.append(seen.get(k, 0))
            seen[k] = seen.get(k, 0) + 1
        assert got == expected
        assert len(state) == len(seen)


def test_pii_columns_for_traits():
    from millimetric_nb.frame import pii_columns

    df = pd.DataFrame({"plan": ["pro"], "contact": ["x@y.org"], "firstName": ["Ann"],
                       "age": [40]})
    assert pii_columns(df, ["plan", "contact", "firstName", "age"]) == {
        "contact": "1 value(s) look like email addresses",
        "firstName": "its name looks like personal data",
    }


def test_unknown_pii_mode_is_a_typed_refusal():
    from millimetric_nb.errors import ConfigurationError

    df = pd.DataFrame({"event": ["a"]})
    mapping, _ = resolve_mapping(df.columns)
    with pytest.raises(ConfigurationError) as exc:
        prepare_chunk(df, mapping, pii="maybe")
    assert exc.value.code == "invalid_pii" and "pii" in str(exc.value)


def test_too_large_names_the_largest_property_columns_of_that_row():
    df = pd.DataFrame({"event": ["e"] * 2, "notes": ["n" * 8900, "short"],
                       "tags": ["t" * 72, "t"], "n": [1, 2], "q": ['"quoted"' * 3, None]})
    c = prep(df)
    (msg,) = c.errors["message"].tolist()
    row = {"notes": "n" * 8900, "tags": "t" * 72, "n": 1, "q": '"quoted"' * 3}
    sizes = {k: len(orjson.dumps({k: v})) - 2 for k, v in row.items()}
    total = len(orjson.dumps(row))
    assert msg == (f"is {total:,} bytes once JSON-encoded (limit 8,192); largest: "
                   f"notes ({sizes['notes']:,}), tags ({sizes['tags']}), q ({sizes['q']})")
    # a column of dicts: the keys of that row's object
    d = pd.DataFrame({"event": ["e"], "properties": [{"a": "x" * 9000, "b": [1, 2]}]})
    (msg,) = prep(d).errors["message"].tolist()
    assert msg.endswith("largest: a (9,006), b (9)")


def test_a_property_key_ending_in_nul_keeps_it_in_the_error_path() -> None:
    """Found by the agreement test: numpy's unicode scalars drop trailing NULs, so a
    path built with ``np.full(n, path, dtype=object)`` lost the key's last character."""
    from millimetric_nb import events, frame

    df = pd.DataFrame({"event": ["e"], "timestamp": [dt.datetime(2000, 1, 1)],
                       "obj": [{"k\x00": 2**53}]})
    mapping, _ = frame.resolve_mapping(list(df.columns))
    got = frame.prepare_chunk(df, mapping, pii="allow").errors
    assert got["field"].tolist() == ["properties.obj.k\x00"]
    with pytest.raises(ValidationError) as raised:
        events.prepare_event({"event": "e", "properties": {"obj": {"k\x00": 2**53}}})
    assert [p[0] for p in raised.value.problems] == ["properties.obj.k\x00"]


def test_str_subclass_cells_are_sent_as_their_text_without_calling_their_methods() -> None:
    from millimetric_nb import frame

    class Hostile(str):
        def __str__(self) -> str:
            raise RuntimeError("__str__")

        def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
            raise RuntimeError("encode")

    df = pd.DataFrame({"event": pd.Series([Hostile("signup"), "b", Hostile("c\ud800")],
                                          dtype=object),
                       "plan": pd.Series([Hostile("pro"), None, "free"], dtype=object)})
    mapping, _ = frame.resolve_mapping(list(df.columns))
    p = frame.prepare_chunk(df, mapping, pii="allow")
    assert p.valid.tolist() == [True, True, False]  # the lone surrogate, named
    assert p.errors["rule"].tolist() == [contract.RULE_UNICODE]
    sent = [orjson.loads(x) for x in p.payloads]
    assert [e["event"] for e in sent] == ["signup", "b"]
    assert sent[0]["properties"] == {"plan": "pro"} and "properties" not in sent[1]
