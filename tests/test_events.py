"""events: one event / identify / forget body checked by the contract's field table."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import orjson
import pandas as pd
import pytest

from millimetric_nb import contract
from millimetric_nb.errors import MillimetricError, ValidationError
from millimetric_nb.events import (
    EnrichedFieldWarning,
    check_event,
    encode_event,
    prepare_event,
    prepare_forget,
    prepare_identify,
)


def rules(exc: ValidationError) -> dict[str, str]:
    return {path: rule for path, rule, _ in exc.problems}


def test_prepare_event_normalises():
    body = prepare_event({
        "event": np.str_("signup"),
        "timestamp": pd.Timestamp("2024-05-01 10:00", tz="Europe/Paris"),
        "user_id": "u1",
        "anonymous_id": None,
        "session_id": float("nan"),
        "path": pd.NA,
        "properties": {"plan": "pro", "seats": np.int64(3), "gap": np.nan},
    })
    assert body == {
        "event": "signup",
        "timestamp": "2024-05-01T08:00:00Z",
        "user_id": "u1",
        "properties": {"plan": "pro", "seats": 3, "gap": None},
    }
    assert type(body["event"]) is str


def test_encode_event_matches_prepare_event():
    fields = {"event": "x", "timestamp": dt.datetime(2024, 1, 1), "properties": {"a": [1, 2]}}
    assert orjson.loads(encode_event(fields)) == prepare_event(fields)


def test_enriched_fields_dropped_with_warning_naming_them():
    with pytest.warns(EnrichedFieldWarning, match="country, source"):
        body = prepare_event({"event": "x", "source": "google", "country": "FR"})
    assert body == {"event": "x"}


@pytest.mark.parametrize(
    ("fields", "path", "rule"),
    [
        ({}, "event", contract.RULE_REQUIRED),
        ({"event": None}, "event", contract.RULE_REQUIRED),
        ({"event": ""}, "event", contract.RULE_TOO_SHORT),
        ({"event": "e" * 129}, "event", contract.RULE_TOO_LONG),
        ({"event": 12}, "event", contract.RULE_TYPE),
        ({"event": b"signup"}, "event", contract.RULE_TYPE),
        ({"event": "x", "user_id": 42}, "user_id", contract.RULE_TYPE),
        ({"event": "x", "user_id": "u" * 257}, "user_id", contract.RULE_TOO_LONG),
        ({"event": "x", "url": "h" * 10_000}, "url", contract.RULE_TOO_LONG),
        ({"event": "x", "anonymous_id": "a\ud800"}, "anonymous_id", contract.RULE_UNICODE),
        ({"event": "x", "timestamp": "yesterday"}, "timestamp", contract.RULE_TIMESTAMP),
        ({"event": "x", "timestamp": 1_700_000_000}, "timestamp", contract.RULE_TIMESTAMP),
        ({"event": "x", "properties": "not a dict"}, "properties", contract.RULE_TYPE),
        ({"event": "x", "properties": {"o": object()}}, "properties.o", contract.RULE_NOT_JSON),
        ({"event": "x", "properties": {"b": b"x"}}, "properties.b", contract.RULE_NOT_JSON),
        ({"event": "x", "properties": {"n": [float("inf")]}}, "properties.n[0]",
         contract.RULE_NOT_JSON),
        ({"event": "x", "properties": {"s": "\udfff"}}, "properties.s", contract.RULE_UNICODE),
        ({"event": "x", "properties": {"big": 2**63}}, "properties.big", contract.RULE_INT_RANGE),
        ({"event": "x", "properties": {"t": "x" * 9000}}, "properties", contract.RULE_TOO_LARGE),
        ({"event": "x", "colour": "red"}, "colour", contract.RULE_UNKNOWN_FIELD),
    ],
)
def test_bad_input_names_field_and_rule(fields, path, rule):
    with pytest.raises(ValidationError) as info:
        prepare_event(fields)
    assert rules(info.value) == {path: rule}
    assert path in str(info.value) and rule in str(info.value)
    assert info.value.code == "validation_failed"


def test_properties_limit_is_bytes_of_utf8_not_characters():
    # 3 bytes per character: 2,700 characters is ~8.1 KB encoded.
    ok = {"t": "€" * 2700}
    assert len(orjson.dumps(ok)) <= contract.PROPERTIES_MAX_BYTES
    prepare_event({"event": "x", "properties": ok})
    too_big = {"t": "€" * 2740}
    assert len(orjson.dumps(too_big)) > contract.PROPERTIES_MAX_BYTES
    with pytest.raises(ValidationError) as info:
        prepare_event({"event": "x", "properties": too_big})
    assert rules(info.value) == {"properties": contract.RULE_TOO_LARGE}


def test_a_timestamp_given_as_missing_is_required_unless_server_time():
    for missing in (None, float("nan"), pd.NaT, pd.NA):
        with pytest.raises(ValidationError) as info:
            prepare_event({"event": "x", "timestamp": missing})
        assert rules(info.value) == {"timestamp": contract.RULE_REQUIRED}
        assert "missing_timestamp='server_time'" in str(info.value.problems[0][2])
        body = prepare_event({"event": "x", "timestamp": missing}, missing_timestamp="server_time")
        assert body == {"event": "x"}
    assert prepare_event({"event": "x"}) == {"event": "x"}  # no timestamp given: server time
    raw, problems, _ = check_event({"event": "x", "timestamp": None}, prefix="events[2].")
    assert raw is None and [p[:2] for p in problems] == [("events[2].timestamp", "required")]


def test_a_string_of_digits_gets_the_epoch_hint_and_too_large_names_the_largest_keys():
    with pytest.raises(ValidationError) as info:
        prepare_event({"event": "x", "timestamp": "1731600000"})
    msg = info.value.problems[0][2]
    assert "looks like a Unix epoch" in msg and "unit='s'" in msg
    with pytest.raises(ValidationError) as info:
        prepare_event({"event": "x", "properties": {"notes": "n" * 8900, "tags": ["a", "b"]}})
    size = len(orjson.dumps({"notes": "n" * 8900, "tags": ["a", "b"]}))
    assert info.value.problems[0][2] == (
        f"is {size:,} bytes once JSON-encoded (limit 8,192); largest: notes (8,910), tags (16)")


def test_every_problem_is_reported_not_only_the_first():
    with pytest.raises(ValidationError) as info:
        prepare_event({"event": None, "user_id": 5, "timestamp": "no", "properties": []})
    assert rules(info.value) == {
        "event": contract.RULE_REQUIRED,
        "user_id": contract.RULE_TYPE,
        "timestamp": contract.RULE_TIMESTAMP,
        "properties": contract.RULE_TYPE,
    }


def test_not_a_mapping_is_a_validation_error():
    with pytest.raises(ValidationError) as info:
        prepare_event(["event", "x"])  # type: ignore[arg-type]
    assert info.value.problems[0][1] == contract.RULE_TYPE


def test_check_event_neither_raises_nor_warns_and_prefixes_paths():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw, problems, dropped = check_event({"event": "x", "os": "linux"}, prefix="events[3].")
        assert orjson.loads(raw) == {"event": "x"} and dropped == ["os"] and problems == []
        raw, problems, _ = check_event({"event": 1}, prefix="events[3].")
    assert raw is None
    assert problems[0][:2] == ("events[3].event", contract.RULE_TYPE)


def test_identify_and_forget_bodies():
    assert prepare_identify("anon-1", "user-1", {"plan": "pro"}) == {
        "anonymous_id": "anon-1", "user_id": "user-1", "traits": {"plan": "pro"}
    }
    assert prepare_identify("a", "u") == {"anonymous_id": "a", "user_id": "u"}
    assert prepare_forget("user-1") == {"user_id": "user-1"}
    with pytest.raises(ValidationError) as info:
        prepare_identify(None, "u" * 300, traits=["x"])  # type: ignore[arg-type]
    assert rules(info.value) == {
        "anonymous_id": contract.RULE_REQUIRED,
        "user_id": contract.RULE_TOO_LONG,
        "traits": contract.RULE_TYPE,
    }
    with pytest.raises(ValidationError) as info2:
        prepare_forget(b"user")
    assert rules(info2.value) == {"user_id": contract.RULE_TYPE}
    assert isinstance(info2.value, MillimetricError)
