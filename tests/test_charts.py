"""Rows per day: the counts behind the charts, the charts in SendResult's and
Verification's HTML, and the tables alone when matplotlib is missing."""

from __future__ import annotations

import base64
import re
import sys

import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb.read import verify
from millimetric_nb.ui import charts

PNG = b"\x89PNG\r\n\x1a\n"


def _png_of(html_text: str) -> bytes:
    found = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html_text)
    assert found, "no inline PNG"
    return base64.b64decode(found.group(1))


def test_per_day_counts_rows_by_utc_day_and_label():
    days = [
        "2026-11-01T23:30:00-02:00",  # 01:30 on the 2nd in UTC
        pd.Timestamp("2026-11-01 10:00"),  # naive: taken as UTC
        "2026-11-01T00:00:00Z",
        None,  # no timestamp: not counted
        "not a date",
    ]
    table = charts.per_day(days, ["sent", "failed", "sent", "sent", "invalid"])
    assert list(table.columns) == ["sent", "failed"]  # statuses in their usual order
    assert [d.strftime("%Y-%m-%d") for d in table.index] == ["2026-11-01", "2026-11-02"]
    assert table.to_dict("list") == {"sent": [1, 1], "failed": [1, 0]}


def test_chart_png_is_a_png_and_none_without_matplotlib_or_rows(monkeypatch):
    table = charts.per_day(["2026-11-01", "2026-11-02"], ["sent", "failed"])
    assert charts.chart_png(table, title="t").startswith(PNG)
    assert charts.chart_png(charts.per_day([], [])) is None
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert not charts.has_matplotlib()
    assert charts.chart_png(table) is None and charts.chart_html(table) == ""


@pytest.fixture
def client(mm_server):
    with mm.Client(mm_server.keys["sk"], mm_server.url, rate_limits="off") as c:
        yield c


def _two_days(n: int = 30) -> pd.DataFrame:
    ts = pd.date_range("2026-11-01 12:00", periods=n, freq="h", tz="UTC")
    return pd.DataFrame({"event": ["e"] * n, "timestamp": ts, "k": range(n)})


def test_send_result_counts_and_draws_rows_per_day(client, monkeypatch):
    df = _two_days()
    df.loc[0, "event"] = ""  # one invalid row on the first day
    result = mm.backfill(df, client=client, progress=False)
    table = result.per_day()
    assert table.to_dict("list") == {"sent": [11, 18], "invalid": [1, 0]}
    page = result._repr_html_()
    assert "mm-chart" in page and _png_of(page).startswith(PNG)
    assert "rows that did not get in" in page  # the table is still there

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = result._repr_html_()
    assert "mm-chart" not in page and "sent" in page  # without matplotlib: the table alone


def test_send_result_without_timestamps_has_no_chart(client):
    result = mm.backfill(pd.DataFrame({"event": ["a", "b"]}), client=client, progress=False)
    assert result.timestamps is None and result.per_day().empty
    assert "mm-chart" not in result._repr_html_()


def test_verify_draws_sent_against_stored_per_day(mm_server, client):
    df = _two_days()
    result = mm.backfill(df, client=client, progress=False)
    sent = result.rows["status"] == "sent"
    ids = result.rows.loc[sent, "event_id"]
    check = verify(ids, "2026-11-01", "2026-11-03", client=client,
                   timestamps=df.loc[sent, "timestamp"])
    assert check.ok
    assert check.per_day.to_dict("list") == {"sent": [12, 18], "stored": [12, 18]}
    assert check.plot().startswith(PNG)
    assert "verified" in check._repr_html_() and "mm-chart" in check._repr_html_()

    client.track("e", timestamp="2026-11-02T05:00:00Z")  # one more stored on the 2nd
    check = verify(ids, "2026-11-01", "2026-11-03", client=client)  # dated where stored
    assert not check.ok and len(check.unexpected) == 1
    assert check.per_day.to_dict("list") == {"sent": [12, 18], "stored": [12, 19]}
    assert "MISMATCH" in check._repr_html_()


def test_verify_refuses_timestamps_that_do_not_match_the_ids(mm_server, client):
    with pytest.raises(mm.ValidationError, match="timestamps has 1 values for 2 event ids"):
        verify(["a", "b"], "2026-11-01", "2026-11-02", client=client, timestamps=["x"])
    assert "query" not in mm_server.status_counts()  # refused before any read
