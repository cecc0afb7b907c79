"""SQLite storage of the local server: one row per stored event.

One connection is shared by every thread (uvicorn's loop, the test thread that
inspects rows) and guarded by a lock; file databases use WAL. ``:memory:``
works because the single connection is the database.

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

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{c} {'INTEGER' if c == 'ts_us' else 'TEXT'}" for c in COLUMNS)}
);
CREATE INDEX IF NOT EXISTS events_project_ts ON events (project, ts_us);
CREATE INDEX IF NOT EXISTS events_project_user ON events (project, user_id);
"""
_INSERT = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
)
_INSERT_NEW = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT {', '.join('?' for _ in COLUMNS)} "
    "WHERE NOT EXISTS (SELECT 1 FROM events WHERE project = ? AND event_id = ?)"
)
_DEDUP_INDEX = "CREATE INDEX IF NOT EXISTS events_project_event_id ON events (project, event_id)"
_PROJECT, _EVENT_ID = COLUMNS.index("project"), COLUMNS.index("event_id")
#: Columns of :meth:`Storage.stored_events` rows (all but ``project`` and ``ts_us``).
STORED_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("project", "ts_us"))


class Storage:
    """The events table behind one server."""

    def __init__(self, db: str, *, dedup: bool = False) -> None:
        if db != ":memory:":
            Path(db).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if db != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            if dedup:
                self._conn.execute(_DEDUP_INDEX)
        self.dedup = dedup

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    # ----------------------------------------------------------------- writes

    def insert(self, rows: Sequence[Row]) -> int:
        """Insert ``rows`` in one transaction (all or nothing); return how many were
        stored (with ``dedup``, rows whose ``event_id`` the project holds are not)."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                if self.dedup:
                    before = conn.total_changes
                    conn.executemany(
                        _INSERT_NEW, [(*row, row[_PROJECT], row[_EVENT_ID]) for row in rows]
                    )
                    stored = conn.total_changes - before
                else:
                    conn.executemany(_INSERT, rows)
                    stored = len(rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return stored

    def delete_user(self, project: str, user_id: str) -> int:
        """Delete every event of ``user_id`` in ``project``; return how many."""
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM events WHERE project = ? AND user_id = ?", (project, user_id)
            )
            return cur.rowcount

    # ----------------------------------------------------------------- reads

    def fetch(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Run a read ``sql``; rows as dicts keyed by column name."""
        with self._lock:
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
