"""The server's storage layout: new batches land in ``events_tail`` and move to the
indexed ``events_main`` by ``tail_rows``; reads, forget, dedup and insertion order
see every row wherever it sits, and a database of the older one-table layout keeps
its rows."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx
from test_server_cli import SK, start_serve, stop, wait_for_listening

from millimetric_nb.server import ServerConfig, run_in_thread
from millimetric_nb.server.checks import COLUMNS
from millimetric_nb.server.storage import Storage

WINDOW = {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z"}


def _event(i: int, **extra: str) -> dict[str, str]:
    # timestamps run backwards: arrival order is not timestamp order
    return {"event": f"e{i}", "event_id": f"id-{i}", "user_id": f"u{i % 3}",
            "timestamp": f"2024-01-{28 - i:02d}T00:00:00Z", **extra}


def _tables(srv) -> tuple[int, int]:
    storage = srv.state.storage
    main = storage.fetch("SELECT COUNT(*) AS n FROM events_main")[0]["n"]
    tail = storage.fetch("SELECT COUNT(*) AS n FROM events_tail")[0]["n"]
    return main, tail


def _settled(srv) -> tuple[int, int]:
    """``_tables`` once the move a write left for after its answer is done (it runs
    in the server's thread pool right after the answer is sent)."""
    deadline = time.monotonic() + 10
    while srv.state.storage.move_due and time.monotonic() < deadline:
        time.sleep(0.01)
    with srv.state.storage._lock:  # a move under way holds the lock
        pass
    return _tables(srv)


def test_rows_in_both_tables_are_read_forgotten_and_kept_in_arrival_order(
    mm_server, mm_client
):
    mm_server.state.storage.tail_rows = 4
    sk = mm_client(mm_server)
    for start in (0, 3, 6):  # 3 + 3 moves the tail (6 >= 4); the last 3 stay in it
        r = sk.post("/v1/batch", json={"events": [_event(i) for i in range(start, start + 3)]})
        assert r.status_code == 202
        _settled(mm_server)  # the move, after the answer, before the next batch
    assert _settled(mm_server) == (6, 3)
    assert [e["event_name"] for e in mm_server.stored_events()] == [f"e{i}" for i in range(9)]
    assert mm_server.count() == 9

    r = sk.post("/v1/forget", json={"user_id": "u0"})  # e0, e3 (main) and e6 (tail)
    assert r.status_code == 200
    assert [e["event_name"] for e in mm_server.stored_events()] == [
        "e1", "e2", "e4", "e5", "e7", "e8"]

    sk.post("/v1/batch", json={"events": [_event(9)]})  # stays in the tail
    rows = sk.get("/v1/query", params=WINDOW).json()["rows"]
    assert [row["event_name"] for row in rows] == ["e9", "e8", "e7", "e5", "e4", "e2", "e1"]
    one_user = sk.get("/v1/query", params={**WINDOW, "user_id": "u1"}).json()["rows"]
    assert [row["event_name"] for row in one_user] == ["e7", "e4", "e1"]
    stats = sk.get("/v1/stats", params=WINDOW).json()["rows"]
    assert stats == [{"value": 7}]
    sources = sk.get("/v1/sources", params=WINDOW).json()["rows"]
    assert sum(row["events"] for row in sources) == 7
    assert _tables(mm_server) == (7, 0)  # the reads moved the tail first


def test_dedup_finds_an_event_id_in_either_table(mm_server_factory, mm_client):
    srv = mm_server_factory(dedup=True)
    srv.state.storage.tail_rows = 2
    sk = mm_client(srv)
    assert sk.post("/v1/batch", json={"events": [_event(0), _event(1)]}).status_code == 202
    assert _settled(srv) == (2, 0)
    r = sk.post("/v1/batch", json={"events": [_event(0), _event(2), _event(2)]})
    assert r.status_code == 202 and r.json()["count"] == 3  # all accepted
    assert _settled(srv) == (2, 1)  # e2 once (in the tail); e0 was in events_main
    sk.post("/v1/batch", json={"events": [_event(3)]})  # in the tail now
    sk.post("/v1/batch", json={"events": [_event(3), _event(1)]})
    assert [e["event_id"] for e in srv.stored_events()] == ["id-0", "id-1", "id-2", "id-3"]


def test_a_database_of_the_one_table_layout_keeps_its_rows(tmp_path, mm_client):
    db = str(tmp_path / "old.sqlite3")
    types = ", ".join(f"{c} {'INTEGER' if c == 'ts_us' else 'TEXT'}" for c in COLUMNS)
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, {types})")
        conn.execute("CREATE INDEX events_project_ts ON events (project, ts_us)")
        conn.execute("CREATE INDEX events_project_user ON events (project, user_id)")
        values = {c: None for c in COLUMNS} | {
            "project": "dev", "event_id": "old", "event_name": "old",
            "timestamp": "2024-01-05T00:00:00.000000Z", "ts_us": 1_704_412_800_000_000,
            "properties": "{}"}
        conn.execute(f"INSERT INTO events ({', '.join(COLUMNS)}) "
                     f"VALUES ({', '.join('?' for _ in COLUMNS)})", list(values.values()))
    conn.close()
    keys = ["sk_dev_abcd1234_persistentsecret"]
    with run_in_thread(ServerConfig(db=db, keys=keys)) as srv:
        sk = mm_client(srv)
        assert sk.post("/v1/batch", json={"events": [_event(0)]}).status_code == 202
        assert [e["event_id"] for e in srv.stored_events()] == ["old", "id-0"]
        rows = sk.get("/v1/query", params=WINDOW).json()["rows"]
        assert [row["event_name"] for row in rows] == ["old", "e0"]
    srv.state.storage.close()
    with sqlite3.connect(db) as conn:
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master "
                                  "WHERE name IN ('events', 'events_main', 'events_tail')"))
        assert kinds == {"events": "view", "events_main": "table", "events_tail": "table"}
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    conn.close()


def test_arrival_order_survives_a_restart_with_rows_left_in_the_tail(tmp_path):
    db = str(tmp_path / "store.sqlite3")

    def row(event_id: str) -> tuple[object, ...]:
        values = dict.fromkeys(COLUMNS) | {"project": "dev", "event_id": event_id,
                                           "event_name": "e", "ts_us": 1, "properties": "{}"}
        return tuple(values.values())

    first = Storage(db, tail_rows=2)
    first.insert([row("a"), row("b")])  # moved
    first.insert([row("c")])  # left in the tail
    first.close()
    again = Storage(db, tail_rows=2)
    again.insert([row("d")])
    assert [e["event_id"] for e in again.stored_events("dev")] == ["a", "b", "c", "d"]
    again.close()


def test_an_acknowledged_batch_survives_a_sigkill_of_the_server(tmp_path):
    db = tmp_path / "killed.sqlite3"
    proc = start_serve("--db", str(db), "--key", SK, "--limits", "off")
    try:
        url, _ = wait_for_listening(proc)
        events = [_event(i) for i in range(5)]
        r = httpx.post(f"{url}/v1/batch", json={"events": events},
                       headers={"Authorization": f"Bearer {SK}"}, timeout=30)
        assert r.status_code == 202
    finally:
        code, _ = stop(proc, signal.SIGKILL)  # no shutdown: nothing flushed after the answer
    assert code == -signal.SIGKILL
    with sqlite3.connect(db) as conn:
        ids = [i for (i,) in conn.execute("SELECT event_id FROM events ORDER BY seq")]
    conn.close()
    assert ids == [e["event_id"] for e in events]


def test_aggregates_agree_whether_they_read_the_index_or_the_whole_table(
    mm_server, mm_client
):
    sk = mm_client(mm_server)
    events = [{"event": ("a", "b")[i % 2], "anonymous_id": f"x{i % 5}",
               "timestamp": f"2024-01-{1 + i % 20:02d}T12:00:00Z"} for i in range(200)]
    assert sk.post("/v1/batch", json={"events": events}).status_code == 202
    for window, days in (
        (WINDOW, range(1, 21)),  # every row: the whole table is read
        ({"from": "2024-01-03", "to": "2024-01-05"}, (3, 4)),  # 10%: through the index
    ):
        inside = [e for e in events if int(e["timestamp"][8:10]) in days]
        stats = sk.get("/v1/stats", params={**window, "group_by": "event_name",
                                            "metric": "uniques"}).json()["rows"]
        assert {r["event_name"]: r["value"] for r in stats} == {
            name: len({e["anonymous_id"] for e in inside if e["event"] == name})
            for name in ("a", "b")}
        sources = sk.get("/v1/sources", params=window).json()["rows"]
        assert [(r["source"], r["events"]) for r in sources] == [("direct", len(inside))]


def test_the_write_that_fills_the_tail_is_answered_before_the_move(mm_server, mm_client):
    storage = mm_server.state.storage
    storage.tail_rows = 3
    started, release = threading.Event(), threading.Event()
    real = storage._move_tail

    def held_move() -> bool:  # the move waits until the answer has been read
        started.set()
        assert release.wait(10)
        return real()

    storage._move_tail = held_move
    sk = mm_client(mm_server)
    r = sk.post("/v1/batch", json={"events": [_event(i) for i in range(3)]})
    assert r.status_code == 202 and r.json()["count"] == 3  # answered, move not done
    assert started.wait(10) and storage.move_due
    release.set()
    assert _settled(mm_server) == (3, 0)
    assert [e["event_name"] for e in mm_server.stored_events()] == ["e0", "e1", "e2"]
