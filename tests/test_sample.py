"""The sample generator: deterministic, and shaped as the demo promises."""

from __future__ import annotations

import pandas as pd
import pytest

from millimetric_nb import contract
from millimetric_nb.sample import (
    ADD_TO_CART,
    COLUMNS,
    INVALID_KINDS,
    PAGEVIEW,
    PURCHASE,
    SIGNUP,
    generate_sample,
)

EVENTS, VISITORS, DAYS = 4000, 400, 30


@pytest.fixture(scope="module")
def sample():
    return generate_sample(EVENTS, VISITORS, DAYS, seed=7)


def test_same_seed_same_frame_other_seed_other_frame(sample):
    again = generate_sample(EVENTS, VISITORS, DAYS, seed=7)
    pd.testing.assert_frame_equal(sample.events, again.events)
    pd.testing.assert_frame_equal(sample.identifies, again.identifies)
    pd.testing.assert_frame_equal(sample.invalid, again.invalid)
    other = generate_sample(EVENTS, VISITORS, DAYS, seed=8)
    assert not other.events["anonymous_id"].equals(sample.events["anonymous_id"])


def test_shape_counts_and_window(sample):
    df = sample.events
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == EVENTS
    assert isinstance(df.index, pd.RangeIndex)
    assert df["anonymous_id"].nunique() == VISITORS
    assert df["event_id"].is_unique
    valid = sample.valid_events
    ts = pd.to_datetime(valid["timestamp"], format="ISO8601", utc=True)
    assert ts.min() >= sample.start and ts.max() < sample.end
    assert sample.end - sample.start == pd.Timedelta(days=DAYS)
    # spread over the window, not piled on one instant
    assert ts.dt.floor("D").nunique() >= DAYS - 2
    assert ts.value_counts().max() < 50
    assert ts.is_monotonic_increasing


def test_mix_of_events_and_purchase_amounts(sample):
    df = sample.valid_events
    counts = df["event"].value_counts()
    assert set(counts.index) == {PAGEVIEW, ADD_TO_CART, SIGNUP, PURCHASE}
    assert counts[PAGEVIEW] > counts[ADD_TO_CART] > 0
    purchases = df[df["event"] == PURCHASE]
    assert len(purchases) > 0
    assert (purchases["amount"] > 0).all() and purchases["currency"].notna().all()
    assert df.loc[df["event"] != PURCHASE, "amount"].isna().all()
    assert df.loc[df["event"] == SIGNUP, "plan"].notna().all()


def test_arrival_channels_present(sample):
    url, ref = sample.events["url"], sample.events["referrer"]
    assert url.str.contains("utm_source=", regex=False).sum() > 0
    assert url.str.contains("utm_medium=", regex=False).sum() > 0
    assert url.str.contains("gclid=", regex=False).sum() > 0
    assert url.str.contains("fbclid=", regex=False).sum() > 0
    for domain in ("google.com", "bing.com", "t.co", "linkedin.com"):
        assert ref.str.contains(domain, regex=False).sum() > 0, domain
    # some sessions arrive directly: no referrer, no query string
    assert (ref.isna() & ~url.str.contains("?", regex=False)).sum() > 0
    assert url.str.len().max() <= contract.EVENT_FIELDS["url"].max_length


def test_visitors_anonymous_then_identified(sample):
    df, ident = sample.valid_events, sample.identifies
    assert len(ident) > 0 and ident["anonymous_id"].is_unique and ident["user_id"].is_unique
    signed = set(ident["anonymous_id"])
    # exactly the visitors with a signup event are identified
    assert set(df.loc[df["event"] == SIGNUP, "anonymous_id"]) <= signed
    assert len(signed) < VISITORS  # others stay anonymous
    pairs = ident[["anonymous_id", "user_id"]].head(20).itertuples(index=False, name=None)
    for anon, user in pairs:
        rows = df[df["anonymous_id"] == anon]
        signup_ts = rows.loc[rows["event"] == SIGNUP, "timestamp"].min()
        before = rows[rows["timestamp"] < signup_ts]
        after = rows[rows["timestamp"] >= signup_ts]
        assert before["user_id"].isna().all()  # anonymous before signing up
        assert (after["user_id"] == user).all()
    # nobody outside the identified set ever carries a user id
    assert df.loc[~df["anonymous_id"].isin(signed), "user_id"].isna().all()


def test_exactly_the_planned_invalid_rows(sample):
    inv = sample.invalid
    assert sorted(inv["kind"]) == sorted(INVALID_KINDS)
    assert inv["row"].is_unique
    df = sample.events
    by_kind = dict(zip(inv["kind"], inv["row"], strict=True))
    assert df.loc[by_kind["empty_event"], "event"] == ""
    with pytest.raises(ValueError):
        pd.Timestamp(df.loc[by_kind["bad_timestamp"], "timestamp"])
    assert len(df.loc[by_kind["oversize_property"], "title"]) > contract.PROPERTIES_MAX_BYTES
    assert (
        len(df.loc[by_kind["long_user_id"], "user_id"])
        > contract.EVENT_FIELDS["user_id"].max_length
    )
    # every other row is clean on these rules
    rest = sample.valid_events
    assert (rest["event"].str.len() >= 1).all()
    pd.to_datetime(rest["timestamp"], format="ISO8601", utc=True)  # raises if any is bad
    assert rest["title"].str.len().max() < 200
    assert rest["user_id"].str.len().max() <= contract.EVENT_FIELDS["user_id"].max_length
    assert len(generate_sample(EVENTS, VISITORS, seed=7, invalid_per_kind=3).invalid) == 12


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="visitors"):
        generate_sample(10, 0)
    with pytest.raises(ValueError, match="events"):
        generate_sample(5, 10)
    with pytest.raises(ValueError, match="days"):
        generate_sample(100, 10, 0)
