"""A run's account kept compactly until ``result.rows`` is read: packed derived ids,
deferred rows, and EventIdState's merge of disjoint runs."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

import millimetric_nb as mm
from millimetric_nb.engine.ledger import PackedIds, id_array, id_column
from millimetric_nb.frame import EventIdState, _merge_disjoint
from millimetric_nb.results import pending_rows

NOW = "2027-01-01T00:00:00Z"


def _ids(n: int) -> np.ndarray:
    return np.array(["mm_" + hashlib.sha256(str(i).encode()).hexdigest()[:32]
                     for i in range(n)], dtype=object)


def test_packed_ids_give_back_the_same_strings_and_missing_ones():
    keys = _ids(300)
    keys[[0, 17, 299]] = None
    packed = PackedIds.pack(keys)
    assert packed is not None and packed.digests.shape == (297, 16)
    plain = [id_array(keys, 300), id_array(keys[:5], 5)]
    got = id_column([packed, PackedIds.pack(keys[:5])])
    assert got.dtype == plain[0].dtype
    assert pd.Series(got).equals(pd.Series(id_column(plain)))


def test_ids_that_are_not_derived_are_not_packed():
    assert PackedIds.pack(np.array(["order-1", None], dtype=object)) is None
    assert PackedIds.pack(np.array(["mm_" + "A" * 32], dtype=object)) is None  # uppercase
    assert PackedIds.pack(np.array([7, 8], dtype=object)) is None
    given = id_array(np.array(["order-1", None], dtype=object), 2)
    mixed = id_column([PackedIds.pack(_ids(2)), given])
    assert list(mixed[2:].fillna("-")) == ["order-1", "-"]


def test_a_dry_run_builds_rows_on_first_access_and_counts_without_them():
    df = pd.DataFrame({"event": ["a", "b", "a", "a"] * 50, "user_id": "u",
                       "timestamp": pd.Timestamp("2026-11-01", tz="UTC")})
    df.loc[3, "event"] = None  # one invalid row: no id
    result = mm.backfill(df, dry_run=True, progress=False, now=NOW, chunksize=60)
    assert pending_rows(result) is not None
    assert result.counts["planned"] == 199 and result.counts["invalid"] == 1
    assert pending_rows(result) is not None  # counts did not build the frame
    rows = result.rows
    assert pending_rows(result) is None and result.rows is rows
    assert len(rows) == 200 and rows["event_id"].isna().sum() == 1
    assert rows["event_id"].nunique() == 199  # repeats of one content get their own ids
    assert (rows["attempts"] == 0).all() and not rows["ambiguous"].any()
    assert rows["status"].value_counts()["planned"] == 199
    again = mm.backfill(df, dry_run=True, progress=False, now=NOW)
    assert rows["event_id"].equals(again.rows["event_id"])  # chunking changes no id


def test_disjoint_runs_merge_into_the_sorted_union_and_shared_keys_are_refused():
    rng = np.random.default_rng(3)
    keys = rng.permutation(100_000)[:30_000].astype(np.uint64)
    a, b = np.sort(keys[:10_000]), np.sort(keys[10_000:])
    merged = _merge_disjoint(a, b, block=1_000)
    assert merged is not None and np.array_equal(merged, np.sort(keys))
    assert _merge_disjoint(a, np.sort(np.r_[b[:10], a[5:6]]), block=4) is None
    state = EventIdState()
    chunks = np.array_split(keys, 23)
    occ = np.concatenate([state.occurrences(c) for c in chunks])
    assert not occ.any() and len(state) == keys.size
