"""Empty timestamps are invalid (or server time when asked), end to end; and every data
warning points at the caller's line, once.

Over real HTTP against the local server: a CSV with blank and "N/A" timestamps is
backfilled; the rows without a timestamp are ``invalid`` with rule ``required`` and
never stored, unless ``missing_timestamp="server_time"``, when they are stored once
and a resume from the journal does not store them again.
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb.frame import DataWarning

HERE = str(Path(__file__).resolve())

CSV = """event,timestamp,anonymous_id,amount
signup,2026-10-01T10:00:00Z,a1,1
signup,,a2,2
signup,2026-10-01T10:00:02Z,a3,3
signup,N/A,a4,4
signup,1727776800,a5,5
signup,2026-10-01T10:00:05Z,a6,6
"""


def _stored(srv) -> list[dict]:
    return srv.stored_events("dev")


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    p = tmp_path / "events.csv"
    p.write_text(CSV, encoding="utf-8")
    return p


def test_a_csv_with_empty_timestamps_rows_are_invalid_and_named(mm_server, csv_path, tmp_path):
    client = mm.Client(mm_server.keys["sk"], mm_server.url)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = mm.backfill(csv_path, client=client, progress=False,
                             journal=tmp_path / "j.sqlite", chunksize=2)
    rows = result.rows
    assert rows["status"].tolist() == ["sent", "invalid", "sent", "invalid", "invalid", "sent"]
    errors = result.errors.set_index("row")
    assert errors.loc[1, "rule"] == "required" and errors.loc[3, "rule"] == "required"
    assert errors.loc[4, "rule"] == "invalid_timestamp"
    assert "looks like a Unix epoch" in errors.loc[4, "message"]
    stored = _stored(mm_server)
    assert sorted(e["anonymous_id"] for e in stored) == ["a1", "a3", "a6"]
    # one warning (merged over the chunks of 2 rows) names the rows, at this file's line
    (w,) = [w for w in rec if "no timestamp" in str(w.message)]
    assert str(w.message).startswith("rows 1, 3 have no timestamp in column 'timestamp'")
    assert w.filename == HERE and w.category is DataWarning
    client.close()


def test_server_time_stores_them_once_and_a_resume_does_not_store_them_again(
    mm_server, csv_path, tmp_path
):
    client = mm.Client(mm_server.keys["sk"], mm_server.url)
    journal = tmp_path / "j.sqlite"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = mm.backfill(csv_path, client=client, progress=False, journal=journal,
                            missing_timestamp="server_time")
        again = mm.backfill(csv_path, client=client, progress=False, journal=journal,
                            missing_timestamp="server_time")
    assert first.rows["status"].tolist() == ["sent", "sent", "sent", "sent", "invalid", "sent"]
    assert again.rows["status"].tolist() == [
        "skipped", "skipped", "skipped", "skipped", "invalid", "skipped"]
    stored = _stored(mm_server)
    assert sorted(e["anonymous_id"] for e in stored) == ["a1", "a2", "a3", "a4", "a6"]
    by_anon = {e["anonymous_id"]: e for e in stored}
    assert by_anon["a1"]["timestamp"].startswith("2026-10-01T10:00:00")
    assert not by_anon["a2"]["timestamp"].startswith("2026-10-01")  # server time
    with pytest.raises(mm.ConfigurationError, match="missing_timestamp must be"):
        mm.backfill(csv_path, client=client, dry_run=True, missing_timestamp="now")
    client.close()


def _record(call) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        call()
    return [w for w in rec if issubclass(w.category, UserWarning)]


def _assert_here_once(rec: list[warnings.WarningMessage], expected: int) -> None:
    assert len(rec) == expected, [str(w.message) for w in rec]
    assert [w.filename for w in rec] == [HERE] * expected, [(w.filename, w.lineno) for w in rec]
    texts = [str(w.message) for w in rec]
    assert len(set(texts)) == len(texts)  # each once


def test_every_face_points_its_warnings_at_the_callers_line(mm_server, tmp_path):
    # three warnings: an empty timestamp, a personal-looking column, no user or visitor id
    df = pd.DataFrame({"event": ["a", "b"], "email": ["x@y.com", "z@w.org"],
                       "timestamp": ["2026-01-01", None]})
    client = mm.Client(mm_server.keys["sk"], mm_server.url)
    w = {"pii": "warn"}  # send personal-looking columns with a warning, whatever the default
    _assert_here_once(_record(lambda: df.millimetric.validate(**w)), 3)
    _assert_here_once(_record(lambda: mm.validate_frame(df, **w)), 3)
    _assert_here_once(
        _record(lambda: df.millimetric.send_batch(client=client, progress=False, **w)), 3)
    _assert_here_once(_record(lambda: mm.backfill(df, client=client, progress=False, **w)), 3)
    _assert_here_once(_record(lambda: df.millimetric.track(
        client=client, progress=False, event_col="event", **w)), 3)
    ids = pd.DataFrame({"anonymous_id": ["a1"], "user_id": ["u1"], "phone": ["+44 20 7946 0958"]})
    _assert_here_once(_record(lambda: ids.millimetric.identify(
        traits=["phone"], client=client, progress=False, **w)), 1)

    async def awaited() -> None:  # as a notebook's top-level await: this line is the caller
        async with mm.AsyncClient(mm_server.keys["sk"], mm_server.url) as ac:
            await mm.abackfill(df, client=ac, progress=False, **w)

    _assert_here_once(_record(lambda: asyncio.run(awaited())), 3)
    assert mm_server.count("dev") == 1 + 1 + 1 + 1 + 1  # one valid row per send, and the identify
    client.close()


def test_row_naming_warnings_merge_over_chunks_with_the_first_labels_and_the_total(mm_server):
    n = 40
    df = pd.DataFrame({"event": ["e"] * n, "anonymous_id": ["a"] * n,
                       "timestamp": [None if i % 3 == 0 else "2026-01-01T00:00:00Z"
                                     for i in range(n)]})
    client = mm.Client(mm_server.keys["sk"], mm_server.url)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = df.millimetric.send_batch(client=client, progress=False, chunksize=4)
    (w,) = [str(w.message) for w in rec if "no timestamp" in str(w.message)]
    assert w.startswith("rows 0, 3, 6, 9, 12 ... (14 in all) have no timestamp in column")
    assert result.counts["invalid"] == 14 and mm_server.count() == n - 14
    client.close()
