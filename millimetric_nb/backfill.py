"""The backfill engine: chunks -> validate + encode -> requests -> send -> account.

One async code path, :func:`run_rows`, does everything: events through
``/v1/batch`` or ``/v1/track`` (with :func:`event_preparer`) and the accessor's
identify and forget are built on it. The engine takes observers only; the public faces
(:func:`millimetric_nb.backfill`, :func:`millimetric_nb.abackfill`, ``df.millimetric``,
in :mod:`millimetric_nb.api` and :mod:`millimetric_nb.accessor`) choose the display
for ``progress=True`` and bridge to synchronous code.

How a run goes:

* the source is read chunk by chunk by :mod:`millimetric_nb.datasources` (a
  DataFrame is sliced; files, Parquet datasets, Arrow, polars, DuckDB and Dask
  are streamed), so memory stays bounded;
* each chunk is validated and encoded column-wise by the frame layer in a worker
  thread, ahead of the sending (a bounded queue of ready requests keeps the
  pipeline full without holding the whole input's payloads);
* valid rows already acknowledged in the journal are ``skipped``; the rest are
  packed into ``/v1/batch`` bodies of at most 1000 events and 5 MB;
* ``concurrency`` workers send requests; the client's token bucket sets the pace
  and retries transient failures;
* every outcome is written to the journal (committed) *before* it is counted,
  and every row ends in :class:`~millimetric_nb.results.SendResult` with exactly
  one status.

Errors: a ``/v1/batch`` request is all-or-nothing. A 400 that names events
(``events.N.field``, a rule the server applies and the client did not) marks those
rows ``invalid`` with the server's rule and sends the others again; any other
request rejected for good marks its rows ``failed`` with the code and the run goes
on. A 401/403 or a refused key stops the run: rows not yet sent are marked
``failed`` with that code, the result is *returned* (so the account of what was
already sent is not lost) with ``result.error`` set, shown at the top of its repr; call
``result.raise_for_error()`` to turn it into an exception. A journal that
cannot be written stops the run the same way (``journal_failed``). A source that
cannot be read further (a corrupt line, an item that is not a DataFrame) ends the
reading: the rows read so far are sent and accounted, and ``result.error`` says
where it stopped. A graceful stop (``stop=``, a :class:`StopSignal`: the Cancel
button, the first Ctrl-C) sends nothing new, awaits the requests on the wire, and
returns the full account (rows never sent are ``failed`` with ``cancelled`` /
``interrupted``). A hard interruption (KeyboardInterrupt, task cancellation)
propagates; the journal holds what was acknowledged, and running again with it resumes.

Ambiguity: see :mod:`millimetric_nb.results` (statuses) and
:mod:`millimetric_nb.journal` (resume policy). Ids whose outcome an earlier run
left unknown are, with ``on_ambiguous="verify"`` (the faces' default), looked for
by reading back their time window (:meth:`_Run.read_back`): found ones are
``skipped``, absent ones sent as new, and only those reads cannot tell about are
resent and flagged (as ``"resend"`` does for all; ``"skip"`` skips them). The
journal needs no timestamps for this: a resume rebuilds the same payloads from
the same source, and the ids' timestamps are read from them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import itertools
import logging
import os
import re
import sqlite3
import time
import warnings as _warnings
from collections.abc import (
    Awaitable,
    Callable,
    Hashable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd

from . import contract
from .datasources import DEFAULT_CHUNKSIZE, Source, field_columns, iter_source
from .errors import (
    ConfigurationError,
    KeyRefusedError,
    MillimetricError,
    SourceError,
    ValidationError,
)
from .frame import PII_DEFAULT, RULE_PII, MergedWarnings, check_pii
from .journal import ACKED, AMBIGUOUS, PENDING, Journal, JournalBusy, open_journal
from .progress import (
    Acknowledged,
    Done,
    Emitter,
    Failed,
    Observer,
    Planned,
    ProgressEvent,
    RequestSent,
    Retrying,
    Stopping,
    Waiting,
)
from .results import (
    STATUS_CODES,
    STATUSES,
    UNCHECKED,
    Plan,
    SendResult,
    empty_rows,
    reason_columns,
    reason_names,
)

log = logging.getLogger("millimetric_nb")

DEFAULT_CONCURRENCY = 20
_BODY_HEAD = b'{"events":['
_BODY_TAIL = b"]}"

_UNSET = -1
_SENT = STATUS_CODES["sent"]
_FAILED = STATUS_CODES["failed"]
_AMBIGUOUS = STATUS_CODES["ambiguous"]
_INVALID = STATUS_CODES["invalid"]
_SKIPPED = STATUS_CODES["skipped"]
_PLANNED = STATUS_CODES["planned"]

OnAmbiguous = Literal["verify", "resend", "skip"]
#: Most time windows one read-back (on_ambiguous="verify") reads, per chunk.
_VERIFY_WINDOWS = 32
#: Gaps between uncertain ids' timestamps narrower than this are read through.
_VERIFY_GAP = pd.Timedelta(minutes=10)


# --------------------------------------------------------------------------- planning


def pack(
    sizes: Sequence[int],
    *,
    max_events: int = contract.BATCH_MAX_EVENTS,
    max_bytes: int = contract.BATCH_MAX_BYTES,
) -> list[tuple[int, int, int]]:
    """Greedy split of payloads (by their byte sizes) into request bodies.

    Returns ``(start, stop, body_bytes)`` per request, where the body is
    ``{"events":[p0,p1,...]}``: at most ``max_events`` payloads and ``max_bytes``
    bytes each (a single payload larger than ``max_bytes`` gets a body of its own).
    """
    overhead = len(_BODY_HEAD) + len(_BODY_TAIL)
    out: list[tuple[int, int, int]] = []
    start = 0
    size = overhead
    for i, n in enumerate(sizes):
        add = n + (1 if i > start else 0)
        if i > start and (i - start >= max_events or size + add > max_bytes):
            out.append((start, i, size))
            start, size, add = i, overhead, n
        size += add
    if len(sizes) > start:
        out.append((start, len(sizes), size))
    return out


def body_of(payloads: Sequence[bytes]) -> bytes:
    """The ``/v1/batch`` body for already-encoded events."""
    return _BODY_HEAD + b",".join(payloads) + _BODY_TAIL


def route_limit(client: Any, route: str) -> contract.RateLimit | None:
    """The rate limit the client applies to ``route`` (else the contract's)."""
    for holder in (client, getattr(client, "async_client", None)):
        limiter = getattr(holder, "limiter", None)
        limits = getattr(limiter, "limits", None)
        if isinstance(limits, dict):
            found = limits.get(route)
            return found if isinstance(found, contract.RateLimit) else None
    return contract.RATE_LIMITS.get(route)


# --------------------------------------------------------------------------- per-run state


@dataclass(slots=True)
class PreparedRows:
    """What a preparer returns for one chunk (see :func:`run_rows`)."""

    valid: np.ndarray  # bool per row
    keys: np.ndarray  # object per row: the journal key / event id (None when none)
    errors: pd.DataFrame  # row, position (global: offset + local), field, rule, message
    warnings: list[str]
    payloads: list[bytes] | None = None  # batch / track: one per valid row, in order
    calls: list[tuple[np.ndarray, dict[str, Any]]] | None = None  # per-call routes
    # the column of ``result.failed`` that carries each row's id, so that resending
    # ``.failed`` reuses the ids (a derived id numbers repeats of identical content,
    # which a subset alone would number differently); None: ids are not carried
    id_column: Any = None
    # the shape of the content derived ids hash (frame.id_recipe); checked against
    # the journal's, so a journal is not reused for ids that cannot match
    id_recipe: str | None = None


class _Chunk:
    __slots__ = (
        "ambiguous",
        "attempts",
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
        self.status = np.full(n, _UNSET, dtype=np.int8)
        self.attempts = np.zeros(n, dtype=np.int16)
        self.ambiguous = np.zeros(n, dtype=bool)
        self.error = np.full(n, None, dtype=object)
        self.message = np.full(n, None, dtype=object)
        self.field = np.full(n, None, dtype=object)  # the field at fault, for .failed
        self.keys = np.full(n, None, dtype=object)
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
        self.status[pos] = status
        if error is not None:
            self.error[pos] = error
        if message is not None:
            self.message[pos] = message
        if attempts is not None:
            self.attempts[pos] = attempts
        if ambiguous:
            self.ambiguous[pos] = True


@dataclass(slots=True)
class _Request:
    chunk: _Chunk
    positions: np.ndarray
    keys: list[str]
    body: bytes | None = None
    call: dict[str, Any] | None = None
    resend: bool = False  # some ids had an uncertain earlier outcome

    @property
    def count(self) -> int:
        return len(self.positions)


SendFn = Callable[[_Request, Observer], Awaitable[Any]]
Preparer = Callable[[pd.DataFrame, int], PreparedRows]


class StopSignal:
    """Asks a running send to stop gracefully: nothing new leaves, the requests already
    on the wire are awaited (bounded by the client's timeouts) and journaled, and the
    run returns its full account (``result.error.code``: ``"cancelled"`` or
    ``"interrupted"``; the rows never sent are ``failed`` with that code).

    Pass one as ``stop=`` to :func:`run_rows` (or ``millimetric_nb.abackfill``) and
    call :meth:`request` from anywhere: the loop's thread (a Cancel button), another
    thread, or a signal handler. A request made before the run starts stops it at once.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._target: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.reason is not None

    def request(self, reason: str = "cancel") -> None:
        """Ask for the stop (``reason``: ``"cancel"`` or ``"interrupt"``; the first wins)."""
        if self.reason is None:
            self.reason = reason
        self._wake()

    def _wake(self) -> None:
        target = self._target
        if target is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                target[0].call_soon_threadsafe(target[1])

    def bind(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """Attach a running send (done by :func:`run_rows`)."""
        self._target = (loop, callback)
        if self.reason is not None:
            self._wake()

    def unbind(self) -> None:
        """Detach the send (it ended)."""
        self._target = None


@dataclass(slots=True)
class _Flight:
    """One request being sent, as its own task, so that a stop can call it off."""

    on_wire: bool  # an attempt left and has not been answered yet
    left: bool = False  # some attempt left (its ids were journaled pending)
    maybe_written: bool = False  # an earlier attempt may have been written
    called_off: bool = False  # cancelled by a stop before (again) leaving
    attempts: int = 0
    task: asyncio.Future[Any] | None = None


def _is_fatal(exc: MillimetricError) -> bool:
    return isinstance(exc, (KeyRefusedError, ConfigurationError)) or exc.status in (401, 403)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Run:
    route: str
    send: SendFn | None
    prepare: Preparer
    emit: Emitter
    journal: Journal | None
    dry_run: bool
    concurrency: int
    on_ambiguous: OnAmbiguous
    limit: contract.RateLimit | None
    total_rows: int | None
    show_keys: bool = True
    errors: list[pd.DataFrame] = field(default_factory=list)
    rows: list[tuple[int, _Piece]] = field(default_factory=list)  # (offset, piece)
    failed: list[tuple[int, pd.DataFrame]] = field(default_factory=list)
    stop_error: MillimetricError | None = None  # nothing more is sent
    read_error: MillimetricError | None = None  # nothing more is read; what was read is sent
    requests: int = 0
    events: int = 0
    bytes: int = 0
    merged_warnings: MergedWarnings = field(default_factory=MergedWarnings)
    template: pd.DataFrame | None = None  # the input's columns, no rows
    id_column: Any = None  # see PreparedRows.id_column
    recipe_checked: bool = False
    # the sender is the client's (route_sender), which emits RequestSent as each
    # request leaves: ids are journaled pending then (see begin_on_send)
    announces_sends: bool = False
    resent_uncertain: int = 0
    skipped_uncertain: int = 0
    # on_ambiguous="verify": the client that reads back (None: cannot), and how many
    # ids could not be checked and why (said once, in result())
    reader: Any = None
    unverified: int = 0
    unverified_why: list[str] = field(default_factory=list)
    stopping: str | None = None  # a graceful stop was asked for ("cancel" / "interrupt")
    flight_of: dict[int, _Flight] = field(default_factory=dict)  # requests being sent

    # ---------------------------------------------------------------- bookkeeping

    def warn(self, message: str) -> None:
        # merged over the chunks: row-naming and row-counting warnings into one each
        self.merged_warnings.add(message)

    def rendered_warnings(self) -> list[str]:
        return self.merged_warnings.rendered()

    def finish_chunk(self, chunk: _Chunk) -> None:
        """All of the chunk's rows have a status: move them to the result pieces."""
        unset = chunk.status == _UNSET
        if unset.any():  # defensive: nothing may vanish
            chunk.mark(unset, _FAILED, error="not_sent", message="not sent")
        # compact pieces: codes and categoricals, no per-row Python objects kept
        keys, error, message, fields = chunk.keys, chunk.error, chunk.message, chunk.field
        piece = _Piece(
            index=chunk.frame.index,
            status=chunk.status,
            event_id=pd.array(
                chunk.keys if self.show_keys else np.full(chunk.n, None, dtype=object),
                dtype="string",
            ),
            error=_categorical(chunk.error),
            attempts=chunk.attempts,
            ambiguous=chunk.ambiguous,
            message=_categorical(chunk.message),
        )
        chunk.keys = chunk.error = chunk.message = chunk.field = np.empty(0, dtype=object)
        self.rows.append((chunk.offset, piece))
        bad = np.isin(chunk.status, (_FAILED, _AMBIGUOUS, _INVALID))
        if bad.any():
            pos = np.flatnonzero(bad)
            rows = chunk.frame.iloc[pos]
            if self.id_column is not None and self.show_keys:
                rows = _with_ids(rows, self.id_column, keys[pos])
            rows = _with_reasons(
                rows, chunk.status[pos], error[pos], fields[pos], message[pos]
            )
            self.failed.append((chunk.offset, rows))
        chunk.frame = chunk.frame.iloc[:0]  # let the chunk's data go

    def settle(self, chunk: _Chunk) -> None:
        if chunk.sealed and chunk.pending == 0:
            self.finish_chunk(chunk)

    def current_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for _, piece in self.rows:
            for code, n in zip(*np.unique(piece.status, return_counts=True), strict=True):
                counts[STATUSES[int(code)]] += int(n)
        return counts

    # ---------------------------------------------------------------- producing

    async def produce(
        self, chunks: Iterator[pd.DataFrame], queue: asyncio.Queue[_Request | None]
    ) -> None:
        offset = 0
        while True:
            try:
                frame = await asyncio.to_thread(next, chunks, None)
            except SourceError as exc:  # it names the source and the part already
                self.read_error = exc
                self.warn(str(exc))
                break
            except Exception as exc:
                # the rest of the source cannot be read (a bad line, an item that is
                # not a DataFrame): the rows read so far are still sent and accounted
                hint = ""
                if isinstance(exc, UnicodeDecodeError):
                    hint = (" (the file is not UTF-8: read it yourself and pass the chunks, "
                            "e.g. pd.read_csv(path, encoding='cp1252', chunksize=100_000))")
                self.read_error = MillimetricError(
                    f"reading the source failed after {offset:,} rows: "
                    f"{type(exc).__name__}: {exc}{hint}",
                    code=exc.code if isinstance(exc, MillimetricError) else "source_read_failed",
                )
                self.warn(str(self.read_error))
                break
            if frame is None:
                break
            if self.template is None:
                self.template = frame.iloc[:0]
            chunk = _Chunk(frame, offset)
            offset += len(frame)
            if self.stop_error is not None:
                self.stop_chunk(chunk, checked=False)
                continue
            await self.plan_chunk(chunk, queue)
        # only on normal completion: when failing or cancelled, run() cancels the
        # workers (and waiting on a full queue then could never end)
        for _ in range(self.concurrency):
            await queue.put(None)

    def stop_chunk(self, chunk: _Chunk, *, checked: bool = True) -> None:
        """The rows of ``chunk`` not yet accounted for end ``failed`` (not sent), with
        the stop's code; ``checked=False``: the chunk was never validated, so its rows
        are said to be unchecked (some may be invalid), not valid rows kept back."""
        err = self.stop_error
        assert err is not None
        unset = chunk.status == _UNSET
        msg = f"not sent: the run stopped ({err.code})"
        if not checked:
            msg = f"{UNCHECKED} ({err.code})"
        chunk.mark(unset, _FAILED, error=err.code, message=msg)
        chunk.sealed = True
        self.emit(Failed(self.route, int(unset.sum()), err.code, "not sent: the run stopped"))
        self.settle(chunk)

    async def plan_chunk(self, chunk: _Chunk, queue: asyncio.Queue[_Request | None]) -> None:
        try:
            prep = await asyncio.to_thread(self.prepare, chunk.frame, chunk.offset)
        except MillimetricError as exc:
            # A problem with the whole chunk (no event column, pii="error"...): every
            # row is reported with it; nothing of this chunk is sent.
            self.warn(str(exc))
            if exc.code == RULE_PII:  # pii="error": nothing more is sent
                self.stop(exc)
            chunk.mark(slice(None), _INVALID, error=exc.code, message=_short(str(exc)))
            if isinstance(exc, ValidationError) and exc.problems:
                chunk.field[:] = exc.problems[0][0]
            chunk.sealed = True
            self.emit(Planned(chunk.n, 0, chunk.n, total_rows=self.total_rows))
            self.settle(chunk)
            return
        except Exception as exc:  # a bug, not bad input: account for the rows, go on
            log.exception("preparing rows %d.. failed", chunk.offset)
            msg = f"not sent: preparing the chunk failed ({type(exc).__name__}: {exc})"
            self.warn(msg)
            chunk.mark(slice(None), _FAILED, error="prepare_failed", message=_short(msg))
            chunk.sealed = True
            self.emit(Planned(chunk.n, 0, 0, total_rows=self.total_rows))
            self.emit(Failed(self.route, chunk.n, "prepare_failed", _short(msg)))
            self.settle(chunk)
            return
        for w in prep.warnings:
            self.warn(w)
        chunk.keys = prep.keys
        if prep.id_column is not None:
            self.id_column = prep.id_column
        invalid_pos = np.flatnonzero(~prep.valid)
        if len(prep.errors):
            self.errors.append(prep.errors)
        if len(invalid_pos):
            first = prep.errors.drop_duplicates("position") if len(prep.errors) else None
            chunk.mark(invalid_pos, _INVALID, error="invalid", message="invalid row")
            if first is not None:
                pos = first["position"].to_numpy(dtype=np.int64) - chunk.offset
                ok = (pos >= 0) & (pos < chunk.n)
                pos = pos[ok]
                rules = first["rule"].to_numpy(dtype=object)[ok]
                fields = first["field"].to_numpy(dtype=object)[ok]
                msgs = first["message"].to_numpy(dtype=object)[ok]
                chunk.error[pos] = rules
                chunk.field[pos] = fields
                chunk.message[pos] = [
                    f"{f}: {r}: {m}" for f, r, m in zip(fields, rules, msgs, strict=True)
                ]
        if (
            self.journal is not None
            and prep.id_recipe is not None
            and not self.recipe_checked
            and not await self.check_recipe(prep.id_recipe)
        ):
            self.stop_chunk(chunk)  # the invalid rows stay invalid, the rest fail unsent
            return
        valid_pos = np.flatnonzero(prep.valid)

        # what is to be sent, as (positions, keys, payload or call) units
        if prep.calls is not None:
            units = [(np.asarray(p, dtype=np.int64), c) for p, c in prep.calls]
        else:
            payloads = prep.payloads or []
            units = [
                (np.array([p], dtype=np.int64), payloads[i]) for i, p in enumerate(valid_pos)
            ]
        skipped, uncertain = 0, set()
        if self.journal is not None and units:
            units, skipped, uncertain = await self.apply_journal(chunk, units, prep.keys)

        requests = self.build_requests(chunk, units, uncertain)
        self.emit(
            Planned(
                chunk.n,
                len(valid_pos),
                len(invalid_pos),
                skipped=skipped,
                requests=len(requests),
                total_rows=self.total_rows,
            )
        )
        if self.dry_run:
            for req in requests:
                chunk.mark(req.positions, _PLANNED)
            chunk.sealed = True
            self.settle(chunk)
            return
        chunk.pending = len(requests)
        for req in requests:
            if self.stop_error is not None:
                self.fail_request(req, self.stop_error, stopped=True)
                continue
            await queue.put(req)
        chunk.sealed = True
        self.settle(chunk)

    async def check_recipe(self, recipe: str) -> bool:
        """Whether the journal's derived ids can match this input's; else stop the run.

        Derived ids hash the content, so another set of fields or property columns
        (an added column, a dropped one) gives every row a new id: the journal would
        recognise nothing and the whole input would be stored again.
        """
        self.recipe_checked = True
        ok, previous = await self.journal_call("check_recipe", recipe, record=not self.dry_run)
        if not ok:
            return False
        if previous is None:
            return True
        from .frame import describe_recipe_change

        assert self.journal is not None
        self.stop(ConfigurationError(
            f"the journal {self.journal.path} holds event ids derived from other columns "
            f"({describe_recipe_change(previous, recipe)}): no row's id could match, so "
            "every row would be sent again and stored twice. Send the same columns as "
            "before (drop the new ones or pass properties=[...]), give the rows an "
            "event_id column, or use a new journal if these are different events",
            code="journal_mismatch",
        ))
        return False

    async def apply_journal(
        self, chunk: _Chunk, units: list[tuple[np.ndarray, Any]], keys: np.ndarray
    ) -> tuple[list[tuple[np.ndarray, Any]], int, set[int]]:
        """What the journal says of each unit: ``(units to send, rows skipped, resends)``.

        Acknowledged ids are skipped; uncertain ones (pending or ambiguous in an
        earlier run) are read back with ``on_ambiguous="verify"`` (stored: skipped;
        absent: sent unflagged), else resent and flagged, or skipped with ``"skip"``.
        If the journal cannot be read the run stops, and the units fail as not sent.
        """
        unit_keys = [keys[pos[0]] for pos, _ in units]
        ok, known = await self.journal_call("lookup", [k for k in unit_keys if k])
        if not ok:
            return units, 0, set()
        stored: dict[str, int] = {}
        absent: set[str] = set()
        if self.on_ambiguous == "verify" and not self.dry_run:
            doubtful = [(what, key) for (_, what), key in zip(units, unit_keys, strict=True)
                        if key and known.get(key, (None, False))[0] in (PENDING, AMBIGUOUS)]
            if doubtful:
                stored, absent = await self.read_back(doubtful)
                if not await self.journal_verified(stored, absent):
                    stored, absent = {}, set()
        kept: list[tuple[np.ndarray, Any]] = []
        skipped = 0
        resends: set[int] = set()
        for (pos, what), key in zip(units, unit_keys, strict=True):
            state, dup = known.get(key, (None, False)) if key else (None, False)
            if state == ACKED:
                chunk.mark(pos, _SKIPPED, ambiguous=dup,
                           message="acknowledged in an earlier run (journal)")
                skipped += len(pos)
            elif key in stored:
                chunk.mark(pos, _SKIPPED, ambiguous=dup or stored[key] > 1,
                           message="stored by an earlier run whose answer was lost: found by "
                           "reading back (on_ambiguous='verify'); not resent"
                           + ("" if stored[key] == 1 else f"; stored {stored[key]} times"))
                skipped += len(pos)
            elif key in absent:
                kept.append((pos, what))  # certainly not stored: a plain send
            elif state in (PENDING, AMBIGUOUS) and self.on_ambiguous == "skip":
                chunk.mark(pos, _SKIPPED, ambiguous=True, error="ambiguous_earlier",
                           message="outcome unknown in an earlier run; not resent")
                skipped += len(pos)
                self.skipped_uncertain += len(pos)
            else:
                if state in (PENDING, AMBIGUOUS):
                    resends.add(id(pos))
                    self.resent_uncertain += len(pos)
                kept.append((pos, what))
        return kept, skipped, resends

    async def journal_verified(self, stored: dict[str, int], absent: set[str]) -> bool:
        """Record what reading back found: stored ids ``acked`` (a possible duplicate if
        stored twice), absent ones ``failed`` (so their send is not flagged)."""
        for ids, call, dup in (
            ([k for k, n in stored.items() if n == 1], "acknowledge", False),
            ([k for k, n in stored.items() if n > 1], "acknowledge", True),
            (sorted(absent), "fail", False),
        ):
            if ids:
                ok, _ = await self.journal_call(call, ids, ambiguous=dup)
                if not ok:
                    return False
        return True

    def cannot_verify(self, n: int, why: str) -> None:
        self.unverified += n
        if why not in self.unverified_why:
            self.unverified_why.append(why)

    async def read_back(self, doubtful: list[tuple[Any, str]]) -> tuple[dict[str, int], set[str]]:
        """Which of the ``(payload, id)`` whose earlier outcome is unknown the server holds.

        Reads ``/v1/query`` over the time windows of their timestamps (at most
        :data:`_VERIFY_WINDOWS` windows, cut at the widest gaps; every row of each, split
        as :func:`~millimetric_nb.read.aquery_all` does) and looks for their event ids.
        Returns ``({id: times stored}, {ids certainly not stored})``; an id in neither
        could not be checked (no timestamp, a key that cannot read, reads without
        ``event_id``, a read that failed or was incomplete): it is resent and flagged,
        and :meth:`result` says why, once.
        """
        from .read import IncompleteReadWarning, aquery_all

        reader = self.reader
        if reader is None:
            self.cannot_verify(len(doubtful), "no client to read with")
            return {}, set()
        try:
            reader.check_key("read")
        except MillimetricError as exc:
            self.cannot_verify(len(doubtful), f"the key cannot read: {exc.code}")
            return {}, set()
        times: dict[str, pd.Timestamp] = {}
        names: set[Any] = set()
        for what, key in doubtful:
            try:
                body = orjson.loads(what) if isinstance(what, bytes) else dict(what)
                times[key] = pd.Timestamp(body["timestamp"])
                names.add(body.get("event"))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.cannot_verify(1, "rows without a timestamp were stored at an unknown time")
        if not times:
            return {}, set()
        instants = np.array(sorted(set(times.values())), dtype=object)
        windows = _windows(instants, _VERIFY_WINDOWS)
        event = next(iter(names)) if len(names) == 1 else None

        async def read(a: pd.Timestamp, b: pd.Timestamp) -> pd.DataFrame | str:
            try:
                return await aquery_all(a, b + pd.Timedelta(microseconds=1), event=event,
                                        client=reader)
            except MillimetricError as exc:
                return f"a read failed: {exc.code}"

        with _warnings.catch_warnings():  # an incomplete read is accounted for below
            _warnings.simplefilter("ignore", IncompleteReadWarning)
            frames = await asyncio.gather(*(read(a, b) for a, b in windows))
        # per window: (event id -> times stored, whether the read saw every row), or why not
        seen: list[tuple[dict[str, int], bool] | str] = []
        for got in frames:
            if isinstance(got, str):
                seen.append(got)
            elif len(got) and got["event_id"].isna().all():
                seen.append("this server's reads carry no event_id")
            else:
                counts = got["event_id"].dropna().value_counts()
                seen.append(({str(k): int(v) for k, v in counts.items()},
                             bool(got.attrs.get("complete", True))))
        starts = [a for a, _ in windows]
        stored: dict[str, int] = {}
        absent: set[str] = set()
        for key, ts in times.items():
            found = seen[bisect.bisect_right(starts, ts) - 1]
            if isinstance(found, str):
                self.cannot_verify(1, found)
            elif key in found[0]:
                stored[key] = found[0][key]
            elif found[1]:
                absent.add(key)
            else:
                self.cannot_verify(1, "a read could not see every stored row")
        return stored, absent

    def build_requests(
        self, chunk: _Chunk, units: list[tuple[np.ndarray, Any]], uncertain: set[int]
    ) -> list[_Request]:
        out: list[_Request] = []
        if not units:
            return out
        if self.route == "batch":
            payloads = [u[1] for u in units]
            for start, stop, nbytes in pack([len(p) for p in payloads]):
                part = units[start:stop]
                positions = np.concatenate([p for p, _ in part])
                out.append(
                    _Request(
                        chunk,
                        positions,
                        [chunk.keys[p] for p in positions],
                        body=None if self.dry_run else body_of(payloads[start:stop]),
                        resend=any(id(p) in uncertain for p, _ in part),
                    )
                )
                self.bytes += nbytes
        else:
            for pos, what in units:
                call = orjson.loads(what) if isinstance(what, bytes) else what
                nbytes = len(what) if isinstance(what, bytes) else len(orjson.dumps(call))
                out.append(
                    _Request(
                        chunk,
                        pos,
                        [k for k in (chunk.keys[pos[0]],) if k],
                        call=call,
                        resend=id(pos) in uncertain,
                    )
                )
                self.bytes += nbytes
        self.requests += len(out)
        self.events += sum(r.count for r in out)
        return out

    # ---------------------------------------------------------------- sending

    async def work(self, queue: asyncio.Queue[_Request | None]) -> None:
        while True:
            req = await queue.get()
            if req is None:
                return
            if self.stop_error is not None:
                self.fail_request(req, self.stop_error, stopped=True)
                continue
            await self.send_one(req)

    def attempt_event(self, event: ProgressEvent) -> None:
        """The observer handed to the client for one request.

        The client's RequestSent / Retrying / Waiting pass through; its own
        Acknowledged / Failed (a single call emits them) do not, since the run
        emits those itself, knowing the rows (else a display would count twice).
        """
        if isinstance(event, (RequestSent, Retrying, Waiting)):
            self.emit(event)

    def request_stop(self, reason: str) -> None:
        """A graceful stop (Cancel, a first interrupt): nothing new leaves, the requests
        on the wire are awaited, every other row ends ``failed`` (not sent)."""
        if self.stopping is not None:
            return
        self.stopping = reason
        if reason == "interrupt":
            err = MillimetricError(
                "the send was interrupted (Ctrl-C or a kernel interrupt): nothing new was "
                "sent after it, the requests in flight were awaited", code="interrupted")
        else:
            err = MillimetricError(
                "the send was cancelled: nothing new was sent after it, the requests in "
                "flight were awaited", code="cancelled")
        if self.stop_error is None:  # the account says it; no warning about it
            self.stop_error = err
        flights = list(self.flight_of.values())
        for flight in flights:
            if not flight.on_wire and flight.task is not None:
                flight.called_off = True
                flight.task.cancel()
        self.emit(Stopping(self.route, reason, sum(f.on_wire for f in flights)))

    async def fly(self, req: _Request, observer: Observer, flight: _Flight) -> Any:
        """Send ``req`` as its own task; a stop calls it off unless an attempt is on the
        wire (then it is awaited). Raises ``_NotBegun`` when called off."""
        assert self.send is not None

        def watch(event: ProgressEvent) -> None:
            if isinstance(event, RequestSent):
                if self.stopping is not None:
                    raise _NotBegun  # nothing new leaves once a stop was asked for
                observer(event)  # journals the ids pending (or raises _NotBegun)
                flight.left = flight.on_wire = True
                flight.attempts += 1
                return
            if isinstance(event, Retrying):
                flight.on_wire = False
                flight.maybe_written = flight.maybe_written or event.ambiguous
                if self.stopping is not None and flight.task is not None:
                    flight.called_off = True
                    flight.task.cancel()  # no retry after a stop: ends the backoff sleep
            observer(event)

        flight.task = asyncio.ensure_future(self.send(req, watch))
        self.flight_of[id(flight)] = flight
        try:
            return await flight.task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if flight.called_off and (me is None or not me.cancelling()):
                raise _NotBegun from None
            raise
        finally:
            del self.flight_of[id(flight)]

    async def call_off(self, req: _Request, flight: _Flight) -> None:
        """A request kept from leaving (again) by a stop: ``failed`` (not sent), or
        ``ambiguous`` when an earlier attempt may have been written."""
        err = self.stop_error
        assert err is not None
        if flight.maybe_written:
            cut = MillimetricError(
                f"the run stopped ({err.code}) between attempts; an earlier attempt may have "
                "been written", code=err.code, ambiguous=True, attempts=flight.attempts)
            await self.record_failure(req, cut)
            return
        if flight.left and self.journal is not None and req.keys:
            await self.journal_call("fail", req.keys, ambiguous=False)  # certainly not written
        self.fail_request(req, err, stopped=True)

    def stop(self, err: MillimetricError) -> None:
        """Stop the run (the first reason wins): rows not yet sent end ``failed``."""
        if self.stop_error is None:
            self.stop_error = err
            self.warn(f"the run stopped: {err}")

    async def journal_call(
        self, method: str, keys: list[str], **kwargs: Any
    ) -> tuple[bool, Any]:
        """Call a journal method in a thread: ``(True, its value)``, or ``(False, None)``
        when it failed, which stops the run.

        A resume is only as good as the journal, so a run that cannot write it
        (disk full, file removed) sends nothing more, and says so in its account.
        """
        assert self.journal is not None
        try:
            return True, await asyncio.to_thread(getattr(self.journal, method), keys, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            log.exception("journal %s failed", method)
            self.stop(_journal_failed(self.journal, exc))
            return False, None

    def begin_on_send(self, req: _Request) -> Observer:
        """The observer of a request whose ids are journaled ``pending`` when it leaves.

        The client announces each attempt with ``RequestSent`` once the rate limiter
        has given it a token, just before the HTTP request: the ids are committed
        ``pending`` there (synchronously), not while the request still waits for a
        token, so a crash or Ctrl-C flags only rows that may have reached the server.
        If the journal cannot be written, the request does not leave.
        """
        begun = False
        journal = self.journal
        assert journal is not None

        def observe(event: ProgressEvent) -> None:
            nonlocal begun
            if isinstance(event, RequestSent) and not begun:
                begun = True
                try:
                    journal.begin(req.keys)
                except (sqlite3.Error, OSError) as exc:
                    log.exception("journal begin failed")
                    self.stop(_journal_failed(journal, exc))
                    raise _NotBegun from exc
            self.attempt_event(event)

        return observe

    async def send_one(self, req: _Request) -> None:
        assert self.send is not None
        observer: Observer = self.attempt_event
        if self.journal is not None and req.keys:
            if self.announces_sends:
                observer = self.begin_on_send(req)
            else:  # a sender that does not announce RequestSent: journal before sending
                ok, _ = await self.journal_call("begin", req.keys)
                if not ok:
                    assert self.stop_error is not None
                    self.fail_request(req, self.stop_error, stopped=True)
                    return
        flight = _Flight(on_wire=not self.announces_sends)
        try:
            outcome = await self.fly(req, observer, flight)
        except _NotBegun:
            assert self.stop_error is not None
            await self.call_off(req, flight)
            return
        except MillimetricError as exc:
            await self.record_failure(req, exc)
            return
        except Exception as exc:  # never untyped: the outcome is unknown
            log.exception("unexpected error while sending to /v1/%s", self.route)
            err = MillimetricError(
                f"unexpected {type(exc).__name__} while sending: {exc}",
                code="unexpected_error",
                ambiguous=True,
            )
            await self.record_failure(req, err)
            return
        attempts = int(getattr(outcome, "attempts", 1) or 1)
        ambiguous = bool(getattr(outcome, "ambiguous", False))
        journaled = True
        if self.journal is not None and req.keys:
            journaled, _ = await self.journal_call("acknowledge", req.keys, ambiguous=ambiguous)
        flag = ambiguous or req.resend
        msg = None
        if ambiguous:
            msg = "stored; an earlier attempt may also have been written (possible duplicate)"
        elif req.resend:
            msg = "resent after an uncertain earlier outcome (possible duplicate)"
        if not journaled:
            msg = f"{msg}; " if msg else ""
            msg += "stored, but the journal could not record it: a resume resends it"
        req.chunk.mark(req.positions, _SENT, attempts=attempts, ambiguous=flag, message=msg)
        self.emit(Acknowledged(self.route, req.count, attempts=attempts, ambiguous=flag))
        req.chunk.pending -= 1
        self.settle(req.chunk)

    async def split_refused(self, req: _Request, exc: MillimetricError) -> bool:
        """A ``/v1/batch`` 400 that names its events (``events.N.field``): report those
        rows ``invalid`` with the server's rule and send the others again, so rows the
        server refuses (a rule stricter than the client's) do not take their
        neighbours down with them. ``False`` when the refusal names no single events.
        """
        if (self.route != "batch" or req.body is None or exc.status != 400
                or exc.ambiguous or not exc.field_errors):
            return False
        refused: dict[int, tuple[str, str, str]] = {}
        for path, msgs in exc.field_errors.items():
            m = _EVENT_PATH.match(path)
            if m is None or not 0 <= int(m.group(1)) < req.count:
                return False  # about the body as a whole
            text = msgs[0] if msgs else exc.code
            rule, sep, message = text.partition(": ")
            if not sep:
                rule, message = exc.code, text
            refused.setdefault(int(m.group(1)), (m.group(2) or "event", rule, message))
        try:
            events = orjson.loads(req.body)["events"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False
        if len(events) != req.count:
            return False
        if self.journal is not None and req.keys:  # certainly not written: no duplicate flag
            ok, _ = await self.journal_call("fail", req.keys, ambiguous=False)
            if not ok:
                return False
        chunk = req.chunk
        bad = sorted(refused)
        rows = []
        for i in bad:
            fld, rule, message = refused[i]
            pos = int(req.positions[i])
            chunk.mark(np.array([pos]), _INVALID, error=rule, attempts=exc.attempts,
                       message=_short(f"{fld}: {rule}: {message} (refused by the server)"))
            chunk.field[pos] = fld
            rows.append((chunk.frame.index[pos], chunk.offset + pos, fld, rule,
                         f"{message} (refused by the server)"))
        self.errors.append(pd.DataFrame(rows, columns=["row", "position", "field", "rule",
                                                       "message"]))
        self.emit(Failed(self.route, len(bad), exc.code, _short(exc.message)))
        keep = [i for i in range(req.count) if i not in refused]
        if not keep:
            chunk.pending -= 1
            self.settle(chunk)
            return True
        retry = _Request(
            chunk,
            req.positions[keep],
            [req.keys[i] for i in keep] if len(req.keys) == req.count else [],
            body=body_of([orjson.dumps(events[i]) for i in keep]),
            resend=req.resend,
        )
        await self.send_one(retry)  # takes over the request's place in chunk.pending
        return True

    async def record_failure(self, req: _Request, exc: MillimetricError) -> None:
        if await self.split_refused(req, exc):
            return
        if self.journal is not None and req.keys:
            await self.journal_call("fail", req.keys, ambiguous=exc.ambiguous)
        if _is_fatal(exc):
            self.stop(exc)
        self.fail_request(req, exc)

    def fail_request(self, req: _Request, exc: MillimetricError, *, stopped: bool = False) -> None:
        if stopped:
            status, msg = _FAILED, f"not sent: the run stopped ({exc.code})"
        elif exc.ambiguous:
            status, msg = _AMBIGUOUS, "outcome unknown (may or may not be stored): " + str(exc)
        elif isinstance(exc, ValidationError) and self.route != "batch":
            status, msg = _INVALID, str(exc)
        else:
            status, msg = _FAILED, str(exc)
        req.chunk.mark(
            req.positions,
            status,
            error=exc.code,
            message=_short(msg),
            attempts=0 if stopped else exc.attempts,
            ambiguous=exc.ambiguous and not stopped,
        )
        self.emit(
            Failed(self.route, req.count, exc.code, _short(exc.message),
                   ambiguous=exc.ambiguous and not stopped)
        )
        req.chunk.pending -= 1
        self.settle(req.chunk)

    # ---------------------------------------------------------------- running

    async def run(self, chunks: Iterator[pd.DataFrame]) -> None:
        queue: asyncio.Queue[_Request | None] = asyncio.Queue(maxsize=max(2, 2 * self.concurrency))
        tasks = [asyncio.create_task(self.produce(chunks, queue))]
        if not self.dry_run:
            tasks += [asyncio.create_task(self.work(queue)) for _ in range(self.concurrency)]
        else:
            tasks.append(asyncio.create_task(_drain(queue, self.concurrency)))
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)

    def result(self, elapsed: float) -> SendResult:
        # chunks finish out of order: put the pieces back in input order
        pieces = [p for _, p in sorted(self.rows, key=_first)]
        out_rows = _assemble(pieces) if pieces else empty_rows()
        if self.failed:
            failed = pd.concat([p for _, p in sorted(self.failed, key=_first)])
        else:
            empty = np.empty(0, dtype=object)
            failed = _with_reasons(
                self.template if self.template is not None else pd.DataFrame(),
                np.empty(0, dtype=np.int8), empty, empty, empty,
            )
        errors = (
            pd.concat(self.errors, ignore_index=True)
            .sort_values("position", kind="stable")
            .reset_index(drop=True)
            if self.errors
            else pd.DataFrame(columns=["row", "position", "field", "rule", "message"])
        )
        if self.resent_uncertain:
            self.warn(
                f"{self.resent_uncertain:,} row(s) had an uncertain outcome in an earlier run "
                "(ambiguous or interrupted in flight); they were resent and are flagged "
                "ambiguous: they may now be stored twice (find them by event_id)"
            )
        if self.unverified:
            self.warn(
                f"on_ambiguous='verify' could not read back {self.unverified:,} row(s) with an "
                f"uncertain earlier outcome ({'; '.join(self.unverified_why)}), so it fell back "
                "to 'resend' for them"
            )
        if self.skipped_uncertain:
            self.warn(
                f"{self.skipped_uncertain:,} row(s) had an uncertain outcome in an earlier run "
                "and were not resent (on_ambiguous='skip'): they may be missing"
            )
        limit = self.limit
        plan = Plan(
            self.route,
            self.requests,
            self.events,
            self.bytes,
            limit.refill if limit else None,
            limit.burst if limit else None,
        )
        return SendResult(
            rows=out_rows,
            failed=failed,
            errors=errors,
            warnings=self.rendered_warnings(),
            plan=plan,
            elapsed_s=elapsed,
            dry_run=self.dry_run,
            route=self.route,
            error=self.stop_error or self.read_error,
        )


def _windows(instants: np.ndarray, most: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Sorted instants grouped into at most ``most`` inclusive ``(first, last)`` windows,
    cut at the widest gaps of at least :data:`_VERIFY_GAP` (dense stretches stay one
    window, which the read splits by its own pages; sparse ones skip the time between)."""
    if len(instants) <= 1:
        return [(instants[0], instants[-1])]
    gaps = np.array([(b - a).value for a, b in itertools.pairwise(instants)])
    widest = np.argsort(gaps, kind="stable")[::-1][: most - 1]
    cuts = np.sort(widest[gaps[widest] >= _VERIFY_GAP.value]) + 1
    bounds = [0, *cuts.tolist(), len(instants)]
    return [(instants[i], instants[j - 1]) for i, j in itertools.pairwise(bounds)]


def _with_ids(rows: pd.DataFrame, column: Any, keys: np.ndarray) -> pd.DataFrame:
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


def _with_reasons(
    rows: pd.DataFrame,
    status: np.ndarray,
    error: np.ndarray,
    fields: np.ndarray,
    message: np.ndarray,
) -> pd.DataFrame:
    """``rows`` (the input's columns) followed by why each did not get in:
    ``status``, ``error_code``, ``field``, ``message`` (see ``SendResult.failed``).

    ``message`` drops the ``field: rule:`` prefix that ``.rows.message`` carries,
    since those have columns of their own here.
    """
    names = reason_names(rows.columns)
    texts = []
    for f, code, m in zip(fields, error, message, strict=True):
        prefix = f"{f}: {code}: "
        texts.append(m[len(prefix):] if f is not None and m and m.startswith(prefix) else m)
    out = rows.copy()
    for name, values in zip(
        names,
        ([STATUSES[int(c)] for c in status], list(error), list(fields), texts),
        strict=True,
    ):
        out[name] = pd.array(values, dtype="string")  # positional, as in _with_ids
    return out


_EVENT_PATH = re.compile(r"events\.(\d+)(?:\.(.+))?$")


class _NotBegun(BaseException):
    """Raised by a request's observer when the journal could not mark it pending.

    A BaseException so that it passes the client's progress emitter (which keeps a
    display's errors away from a send) and stops the request before it leaves.
    """


@dataclass(slots=True)
class _Piece:
    """The finished account of one chunk's rows."""

    index: pd.Index
    status: np.ndarray
    event_id: Any
    error: pd.Categorical
    attempts: np.ndarray
    ambiguous: np.ndarray
    message: pd.Categorical


def _categorical(values: np.ndarray) -> pd.Categorical:
    """Strings (or None) as a categorical with object categories (so pieces combine)."""
    cats = pd.Index(list(dict.fromkeys(v for v in values if v is not None)), dtype=object)
    return pd.Categorical(values, categories=cats)


def _assemble(pieces: list[_Piece]) -> pd.DataFrame:
    """``SendResult.rows`` from the pieces, column by column (one copy of each)."""
    from pandas.api.types import union_categoricals

    index = pieces[0].index.append([p.index for p in pieces[1:]]) if len(pieces) > 1 else (
        pieces[0].index
    )
    status = pd.Categorical.from_codes(
        np.concatenate([p.status for p in pieces]), categories=list(STATUSES)
    )
    event_id = pd.concat([pd.Series(p.event_id, copy=False) for p in pieces], ignore_index=True)
    return pd.DataFrame(
        {
            "status": status,
            "event_id": event_id.array,
            "error": union_categoricals([p.error for p in pieces]),
            "attempts": np.concatenate([p.attempts for p in pieces]),
            "ambiguous": np.concatenate([p.ambiguous for p in pieces]),
            "message": union_categoricals([p.message for p in pieces]),
        },
        index=index,
    )


def _first(item: tuple[int, Any]) -> int:
    return item[0]


async def _drain(queue: asyncio.Queue[_Request | None], sentinels: int) -> None:
    seen = 0
    while seen < sentinels:
        if await queue.get() is None:
            seen += 1


# --------------------------------------------------------------------------- running


def resolve_async_client(client: Any) -> Any:
    """The AsyncClient behind ``client`` (a Client, an AsyncClient, or None: default)."""
    if client is None:
        from .sync import default_client

        client = default_client()
    return getattr(client, "async_client", client)


def _journal_failed(journal: Journal, exc: BaseException) -> MillimetricError:
    """The error that stops a run whose journal cannot be written."""
    return MillimetricError(
        f"the journal {journal.path} failed ({type(exc).__name__}: {exc}); "
        "nothing more was sent, so that a resume can trust it",
        code="journal_failed",
    )


def route_sender(aclient: Any, route: str) -> SendFn:
    """How a run sends one request through ``aclient``: a ``/v1/batch`` body, or one call.

    For the per-row routes (track, identify, forget: the client method of that name)
    the request's call is passed as keywords. The run's observer goes to the client
    too, so its RequestSent / Retrying / Waiting events reach the displays.
    """
    if route == "batch":

        async def send_body(req: _Request, obs: Observer) -> Any:
            assert req.body is not None
            return await aclient.send_batch_body(req.body, req.count, observer=obs)

        return send_body
    method = getattr(aclient, route)

    async def send_call(req: _Request, obs: Observer) -> Any:
        assert req.call is not None
        return await method(**req.call, observer=obs)

    return send_call


def _open_for_run(
    journal: Journal | str | os.PathLike[str] | None, dry_run: bool
) -> tuple[Journal | None, bool]:
    """``open_journal`` and record the run's start; nothing is sent without a working journal."""
    jr, owned = None, False
    try:
        jr, owned = open_journal(journal)
        if jr is not None and not dry_run:
            jr.start_run()
    except JournalBusy as exc:
        if owned and jr is not None:
            jr.close()
        raise ConfigurationError(str(exc), code="journal_busy") from None
    except (sqlite3.Error, OSError) as exc:
        if owned and jr is not None:
            jr.close()
        raise ConfigurationError(
            f"cannot use the journal {journal}: {type(exc).__name__}: {exc}",
            code="journal_failed",
        ) from exc
    return jr, owned


async def run_rows(
    chunks: Iterator[pd.DataFrame],
    *,
    route: str,
    prepare: Preparer,
    send: SendFn | None = None,
    client: Any = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    observer: Observer | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_ambiguous: OnAmbiguous = "resend",
    total_rows: int | None = None,
    warnings: Sequence[str] = (),
    show_keys: bool = True,
    stop: StopSignal | None = None,
) -> SendResult:
    """The one engine under every send: prepare each chunk, send, account for each row.

    ``prepare(chunk, offset)`` validates a chunk; ``send(request, observer)`` sends
    one request (default: :func:`route_sender` over ``client``, a Client or
    AsyncClient; ``None``: the default client, unless a dry run). ``observer``
    receives every progress event; the engine never knows what displays them.
    ``stop``: a :class:`StopSignal` whose request stops the run gracefully.
    Used by :func:`millimetric_nb.abackfill` (with :func:`event_preparer`) and by
    the accessor's identify and forget.
    """
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1", code="invalid_concurrency")
    if on_ambiguous not in ("verify", "resend", "skip"):
        raise ConfigurationError(
            "on_ambiguous must be 'verify', 'resend' or 'skip'", code="invalid_on_ambiguous"
        )
    if client is not None or (send is None and not dry_run):
        client = resolve_async_client(client)
    announces = send is None
    if send is None and not dry_run:
        send = route_sender(client, route)
    emit = Emitter([observer])
    jr, owned = await asyncio.to_thread(_open_for_run, journal, dry_run)
    run = _Run(
        route=route,
        send=send,
        prepare=prepare,
        emit=emit,
        journal=jr,
        dry_run=dry_run,
        concurrency=concurrency,
        on_ambiguous=on_ambiguous,
        limit=route_limit(client, route),
        total_rows=total_rows,
        show_keys=show_keys,
        announces_sends=announces,
        reader=client if route in ("batch", "track") else None,
    )
    for w in warnings:
        run.warn(w)
    if stop is not None:
        stop.bind(asyncio.get_running_loop(), lambda: run.request_stop(stop.reason or "cancel"))
    started = time.perf_counter()
    result: SendResult | None = None
    try:
        await run.run(chunks)
        result = run.result(time.perf_counter() - started)
        if jr is not None and not dry_run:
            with contextlib.suppress(sqlite3.Error, OSError):  # the ids are what matters
                await asyncio.to_thread(jr.finish_run, result.counts)
        return result
    finally:
        if stop is not None:
            stop.unbind()
        emit(Done(run.current_counts(), time.perf_counter() - started, result=result))
        if owned and jr is not None:
            jr.close()


def event_preparer(
    mapping: dict[str, Any], pii: str = PII_DEFAULT, now: dt.datetime | None = None,
    missing_timestamp: str = "invalid",
) -> Preparer:
    """The preparer of event sends (``/v1/batch``, ``/v1/track``) for :func:`run_rows`.

    ``mapping``: the column mapping keywords (``event_col``, ``timestamp_col``...,
    see :func:`millimetric_nb.abackfill`), resolved against the first chunk's columns.
    Each chunk is validated and encoded column-wise by the frame layer; ids stay
    stable across chunks. ``missing_timestamp``: see
    :func:`~millimetric_nb.frame.prepare_chunk`.
    """
    check_pii(pii)
    from .frame import (
        EventIdState,
        check_mapping_keywords,
        check_missing_timestamp,
        id_recipe,
        prepare_chunk,
        resolve_mapping,
    )

    check_mapping_keywords(mapping)
    check_missing_timestamp(missing_timestamp)

    state: dict[str, Any] = {"mapping": None, "ids": EventIdState(), "columns": None}
    widened: dict[tuple[Hashable, ...], tuple[Any, list[str]]] = {}

    def mappable(columns: Sequence[Hashable]) -> Sequence[Hashable]:
        # a resent ``result.failed`` (or its CSV): its reason columns are no properties
        # (the frame's own Index is passed on as it is, so a MultiIndex is still seen)
        reasons = reason_columns(list(columns))
        return [c for c in columns if c not in reasons] if reasons else columns

    def prepare(frame: pd.DataFrame, offset: int) -> PreparedRows:
        warns: list[str] = []
        if state["mapping"] is None:
            state["mapping"], warns = resolve_mapping(mappable(frame.columns), **mapping)
            state["columns"] = list(frame.columns)
        chunk_mapping = state["mapping"]
        known = state["columns"]
        extra = tuple(c for c in frame.columns if c not in known)
        if extra:
            # a column that appears in a later chunk (e.g. a newer export) is mapped
            # as it would be in the concatenated frame, where earlier rows lack it
            if extra not in widened:
                widened[extra] = resolve_mapping(mappable([*known, *extra]), **mapping)
            chunk_mapping, more = widened[extra]
            warns = [*warns, *more]
        p = prepare_chunk(
            frame, chunk_mapping, offset=offset, pii=pii, now=now, ids=state["ids"],
            missing_timestamp=missing_timestamp,  # type: ignore[arg-type]
        )
        return PreparedRows(
            valid=np.asarray(p.valid, dtype=bool),
            keys=np.asarray(p.event_ids, dtype=object),
            errors=p.errors,
            warnings=[*warns, *p.warnings],
            payloads=list(p.payloads),
            id_column=state["mapping"].columns.get("event_id", "event_id"),
            id_recipe=id_recipe(state["mapping"]),
        )

    return prepare


__all__ = [
    "DEFAULT_CHUNKSIZE",
    "DEFAULT_CONCURRENCY",
    "PreparedRows",
    "Source",
    "StopSignal",
    "body_of",
    "event_preparer",
    "field_columns",
    "iter_source",
    "pack",
    "resolve_async_client",
    "route_limit",
    "route_sender",
    "run_rows",
]
