"""The SQLite journal: durable states, resume bookkeeping, fast lookups."""

from __future__ import annotations

import sqlite3

from millimetric_nb.journal import ACKED, AMBIGUOUS, FAILED, PENDING, Journal, open_journal


def test_states_round_trip_and_survive_reopen(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.begin(["a", "b", "c", "d"])
        j.acknowledge(["a", "b"])
        j.fail(["c"], ambiguous=True)
        j.fail(["d"], ambiguous=False)
        j.begin(["e"])  # left in flight: as if the process died here
    with Journal(path) as j:
        got = j.lookup(["a", "b", "c", "d", "e", "zz"])
        assert got == {
            "a": (ACKED, False),
            "b": (ACKED, False),
            "c": (AMBIGUOUS, False),
            "d": (FAILED, False),
            "e": (PENDING, False),
        }
        assert j.counts() == {ACKED: 2, AMBIGUOUS: 1, FAILED: 1, PENDING: 1}
        assert sorted(j.ids(ACKED)) == ["a", "b"]


def test_resend_of_uncertain_id_is_flagged_possible_duplicate(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        j.begin(["x", "y", "z"])
        j.fail(["x"], ambiguous=True)  # x: outcome unknown
        j.fail(["y"], ambiguous=False)  # y: certainly not written
        # z stays pending (crash in flight)
        j.begin(["x", "y", "z"])
        j.acknowledge(["x", "y", "z"])
        got = j.lookup(["x", "y", "z"])
        assert got["x"] == (ACKED, True)
        assert got["y"] == (ACKED, False)
        assert got["z"] == (ACKED, True)


def test_ack_after_ambiguous_attempt_is_flagged(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        j.acknowledge(["q"], ambiguous=True)
        j.acknowledge(["q"], ambiguous=False)  # the flag stays once set
        assert j.lookup(["q"]) == {"q": (ACKED, True)}


def test_wal_and_committed_on_return(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.acknowledge(["one"])
    # another connection sees the acknowledgement without j being closed
    other = sqlite3.connect(str(path))
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT state FROM events WHERE event_id='one'").fetchone() == (ACKED,)
    other.close()
    j.close()
    j.close()  # idempotent


def test_large_lookup_in_slices(tmp_path):
    ids = [f"id-{i}" for i in range(120_000)]
    with Journal(tmp_path / "j.sqlite") as j:
        j.acknowledge(ids[::2])
        got = j.lookup(ids)
        assert len(got) == 60_000
        assert "id-0" in got and "id-1" not in got and "id-119998" in got


def test_runs_are_recorded(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        run = j.start_run()
        j.finish_run({"sent": 3})
        row = j._db.execute("SELECT counts FROM runs WHERE run=?", (run,)).fetchone()
        assert row == ('{"sent":3}',)


def test_open_journal_owns_paths_not_objects(tmp_path):
    j, owned = open_journal(tmp_path / "a.sqlite")
    assert owned and isinstance(j, Journal)
    j2, owned2 = open_journal(j)
    assert j2 is j and not owned2
    assert open_journal(None) == (None, False)
    j.close()
