"""The one batching boundary: how events are packed into ``/v1/batch`` requests, how a
body is built, and which errors stop a run.

Both :class:`~millimetric_nb.client.AsyncClient` (``batch``) and the engine
(:mod:`millimetric_nb.engine`) use these, so the packing rule and the stop policy
exist once.

A request body is ``{"events":[p0,p1,...]}``: at most ``contract.BATCH_MAX_EVENTS``
payloads and ``contract.BATCH_MAX_BYTES`` bytes (the brackets and commas included);
a single payload larger than the byte cap gets a request of its own (the server
refuses it, and that refusal is then about that row alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import contract
from .errors import ConfigurationError, KeyRefusedError, MillimetricError

__all__ = [
    "BODY_HEAD",
    "BODY_TAIL",
    "body_of",
    "body_of_blob",
    "pack",
    "pack_arrays",
    "stops_run",
]

BODY_HEAD = b'{"events":['
BODY_TAIL = b"]}"
_OVERHEAD = len(BODY_HEAD) + len(BODY_TAIL)


def pack_arrays(
    sizes: Sequence[int] | np.ndarray,
    *,
    max_events: int = contract.BATCH_MAX_EVENTS,
    max_bytes: int = contract.BATCH_MAX_BYTES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy split of payloads (by byte size) into requests: ``(starts, stops, bytes)``.

    Each request ``i`` holds payloads ``starts[i]:stops[i]`` and its body is
    ``bytes[i]`` long. Computed from one cumulative sum of ``size + 1`` (each payload
    and its comma), so the work per payload is numpy's; Python only steps from one
    request to the next (a binary search each).
    """
    n = len(sizes)
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    # cum[k]: bytes of payloads 0..k-1, each with a comma after it
    cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.asarray(sizes, dtype=np.int64) + 1, out=cum[1:])
    # requests [a, b) fit when _OVERHEAD + cum[b] - cum[a] - 1 <= max_bytes
    room = max_bytes - _OVERHEAD + 1
    starts: list[int] = []
    stops: list[int] = []
    a = 0
    while a < n:
        b = int(np.searchsorted(cum, cum[a] + room, side="right")) - 1
        b = max(min(b, a + max_events, n), a + 1)  # an oversized payload goes alone
        starts.append(a)
        stops.append(b)
        a = b
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(stops, dtype=np.int64)
    return s, e, _OVERHEAD + cum[e] - cum[s] - 1


def pack(
    sizes: Sequence[int] | np.ndarray,
    *,
    max_events: int = contract.BATCH_MAX_EVENTS,
    max_bytes: int = contract.BATCH_MAX_BYTES,
) -> list[tuple[int, int, int]]:
    """:func:`pack_arrays` as ``(start, stop, body_bytes)`` per request."""
    s, e, b = pack_arrays(sizes, max_events=max_events, max_bytes=max_bytes)
    return list(zip(s.tolist(), e.tolist(), b.tolist(), strict=True))


def body_of(payloads: Sequence[bytes]) -> bytes:
    """The ``/v1/batch`` body for already-encoded events."""
    return BODY_HEAD + b",".join(payloads) + BODY_TAIL


def body_of_blob(
    blob: bytes | memoryview, starts: np.ndarray, lengths: np.ndarray, which: np.ndarray | slice
) -> bytes:
    """The body of the payloads ``which`` (indices in increasing order, or a slice) out of
    ``blob``, where payload ``i`` is ``blob[starts[i]:starts[i] + lengths[i]]`` and
    neighbours are separated by one comma (:class:`~millimetric_nb.frame.PreparedChunk`).

    A run of neighbouring payloads is copied as one slice, commas included; only the
    gaps of left-out payloads cost a join.
    """
    view = memoryview(blob)
    if isinstance(which, slice):  # one run: one slice of the blob, no index array
        a, b, step = which.indices(len(starts))
        if step != 1:
            raise ValueError("body_of_blob takes a slice with step 1")
        if b <= a:
            return BODY_HEAD + BODY_TAIL
        return b"".join((BODY_HEAD, view[starts[a]:starts[b - 1] + lengths[b - 1]], BODY_TAIL))
    idx = np.asarray(which)
    if len(idx) == 0:
        return BODY_HEAD + BODY_TAIL
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    firsts = idx[np.concatenate(([0], breaks))]
    lasts = idx[np.concatenate((breaks - 1, [len(idx) - 1]))]
    begin = starts[firsts].tolist()
    end = (starts[lasts] + lengths[lasts]).tolist()
    if len(begin) == 1:
        return b"".join((BODY_HEAD, view[begin[0]:end[0]], BODY_TAIL))
    return BODY_HEAD + b",".join([view[a:b] for a, b in zip(begin, end, strict=True)]) + BODY_TAIL


def stops_run(exc: MillimetricError) -> bool:
    """Whether ``exc`` (a request's final failure) stops every other request of a run.

    A key refused, a client closed or misconfigured, or an answer 401/403: every
    other request would fail the same way, so nothing more is sent.
    """
    return isinstance(exc, (KeyRefusedError, ConfigurationError)) or exc.status in (401, 403)
