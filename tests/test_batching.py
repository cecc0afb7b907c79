"""The one batching boundary: the cumsum packer against a plain greedy reference, bodies
cut out of joined payloads, the one stop policy, and the client's ``before_send`` hook."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millimetric_nb import contract
from millimetric_nb.batching import body_of, body_of_blob, pack, pack_arrays, stops_run
from millimetric_nb.client import AsyncClient, _split
from millimetric_nb.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    KeyRefusedError,
    MillimetricError,
    ServerError,
)
from millimetric_nb.progress import RequestSent


def reference_pack(sizes: list[int], max_events: int, max_bytes: int) -> list[tuple[int, int, int]]:
    """The greedy rule, one payload at a time: add while both caps hold (a lone payload
    always fits its own request)."""
    out = []
    start, body = 0, len(b'{"events":[]}')
    for i, n in enumerate(sizes):
        if i == start:
            body += n
            continue
        if i - start < max_events and body + 1 + n <= max_bytes:
            body += 1 + n
            continue
        out.append((start, i, body))
        start, body = i, len(b'{"events":[]}') + n
    if start < len(sizes):
        out.append((start, len(sizes), body))
    return out


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 120), max_size=300),
    max_events=st.integers(1, 40),
    max_bytes=st.integers(13, 400),
)
def test_cumsum_packer_agrees_with_the_greedy_reference(sizes, max_events, max_bytes):
    assert pack(sizes, max_events=max_events, max_bytes=max_bytes) == reference_pack(
        sizes, max_events, max_bytes)


def test_packer_with_the_contract_caps_and_exact_body_sizes():
    rng = np.random.default_rng(3)
    sizes = rng.integers(100, 9_000, 5_000)
    got = pack(sizes)
    assert got == reference_pack(sizes.tolist(), contract.BATCH_MAX_EVENTS,
                                 contract.BATCH_MAX_BYTES)
    assert all(b - a <= contract.BATCH_MAX_EVENTS and n <= contract.BATCH_MAX_BYTES
               for a, b, n in got)
    payloads = [orjson.dumps({"e": "x" * i}) for i in range(40)]
    for a, b, n in pack([len(p) for p in payloads], max_events=7, max_bytes=200):
        assert len(body_of(payloads[a:b])) == n
    s, e, nb = pack_arrays(np.array([], dtype=np.int64))
    assert len(s) == len(e) == len(nb) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=12).filter(lambda b: b"," not in b),
                min_size=1, max_size=40), st.data())
def test_body_of_blob_is_the_body_of_the_chosen_payloads(payloads, data):
    lengths = np.array([len(p) for p in payloads], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1])).astype(np.int64)
    blob = b",".join(payloads)
    keep = data.draw(st.lists(st.booleans(), min_size=len(payloads), max_size=len(payloads)))
    which = np.flatnonzero(keep)
    assert body_of_blob(blob, starts, lengths, which) == body_of([payloads[i] for i in which])
    a = data.draw(st.integers(0, len(payloads)))
    b = data.draw(st.integers(a, len(payloads)))
    assert body_of_blob(blob, starts, lengths, slice(a, b)) == body_of(payloads[a:b])


def test_the_client_splits_with_the_same_packer():
    ev = orjson.dumps({"event": "e"})
    assert _split([ev] * 2001) == [(0, 1000), (1000, 2000), (2000, 2001)]


@pytest.mark.parametrize(("exc", "stops"), [
    (KeyRefusedError("read-only key", code="key_not_allowed"), True),
    (ConfigurationError("this client is closed", code="client_closed"), True),
    (AuthenticationError("bad key", status=401, code="invalid_api_key"), True),
    (MillimetricError("forbidden", status=403, code="forbidden"), True),
    (InvalidRequestError("bad batch", status=400), False),
    (ServerError("down", status=503, ambiguous=True), False),
])
def test_one_stop_policy(exc, stops):
    assert stops_run(exc) is stops


def test_before_send_runs_before_each_request_leaves_and_can_keep_it_back(mm_server):
    body = body_of([orjson.dumps({"event": "hooked", "event_id": "h-1"})])
    order: list[str] = []

    def observer(event):
        if isinstance(event, RequestSent):
            order.append("sent")

    async def go():
        async with AsyncClient(mm_server.keys["sk"], mm_server.url, rate_limits="off") as c:
            def hook():
                order.append("hook")
            out = await c.send_batch_body(body, 1, observer=observer, before_send=hook)

            async def async_hook():
                await asyncio.sleep(0)
                order.append("async hook")
            await c.send_batch_body(body, 1, observer=observer, before_send=async_hook)

            class Refused(Exception):
                pass

            def refuse():
                raise Refused("journal full")
            with pytest.raises(Refused):
                await c.send_batch_body(body, 1, observer=observer, before_send=refuse)
            with pytest.raises(Refused):
                await c.track("t", observer=observer, before_send=refuse)
            return out

    out = asyncio.run(go())
    assert out.status == 202
    assert order == ["hook", "sent", "async hook", "sent"]
    assert mm_server.count() == 2  # the refused requests never left


def test_a_slice_body_is_the_one_run_of_the_blob_and_an_empty_slice_an_empty_body() -> None:

    payloads = [b'{"a":1}', b'{"bb":22}', b'{"c":3}']
    blob = b",".join(payloads)
    lengths = np.array([len(p) for p in payloads], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1])).astype(np.int64)
    assert body_of_blob(blob, starts, lengths, slice(1, 3)) == body_of(payloads[1:3])
    assert body_of_blob(blob, starts, lengths, slice(0, None)) == body_of(payloads)
    assert body_of_blob(blob, starts, lengths, slice(2, 2)) == body_of([])
    with pytest.raises(ValueError, match="step 1"):
        body_of_blob(blob, starts, lengths, slice(0, 3, 2))
