"""Where a run meets its journal: the recipe check, what to send / skip / resend, the
ids marked ``pending`` right before a request leaves, and each outcome recorded.

A resume is only as good as the journal, so a journal that cannot be read or
written stops the run (``journal_failed``): :meth:`JournalGate.call` reports the
failure to the run's ``stop`` and nothing more is sent.

Ids whose outcome an earlier run left unknown are, with ``on_ambiguous="verify"``,
looked for by reading back their time window (:meth:`JournalGate.read_back`):
found ones are skipped, absent ones sent as new, and only those reads cannot tell
about are resent and flagged (as ``"resend"`` does for all; ``"skip"`` skips them).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import os
import sqlite3
import warnings as _warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson
import pandas as pd

from ..errors import ConfigurationError, MillimetricError
from ..journal import ACKED, AMBIGUOUS, PENDING, Journal, JournalBusy, open_journal
from .ledger import SKIPPED, Chunk

if TYPE_CHECKING:  # the HTTP stack is loaded by a run that sends, not a dry run
    from ..client import AsyncClient

log = logging.getLogger("millimetric_nb")

OnAmbiguous = Literal["verify", "resend", "skip"]
#: Most time windows one read-back (on_ambiguous="verify") reads, per chunk.
_VERIFY_WINDOWS = 32
#: Gaps between uncertain ids' timestamps narrower than this are read through.
_VERIFY_GAP = pd.Timedelta(minutes=10)


def open_for_run(
    journal: Journal | str | os.PathLike[str] | None, dry_run: bool
) -> tuple[Journal | None, bool]:
    """``open_journal`` and record the run's start; nothing is sent without a working journal."""
    jr, owned = None, False
    try:
        jr, owned = open_journal(journal)
        if jr is not None and not dry_run:
            jr.start_run()
    except JournalBusy:  # already the ConfigurationError (journal_busy) to show
        if owned and jr is not None:
            jr.close()
        raise
    except (sqlite3.Error, OSError) as exc:
        if owned and jr is not None:
            jr.close()
        raise ConfigurationError(
            f"cannot use the journal {journal}: {type(exc).__name__}: {exc}",
            code="journal_failed",
        ) from exc
    return jr, owned


def journal_failed(journal: Journal, exc: BaseException) -> MillimetricError:
    """The error that stops a run whose journal cannot be written."""
    return MillimetricError(
        f"the journal {journal.path} failed ({type(exc).__name__}: {exc}); "
        "nothing more was sent, so that a resume can trust it",
        code="journal_failed",
    )


class JournalGate:
    """A run's journal: every call in a thread, every failure stopping the run."""

    def __init__(
        self,
        journal: Journal,
        *,
        stop: Callable[[MillimetricError], None],
        on_ambiguous: OnAmbiguous,
        dry_run: bool,
        reader: AsyncClient | None,
    ) -> None:
        self.journal = journal
        self.stop = stop
        self.on_ambiguous = on_ambiguous
        self.dry_run = dry_run
        self.reader = reader
        self.recipe_checked = False
        self.resent_uncertain = 0
        self.skipped_uncertain = 0
        self.unverified = 0
        self.unverified_why: list[str] = []

    async def call(self, method: str, keys: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Call a journal method in a thread: ``(True, its value)``, or ``(False, None)``
        when it failed, which stops the run."""
        try:
            return True, await asyncio.to_thread(getattr(self.journal, method), keys, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            log.exception("journal %s failed", method)
            self.stop(journal_failed(self.journal, exc))
            return False, None

    def begin_now(self, keys: list[str]) -> bool:
        """Mark ``keys`` pending at once (in the loop's thread: the request leaves next);
        ``False`` (and the run stopped) when the journal cannot be written."""
        try:
            self.journal.begin(keys)
        except (sqlite3.Error, OSError) as exc:
            log.exception("journal begin failed")
            self.stop(journal_failed(self.journal, exc))
            return False
        return True

    async def check_recipe(self, recipe: str) -> bool:
        """Whether the journal's derived ids can match this input's; else stop the run.

        Derived ids hash the content, so another set of fields or property columns
        (an added column, a dropped one) gives every row a new id: the journal would
        recognise nothing and the whole input would be stored again.
        """
        self.recipe_checked = True
        ok, previous = await self.call("check_recipe", recipe, record=not self.dry_run)
        if not ok:
            return False
        if previous is None:
            return True
        from ..frame import describe_recipe_change

        self.stop(ConfigurationError(
            f"the journal {self.journal.path} holds event ids derived from other columns "
            f"({describe_recipe_change(previous, recipe)}): no row's id could match, so "
            "every row would be sent again and stored twice. Send the same columns as "
            "before (drop the new ones or pass properties=[...]), give the rows an "
            "event_id column, or use a new journal if these are different events",
            code="journal_mismatch",
        ))
        return False

    async def partition(
        self,
        chunk: Chunk,
        keys: np.ndarray,
        rows_of: Callable[[np.ndarray], np.ndarray],
        payload_of: Callable[[int], Any],
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """What the journal says of each unit (one id each, ``keys``): ``(to send, resend
        flags, rows skipped)``, the first two as bool arrays over the units.

        Acknowledged ids are skipped; uncertain ones (pending or ambiguous in an
        earlier run) are read back with ``on_ambiguous="verify"`` (stored: skipped;
        absent: sent unflagged), else resent and flagged, or skipped with ``"skip"``.
        Skipped units' rows (``rows_of(mask)``) are marked in ``chunk``. If the journal
        cannot be read the run stops, and the units fail as not sent.
        """
        n = len(keys)
        keep, resend = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        present = [k for k in keys.tolist() if k]
        ok, known = await self.call("lookup", present)
        if not ok or not known:
            return keep, resend, 0
        looked = [known.get(k, (None, False)) if k else (None, False) for k in keys.tolist()]
        state = np.array([s for s, _ in looked], dtype=object)
        dup = np.array([d for _, d in looked], dtype=bool)
        uncertain = (state == PENDING) | (state == AMBIGUOUS)
        stored: dict[str, int] = {}
        absent: set[str] = set()
        if self.on_ambiguous == "verify" and not self.dry_run and uncertain.any():
            doubtful = [(payload_of(int(i)), keys[i]) for i in np.flatnonzero(uncertain)]
            stored, absent = await self.read_back(doubtful)
            if not await self.verified(stored, absent):
                stored, absent = {}, set()
        is_stored = np.array([k in stored for k in keys.tolist()], dtype=bool) if stored else (
            np.zeros(n, dtype=bool))
        is_absent = np.array([k in absent for k in keys.tolist()], dtype=bool) if absent else (
            np.zeros(n, dtype=bool))
        acked = state == ACKED
        chunk.mark(rows_of(acked), SKIPPED, message="acknowledged in an earlier run (journal)")
        chunk.ambiguous[rows_of(acked & dup)] = True
        found = is_stored & ~acked
        for i in np.flatnonzero(found).tolist():
            times = stored[keys[i]]
            chunk.mark(rows_of(_only(n, i)), SKIPPED, ambiguous=bool(dup[i]) or times > 1,
                       message="stored by an earlier run whose answer was lost: found by "
                       "reading back (on_ambiguous='verify'); not resent"
                       + ("" if times == 1 else f"; stored {times} times"))
        rest = ~acked & ~found & ~is_absent
        if self.on_ambiguous == "skip":
            dropped = rest & uncertain
            rows = rows_of(dropped)
            chunk.mark(rows, SKIPPED, ambiguous=True, error="ambiguous_earlier",
                       message="outcome unknown in an earlier run; not resent")
            self.skipped_uncertain += len(rows)
            rest &= ~dropped
        resend = rest & uncertain
        self.resent_uncertain += len(rows_of(resend))
        keep = rest | is_absent & ~acked & ~found
        skipped = len(rows_of(~keep))
        return keep, resend, skipped

    async def verified(self, stored: dict[str, int], absent: set[str]) -> bool:
        """Record what reading back found: stored ids ``acked`` (a possible duplicate if
        stored twice), absent ones ``failed`` (so their send is not flagged)."""
        for ids, call, dup in (
            ([k for k, n in stored.items() if n == 1], "acknowledge", False),
            ([k for k, n in stored.items() if n > 1], "acknowledge", True),
            (sorted(absent), "fail", False),
        ):
            if ids:
                ok, _ = await self.call(call, ids, ambiguous=dup)
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
        and the result says why, once.
        """
        from ..read import IncompleteReadWarning, aquery_all

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

    def warnings(self) -> list[str]:
        """What the run's account says about uncertain earlier outcomes, once each."""
        out = []
        if self.resent_uncertain:
            out.append(
                f"{self.resent_uncertain:,} row(s) had an uncertain outcome in an earlier run "
                "(ambiguous or interrupted in flight); they were resent and are flagged "
                "ambiguous: they may now be stored twice (find them by event_id)"
            )
        if self.unverified:
            out.append(
                f"on_ambiguous='verify' could not read back {self.unverified:,} row(s) with an "
                f"uncertain earlier outcome ({'; '.join(self.unverified_why)}), so it fell back "
                "to 'resend' for them"
            )
        if self.skipped_uncertain:
            out.append(
                f"{self.skipped_uncertain:,} row(s) had an uncertain outcome in an earlier run "
                "and were not resent (on_ambiguous='skip'): they may be missing"
            )
        return out


def _only(n: int, i: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[i] = True
    return mask


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
