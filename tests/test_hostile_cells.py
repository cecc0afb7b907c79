"""Issue 10, items 1, 2 and 4 as regression tests: a cell or a column label that cannot be
shown or encoded makes only its own row invalid (or the mapping a typed error), and
property columns that look like personal data are refused by default, before any request."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb import frame as frame_mod
from millimetric_nb.errors import MillimetricError, ValidationError
from millimetric_nb.frame import DataWarning


def deep_list(levels: int) -> list:
    x: list = []
    for _ in range(levels):
        x = [x]
    return x


class ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("my repr is broken")


class ReprAndStrRaise(ReprRaises):
    def __str__(self) -> str:
        raise RuntimeError("my str is broken")


def _obj(values: list) -> pd.Series:
    return pd.Series(values, dtype=object)


def _with(column: str, bad: object, n: int = 5) -> pd.DataFrame:
    """``n`` valid rows; row 2's ``column`` holds ``bad``."""
    df = pd.DataFrame({
        "event": _obj(["page_view"] * n), "user_id": _obj([f"u{i}" for i in range(n)]),
        "timestamp": _obj(["2026-01-01T00:00:00Z"] * n), "plan": _obj(["pro"] * n),
    })
    df[column] = df[column].astype(object)
    df.at[2, column] = bad
    return df


HOSTILE = {
    "deep_list": lambda: deep_list(5000),
    "repr_raises": ReprRaises,
    "repr_and_str_raise": ReprAndStrRaise,
    "int_too_long_for_str": lambda: 10**5000,
}
FIELDS = {"event": "event", "user_id": "user_id", "timestamp": "timestamp",
          "plan": "properties.plan"}


@pytest.mark.parametrize("column", list(FIELDS))
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_cell_that_cannot_be_shown_makes_only_its_row_invalid(column, kind):
    df = _with(column, HOSTILE[kind]())
    report = df.millimetric.validate(now=pd.Timestamp("2026-06-01", tz="UTC"))
    assert report.invalid_rows() == [2]
    err = report.errors.iloc[0]
    assert err["field"].startswith(FIELDS[column]) and err["rule"]
    assert err["row"] == 2 and f"'{column}'" in err["message"]
    res = df.millimetric.send_batch(dry_run=True, progress=False)
    assert res.counts["invalid"] == 1 and res.counts["planned"] == 4
    assert "prepare_failed" not in set(res.rows["error"].dropna())


def test_the_issue_reproduction_a_chunk_of_25000_with_one_deep_list(mm_server):
    # one deep list in a text field took the whole 25,000-row chunk down as prepare_failed
    n = 25_000
    df = pd.DataFrame({"event": _obj(["page_view"] * n),
                       "user_id": _obj([f"u{i}" for i in range(n)]),
                       "timestamp": ["2026-01-01T00:00:00Z"] * n})
    df.at[12_345, "event"] = deep_list(3000)
    with mm.Client(key=mm_server.keys["sk"], host=mm_server.url, rate_limits="off") as c:
        res = mm.backfill(df, client=c, progress=False, chunksize=n)
    assert res.counts["sent"] == n - 1 and res.counts["invalid"] == 1
    assert res.rows.loc[12_345, "error"] == "type"
    assert mm_server.count() == n - 1


def test_a_bug_level_exception_in_a_column_is_isolated_to_its_row(monkeypatch):
    # a value no rule foresaw (shaped here by a column helper that raises on one cell):
    # the chunk is checked row by row and only that row is invalid, naming the field
    real = frame_mod._string_field

    def fragile(s, name, spec, label, probs):
        if any(v == "boom" for v in s.tolist()):
            raise RuntimeError("unforeseen")
        return real(s, name, spec, label, probs)

    monkeypatch.setattr(frame_mod, "_string_field", fragile)
    df = _with("user_id", "boom")
    report = df.millimetric.validate(pii="ignore", warn=False)
    assert report.invalid_rows() == [2]
    assert report.errors[["field", "rule"]].values.tolist() == [["user_id", "unencodable"]]
    res = df.millimetric.send_batch(dry_run=True, progress=False)
    assert res.counts["planned"] == 4 and res.counts["invalid"] == 1
    # the ids of the other rows are those they get without the bad row
    alone = df.drop(index=2).millimetric.send_batch(dry_run=True, progress=False)
    assert list(res.rows.event_id.drop(index=2)) == list(alone.rows.event_id)


# --------------------------------------------------------------------------- labels


def _labelled(labels: list) -> pd.DataFrame:
    df = pd.DataFrame([["page_view", 1, 2]] * 3, columns=pd.Index(labels, dtype=object))
    return df


@pytest.mark.parametrize("labels, what", [
    (["event", "\ud800", "x"], "lone surrogate"),            # the issue's label
    (["event", 1, np.str_("\ud800")], "lone surrogate"),     # mixed, a str subclass
    (["event", ReprAndStrRaise(), "x"], "cannot be turned into a property key"),
    (["event", "x", "x"], "duplicate column label"),
])
def test_a_hostile_label_is_a_typed_invalid_mapping(labels, what):
    df = _labelled(labels)
    with pytest.raises(ValidationError) as ei:
        df.millimetric.validate(pii="ignore", warn=False)
    assert ei.value.code == "invalid_mapping" and what in str(ei.value)
    str(ei.value).encode("utf-8")  # the message itself can be printed
    res = df.millimetric.send_batch(dry_run=True, progress=False)
    assert res.counts["invalid"] == 3 and set(res.rows["error"]) == {"invalid_mapping"}


def test_multiindex_columns_are_refused_with_how_to_flatten():
    df = pd.DataFrame([["page_view", 1]],
                      columns=pd.MultiIndex.from_tuples([("event", ""), ("plan", "x")]))
    with pytest.raises(ValidationError) as ei:
        df.millimetric.validate()
    assert ei.value.code == "invalid_mapping" and "MultiIndex" in str(ei.value)
    assert "df.columns = " in str(ei.value)


def test_non_string_labels_are_keys_by_their_text():
    df = pd.DataFrame({"event": ["e"], 7: [1], 2.5: ["x"]})
    res = df.millimetric.send_batch(dry_run=True, progress=False)
    assert res.counts["planned"] == 1
    prepared = frame_mod.prepare_chunk(df, frame_mod.resolve_mapping(df.columns)[0])
    assert b'"properties":{"2.5":"x","7":1}' in prepared.payloads[0]


# --------------------------------------------------------------------------- personal data


def _people(n: int = 3000) -> pd.DataFrame:
    return pd.DataFrame({"event": ["signup"] * n, "user_id": [f"u{i}" for i in range(n)],
                         "timestamp": ["2026-01-01T00:00:00Z"] * n,
                         "email": [f"p{i}@example.com" for i in range(n)],
                         "plan": ["pro"] * n})


def _client(srv) -> mm.Client:
    return mm.Client(key=srv.keys["sk"], host=srv.url, rate_limits="off")


def test_personal_data_is_refused_by_default_before_any_request(mm_server):
    with _client(mm_server) as c, pytest.raises(ValidationError) as ei:
        _people().millimetric.send_batch(client=c, progress=False)
    err = ei.value
    assert err.code == "personal_data" and "'email'" in str(err)
    assert "drop" in str(err) and "pii='allow'" in str(err)  # the two ways on
    assert ("properties.email", "personal_data") in [(p, r) for p, r, _ in err.problems]
    assert mm_server.count() == 0 and "batch" not in mm_server.status_counts()


def test_personal_values_far_down_a_frame_are_refused_before_any_request(mm_server):
    # a column with an innocent name whose email-shaped values start at row 5,000: the
    # first chunks would already be on the wire if only each chunk were checked
    df = _people(8000).drop(columns=["email"])
    df["contact"] = ["-"] * 5000 + [f"p{i}@example.com" for i in range(3000)]
    with _client(mm_server) as c, pytest.raises(ValidationError) as ei:
        mm.backfill(df, client=c, progress=False)
    assert ei.value.code == "personal_data" and "'contact'" in str(ei.value)
    assert mm_server.count() == 0


def test_personal_data_in_a_file_is_refused_before_any_request(mm_server, tmp_path):
    path = tmp_path / "people.csv"
    _people().to_csv(path, index=False)
    with _client(mm_server) as c, pytest.raises(ValidationError) as ei:
        mm.backfill(path, client=c, progress=False)
    assert ei.value.code == "personal_data" and mm_server.count() == 0


def test_pii_allow_sends_and_warn_sends_with_a_warning(mm_server):
    with _client(mm_server) as c:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataWarning)  # allow: not a word
            res = _people(10).millimetric.send_batch(client=c, progress=False, pii="allow")
        assert res.counts["sent"] == 10
        with pytest.warns(DataWarning, match="personal data"):
            res = _people(10).millimetric.send_batch(client=c, progress=False, pii="warn")
        assert res.counts["sent"] == 10
    assert mm_server.count() == 20
    assert mm_server.stored_events()[0]["properties"]["email"] == "p0@example.com"


def test_validate_predicts_the_refusal_and_dropping_the_column_is_a_way_on():
    with pytest.raises(ValidationError) as ei:
        _people(5).millimetric.validate()
    assert ei.value.code == "personal_data"
    assert _people(5).drop(columns=["email"]).millimetric.validate(warn=False).ok


def test_identify_traits_still_only_warn_by_default(mm_server):
    df = pd.DataFrame({"anonymous_id": ["a1"], "user_id": ["u1"], "email": ["x@example.com"]})
    with _client(mm_server) as c, pytest.warns(DataWarning, match="trait column"):
        res = df.millimetric.identify(traits=["email"], client=c, progress=False)
    assert res.counts["sent"] == 1


def test_unknown_pii_mode_names_the_four():
    with pytest.raises(MillimetricError) as ei:
        _people(2).millimetric.send_batch(dry_run=True, progress=False, pii="maybe")
    assert ei.value.code == "invalid_pii" and "'allow'" in str(ei.value)
