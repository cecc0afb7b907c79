"""Derived event ids and the chunk's payload layout (issue 9).

The ids below were produced by the row-wise ``hashlib`` code that came before the
column-wise hashing (commit 7a45c77): a journal written then must still recognise
every event, so the new code has to give these exact strings.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millimetric_nb import frame as frame_mod
from millimetric_nb.engine.ledger import PackedIds
from millimetric_nb.errors import ConfigurationError
from millimetric_nb.frame import EventIdState, PreparedChunk, prepare_chunk, resolve_mapping

NOW = pd.Timestamp("2026-06-01T00:00:00Z")


def frame() -> pd.DataFrame:
    """Repeats (rows 0, 6, 10, 12, 13 and, without event_id, 1 and 7), unicode, JSON
    escapes, missing values, an integer user id and one invalid row (8: no event)."""
    return pd.DataFrame({
        "event": ["signup", "signup", "café ☕", "signup", "purchase", 'quote"d\nline',
                  "signup", "signup", None, "purchase", "signup", "emoji 😀", "signup", "signup"],
        "user_id": ["u1", "u1", "ü2", None, "u3", "u4", "u1", "u1", "u5", 7, "u1", None, "u1",
                    "u1"],
        "timestamp": ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z", "2026-01-03", None,
                      "2026-01-04T10:00:00.123456+02:00", "2026-01-05T00:00:00Z",
                      "2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z", "2026-01-06T00:00:00Z",
                      None, "2026-01-02T03:04:05Z", "2026-01-07T00:00:00Z",
                      "2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z"],
        "amount": [1.5, 1.5, np.nan, 2, 10**15, -0.0, 1.5, 1.5, 3, 4, 1.5, 5, 1.5, 1.5],
        "plan": ["pro", "pro", None, "free", "ent\u00e9", "a\\b", "pro", "pro", "x", None, "pro",
                 "z", "pro", "pro"],
        "event_id": [None, "given-1", None, "given-3", None, None, None, 'given"7', None, None,
                     None, "given-é", None, None],
    })


def dict_frame() -> pd.DataFrame:
    df = frame().drop(columns=["event_id", "amount", "plan"])
    return df.assign(props=[{"k": i % 3, "s": "é" if i % 2 else None, "n": [1, None]}
                            for i in range(len(df))])


CASES = {
    "derived": (lambda: frame().drop(columns="event_id"), {}),
    "partly_given": (frame, {}),
    "dict_column": (dict_frame, {"properties": "props"}),
}

#: event_ids and SHA-256 of the newline-joined payloads, as the hashlib code gave them.
EXPECTED = {
    "derived": (
        ["mm_fd0a41b02fec775cadc85fee4a0f8ef3", "mm_e72fdbbda22c83640040712f6109d736",
         "mm_796f85be649e4ed886640c30dcc55655", "mm_9011f8cbaa05dfb91d82c88fc3b0998b",
         "mm_bd0c0160a3218d4a010cc59bcf8d1872", "mm_f4d8ec438afb06ac87b2753593aef2fa",
         "mm_8138aaad0552b6322e72022065fbc9b2", "mm_77672ee2671d21b89db3ca2e6e91076d", None,
         "mm_7e9107c1d138c9943151a44ee20a21d5", "mm_1c2686d80054637a190beb4e6eddb86a",
         "mm_f4d33a9539b1e8f02dafbea4f1a0b416", "mm_4d1dc69799a8b107868caec9f5088473",
         "mm_0283ec1c80b648fd02f44fb76a5651b5"],
        "4356154d789b33a238c028313d4adbfcdad62580aa2b28d78bc65cc6828199b9",
    ),
    "partly_given": (
        ["mm_fd0a41b02fec775cadc85fee4a0f8ef3", "given-1", "mm_796f85be649e4ed886640c30dcc55655",
         "given-3", "mm_bd0c0160a3218d4a010cc59bcf8d1872", "mm_f4d8ec438afb06ac87b2753593aef2fa",
         "mm_e72fdbbda22c83640040712f6109d736", 'given"7', None,
         "mm_7e9107c1d138c9943151a44ee20a21d5", "mm_8138aaad0552b6322e72022065fbc9b2",
         "given-é", "mm_77672ee2671d21b89db3ca2e6e91076d",
         "mm_1c2686d80054637a190beb4e6eddb86a"],
        "94402562e4a27bea0036f0cd9ccbec2b3953bd62b8368d9f32039227618c78e2",
    ),
    "dict_column": (
        ["mm_ebed40e1210ca9f693ebe4d0df8872ec", "mm_dbc634d615c41b6a1a3569b63694bdc9",
         "mm_3d9c34427b9c53bb5420a82188207ae6", "mm_9494b362064d7d172667a9eda5e4488a",
         "mm_e9cc14dfb438a14a1b39a86e40f2b2d5", "mm_d9d2f11a0be6869d1b20c64904a8961d",
         "mm_e23bd82bdf84a35fb1cce0c516ac922d", "mm_34fc52405222d53e6ccaa9b06b94e095", None,
         "mm_14bcb63625989f353e0c52add9995847", "mm_4b7675c3a445aec361ecfe10caede4dd",
         "mm_1744f50e37bbec90d84e4f1a99605725", "mm_188d7dde0f71644c64aaecca7cd54de7",
         "mm_b38033203d2d1506e9fdaa4446410824"],
        "16521048149639e8500fea8d3cb25702cdfcf8fd1bcfd052ef8bc7eb253031e1",
    ),
}


def prep(df: pd.DataFrame, ids: EventIdState | None = None, offset: int = 0,
         encode: bool | str = True, **mapping) -> PreparedChunk:
    m, _ = resolve_mapping(list(df.columns), **mapping)
    return prepare_chunk(df, m, pii="ignore", now=NOW, ids=EventIdState() if ids is None else ids,
                         offset=offset,
                         encode=encode, missing_timestamp="server_time")


def chunked(df: pd.DataFrame, size: int, encode: bool | str = True, **mapping) -> list:
    state, out = EventIdState(), []
    for start in range(0, len(df), size):
        out.append(prep(df.iloc[start : start + size], state, start, encode, **mapping))
    return out


def digest(payloads: list[bytes]) -> str:
    return hashlib.sha256(b"\n".join(payloads)).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_and_payloads_are_those_of_the_hashlib_code(case):
    make, mapping = CASES[case]
    ids, payload_sha = EXPECTED[case]
    whole = prep(make(), **mapping)
    assert whole.event_ids.tolist() == ids
    assert digest(whole.payloads) == payload_sha
    for size in (1, 2, 3, 5):  # streamed through one state: the same ids
        parts = chunked(make(), size, **mapping)
        assert [i for p in parts for i in p.event_ids.tolist()] == ids, size
        assert digest([b for p in parts for b in p.payloads]) == payload_sha, size


def test_the_nth_repeat_hashes_the_first_digest_with_n():
    # 300 identical rows: n crosses a byte boundary (255 -> 256) of its 8-byte encoding
    df = pd.DataFrame({"event": ["same"] * 300, "user_id": ["u"] * 300})
    got = prep(df).event_ids.tolist()
    content = b'{"event":"same","user_id":"u"}'
    first = hashlib.sha256(content).digest()
    want = ["mm_" + first.hex()[:32]] + [
        "mm_" + hashlib.sha256(b"mm-nb-repeat\x00" + first + n.to_bytes(8, "big")).hexdigest()[:32]
        for n in range(1, 300)
    ]
    assert got == want
    assert len(set(got)) == 300


def occurrences_in(chunks: list[np.ndarray]) -> tuple[np.ndarray, int]:
    state = EventIdState()
    occ = [state.occurrences(c) for c in chunks]
    return (np.concatenate(occ) if occ else np.zeros(0, dtype=np.int64)), len(state)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), max_size=400),
    st.lists(st.integers(0, 60), max_size=40),
)
def test_occurrences_across_chunks_equal_one_big_chunk(values, cuts):
    # few distinct values: many repeats within and across chunks, runs merged often;
    # the top bit set on some keys checks the unsigned order
    keys = np.array(values, dtype=np.uint64) * np.uint64(0x0400_0000_0000_0001)
    bounds = sorted({min(c, len(keys)) for c in cuts} | {0, len(keys)})
    pieces = [keys[a:b] for a, b in itertools.pairwise(bounds)]
    streamed, distinct = occurrences_in(pieces)
    whole, _ = occurrences_in([keys])
    seen: dict[int, int] = {}
    expected = []
    for v in keys.tolist():
        expected.append(seen.get(v, 0))
        seen[v] = seen.get(v, 0) + 1
    assert streamed.tolist() == whole.tolist() == expected
    assert distinct == len(seen)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), max_size=50), min_size=1, max_size=12),
       st.integers(0, 11))
def test_restore_forgets_a_failed_chunk(chunks, fail_at):
    arrays = [np.array(c, dtype=np.uint64) for c in chunks]
    fail_at = min(fail_at, len(arrays) - 1)
    state = EventIdState()
    got = []
    for i, keys in enumerate(arrays):
        if i == fail_at:  # a chunk that fails half-way, after counting: then retried
            saved = state.snapshot()
            state.occurrences(keys)
            state.occurrences(keys[::-1])
            state.restore(saved)
        got.append(state.occurrences(keys))
    want, distinct = occurrences_in(arrays)
    assert np.concatenate(got).tolist() == want.tolist()
    assert len(state) == distinct


def test_runs_stay_few_and_distinct_is_counted():
    state = EventIdState()
    rng = np.random.default_rng(7)
    for _ in range(64):
        state.occurrences(rng.integers(0, 2**63, 1000, dtype=np.uint64))
    assert len(state) == 64_000
    assert len(state._runs) <= 7  # a binary counter over 64 chunks: the runs collapse


def check_layout(c: PreparedChunk) -> None:
    payloads = c.payloads
    assert c.lengths.dtype == np.int64 and c.starts.dtype == np.int64
    assert c.lengths.tolist() == [len(p) for p in payloads]
    assert c.blob == b",".join(payloads)
    for j, p in enumerate(payloads):
        assert c.blob[c.starts[j] : c.starts[j] + c.lengths[j]] == p
    n = len(payloads)
    for a, b in ((0, n), (1, n), (0, 1), (2, 5), (n - 1, n)):
        if 0 <= a < b <= n:
            joined = c.blob[c.starts[a] : c.starts[b - 1] + c.lengths[b - 1]]
            assert joined == b",".join(payloads[a:b]), (a, b)
    assert c.payload_bytes == sum(map(len, payloads))


@pytest.mark.parametrize("case", sorted(CASES))
def test_blob_starts_and_lengths_agree_with_payloads(case):
    make, mapping = CASES[case]
    c = prep(make(), **mapping)
    check_layout(c)
    assert len(c.payloads) == c.n_valid == 13


@pytest.mark.parametrize("case", sorted(CASES))
def test_lengths_mode_gives_the_lengths_and_ids_of_a_full_encode(case):
    make, mapping = CASES[case]
    full = prep(make(), **mapping)
    dry = prep(make(), encode="lengths", **mapping)
    assert dry.blob is None
    assert dry.lengths.tolist() == full.lengths.tolist()
    assert dry.starts.tolist() == full.starts.tolist()
    assert dry.event_ids.tolist() == full.event_ids.tolist() == EXPECTED[case][0]
    assert dry.payload_bytes == full.payload_bytes
    with pytest.raises(ValueError, match="lengths"):
        _ = dry.payloads
    # streamed: the same ids as one frame
    parts = chunked(make(), 4, encode="lengths", **mapping)
    assert [i for p in parts for i in p.event_ids.tolist()] == EXPECTED[case][0]


def test_encode_false_has_no_payloads_and_a_bad_mode_is_refused():
    c = prep(frame(), encode=False)
    assert c.blob is None and c.lengths.size == 0 and c.payloads == [] and c.payload_bytes == 0
    empty = prep(frame().iloc[:0])
    assert empty.blob == b"" and empty.payloads == [] and empty.starts.size == 0
    with pytest.raises(ConfigurationError, match="encode"):
        prep(frame(), encode="yes")


@pytest.mark.parametrize("encode", [True, "lengths"])
def test_the_row_by_row_fallback_gives_the_same_layout_and_ids(monkeypatch, encode):
    whole = prep(frame(), encode=encode)
    real = frame_mod._quote

    def fragile(ps):  # breaks on any column of more than one row: every row alone succeeds
        if len(ps) > 1:
            raise RuntimeError("unforeseen")
        return real(ps)

    monkeypatch.setattr(frame_mod, "_quote", fragile)
    alone = prep(frame(), encode=encode)
    assert any("cannot be checked" in w for w in alone.warnings)  # the fallback ran
    assert alone.event_ids.tolist() == whole.event_ids.tolist() == EXPECTED["partly_given"][0]
    assert alone.lengths.tolist() == whole.lengths.tolist()
    assert alone.starts.tolist() == whole.starts.tolist()
    assert alone.blob == whole.blob
    if encode is True:
        check_layout(alone)
        assert digest(alone.payloads) == EXPECTED["partly_given"][1]


def test_the_fallback_counts_into_the_callers_state(monkeypatch):
    # the first chunk falls back to row by row while the state is still empty: the
    # repeats it holds must count for the next chunk all the same
    df = frame().drop(columns="event_id")
    real = frame_mod._quote
    calls = {"n": 0}

    def fragile_once(ps):
        calls["n"] += 1
        if calls["n"] == 1 and len(ps) > 1:
            raise RuntimeError("unforeseen")
        return real(ps)

    monkeypatch.setattr(frame_mod, "_quote", fragile_once)
    state = EventIdState()
    first = prep(df.iloc[:8], state)
    assert any("cannot be checked" in w for w in first.warnings)
    rest = prep(df.iloc[8:], state, 8)
    assert [*first.event_ids.tolist(), *rest.event_ids.tolist()] == EXPECTED["derived"][0]


def hashlib_ids(payloads: list[bytes]) -> list[str]:
    """The id rule written row by row with hashlib, from each payload's content."""
    seen: dict[bytes, int] = {}
    out = []
    for p in payloads:
        content = b"{" + p[p.index(b",") + 1 :]  # derived ids hold no comma
        d = hashlib.sha256(content).digest()
        n = seen.get(content, 0)
        seen[content] = n + 1
        if n:
            d = hashlib.sha256(b"mm-nb-repeat\x00" + d + n.to_bytes(8, "big")).digest()
        out.append("mm_" + d.hex()[:32])
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "é ☕", 'q"\\', "\U0001f600"]),
                  st.one_of(st.none(), st.sampled_from(["u1", "ü", "u\n2"])),
                  st.one_of(st.none(), st.integers(-3, 3))),
        min_size=1, max_size=60,
    ),
    st.integers(1, 25),
)
def test_column_wise_ids_follow_the_hashlib_rule(rows, size):
    df = pd.DataFrame(rows, columns=["event", "user_id", "n"]).astype({"n": "Int64"})
    whole = prep(df)
    assert whole.event_ids.tolist() == hashlib_ids(whole.payloads)
    parts = chunked(df, size, encode="lengths")
    assert [i for p in parts for i in p.event_ids.tolist()] == whole.event_ids.tolist()


def test_derived_ids_travel_as_their_bytes_and_are_written_only_when_asked():
    df = frame().drop(columns="event_id")  # row 8 has no event: invalid, no id
    c = prep(df)
    assert c._ids is None  # nothing written yet
    assert c.id_digests is not None and c.id_digests.shape == (len(df) - 1, 16)
    want = hashlib_ids(c.payloads)
    assert frame_mod.id_text(c.id_digests).tolist() == want
    assert c.event_ids[c.valid].tolist() == want and c.event_ids[8] is None
    packed = PackedIds.of_digests(c.id_digests, np.asarray(c.valid))
    assert np.asarray(packed, dtype=object).tolist() == c.event_ids.tolist()
    assert packed[8] is None and packed[0] == want[0] and len(packed) == len(df)
    assert packed.strings() is packed.strings()  # written once (a per-row route reads one by one)
    assert packed.forget_text()._text is None and packed[0] == want[0]
    assert packed.to_arrow().to_pylist() == c.event_ids.tolist()
    lengths = prep(df, encode="lengths")
    assert lengths.lengths.tolist() == [len(p) for p in c.payloads]  # no id text needed
    given = prep(frame())  # an event_id column: the ids are kept as objects, no digests
    assert given.id_digests is None and given._ids is not None


def test_hex_bytes_reads_digests_of_one_width_and_refuses_others():
    import polars as pl

    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(50)]
    want = np.array([list(bytes.fromhex(d)[:16]) for d in digests], dtype=np.uint8)
    same = pl.Series(digests)  # one width: decoded as one block
    assert np.array_equal(frame_mod._hex_bytes(same, 16), want)
    assert np.array_equal(frame_mod._hex_bytes(same.slice(5, 20), 16), want[5:25])
    assert np.array_equal(frame_mod._hex_bytes(same, 32)[:, 16:],
                          [list(bytes.fromhex(d)[16:]) for d in digests])
    mixed = pl.Series([d + "ab" * (i % 3) for i, d in enumerate(digests)])
    for bad in (mixed, pl.Series([digests[0], None]), pl.Series(["ab" * 7])):
        with pytest.raises(ValueError, match="one even length"):
            frame_mod._hex_bytes(bad, 16)
