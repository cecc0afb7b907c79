"""The SQLite journal of a backfill: which event ids the server acknowledged.

A journal makes a backfill safe to run twice and safe to interrupt. It records,
per event id, the state of the last request that carried it:

``pending``
    written (and committed) *before* the request leaves: with the client's own
    sender, once the rate limiter has given the request its token (the client's
    ``RequestSent``), so requests still waiting for a token when a run is killed
    or interrupted are not pending and their rows are plain resends. If a run dies
    with the request in flight, the id stays ``pending``: on resume its outcome is
    unknown (the server may or may not have stored it), so it is treated as ambiguous.
``acked``
    the server answered 2xx. Committed before the row is counted as sent, so a
    crash can never lose an acknowledgement (WAL, ``synchronous=FULL``).
``ambiguous``
    the request finally failed after an attempt that may have reached the server.
``failed``
    the request finally failed and certainly was not written (e.g. 400).

The journal also records the *recipe* of derived ids (which fields and property
keys were hashed, :func:`millimetric_nb.frame.id_recipe`); a later run whose rows
have another recipe is refused (``journal_mismatch``) instead of resending
everything under new ids.

One run at a time: a sending run holds an exclusive lock on ``<path>.lock``
(a small file left beside the journal) until the journal is closed; another run
on the same journal meanwhile is refused (``journal_busy``) before sending.

``possible_duplicate`` is set on an id once a send of it may have been written
twice (a retry after an ambiguous attempt, or a resend after a ``pending`` /
``ambiguous`` outcome); it stays set.

Resume policy (documented in :func:`millimetric_nb.backfill`): ``acked`` ids are
skipped; ``ambiguous`` and stale ``pending`` ids are resent by default (the
server keeps no duplicate-free guarantee, but losing an event cannot be undone
while a duplicate can be found by its ``event_id``) and flagged
``ambiguous`` in the result, with a warning; ``on_ambiguous="skip"`` skips them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import orjson

from .errors import ConfigurationError

PENDING = "pending"
ACKED = "acked"
AMBIGUOUS = "ambiguous"
FAILED = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    counts TEXT
);
"""

#: ids per SQL statement when looking up (passed as one JSON array parameter)
_LOOKUP_SLICE = 50_000


class JournalBusy(ConfigurationError):
    """The journal is held by another run (see :meth:`Journal.start_run`); code
    ``journal_busy``. A :class:`~millimetric_nb.errors.ConfigurationError`, as what
    the sending faces raise for it."""

    code = "journal_busy"


class Journal:
    """A crash-safe record of acknowledged (and uncertain) event ids.

    Open with a path (created if missing); use as a context manager or call
    :meth:`close`. All methods are safe to call from several threads (one lock).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._run: int | None = None
        self._lock_file: IO[str] | None = None

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]
            if self._lock_file is not None:
                self._lock_file.close()  # releases the run lock
                self._lock_file = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    def _take_run_lock(self) -> None:
        """Hold the journal for this object's runs (until :meth:`close`).

        Two runs sending through one journal at once would both look up, find
        nothing, and both send everything: duplicates that neither account flags.
        An exclusive ``flock`` on ``<path>.lock`` (released by the OS even when the
        process is killed) lets one run in at a time; where ``fcntl`` does not exist
        (Windows) there is no such guard.
        """
        if self._lock_file is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        fh = open(lock_path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise JournalBusy(
                f"the journal {self.path} is in use by another run (another process, or a "
                "Journal object for it still open here: close it): two runs at once would "
                "both send the same rows. Wait for the other run to end, then run again"
            ) from None
        self._lock_file = fh

    def start_run(self) -> int:
        """Record the start of a run; returns its number.

        Raises:
            JournalBusy: another run (another Journal object or process) holds it.
        """
        self._take_run_lock()
        with self._lock:
            cur = self._db.execute("INSERT INTO runs(started) VALUES (?)", (time.time(),))
            self._run = int(cur.lastrowid or 0)
            return self._run

    def finish_run(self, counts: dict[str, int]) -> None:
        """Record the end of the current run with its counts."""
        if self._run is None:
            return
        with self._lock:
            self._db.execute(
                "UPDATE runs SET finished = ?, counts = ? WHERE run = ?",
                (time.time(), orjson.dumps(counts).decode(), self._run),
            )

    # ------------------------------------------------------------------ reads

    def lookup(self, ids: Iterable[str]) -> dict[str, tuple[str, bool]]:
        """``{event_id: (state, possible_duplicate)}`` for the ids that are journaled."""
        wanted = [i for i in ids if i is not None]
        out: dict[str, tuple[str, bool]] = {}
        with self._lock:
            for start in range(0, len(wanted), _LOOKUP_SLICE):
                arg = orjson.dumps(wanted[start : start + _LOOKUP_SLICE]).decode()
                rows = self._db.execute(
                    "SELECT event_id, state, possible_duplicate FROM events "
                    "WHERE event_id IN (SELECT value FROM json_each(?))",
                    (arg,),
                )
                for eid, state, dup in rows:
                    out[eid] = (state, bool(dup))
        return out

    def counts(self) -> dict[str, int]:
        """How many ids are in each state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM events GROUP BY state")
            return {state: int(n) for state, n in rows}

    def ids(self, state: str) -> list[str]:
        """Every id currently in ``state`` (for reports; may be large)."""
        with self._lock:
            rows = self._db.execute("SELECT event_id FROM events WHERE state = ?", (state,))
            return [r[0] for r in rows]

    def check_recipe(self, recipe: str, *, record: bool = True) -> str | None:
        """Compare how this run derives event ids with how the journal's were derived.

        ``recipe`` describes the shape of the hashed content (which fields, which
        property keys). Returns the journal's recipe when it differs (the derived
        ids cannot match: every row would be sent again), else ``None``. The first
        recipe seen is recorded when ``record`` is true (not in a dry run); it is
        replaced while the journal holds no derived id that may be stored (a first
        run that sent nothing does not pin the columns).
        """
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = 'id_recipe'"
            ).fetchone()
            if row is not None and row[0] == recipe:
                return None
            if row is not None and self._holds_derived_ids():
                return str(row[0])
            # nothing recorded yet, or no derived id that could be sent twice
            if record:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('id_recipe', ?)",
                    (recipe,),
                )
            return None

    def _holds_derived_ids(self) -> bool:
        """Whether any derived event id (``mm_...``) may be stored on the server."""
        found = self._db.execute(
            "SELECT 1 FROM events WHERE event_id LIKE 'mm\\_%' ESCAPE '\\' "
            "AND state IN (?, ?, ?) LIMIT 1",
            (ACKED, PENDING, AMBIGUOUS),
        ).fetchone()
        return found is not None

    # ------------------------------------------------------------------ writes

    def _write(self, ids: Sequence[str], state: str, duplicate: bool, *, begin: bool) -> None:
        now = time.time()
        dup = 1 if duplicate else 0
        if begin:
            # A resend of an id whose earlier outcome was unknown may duplicate it.
            sql = (
                "INSERT INTO events(event_id, state, possible_duplicate, updated) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(event_id) DO UPDATE SET "
                "possible_duplicate = events.possible_duplicate OR excluded.possible_duplicate "
                "OR events.state IN ('pending', 'ambiguous'), "
                "state = excluded.state, updated = excluded.updated"
            )
        else:
            sql = (
                "INSERT INTO events(event_id, state, possible_duplicate, updated) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(event_id) DO UPDATE SET "
                "possible_duplicate = events.possible_duplicate OR excluded.possible_duplicate, "
                "state = excluded.state, updated = excluded.updated"
            )
        rows = [(i, state, dup, now) for i in ids if i is not None]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def begin(self, ids: Sequence[str]) -> None:
        """Mark ids ``pending`` (committed) just before their request is sent."""
        self._write(ids, PENDING, False, begin=True)

    def acknowledge(self, ids: Sequence[str], *, ambiguous: bool = False) -> None:
        """Mark ids ``acked``; committed (durable) when this returns."""
        self._write(ids, ACKED, ambiguous, begin=False)

    def fail(self, ids: Sequence[str], *, ambiguous: bool) -> None:
        """Mark ids ``ambiguous`` (may have been written) or ``failed`` (certainly not)."""
        self._write(ids, AMBIGUOUS if ambiguous else FAILED, False, begin=False)


def open_journal(journal: Journal | str | os.PathLike[str] | None) -> tuple[Journal | None, bool]:
    """``(journal, owned)``: open a path (owned, to close) or pass a Journal through."""
    if journal is None:
        return None, False
    if isinstance(journal, Journal):
        return journal, False
    return Journal(journal), True


__all__ = ["ACKED", "AMBIGUOUS", "FAILED", "PENDING", "Journal", "JournalBusy", "open_journal"]
