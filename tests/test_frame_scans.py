"""The byte-level scans of the frame layer against straightforward references.

``_bytescan`` reads a polars String series' Arrow buffers with numpy: which rows need
JSON escaping (``frame._quote``), each row's length in characters, which rows hold a
byte, first and last bytes. ``frame.detect_pii`` runs polars' regexes only on the
rows a byte test keeps; object columns of text reach polars through pyarrow
(``frame._text_column_to_polars``). Each is checked here against the plain Python (or
plain polars) answer, over Hypothesis text with control characters, quotes,
backslashes, non-ASCII, empty strings and nulls.
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from millimetric_nb import _bytescan
from millimetric_nb.frame import (
    _EMAIL_IN_JSON,
    _EMAIL_RE,
    _PHONE_RE,
    _arrow_text,
    _count_matching,
    _email_candidates,
    _phone_candidates,
    _plain_strings,
    _Problems,
    _property_values,
    _quote,
    _text_column_to_polars,
    detect_pii,
    pii_columns,
)

#: Characters that matter to the scans: every ASCII control, JSON's specials, the
#: pieces of emails and phone numbers, Unicode spaces and digits, multi-byte text.
SPECIAL = (
    [chr(c) for c in range(0x20)]
    + list('"\\/@.+()- 0123456789aZ\x7f')
    + ["\u00a0", "\u2003", "\u3000", "\u0085", "\u2028", "\u0663", "\u096b", "é", "日", "😀"]
)
text = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")),
               max_size=24)
cells = st.lists(st.one_of(text, st.none(), st.just("")), max_size=30)
phones = st.lists(st.one_of(
    st.none(),
    st.from_regex(r"\A\s*\+\d[\d\s().-]{6,12}\d\s*\Z"),
    st.from_regex(r"\A\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\Z"),
    st.text(alphabet=st.sampled_from([*"0123456789+()-. \t\n", "\u0663", "\u00a0", "x"]),
            max_size=16),
    st.from_regex(r"\A[a-z.]{1,6}@[a-z]{1,6}\.[a-zA-Z]{1,4}\Z"),
    text,
), max_size=30)


def sliced(values: list[str | None]) -> list[pl.Series]:
    """The values as a series, and as a slice and a filter of a longer one (an Arrow
    offset, buffers holding bytes of other rows)."""
    whole = pl.Series(values, dtype=pl.String)
    outside = ['x"\\\x00', '@é\x1f"\\' * 5]  # inline and out of line, never scanned
    padded = pl.Series([*outside, *values, *outside], dtype=pl.String)
    keep = pl.Series([False, False, *([True] * len(values)), False, False])
    return [whole, padded.slice(2, len(values)), padded.filter(keep)]


@settings(max_examples=300, deadline=None)
@given(cells)
def test_escape_rows_lengths_and_bytes(values: list[str | None]) -> None:
    for ps in sliced(values):
        tb = _bytescan.text_bytes(ps)
        assert tb.valid.tolist() == [v is not None for v in values]
        assert _bytescan.escape_rows(tb).tolist() == [
            v is not None and any(c < " " or c in '"\\' for c in v) for v in values
        ]
        assert _bytescan.char_lengths(tb).tolist() == [len(v or "") for v in values]
        assert _bytescan.rows_with_byte(tb, ord("@")).tolist() == [
            v is not None and "@" in v for v in values
        ]
        first, last, full = _bytescan.first_last_bytes(tb)
        assert full.tolist() == [bool(v) for v in values]
        assert first.tolist() == [v.encode()[0] if v else 0 for v in values]
        assert last.tolist() == [v.encode()[-1] if v else 0 for v in values]


@settings(max_examples=300, deadline=None)
@given(cells)
def test_quote_gives_json_string_literals(values: list[str | None]) -> None:
    for ps in sliced(values):
        out, wrap = _quote(ps)
        literals = [None if v is None else ('"' + v + '"' if wrap else v) for v in out.to_list()]
        assert literals == [None if v is None else orjson.dumps(v).decode() for v in values]
        assert wrap == (not any(v is not None and orjson.dumps(v).decode() != f'"{v}"'
                                for v in values))


def test_quote_fast_path_is_only_taken_without_escapes() -> None:
    assert _quote(pl.Series(["plain", None, "", "é😀\x7f\u2028"]))[1] is True
    for bad in ("a\x00", 'say "hi"', "back\\slash", "\x1f", "new\nline"):
        out, wrap = _quote(pl.Series(["ok", bad, None]))
        assert wrap is False
        assert out.to_list() == ['"ok"', orjson.dumps(bad).decode(), None]


def test_a_series_named_with_a_nul_can_be_scanned() -> None:
    """polars cannot export a name holding NUL to Arrow: the scans export unnamed."""
    ps = pl.Series("a\x00b", ['x"y', "z"])
    assert _quote(ps)[1] is False
    assert _bytescan.char_lengths(_bytescan.text_bytes(ps)).tolist() == [3, 1]


@settings(max_examples=300, deadline=None)
@given(phones)
def test_pii_byte_tests_keep_every_match(values: list[str | None]) -> None:
    for ps in sliced(values):
        tb = _bytescan.text_bytes(ps)
        for pattern, keep in ((_EMAIL_RE, _email_candidates), (_PHONE_RE, _phone_candidates),
                              (_EMAIL_IN_JSON, _email_candidates)):
            matches = ps.str.contains(pattern).fill_null(False).to_numpy()
            assert not (matches & ~keep(tb)).any()  # a match is never screened out
            assert _count_matching(ps, pattern, tb, keep) == int(matches.sum())


def test_pii_byte_tests_screen_out_plain_values() -> None:
    tb = _bytescan.text_bytes(pl.Series(["free", "pro", None, "", "team 12"]))
    assert not _email_candidates(tb).any()
    assert not _phone_candidates(tb).any()
    tb = _bytescan.text_bytes(pl.Series(["+44 20 7946 0958", " (555) 123-4567\u00a0", "a@b.co"]))
    assert _phone_candidates(tb).tolist() == [True, True, False]
    assert _email_candidates(tb).tolist() == [False, False, True]


@settings(max_examples=200, deadline=None)
@given(phones)
def test_detect_pii_counts_as_the_plain_regexes(values: list[str | None]) -> None:
    ps = pl.Series(values, dtype=pl.String)
    emails = int(ps.str.contains(_EMAIL_RE).fill_null(False).sum())
    phones_ = int(ps.str.contains(_PHONE_RE).fill_null(False).sum())
    expected = ({"v": f"{emails} value(s) look like email addresses"} if emails else
                {"v": f"{phones_} value(s) look like phone numbers"} if phones_ else {})
    assert detect_pii({"v": ps}) == expected
    in_json = int(ps.str.contains(_EMAIL_IN_JSON).fill_null(False).sum())
    found = detect_pii({}, json_texts=ps)
    assert found == ({"properties": f"{in_json} row(s) hold email-looking values"}
                     if in_json else {})
    df = pd.DataFrame({"v": pd.Series(values, dtype=object)})
    assert pii_columns(df, ["v"]) == expected


def test_detect_pii_of_null_and_plain_columns() -> None:
    assert detect_pii({"n": pl.Series([None, None], dtype=pl.String)}) == {}
    assert detect_pii({"e": pl.Series(["x@y.org", None])}) == {
        "e": "1 value(s) look like email addresses"}


missing_cell = st.sampled_from([None, float("nan"), np.float64("nan"), pd.NA])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(text, missing_cell), max_size=30))
def test_object_text_through_arrow_matches_value_by_value(values: list[object]) -> None:
    s = pd.Series(values, dtype=object)
    assert _arrow_text(s.to_numpy(dtype=object)) is not None  # the one-pass path took them
    ps, bad = _text_column_to_polars(s, s.to_numpy(dtype=object))
    assert bad == []
    assert ps.dtype == pl.String
    assert ps.to_list() == [v if isinstance(v, str) else None for v in values]


class Hostile(str):
    """A str whose methods all raise: only its data may be read."""

    def __str__(self) -> str:
        raise RuntimeError("no")

    def encode(self, *a: object, **k: object) -> bytes:  # type: ignore[override]
        raise RuntimeError("no")


def test_object_text_that_arrow_refuses_keeps_the_value_by_value_path() -> None:
    for values, expect, bad in (
        (["a", "\ud800", None], ["a", None, None], [1]),  # a lone surrogate is listed
        (["a", np.float32("nan")], ["a", None], []),  # pyarrow refuses a float32 NaN
        ([Hostile("h"), np.str_("n"), pd.NA], ["h", "n", None], []),
    ):
        s = pd.Series(values, dtype=object)
        ps, positions = _text_column_to_polars(s, s.to_numpy(dtype=object))
        assert ps.to_list() == expect
        assert positions == bad


def test_pii_columns_reads_the_strings_property_values_gives() -> None:
    """pii_columns takes each column's plain strings without encoding it: the same
    strings (or ``None``) as _property_values, whatever the dtype."""
    n = 4
    df = pd.DataFrame({
        "str": pd.Series(["a@b.co", None, "x", "+44 20 7946 0958"], dtype="str"),
        "py": pd.Series(["1", None, "2", "3"], dtype=pd.StringDtype("python")),
        "arrow": pd.Series(["555-123-4567", None, "y", "z"], dtype="string[pyarrow]"),
        "obj": pd.Series(["a", np.nan, "(555) 123-4567", "\ud800"], dtype=object),
        "mixed": pd.Series(["a@b.co", 1, None, 2.5], dtype=object),
        "cat": pd.Series(["q@r.io", "q@r.io", None, "s"], dtype="category"),
        "int": np.arange(n), "nullable": pd.Series([1, None, 3, 4], dtype="Int64"),
        "float": np.linspace(0, 1, n), "flag": [True, False, True, False],
        "when": pd.date_range("2026-01-01", periods=n, tz="UTC"),
        "dicts": [{"a": 1}, None, {}, {"b": "c@d.ef"}],
        "empty": pd.Series([None] * n, dtype=object),
    })
    for label in df.columns:
        _, expected = _property_values(df[label], str(label), label, _Problems(n))
        got = _plain_strings(df[label])
        assert (got is None) == (expected is None), label
        if got is not None and expected is not None:
            assert got.to_list() == expected.to_list(), label
    found = pii_columns(df, list(df.columns))
    assert set(found) == {"str", "arrow", "obj", "cat"}
    assert found["str"] == "1 value(s) look like email addresses"
    assert pii_columns(pd.DataFrame({"email": [1, 2]}), ["email"]) == {
        "email": "its name looks like personal data"}
