"""A run's account kept compactly until ``result.rows`` is read: packed derived ids,
deferred rows, and EventIdState's runs absorbed into its base in place."""

from __future__ import annotations

import hashlib
import platform

import numpy as np
import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb.engine.ledger import PackedIds, _HeapTrim, id_array, id_column
from millimetric_nb.frame import _FENCE, EventIdState, _absorb, _fenced_positions, _Run
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


def test_the_id_text_and_its_16_bytes_convert_both_ways():
    from millimetric_nb.frame import id_chars, id_digests

    digests = np.random.default_rng(4).integers(0, 256, (50, 16), dtype=np.uint8)
    chars = id_chars(digests)
    assert [bytes(c).decode() for c in chars[:2]] == ["mm_" + bytes(d).hex() for d in digests[:2]]
    assert np.array_equal(id_digests(chars), digests)


def test_ids_that_are_not_derived_are_not_packed():
    assert PackedIds.pack(np.array(["order-1", None], dtype=object)) is None
    assert PackedIds.pack(np.array(["mm_" + "A" * 32], dtype=object)) is None  # uppercase
    assert PackedIds.pack(np.array(["mx_" + "a" * 32], dtype=object)) is None  # prefix
    assert PackedIds.pack(np.array(["mm_" + "a" * 31 + "g"], dtype=object)) is None
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


def _run(keys: np.ndarray, rep: dict[int, int] | None = None) -> _Run:
    rep = rep or {}
    return _Run(np.sort(keys).astype(np.uint64), np.array(sorted(rep), dtype=np.uint64),
                np.array([rep[k] for k in sorted(rep)], dtype=np.int64))


def test_absorb_merges_in_place_block_by_block_and_counts_shared_keys():
    rng = np.random.default_rng(3)
    keys = rng.permutation(100_000)[:30_000].astype(np.uint64)
    base_keys = np.sort(keys[:20_000])
    base = _run(base_keys)
    # new keys everywhere: below the first, between blocks, above the last; two shared
    run = _run(np.r_[keys[20_000:], base_keys[[0, 7_777]]])
    memory = base.keys
    merged = _absorb(base, run, block=1_000)
    assert merged.keys is memory  # the base's own array, grown: no second copy of it
    assert np.array_equal(merged.keys, np.sort(keys))
    assert merged.rep_keys.tolist() == sorted(base_keys[[0, 7_777]].tolist())
    assert merged.rep_counts.tolist() == [2, 2]
    assert merged.counts_of(np.sort(keys[:3])).tolist() == [
        2 if k in set(merged.rep_keys.tolist()) else 1 for k in np.sort(keys[:3]).tolist()]
    # repeats already counted on both sides add up
    again = _absorb(merged, _run(base_keys[[0]], {int(base_keys[0]): 3}), block=7)
    assert again.counts_of(base_keys[[0]]).tolist() == [5]


def test_fenced_search_finds_what_searchsorted_finds():
    rng = np.random.default_rng(4)
    for n in (_FENCE * 3, _FENCE * 50 + 17, 100_003):
        keys = np.unique(rng.integers(0, 2**64 - 1, n, dtype=np.uint64))
        query = np.sort(np.r_[
            keys[rng.integers(0, keys.size, 500)],  # present
            rng.integers(0, 2**64 - 1, 500, dtype=np.uint64),  # mostly absent
            np.array([0, keys[0], keys[-1], 2**64 - 1], dtype=np.uint64),  # the edges
        ])
        fences = keys[::_FENCE].copy()
        assert np.array_equal(_fenced_positions(keys, fences, query),
                              np.searchsorted(keys, query))


def test_a_large_run_answers_membership_through_its_fences_slice_by_slice(monkeypatch):
    import millimetric_nb.frame as frame_mod

    monkeypatch.setattr(frame_mod, "_FENCED", 1_000)  # small: this run is searched
    monkeypatch.setattr(frame_mod, "_QUERIES", 333)  # through fences, 333 queries a time
    rng = np.random.default_rng(6)
    keys = np.unique(rng.integers(0, 2**64 - 1, 5_000, dtype=np.uint64))
    run = _Run(keys, np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
    query = np.sort(np.r_[keys[::3], rng.integers(0, 2**64 - 1, 2_000, dtype=np.uint64)])
    assert np.array_equal(run.member(query), np.isin(query, keys))
    assert run._fences is not None and run._fences.size == -(-keys.size // _FENCE)


@pytest.mark.parametrize("fenced", [False, True])
def test_settle_absorbs_runs_and_ids_stay_those_of_one_big_chunk(fenced, monkeypatch):
    if fenced:  # the base and the large runs searched through their fences
        import millimetric_nb.frame as frame_mod

        monkeypatch.setattr(frame_mod, "_FENCED", 2_000)
        monkeypatch.setattr(frame_mod, "_QUERIES", 500)
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 40_000, 60_000).astype(np.uint64) * np.uint64(0x0400_0000_0000_0001)
    whole = EventIdState().occurrences(keys)
    state = EventIdState()
    state.absorb_at, state.absorb_share = 3_000, 8  # absorbs often
    got = []
    for part in np.array_split(keys, 37):
        got.append(state.occurrences(part))
        state.settle()
    assert np.array_equal(np.concatenate(got), whole)
    assert state._base.keys.size > 0 and len(state._runs) < 3
    assert len(state) == np.unique(keys).size


def test_a_snapshot_from_before_an_absorb_is_refused():
    state = EventIdState()
    state.absorb_at = 10
    saved = state.snapshot()
    state.occurrences(np.arange(20, dtype=np.uint64))
    state.settle()
    with pytest.raises(RuntimeError, match="settled"):
        state.restore(saved)


def test_disjoint_chunks_are_all_first_occurrences():
    rng = np.random.default_rng(3)
    keys = rng.permutation(100_000)[:30_000].astype(np.uint64)
    state = EventIdState()
    state.absorb_at = 4_000
    chunks = np.array_split(keys, 23)
    occ = np.concatenate([(state.occurrences(c), state.settle())[0] for c in chunks])
    assert not occ.any() and len(state) == keys.size


def test_a_chunk_of_one_status_keeps_no_byte_a_row():
    df = pd.DataFrame({"event": ["a", "b"] * 100, "user_id": "u",
                       "timestamp": pd.Timestamp("2026-11-01", tz="UTC")})
    df.loc[150, "event"] = None  # the second chunk holds an invalid row: two statuses
    result = mm.backfill(df, dry_run=True, progress=False, now=NOW, chunksize=100)
    pieces = pending_rows(result).pieces
    uniform, mixed = pieces[0].status, pieces[-1].status
    assert uniform.strides == (0,) and not uniform.flags.writeable  # one value, repeated
    assert mixed.strides == (1,) and mixed.size == 100
    assert result.counts["planned"] == 199 and result.counts["invalid"] == 1
    assert result.rows["status"].tolist()[148:152] == ["planned", "planned", "invalid", "planned"]


def test_a_run_without_a_journal_never_writes_its_ids_as_python_strings(monkeypatch):
    import millimetric_nb.frame as frame_mod

    calls = []
    real = frame_mod.id_text
    monkeypatch.setattr(frame_mod, "id_text", lambda d: calls.append(len(d)) or real(d))
    df = pd.DataFrame({"event": ["a", "b", "a"] * 100, "user_id": "u",
                       "timestamp": pd.Timestamp("2026-11-01", tz="UTC")})
    result = mm.backfill(df, dry_run=True, progress=False, now=NOW, chunksize=70)
    assert result.counts["planned"] == 300 and calls == []
    ids = result.rows["event_id"]  # built from the bytes in one Arrow buffer
    assert calls == [] and ids.nunique() == 300 and ids.str.fullmatch(r"mm_[0-9a-f]{32}").all()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_heap_is_trimmed_every_eighth_chunk_through_glibc():
    heap = _HeapTrim()
    assert heap.trim is not None  # found in the process's own symbols, no ldconfig run
    calls: list[int] = []
    heap.trim = calls.append  # the same signature: malloc_trim(pad)
    for _ in range(2 * heap.every + 1):
        heap.tick()
    assert calls == [0, 0]
