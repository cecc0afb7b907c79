"""Hostile frames, generated (issue 10): whatever a frame holds, ``validate()`` and a
dry-run ``send_batch`` raise nothing but typed :class:`MillimetricError`, every row ends
with exactly one status, and no row that is valid alone is made invalid by a neighbour.

Values: mixed object columns, bytes, nested containers (and one nested thousands of
levels deep), Decimal, complex, inf and NaN, 1 MB strings (sparingly), emoji, NUL,
lone surrogates, objects whose ``__repr__`` raises, int64 extremes and integers beyond
``str()``'s digit limit, categorical, Period, timedelta, mixed time zones, dates outside
1970-2262. Labels: duplicate, non-string, surrogate, NUL, ``str()`` that raises,
MultiIndex. Frames: empty, one row, a few rows.

The number of examples comes from a profile: ``hostile-ci`` (2,000, the default) or,
with ``HYPOTHESIS_PROFILE=stress``, ``hostile-stress`` (10,000: ``make stress``); the
dry-run test (slower per example) runs a tenth of that, at least 200.
Everything here is in-process (validate and dry runs); a few examples go over loopback
in :func:`test_hostile_frames_over_loopback_store_exactly_the_valid_rows`.
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millimetric_nb as mm
from millimetric_nb.errors import MillimetricError
from millimetric_nb.results import STATUSES
from millimetric_nb.validate import validate_frame

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("hostile-ci", max_examples=2000, deadline=None,
                          suppress_health_check=_HEALTH)
settings.register_profile("hostile-stress", max_examples=10_000, deadline=None,
                          suppress_health_check=_HEALTH)
PROFILE = settings.get_profile(
    "hostile-stress" if os.environ.get("HYPOTHESIS_PROFILE") == "stress" else "hostile-ci"
)
NOW = pd.Timestamp("2026-06-01", tz="UTC")


class ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")

    def __str__(self) -> str:
        raise RuntimeError("str is broken")


def _deep(levels: int) -> list:
    x: list = []
    for _ in range(levels):
        x = [x]
    return x


DEEP = _deep(3000)
MEGA = "x" * 1_000_000
FIXED = [
    None, np.nan, pd.NA, pd.NaT, float("inf"), float("-inf"), -0.0,
    b"bytes", bytearray(b"\x00\xff"), "\x00", "a\x00b", "😀🏳️‍🌈", "\ud800", "ok\udfff",
    Decimal("1.5"), Decimal("NaN"), Decimal("-Infinity"), Decimal(10) ** 30, complex(1, 2),
    2**63 - 1, -(2**63), 2**53, 2**64, 10**5000, np.int64(2**63 - 1), np.uint64(2**64 - 1),
    np.float32("nan"), np.bool_(True), True,
    dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59), dt.date(1900, 1, 1),
    pd.Timestamp("1677-09-22"), pd.Timestamp("2262-04-11"), pd.Timestamp.min, pd.Timestamp.max,
    pd.Timestamp("2026-01-01 12:00", tz="Asia/Kolkata"), pd.Timestamp("2026-01-01", tz="UTC"),
    dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    np.datetime64("1500-01-01"), np.datetime64("NaT"),
    pd.Period("2026-01", freq="M"), pd.Timedelta("1 day"), dt.timedelta(seconds=-1),
    np.timedelta64(5, "s"), {1: "int key"}, {"\ud800": 1}, {"k": {"n": [1, {"m": None}]}},
    {"k": float("nan")}, {"k": float("inf")}, [1, "a", None], (1, 2), {1, 2}, frozenset({"a"}),
    np.arange(3), np.array(["a", "b"]), ReprRaises(), DEEP, object(),
    "2026-01-01T00:00:00Z", "2026-13-45", "1700000000", "page_view", "",
]

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8,
)
text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=12)
# 1 MB strings, sparingly: about one cell in 200
cell = st.one_of(st.sampled_from(FIXED), text, json_like, st.integers(), st.floats()) | (
    st.integers(0, 199).filter(lambda k: k == 0).map(lambda _: MEGA)
)
good = {
    "event": st.sampled_from(["page_view", "signup", "purchase"]),
    "user_id": st.sampled_from(["u1", "u2", 42]),
    "timestamp": st.sampled_from(["2026-01-01T00:00:00Z", "2025-12-31 23:59:59+01:00"]),
    "event_id": st.sampled_from(["id-1", "id-2", None]),
    "url": st.sampled_from(["https://example.com/a", None]),
}


@st.composite
def typed_column(draw: st.DrawFn, n: int) -> pd.Series:
    """A column with a non-object dtype (pandas keeps it when a row is taken alone)."""
    kind = draw(st.sampled_from(["category", "period", "timedelta", "tz", "naive", "Int64",
                                 "float", "int64", "bool", "string"]))
    if kind == "category":
        return pd.Series(pd.Categorical(draw(st.lists(st.sampled_from(["a", "b", None, "😀"]),
                                                       min_size=n, max_size=n))))
    if kind == "period":
        return pd.Series(pd.period_range("2026-01", periods=n, freq="M"))
    if kind == "timedelta":
        return pd.Series(pd.to_timedelta(draw(st.lists(st.integers(-10**6, 10**6),
                                                         min_size=n, max_size=n)), unit="s"))
    if kind in ("tz", "naive"):
        tz = draw(st.sampled_from(["UTC", "America/New_York", "Asia/Kathmandu"]))
        values = pd.to_datetime(draw(st.lists(st.sampled_from(
            ["1677-09-22", "1969-12-31 23:59:59", "2026-03-29 01:30", "2262-04-11", None]),
            min_size=n, max_size=n)), format="ISO8601")
        return pd.Series(values.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
                         if kind == "tz" else values)
    if kind == "Int64":
        return pd.Series(draw(st.lists(st.sampled_from([2**63 - 1, -(2**63), 2**53, 0, None]),
                                       min_size=n, max_size=n)), dtype="Int64")
    if kind == "float":
        return pd.Series(draw(st.lists(st.floats(), min_size=n, max_size=n)), dtype="float64")
    if kind == "int64":
        return pd.Series(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n,
                                       max_size=n)), dtype="int64")
    if kind == "bool":
        return pd.Series(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return pd.Series(draw(st.lists(st.sampled_from(["a", "b", None]), min_size=n,
                                   max_size=n)), dtype="string")


@st.composite
def object_column(draw: st.DrawFn, n: int, field: str | None) -> pd.Series:
    """Mostly good values for ``field`` (or any cell for a property), some hostile."""
    base = good.get(field) if field else None
    values = [draw(base if base is not None and draw(st.integers(0, 3)) else cell)
              for _ in range(n)]
    out = pd.Series(index=range(n), dtype=object)
    for i, v in enumerate(values):
        out.iat[i] = v  # one by one: pandas must not unpack lists or arrays
    return out


LABELS = st.sampled_from([
    "plan", "price", "😀", "\ud800", "a\x00b", 7, 2.5, ("a", "b"), np.str_("np"),
    np.str_("\udfff"), "properties", "source", True,
])


@st.composite
def hostile_frame(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.sampled_from([0, 1, 1, 2, 3, 4, 5]))
    fields = ["event", *draw(st.lists(st.sampled_from(["user_id", "timestamp", "event_id",
                                                       "url"]), unique=True, max_size=4))]
    cols: dict = {}
    for f in fields:
        cols[f] = draw(object_column(n, f))
    labels: list = list(fields)
    series = [cols[f] for f in fields]
    for _ in range(draw(st.integers(0, 3))):
        label = draw(LABELS | st.just("dup"))
        labels.append(label if label != "dup" else draw(st.sampled_from(labels)))
        series.append(draw(typed_column(n) if draw(st.booleans()) else object_column(n, None)))
    if draw(st.integers(0, 30)) == 0:
        labels.append(ReprRaises())
        series.append(draw(object_column(n, None)))
    df = pd.concat([s.reset_index(drop=True) for s in series], axis=1)
    df.columns = pd.Index(labels, dtype=object)
    if draw(st.integers(0, 40)) == 0:
        df.columns = pd.MultiIndex.from_tuples([(str(i), "x") for i in range(len(labels))])
    return df


def _validate(df: pd.DataFrame, **kw) -> np.ndarray | MillimetricError:
    """Validity per row, or the typed error the whole frame got. Anything else raises."""
    try:
        report = validate_frame(df, now=NOW, warn=False, **kw)
    except MillimetricError as exc:
        return exc
    valid = np.ones(len(df), dtype=bool)
    pos = report.errors["position"].to_numpy(dtype=np.int64)
    assert ((pos >= 0) & (pos < len(df))).all()
    assert report.errors["rule"].notna().all() and report.errors["field"].notna().all()
    valid[pos] = False
    return valid


@pytest.mark.timeout(1800)  # 2,000 examples: about 2 minutes on an idle 2-core machine
@settings(PROFILE)
@given(hostile_frame())
def test_validate_types_every_error_and_no_neighbour_spoils_a_valid_row(df):
    verdict = _validate(df, pii="ignore")
    if isinstance(verdict, MillimetricError):
        return  # the frame as a whole (its labels) is refused, with a code
    for i in np.flatnonzero(~verdict):  # each invalid row must be invalid alone too
        alone = _validate(df.iloc[[i]], pii="ignore")
        if isinstance(alone, np.ndarray):
            assert not alone[0], f"row {i}, valid alone, is invalid next to its neighbours"


@pytest.mark.timeout(1800)
@settings(PROFILE, max_examples=max(200, PROFILE.max_examples // 10))
@given(hostile_frame())
def test_dry_run_gives_every_row_exactly_one_status(df):
    try:
        res = df.millimetric.send_batch(dry_run=True, progress=False, now=NOW)
    except MillimetricError:  # (the default pii="error" may refuse the frame, typed)
        return
    assert len(res.rows) == len(df)
    assert res.rows["status"].isin(["planned", "invalid"]).all()
    assert set(res.rows["status"].cat.categories) <= set(STATUSES)
    assert res.counts["planned"] + res.counts["invalid"] == res.counts["total"] == len(df)
    verdict = _validate(df, pii="ignore")
    if isinstance(verdict, np.ndarray):  # the plan sends exactly the rows validate passes
        assert (res.rows["status"].to_numpy() == "planned").tolist() == verdict.tolist()
    else:
        assert res.counts["invalid"] == len(df)


@settings(max_examples=15, deadline=None, suppress_health_check=_HEALTH)
@given(hostile_frame())
def test_hostile_frames_over_loopback_store_exactly_the_valid_rows(df):
    from millimetric_nb.server import run_in_thread

    with run_in_thread(limits="off") as srv, mm.Client(key=srv.keys["sk"], host=srv.url,
                                                        rate_limits="off") as client:
        try:
            res = df.millimetric.send_batch(client=client, progress=False, pii="ignore",
                                            now=NOW)
        except MillimetricError:
            assert srv.count() == 0
            return
        assert res.counts["sent"] + res.counts["invalid"] == len(df)
        assert srv.count() == res.counts["sent"]


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_one_row_frames(n):
    df = pd.DataFrame({"event": ["page_view"] * n})
    assert validate_frame(df, warn=False).n_rows == n
    assert df.millimetric.send_batch(dry_run=True, progress=False).counts["total"] == n
