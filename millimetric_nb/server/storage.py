"""SQLite storage of the local server: one row per stored event.

One connection is shared by every thread (uvicorn's loop, the thread that writes,
the test thread that inspects rows) and guarded by a lock; file databases use WAL
with ``synchronous=NORMAL``: a batch is committed before it is acknowledged, so an
acknowledged batch survives a crash of the server process.

Layout: ``events`` is a view over two tables with the same columns:

- ``events_main`` holds almost every row, with the indexes reads use
  (``project, ts_us`` and ``project, user_id``; ``project, event_id`` with
  ``dedup``);
- ``events_tail`` takes each new batch, appended in ``seq`` order, with no index
  but the dedup one. Once it holds :data:`TAIL_ROWS` rows they are moved to
  ``events_main`` in one transaction.

Why: a 1000-event batch inserted straight into ``events_main`` lands all over its
indexes (timestamps and user ids are not in arrival order), so each commit rewrote
about two thousand index pages (16 KB of writes per event at 1,000,000 rows) and
ingest fell with the table's size. Moving rows by tens of thousands touches each
index page once per move instead of once per batch. The read endpoints move the
tail first (:meth:`Storage.fetch` with ``indexed=True``) and read ``events_main``
through its indexes; anything else may read the ``events`` view.

``seq`` orders rows by arrival across both tables. ``:memory:`` works because the
single connection is the database. A database written before this layout (one
``events`` table) is renamed to ``events_main`` when opened; its rows are kept.

With ``dedup=True`` an ``event_id`` is stored once per project: an event whose
``event_id`` the project already holds (or that an earlier event of the same
batch carries) is accepted and not stored again (the published field table calls
``event_id`` an idempotency key). Rows already in a file database are kept as
they are.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from .checks import COLUMNS, Row

#: Rows the tail holds before they are moved to ``events_main``.
TAIL_ROWS = 50_000
_TYPES = ", ".join(f"{c} {'INTEGER' if c == 'ts_us' else 'TEXT'}" for c in COLUMNS)
_ALL = ", ".join(("seq", *COLUMNS))
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events_main (seq INTEGER PRIMARY KEY AUTOINCREMENT, {_TYPES});
CREATE INDEX IF NOT EXISTS events_project_ts ON events_main (project, ts_us);
CREATE INDEX IF NOT EXISTS events_project_user ON events_main (project, user_id);
CREATE TABLE IF NOT EXISTS events_tail (seq INTEGER PRIMARY KEY, {_TYPES});
CREATE VIEW IF NOT EXISTS events AS
    SELECT {_ALL} FROM events_main UNION ALL SELECT {_ALL} FROM events_tail;
"""
_INSERT = (
    f"INSERT INTO events_tail ({_ALL}) VALUES (?, {', '.join('?' for _ in COLUMNS)})"
)
# parameters: ?1 is seq, then the row's columns, each given once
_P, _E = (f"?{2 + COLUMNS.index(c)}" for c in ("project", "event_id"))
_INSERT_NEW = (
    f"INSERT INTO events_tail ({_ALL}) "
    f"SELECT {', '.join(f'?{i}' for i in range(1, len(COLUMNS) + 2))} "
    f"WHERE NOT EXISTS (SELECT 1 FROM events_main WHERE project = {_P} AND event_id = {_E}) "
    f"AND NOT EXISTS (SELECT 1 FROM events_tail WHERE project = {_P} AND event_id = {_E})"
)
_DEDUP_INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_project_event_id ON events_main (project, event_id);"
    "CREATE INDEX IF NOT EXISTS events_tail_project_event_id ON events_tail (project, event_id);"
)
_MOVE = (f"INSERT INTO events_main ({_ALL}) SELECT {_ALL} FROM events_tail ORDER BY seq;"
         "DELETE FROM events_tail;")
#: Columns of :meth:`Storage.stored_events` rows (all but ``project`` and ``ts_us``).
STORED_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("project", "ts_us"))


class Storage:
    """The events of one server: ``events_main``, ``events_tail`` and the ``events`` view."""

    def __init__(self, db: str, *, dedup: bool = False, tail_rows: int = TAIL_ROWS) -> None:
        if db != ":memory:":
            Path(db).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self.dedup = dedup
        self.tail_rows = tail_rows
        with self._lock:
            conn = self._conn
            if db != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # a move writes tens of MB to the WAL: give the space back after it
                conn.execute("PRAGMA journal_size_limit=67108864")
            # the pages a move rewrites stay in memory until its commit (64 MB at most)
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("BEGIN IMMEDIATE")
            try:
                (kind,) = conn.execute(
                    "SELECT COALESCE((SELECT type FROM sqlite_master WHERE name = 'events'), '')"
                ).fetchone()
                if kind == "table":  # written before the tail existed: keep its rows
                    conn.execute("ALTER TABLE events RENAME TO events_main")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if dedup:
                    for statement in _DEDUP_INDEXES.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                (self._next_seq,) = conn.execute(
                    "SELECT 1 + MAX(COALESCE((SELECT MAX(seq) FROM events_main), 0),"
                    " COALESCE((SELECT MAX(seq) FROM events_tail), 0),"
                    " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events_main'), 0))"
                ).fetchone()
                (self._tail,) = conn.execute("SELECT COUNT(*) FROM events_tail").fetchone()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    # ----------------------------------------------------------------- writes

    def insert(self, rows: Sequence[Row], *, move: bool = True) -> int:
        """Insert ``rows`` in one transaction (all or nothing), committed when this
        returns; return how many were stored (with ``dedup``, rows whose ``event_id``
        the project holds are not). With ``move=False`` a full tail is left for
        :meth:`maintain` (the server calls it after answering)."""
        with self._lock:
            conn = self._conn
            first = self._next_seq
            conn.execute("BEGIN")
            try:
                before = conn.total_changes
                conn.executemany(_INSERT_NEW if self.dedup else _INSERT,
                                 [(first + i, *row) for i, row in enumerate(rows)])
                stored = conn.total_changes - before
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._next_seq = first + len(rows)
            self._tail += stored
            if move and self._tail >= self.tail_rows:
                self._move_tail()
        return stored

    @property
    def move_due(self) -> bool:
        """Whether the tail holds enough rows to be moved (see :meth:`maintain`)."""
        return self._tail >= self.tail_rows

    def maintain(self) -> bool:
        """Move the tail to ``events_main`` if it is full: the work a write leaves for
        after its answer, so that the request that fills the tail does not wait for
        the move. Returns whether rows were moved."""
        with self._lock:
            if self._tail >= self.tail_rows:
                return self._move_tail()
        return False

    def _move_tail(self) -> bool:
        """Move every tail row to ``events_main`` in one transaction (lock held).

        The batches are already committed: a failure here leaves them in the tail,
        where reads still find them, and the next insert tries again.
        """
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for statement in _MOVE.split(";"):
                if statement.strip():
                    conn.execute(statement)
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            return False
        conn.execute("COMMIT")
        self._tail = 0
        return True

    def delete_user(self, project: str, user_id: str) -> int:
        """Delete every event of ``user_id`` in ``project``; return how many."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                where = "WHERE project = ? AND user_id = ?"
                main = conn.execute(f"DELETE FROM events_main {where}", (project, user_id))
                tail = conn.execute(f"DELETE FROM events_tail {where}", (project, user_id))
                deleted_main, deleted_tail = main.rowcount, tail.rowcount
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._tail -= deleted_tail
        return deleted_main + deleted_tail

    # ----------------------------------------------------------------- reads

    def fetch(
        self, sql: str, params: Iterable[Any] = (), *, indexed: bool = False
    ) -> list[dict[str, Any]]:
        """Run a read ``sql``; rows as dicts keyed by column name.

        With ``indexed=True`` the tail is first moved to ``events_main`` (raising
        ``sqlite3.Error`` if it cannot be), so that ``sql`` may read ``events_main``
        alone, through its indexes, and still see every row.
        """
        with self._lock:
            if indexed and self._tail:
                if not self._move_tail():
                    raise sqlite3.OperationalError("could not move new events to events_main")
            cur = self._conn.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def stored_events(self, project: str) -> list[dict[str, Any]]:
        """Every row of ``project`` in insertion order, ``properties`` decoded."""
        rows = self.fetch(
            f"SELECT {', '.join(STORED_COLUMNS)} FROM events WHERE project = ? ORDER BY seq",
            (project,),
        )
        for row in rows:
            row["properties"] = orjson.loads(row["properties"])
        return rows

    def count(self, project: str) -> int:
        """How many events ``project`` holds."""
        with self._lock:
            (n,) = self._conn.execute(
                "SELECT COUNT(*) FROM events WHERE project = ?", (project,)
            ).fetchone()
        return int(n)
