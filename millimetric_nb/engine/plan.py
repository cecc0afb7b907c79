"""A prepared chunk as requests: ``/v1/batch`` bodies packed by
:func:`~millimetric_nb.batching.pack_arrays` out of the chunk's joined payloads
(positions and keys by fancy indexing, no Python object per row), or one call per
unit for the per-row routes (track, identify, forget)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..batching import body_of_blob, pack_arrays
from .journal_gate import JournalGate
from .ledger import Chunk
from .prepare import PreparedRows


@dataclass(slots=True)
class Request:
    """One request of a run: the chunk positions of its rows and their journal keys.

    A ``/v1/batch`` request's body is cut out of its chunk's joined payloads when it is
    first asked for (as the request is sent), so a chunk's bodies never all exist at
    once beside the payloads they copy.
    """

    chunk: Chunk
    positions: np.ndarray
    keys: list[Any]  # the rows' journal keys (empty: the run keeps no journal)
    content: bytes | None = None
    call: dict[str, Any] | None = None
    resend: bool = False  # some ids had an uncertain earlier outcome
    before_send: Callable[[], None] | None = None  # set as it is sent: see route_sender
    # (blob, starts, lengths, which): where the body is, until it is built
    source: tuple[bytes, np.ndarray, np.ndarray, slice | np.ndarray] | None = None

    @property
    def count(self) -> int:
        return len(self.positions)

    @property
    def body(self) -> bytes | None:
        """The ``/v1/batch`` body (``None`` for a call, or in a dry run)."""
        if self.content is None and self.source is not None:
            self.content = body_of_blob(*self.source)
            self.source = None
        return self.content


@dataclass(slots=True)
class Units:
    """What a chunk sends, one journal key per unit: each valid row (``/v1/batch``), or
    each call (the per-row routes, a call may carry several rows)."""

    keys: np.ndarray  # object, one per unit
    rows: np.ndarray | list[np.ndarray]  # chunk positions: one per unit, or an array each
    what: Callable[[int], Any]  # unit -> its payload (bytes) or call (dict)

    def rows_of(self, mask: np.ndarray) -> np.ndarray:
        """The chunk positions of the units in ``mask``."""
        if isinstance(self.rows, np.ndarray):
            return self.rows[mask]
        picked = [self.rows[i] for i in np.flatnonzero(mask).tolist()]
        return np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)


def batch_units(chunk: Chunk, prep: PreparedRows) -> Units:
    """Each valid row a unit (its payload read out of the joined ones when asked for)."""
    vpos = np.flatnonzero(prep.valid)
    lengths, starts, blob = prep.layout()

    def payload(i: int) -> bytes | None:
        return None if blob is None else blob[int(starts[i]):int(starts[i] + lengths[i])]

    return Units(np.asarray(chunk.keys, dtype=object)[vpos], vpos, payload)


def call_units(chunk: Chunk, prep: PreparedRows) -> Units:
    """One unit per call (or per valid row's payload, for ``/v1/track``)."""
    if prep.calls is not None:
        rows = [np.asarray(p, dtype=np.int64) for p, _ in prep.calls]
        what: list[Any] = [c for _, c in prep.calls]
    else:
        rows = [np.array([p], dtype=np.int64) for p in np.flatnonzero(prep.valid).tolist()]
        what = list(prep.payload_list())
    keys = np.array([chunk.keys[r[0]] for r in rows], dtype=object)
    return Units(keys, rows, what.__getitem__)


def batch_requests(
    chunk: Chunk, prep: PreparedRows, keep: np.ndarray | None, resend: np.ndarray | None,
    *, bodies: bool, with_keys: bool,
) -> tuple[list[Request], int]:
    """The ``/v1/batch`` requests of the valid rows kept (``keep``: a mask over the valid
    rows, ``None``: all), and their bytes. ``bodies=False`` (a dry run) builds none."""
    vpos = np.flatnonzero(prep.valid)
    lengths, starts, blob = prep.layout()
    sel = None if keep is None or keep.all() else np.flatnonzero(keep)
    s, e, nbytes = pack_arrays(lengths if sel is None else lengths[sel])
    flagged = resend is not None and bool(resend.any())
    keys = np.asarray(chunk.keys, dtype=object) if with_keys else None
    out: list[Request] = []
    for a, b in zip(s.tolist(), e.tolist(), strict=True):
        which: slice | np.ndarray = slice(a, b) if sel is None else sel[a:b]
        positions = vpos[which]
        source = None
        if bodies:
            assert blob is not None, "a send needs the payloads, not only their lengths"
            source = (blob, starts, lengths, which)
        out.append(Request(
            chunk, positions, keys[positions].tolist() if keys is not None else [],
            source=source, resend=flagged and bool(resend[which].any()),  # type: ignore[index]
        ))
    return out, int(nbytes.sum())


def call_requests(
    chunk: Chunk, units: Units, keep: np.ndarray | None, resend: np.ndarray | None
) -> tuple[list[Request], int]:
    """One request per unit kept (the per-row routes), and their bytes."""
    out: list[Request] = []
    total = 0
    n = len(units.keys)
    for i in range(n) if keep is None else np.flatnonzero(keep).tolist():
        what = units.what(i)
        call = orjson.loads(what) if isinstance(what, bytes) else what
        total += len(what) if isinstance(what, bytes) else len(orjson.dumps(call))
        rows = units.rows[i]
        key = units.keys[i]
        out.append(Request(chunk, np.asarray(rows), [key] if key else [], call=call,
                           resend=resend is not None and bool(resend[i])))
    return out, total


async def plan_requests(
    chunk: Chunk, prep: PreparedRows, route: str, gate: JournalGate | None, dry_run: bool
) -> tuple[list[Request], int, int]:
    """The requests of a prepared chunk, once the journal (if any) has said what to send,
    skip or resend: ``(requests, their bytes, rows skipped)``."""
    batch = route == "batch"
    # a batch's units serve only the journal: without one their keys (derived ids kept
    # as bytes) are never written out as strings
    units = (None if batch and gate is None
             else batch_units(chunk, prep) if batch else call_units(chunk, prep))
    keep = resend = None
    skipped = 0
    if gate is not None and units is not None and len(units.keys):
        keep, resend, skipped = await gate.partition(chunk, units.keys, units.rows_of,
                                                     units.what)
    if batch:
        requests, nbytes = batch_requests(chunk, prep, keep, resend, bodies=not dry_run,
                                          with_keys=gate is not None)
    else:
        assert units is not None
        requests, nbytes = call_requests(chunk, units, keep, resend)
    return requests, nbytes, skipped
