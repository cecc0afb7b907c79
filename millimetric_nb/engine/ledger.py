"""The account of a run: per-chunk status arrays, counts, and :class:`SendResult`.

Every row of a chunk has its status in numpy arrays (:class:`Chunk`) from the
moment it is read until its chunk is finished; a finished chunk becomes a compact
:class:`Piece` (codes and categoricals, the ids as one Arrow string array, no
per-row Python object), and the pieces become ``SendResult.rows`` once, at the end.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import numpy as np
import pandas as pd

from ..errors import MillimetricError, ValidationError
from ..results import (
    STATUS_CODES,
    STATUSES,
    DeferredRows,
    Plan,
    SendResult,
    empty_rows,
    reason_names,
)

UNSET = -1
SENT = STATUS_CODES["sent"]
FAILED = STATUS_CODES["failed"]
AMBIGUOUS = STATUS_CODES["ambiguous"]
INVALID = STATUS_CODES["invalid"]
SKIPPED = STATUS_CODES["skipped"]
PLANNED = STATUS_CODES["planned"]
_BAD = np.array([FAILED, AMBIGUOUS, INVALID], dtype=np.int8)


class Chunk:
    """One chunk of input rows and the status of each, as arrays.

    ``message`` is what ``.rows.message`` shows; ``detail`` (where a field is at fault)
    is the same note without its ``field: rule:`` head, what ``.failed.message`` shows.
    """

    __slots__ = (
        "ambiguous",
        "attempts",
        "detail",
        "error",
        "field",
        "frame",
        "keys",
        "message",
        "n",
        "offset",
        "pending",
        "sealed",
        "status",
    )

    def __init__(self, frame: pd.DataFrame, offset: int) -> None:
        n = len(frame)
        self.frame = frame
        self.n = n
        self.offset = offset
        self.status = np.full(n, UNSET, dtype=np.int8)
        self.attempts = np.zeros(n, dtype=np.int16)
        self.ambiguous = np.zeros(n, dtype=bool)
        self.error = np.full(n, None, dtype=object)
        self.message = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)
        self.field = np.full(n, None, dtype=object)  # the field at fault, for .failed
        self.keys: Any = np.full(n, None, dtype=object)
        self.pending = 0
        self.sealed = False

    def mark(
        self,
        pos: np.ndarray | slice,
        status: int,
        *,
        error: str | None = None,
        message: str | None = None,
        attempts: int | None = None,
        ambiguous: bool | None = None,
    ) -> None:
        """Give the rows ``pos`` (positions in the chunk) a status and its facts."""
        self.status[pos] = status
        if error is not None:
            self.error[pos] = error
        if message is not None:
            self.message[pos] = message
        if attempts is not None:
            self.attempts[pos] = attempts
        if ambiguous:
            self.ambiguous[pos] = True

    def note(self, pos: np.ndarray | int, field: Any, rule: Any, detail: Any) -> None:
        """A fault of a named field at ``pos``: ``error`` is the rule, ``message`` says
        ``field: rule: detail`` (one string per row only for the rows at fault)."""
        self.field[pos] = field
        self.error[pos] = rule
        self.detail[pos] = detail
        if np.ndim(pos) == 0:
            self.message[pos] = f"{field}: {rule}: {detail}"
        else:
            self.message[pos] = [
                f"{f}: {r}: {d}"
                for f, r, d in zip(np.atleast_1d(field), np.atleast_1d(rule),
                                   np.atleast_1d(detail), strict=True)
            ]


def failure(exc: MillimetricError, *, per_row: bool, stopped: bool) -> tuple[int, str]:
    """The status and message of the rows of a request that failed with ``exc``
    (``stopped``: never sent because the run stopped; ``per_row``: a one-row route,
    where a validation error is the row's own)."""
    if stopped:
        return FAILED, f"not sent: the run stopped ({exc.code})"
    if exc.ambiguous:
        return AMBIGUOUS, "outcome unknown (may or may not be stored): " + str(exc)
    if per_row and isinstance(exc, ValidationError):
        return INVALID, str(exc)
    return FAILED, str(exc)


def sent_note(ambiguous: bool, resend: bool, journaled: bool) -> str | None:
    """The message of rows acknowledged by the server (``None``: nothing to say)."""
    msg = None
    if ambiguous:
        msg = "stored; an earlier attempt may also have been written (possible duplicate)"
    elif resend:
        msg = "resent after an uncertain earlier outcome (possible duplicate)"
    if not journaled:
        msg = (f"{msg}; " if msg else "") + (
            "stored, but the journal could not record it: a resume resends it")
    return msg


class Piece:
    """The finished account of one chunk's rows (derived ids packed: see :class:`PackedIds`)."""

    __slots__ = ("ambiguous", "attempts", "error", "event_id", "index", "message", "status")

    def __init__(self, chunk: Chunk, show_keys: bool) -> None:
        self.index = chunk.frame.index
        self.status = _compact(chunk.status)
        keys = chunk.keys if show_keys else None
        packed = (keys.forget_text() if isinstance(keys, PackedIds)
                  else PackedIds.pack(keys) if keys is not None else None)
        self.event_id: PackedIds | pd.api.extensions.ExtensionArray = (
            packed if packed is not None else id_array(keys, chunk.n))
        self.error: pd.Categorical | None = categorical(chunk.error)
        # columns that say nothing (as in a dry run) are not kept: built at the end
        self.attempts: np.ndarray | None = chunk.attempts if chunk.attempts.any() else None
        self.ambiguous: np.ndarray | None = chunk.ambiguous if chunk.ambiguous.any() else None
        self.message: pd.Categorical | None = categorical(chunk.message)

    def column(self, name: str) -> Any:
        """The piece's column ``name`` (``attempts``, ``ambiguous``, ``error``,
        ``message``) in full, also when it was not kept."""
        value = getattr(self, name)
        if value is not None:
            return value
        n = len(self.status)
        if name == "attempts":
            return np.zeros(n, dtype=np.int16)
        if name == "ambiguous":
            return np.zeros(n, dtype=bool)
        return pd.Categorical.from_codes(np.full(n, -1, dtype=np.int8),
                                         categories=pd.Index([], dtype=object))


def _compact(status: np.ndarray) -> np.ndarray:
    """``status`` as kept by a finished piece: when every row has the same one (a dry
    run, a chunk sent whole), a read-only view of one value repeated (no byte a row)."""
    if status.size > 1 and (status == status[0]).all():
        return np.broadcast_to(status[:1].copy(), status.shape)
    return status


class PackedIds:
    """A chunk's derived ids (``"mm_"`` and 32 lowercase hex digits) kept as their 16
    bytes (16 bytes a row instead of about 43 as Arrow strings), rows without an id
    marked in ``present``; turned back into the exact strings by :meth:`to_arrow`.
    """

    __slots__ = ("_text", "digests", "n", "present")

    def __init__(self, digests: np.ndarray, present: np.ndarray | None, n: int) -> None:
        self.digests = digests  # (ids, 16) uint8
        self.present = present  # the rows with an id, a bit each (Arrow's validity
        # bitmap); None: every row has an id
        self.n = n
        self._text: np.ndarray | None = None  # strings(), once written (see forget_text)

    @classmethod
    def of_digests(cls, digests: np.ndarray, valid: np.ndarray) -> PackedIds:
        """The ids of a chunk's ``valid`` rows (a bool per row), given as their 16 bytes
        (``PreparedChunk.id_digests``); the other rows have none."""
        present = None if valid.all() else np.packbits(valid, bitorder="little")
        return cls(digests, present, len(valid))

    def __len__(self) -> int:
        return self.n

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The ids as an object array of ``str`` (``None`` for a row without one)."""
        return self.strings()

    def __getitem__(self, i: int) -> str | None:
        return self.strings()[i]

    def strings(self) -> np.ndarray:
        """The ids as an object array of ``str`` (``None`` for a row without one),
        written once and kept until :meth:`forget_text` (a per-row route asks for them
        one row at a time)."""
        from ..frame import id_text

        if self._text is None:
            out = np.full(self.n, None, dtype=object)
            if self.present is None:
                out[:] = id_text(self.digests)
            else:
                out[np.unpackbits(self.present, count=self.n, bitorder="little")
                    .astype(bool)] = id_text(self.digests)
            self._text = out
        return self._text

    def forget_text(self) -> PackedIds:
        """Let the written strings go (the account keeps the bytes only)."""
        self._text = None
        return self

    @classmethod
    def pack(cls, keys: Any) -> PackedIds | None:
        """``keys`` packed, or ``None`` when one is not a derived id (a given id, say)."""
        import pyarrow as pa

        from ..frame import ID_LEN, id_digests

        try:
            arr = pa.array(keys, type=pa.large_string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            return None
        n, m = len(arr), len(arr) - arr.null_count
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
        present = np.asarray(arr.is_valid()) if m < n else None  # bool per row
        lengths = np.diff(offsets)
        if ((lengths[present] if present is not None else lengths) != ID_LEN).any():
            return None
        if offsets[-1] - offsets[0] != ID_LEN * m:  # a missing id with characters
            return None
        data = arr.buffers()[2]
        chars = (np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]
                 if data is not None else np.empty(0, dtype=np.uint8)).reshape(m, ID_LEN)
        digests = id_digests(chars)
        if digests is None:
            return None
        bitmap = None if present is None else np.packbits(present, bitorder="little")
        return cls(digests, bitmap, n)

    def to_arrow(self) -> Any:
        """The ids as an Arrow ``large_string`` array (a missing id: null)."""
        from ..frame import id_arrow

        return id_arrow(self.digests, self.present, self.n)


def id_column(ids: list[Any]) -> pd.api.extensions.ExtensionArray:
    """One string array of the pieces' ids (packed or not), built without Python
    objects per row."""
    import pyarrow as pa

    if not any(isinstance(i, PackedIds) for i in ids):
        return ids[0] if len(ids) == 1 else type(ids[0])._concat_same_type(ids)
    chunks = [i.to_arrow() if isinstance(i, PackedIds) else pa.array(i, type=pa.large_string())
              for i in ids]
    if pd.StringDtype().storage == "pyarrow":
        return pd.arrays.ArrowStringArray(pa.chunked_array(chunks, type=pa.large_string()))
    return pd.array(pa.chunked_array(chunks).to_numpy(zero_copy_only=False), dtype="string")


def id_array(keys: Any, n: int) -> pd.api.extensions.ExtensionArray:
    """The ids as one Arrow-backed string array (``None`` or a missing id: NA)."""
    if keys is None:
        return pd.array(np.full(n, None, dtype=object), dtype="string")
    return pd.array(keys, dtype="string")


def categorical(values: np.ndarray) -> pd.Categorical | None:
    """Strings (or None) as a categorical with object categories (so pieces combine);
    ``None`` when every value is missing (see :meth:`Piece.column`)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    if not len(uniques):
        return None
    return pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object))


def finish_chunk(
    chunk: Chunk, *, show_keys: bool, id_column: Any
) -> tuple[Piece, pd.DataFrame | None]:
    """All of ``chunk``'s rows have a status: its :class:`Piece`, and its rows that did
    not get in (``SendResult.failed``'s part), if any. Lets the chunk's data go."""
    unset = chunk.status == UNSET
    if unset.any():  # defensive: nothing may vanish
        chunk.mark(unset, FAILED, error="not_sent", message="not sent")
    piece = Piece(chunk, show_keys)
    failed = None
    bad = np.flatnonzero(np.isin(chunk.status, _BAD))
    if len(bad):
        rows = chunk.frame.iloc[bad]
        if id_column is not None and show_keys:
            rows = with_ids(rows, id_column, np.asarray(chunk.keys, dtype=object)[bad])
        detail = chunk.detail[bad]
        failed = with_reasons(
            rows, chunk.status[bad], chunk.error[bad], chunk.field[bad],
            np.where(pd.isna(detail), chunk.message[bad], detail),
        )
    empty = np.empty(0, dtype=object)
    chunk.keys = chunk.error = chunk.message = chunk.detail = chunk.field = empty
    chunk.frame = chunk.frame.iloc[:0]
    _HEAP.tick()
    return piece, failed


class _HeapTrim:
    """Hands freed heap memory back to the system now and then (glibc's
    ``malloc_trim``, and Arrow's pool's unused memory). A long run frees chunk after chunk of
    transient arrays between the small arrays its account keeps, and glibc keeps
    those pages otherwise: at 10M rows, tens of MB of a dry run's peak."""

    every = 8  # finished chunks between two trims (a trim takes about a millisecond)

    def __init__(self) -> None:
        self.count = 0

    @functools.cached_property
    def trim(self) -> Any:
        """glibc's ``malloc_trim``, or ``None`` (another C library), looked up on the
        first trim. The process's own symbols are searched (``dlopen(NULL)``: they
        include the C library Python is linked with), not ``ctypes.util.find_library``,
        which runs ``ldconfig`` in a subprocess (about 20 ms)."""
        import ctypes

        try:
            return getattr(ctypes.CDLL(None), "malloc_trim", None)
        except (OSError, TypeError):  # pragma: no cover - no dlopen(NULL) here
            return None

    def tick(self) -> None:
        """Count one finished chunk; trim every :attr:`every`."""
        self.count += 1
        if self.count % self.every == 0:
            trim = self.trim
            if trim is not None:
                trim(0)
            import pyarrow as pa  # the reading's Arrow pool keeps freed memory too

            pa.default_memory_pool().release_unused()


_HEAP = _HeapTrim()


def counts_of(pieces: list[Piece]) -> dict[str, int]:
    """Rows by status over the finished pieces."""
    total = np.zeros(len(STATUSES), dtype=np.int64)
    for piece in pieces:
        total += np.bincount(piece.status, minlength=len(STATUSES))
    return {s: int(total[i]) for i, s in enumerate(STATUSES)}


class PieceRows(DeferredRows):
    """``SendResult.rows`` kept as the finished pieces until first read: codes,
    packed ids, 17 bytes a row in a dry run (status and id) instead of about 50 once built."""

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self.n = sum(len(p.status) for p in pieces)

    def __len__(self) -> int:
        return self.n

    def counts(self) -> dict[str, int]:
        """Rows by status, plus ``possible_duplicates`` and ``total``."""
        out = counts_of(self.pieces)
        out["possible_duplicates"] = int(sum(
            np.count_nonzero(p.ambiguous & (p.status == SENT))
            for p in self.pieces if p.ambiguous is not None))
        out["total"] = self.n
        return out

    def build(self) -> pd.DataFrame:
        """The frame, once (the pieces are let go)."""
        pieces, self.pieces = self.pieces, []
        return assemble(pieces) if pieces else empty_rows()


def assemble(pieces: list[Piece]) -> pd.DataFrame:
    """``SendResult.rows`` from the pieces, column by column (the ids' Arrow chunks are
    combined without a copy)."""
    from pandas.api.types import union_categoricals

    first = pieces[0]
    index = first.index.append([p.index for p in pieces[1:]]) if len(pieces) > 1 else first.index
    status = pd.Categorical.from_codes(
        np.concatenate([p.status for p in pieces]), categories=pd.Index(STATUSES)
    )
    event_id = id_column([p.event_id for p in pieces])
    return pd.DataFrame(
        {
            "status": status,
            "event_id": event_id,
            "error": union_categoricals([p.column("error") for p in pieces]),
            "attempts": np.concatenate([p.column("attempts") for p in pieces]),
            "ambiguous": np.concatenate([p.column("ambiguous") for p in pieces]),
            "message": union_categoricals([p.column("message") for p in pieces]),
        },
        index=index,
        copy=False,
    )


def with_ids(rows: pd.DataFrame, column: Any, keys: np.ndarray) -> pd.DataFrame:
    """``rows`` (a copy) with each row's id in ``column``, where the row has one.

    A new column is added at the end; an existing one (the mapped ``event_id``
    column) only gets the ids derived for its missing cells. Invalid rows have no id
    and keep what they had (a resend derives one from the fixed content).
    """
    ids = pd.array(keys, dtype="string")
    if column not in rows.columns:
        out = rows.copy()
        out[column] = ids  # positional: no alignment on a non-unique index
        return out
    current = rows[column]
    fill = np.asarray(current.isna()) & ~np.asarray(pd.isna(ids))
    if not fill.any() or isinstance(current, pd.DataFrame):
        return rows
    out = rows.copy()
    values = current.astype(object).to_numpy(copy=True)
    values[fill] = np.asarray(keys, dtype=object)[fill]
    out[column] = pd.Series(values, index=rows.index, dtype=current.dtype
                            if pd.api.types.is_string_dtype(current.dtype) else object)
    return out


def with_reasons(
    rows: pd.DataFrame,
    status: np.ndarray,
    error: np.ndarray,
    fields: np.ndarray,
    message: np.ndarray,
) -> pd.DataFrame:
    """``rows`` (the input's columns) followed by why each did not get in:
    ``status``, ``error_code``, ``field``, ``message`` (see ``SendResult.failed``)."""
    names = reason_names(rows.columns)
    statuses = np.asarray(STATUSES, dtype=object)[status.astype(np.intp)]
    out = rows.copy()
    for name, values in zip(names, (statuses, error, fields, message), strict=True):
        out[name] = pd.array(np.asarray(values, dtype=object), dtype="string")  # positional
    return out


def build_result(
    *,
    pieces: list[tuple[int, Piece]],
    failed: list[tuple[int, pd.DataFrame]],
    errors: list[pd.DataFrame],
    template: pd.DataFrame | None,
    warnings: list[str],
    plan: Plan,
    elapsed: float,
    dry_run: bool,
    route: str,
    error: MillimetricError | None,
) -> SendResult:
    """The run's :class:`SendResult` from its finished pieces (which chunks finished out of
    order: they are put back in input order)."""
    ordered = [p for _, p in sorted(pieces, key=_first)]
    # built on first access: SendResult's rows field takes a DeferredRows (results._RowsField)
    rows = cast("pd.DataFrame", PieceRows(ordered))
    if failed:
        failed_rows = pd.concat([p for _, p in sorted(failed, key=_first)])
    else:
        empty = np.empty(0, dtype=object)
        failed_rows = with_reasons(
            template if template is not None else pd.DataFrame(),
            np.empty(0, dtype=np.int8), empty, empty, empty,
        )
    problems = (
        pd.concat(errors, ignore_index=True)
        .sort_values("position", kind="stable")
        .reset_index(drop=True)
        if errors
        else pd.DataFrame(columns=["row", "position", "field", "rule", "message"])
    )
    return SendResult(rows=rows, failed=failed_rows, errors=problems, warnings=warnings,
                      plan=plan, elapsed_s=elapsed, dry_run=dry_run, route=route, error=error)


def _first(item: tuple[int, Any]) -> int:
    return item[0]
