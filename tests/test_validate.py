"""validate_frame and ValidationReport: the tidy report, summary, reprs and warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from millimetric_nb.errors import ValidationError
from millimetric_nb.frame import DataWarning
from millimetric_nb.validate import ValidationReport, validate_frame

NOW = pd.Timestamp("2026-06-01T00:00:00Z")


def _bad_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "event": ["view", None, "x" * 200, "view", None],
        "timestamp": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "soon", None, "never"],
        "anonymous_id": ["a", "b", "c", "d", "e"],
        "amount": [1.0, 2.0, 3.0, np.inf, 5.0],
    }, index=["r1", "r2", "r3", "r4", "r5"])


def test_report_errors_and_counts():
    r = validate_frame(_bad_frame(), now=NOW, warn=False)
    assert isinstance(r, ValidationReport)
    assert not r.ok
    assert r.n_rows == 5 and r.n_invalid_rows == 4 and r.n_valid_rows == 1
    assert list(r.errors.columns) == ["row", "position", "field", "rule", "message", "value"]
    got = {(x.row, x.field, x.rule) for x in r.errors.itertuples()}
    assert got == {
        ("r2", "event", "required"), ("r3", "event", "too_long"),
        ("r3", "timestamp", "invalid_timestamp"), ("r4", "properties.amount", "not_json"),
        ("r4", "timestamp", "required"),  # an empty cell in the timestamp column
        ("r5", "event", "required"), ("r5", "timestamp", "invalid_timestamp"),
    }
    assert r.invalid_rows() == ["r2", "r3", "r4", "r5"]


def test_each_error_shows_the_offending_value_short():
    r = validate_frame(_bad_frame(), now=NOW, warn=False)
    shown = {(x.row, x.field): x.value for x in r.errors.itertuples()}
    assert shown[("r3", "timestamp")] == "'soon'"
    assert shown[("r4", "properties.amount")] == "inf"
    assert shown[("r3", "event")].startswith("'xxx") and len(shown[("r3", "event")]) <= 40
    empty = r.errors["rule"] == "required"  # an empty cell has no value to show
    assert r.errors.loc[empty, "value"].isna().all()
    assert r.errors.loc[~empty, "value"].map(lambda v: isinstance(v, str)).all()
    assert "<th>value</th>" in r._repr_html_()


def test_summary_groups_by_field_and_rule():
    s = validate_frame(_bad_frame(), now=NOW, warn=False).summary
    assert list(s.columns) == ["field", "rule", "rows", "example_row", "example"]
    by = {(x.field, x.rule): x for x in s.itertuples()}
    assert by[("event", "required")].rows == 2
    assert by[("event", "required")].example_row == "r2"
    assert by[("timestamp", "invalid_timestamp")].rows == 2
    assert s["rows"].iloc[0] == 2  # most frequent first


def test_ok_report_and_reprs():
    df = pd.DataFrame({"event": ["a"], "anonymous_id": ["x"],
                       "timestamp": pd.to_datetime(["2026-01-01"])})
    r = validate_frame(df, now=NOW, warn=False)
    assert r.ok and r.n_invalid_rows == 0 and r.summary.empty and r.warnings == []
    assert repr(r) == "ValidationReport(1 rows: 1 valid, 0 invalid)"
    assert "all rows valid" in r._repr_html_()


def test_repr_and_html_name_the_problems_and_escape_markup():
    df = pd.DataFrame({"event": [None, "ok"], "<script>alert(1)</script>": [b"x", "y"]})
    r = validate_frame(df, now=NOW, warn=False)
    text = repr(r)
    assert "event: required in 1 row(s)" in text
    assert "properties.<script>alert(1)</script>: not_json" in text
    h = r._repr_html_()
    assert "<script>" not in h
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in h
    assert "<table>" in h and "required" in h


def test_html_shows_at_most_twenty_problems():
    df = pd.DataFrame({"event": [None] * 30})
    h = validate_frame(df, now=NOW, warn=False)._repr_html_()
    assert "10 more in <code>.errors</code>" in h


def test_warnings_are_emitted_once_per_kind():
    df = pd.DataFrame({"event": ["a", "b"], "email": ["a@b.co", "c@d.co"],
                       "source": ["google", "bing"]})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = validate_frame(df, now=NOW, pii="warn")
    msgs = [str(w.message) for w in rec if issubclass(w.category, DataWarning)]
    assert len(msgs) == len(r.warnings) == len(set(msgs))
    assert any("named like server-enriched fields" in m for m in msgs)
    assert any("no timestamp column" in m for m in msgs)
    assert any("'email'" in m and "personal data" in m for m in msgs)
    assert any("neither user_id nor anonymous_id" in m and "2 row(s)" in m for m in msgs)
    assert all(w.filename == __file__ for w in rec)  # points at the caller


def test_pii_error_and_mapping_errors_raise_typed():
    df = pd.DataFrame({"event": ["a"], "email": ["a@b.co"]})
    with pytest.raises(ValidationError) as ei:
        validate_frame(df, pii="error", warn=False)
    assert ei.value.problems == [("properties.email", "personal_data",
                                  "its name looks like personal data")]
    with pytest.raises(ValidationError) as ei:
        validate_frame(df, user_id_col="uid", warn=False)
    assert ei.value.code == "invalid_mapping" and "'uid'" in str(ei.value)
    with pytest.raises(TypeError):
        validate_frame([{"event": "a"}])  # type: ignore[arg-type]


def test_empty_frame_is_ok():
    r = validate_frame(pd.DataFrame({"event": pd.Series([], dtype=object)}), warn=False)
    assert r.ok and r.n_rows == 0 and r.warnings == []


def test_the_demo_sample_planted_invalid_rows_are_exactly_the_ones_reported():
    from millimetric_nb.sample import generate_sample

    s = generate_sample(events=2000, visitors=200, invalid_per_kind=2)
    r = validate_frame(s.events, warn=False)
    got = set(zip(r.errors["row"], r.errors["field"], r.errors["rule"], strict=True))
    assert got == set(zip(s.invalid["row"], s.invalid["field"], s.invalid["rule"], strict=True))
    assert r.n_valid_rows == len(s.valid_events)
