"""The contract's field table drives every field: a string field added to a copy of the
table is mapped, checked and encoded by the column-wise path, checked and kept by the
row-wise path and checked by the local server, with no other code changed."""

from __future__ import annotations

import orjson
import pandas as pd
import pytest

from millimetric_nb import contract, frame
from millimetric_nb.contract import FieldSpec
from millimetric_nb.errors import ConfigurationError, ValidationError
from millimetric_nb.events import prepare_event, violations
from millimetric_nb.frame import (
    COLUMN_FIELDS,
    EventIdState,
    check_mapping_keywords,
    column_fields,
    mapping_keywords,
    prepare_chunk,
    resolve_mapping,
)
from millimetric_nb.rules import Violation
from millimetric_nb.server import checks
from millimetric_nb.validate import validate_frame

NOW = pd.Timestamp("2026-06-01T00:00:00Z")
NEW = FieldSpec("campaign_code", "string", min_length=1, max_length=8)


@pytest.fixture
def extended(monkeypatch: pytest.MonkeyPatch) -> dict[str, FieldSpec]:
    """A copy of the contract's event table with ``campaign_code`` before ``properties``."""
    table = {k: v for k, v in contract.EVENT_FIELDS.items() if k != "properties"}
    table["campaign_code"] = NEW
    table["properties"] = contract.EVENT_FIELDS["properties"]
    monkeypatch.setattr(contract, "EVENT_FIELDS", table)
    return table


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "event": ["view", "view", "view", "view"],
        "user_id": ["u1", "u2", "u3", "u4"],
        "timestamp": ["2026-01-01T00:00:00Z"] * 4,
        "campaign_code": ["spring", "much-too-long", None, ""],
        "plan": ["pro", "free", "pro", "free"],
    })


def test_todays_table_gives_todays_keywords_and_fields():
    assert column_fields() == COLUMN_FIELDS == (
        "event_id", "timestamp", "anonymous_id", "user_id", "session_id", "url", "path",
        "referrer",
    )
    # the encoded order (event_id leads each payload): derived ids hash these bytes, so
    # today's fields keep today's order; "event", always present, comes first
    assert frame._encoded_fields() == (
        "event", "timestamp", "anonymous_id", "user_id", "session_id", "url", "path",
        "referrer", "properties",
    )
    assert mapping_keywords() == (
        "event", "event_col", "event_id_col", "timestamp_col", "anonymous_id_col",
        "user_id_col", "session_id_col", "url_col", "path_col", "referrer_col", "properties",
    )


def test_the_added_field_has_a_mapping_keyword(extended):
    assert "campaign_code" in column_fields()
    assert "campaign_code_col" in mapping_keywords()
    check_mapping_keywords({"campaign_code_col": "cc"})  # known: no error
    with pytest.raises(ConfigurationError, match="campaign_code_col"):
        check_mapping_keywords({"campaign_col": "cc"})  # a typo names the closest keyword
    df = _frame().rename(columns={"campaign_code": "cc"})
    m, _ = resolve_mapping(list(df.columns), campaign_code_col="cc")
    assert m.columns["campaign_code"] == "cc" and "cc" not in m.property_columns


def test_the_added_field_is_checked_and_encoded_column_wise(extended):
    df = _frame()
    m, _ = resolve_mapping(list(df.columns))
    assert m.columns["campaign_code"] == "campaign_code"  # a field, not a property
    assert m.property_columns == ["plan"]
    chunk = prepare_chunk(df, m, pii="ignore", now=NOW, ids=EventIdState())
    assert chunk.valid.tolist() == [True, False, True, False]
    errs = chunk.errors[["position", "field", "rule", "value"]].to_dict("records")
    assert errs == [
        {"position": 1, "field": "campaign_code", "rule": "too_long", "value": "'much-too-long'"},
        {"position": 3, "field": "campaign_code", "rule": "too_short", "value": "''"},
    ]
    first, third = (orjson.loads(p) for p in chunk.payloads)
    assert first["campaign_code"] == "spring" and "campaign_code" not in third
    # encoded in the table's order: after referrer's place, before properties
    assert list(first) == ["event_id", "event", "timestamp", "user_id", "campaign_code",
                           "properties"]
    report = validate_frame(df, pii="ignore", now=NOW, warn=False)
    assert set(report.errors["field"]) == {"campaign_code"}


def test_the_added_field_is_checked_and_kept_row_wise(extended):
    body = prepare_event({"event": "view", "campaign_code": "spring"})
    assert body == {"event": "view", "campaign_code": "spring"}
    with pytest.raises(ValidationError) as info:
        prepare_event({"event": "view", "campaign_code": "much-too-long"})
    assert info.value.problems == [
        ("campaign_code", "too_long", "must be at most 8 characters, got 13")]
    _, found, _ = violations({"event": "view", "campaign_code": 5})
    assert found == [Violation("campaign_code", "type", "must be a string, got int", "5")]


def test_the_added_field_is_refused_without_the_table_entry():
    with pytest.raises(ValidationError) as info:
        prepare_event({"event": "view", "campaign_code": "spring"})
    assert info.value.problems[0][:2] == ("campaign_code", "unknown_field")


def test_the_server_checks_the_added_field_per_the_table(extended):
    problems: checks.Problems = {}
    ok, _, _ = checks.check_fields({"event": "view", "campaign_code": "spring"},
                                   contract.EVENT_FIELDS, "", problems)
    assert ok and problems == {}
    ok, _, _ = checks.check_fields({"event": "view", "campaign_code": "much-too-long"},
                                   contract.EVENT_FIELDS, "events.0.", problems)
    assert not ok
    assert problems == {
        "events.0.campaign_code": ["too_long: must be at most 8 characters, got 13"]}
    problems = {}
    checks.check_fields({"event": "view", "campaign_code": 7}, contract.EVENT_FIELDS, "",
                        problems)
    assert problems == {"campaign_code": ["type: must be a string, got number"]}


def test_a_required_field_added_to_the_table_must_be_mapped(extended, monkeypatch):
    table = dict(extended)
    table["campaign_code"] = FieldSpec("campaign_code", "string", required=True, min_length=1)
    monkeypatch.setattr(contract, "EVENT_FIELDS", table)
    with pytest.raises(ValidationError, match="campaign_code_col"):
        resolve_mapping(["event", "user_id"])
    df = pd.DataFrame({"event": ["a", "b"], "campaign_code": ["x", None]})
    m, _ = resolve_mapping(list(df.columns), properties=[])
    chunk = prepare_chunk(df, m, pii="ignore", now=NOW, ids=EventIdState())
    assert chunk.valid.tolist() == [True, False]
    assert chunk.errors[["field", "rule"]].values.tolist() == [["campaign_code", "required"]]
    with pytest.raises(ValidationError) as info:
        prepare_event({"event": "a"})
    assert info.value.problems[0][:2] == ("campaign_code", "required")


def test_violation_travels_as_a_triple_and_as_a_field_error():
    v = Violation.of("events[3].user_id", "too_long", "must be at most 256 characters, got 300",
                     "u" * 300)
    assert v.problem == ("events[3].user_id", "too_long",
                         "must be at most 256 characters, got 300")
    assert v.value is not None and len(v.value) <= 40
    assert Violation.parse(v.path, v.field_error) == Violation(v.path, v.rule, v.message)
    assert Violation.parse("x", "no rule here").rule == "invalid"
    assert v.with_prefix("batch.").path == "batch.events[3].user_id"
