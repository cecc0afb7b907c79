"""The notebook forms, driven through their widgets (set ``.value``, ``button.click()``)
against the local server over loopback; what the server stored is checked each time,
and for every bad input that nothing was sent.
"""

from __future__ import annotations

import asyncio
import html
import json
import re

import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb import sync, ui
from millimetric_nb.contract import RateLimit
from millimetric_nb.results import UNCHECKED, kept_back


@pytest.fixture
def client(mm_server):
    with mm.Client(mm_server.keys["sk"], mm_server.url, rate_limits="off") as c:
        yield c


@pytest.fixture
def no_default(monkeypatch):
    """The default client is global: each test that sets it starts and ends without one
    (the one it made is closed)."""
    monkeypatch.setattr(sync, "_default", None)
    monkeypatch.delenv("MILLIMETRIC_KEY", raising=False)
    monkeypatch.delenv("MILLIMETRIC_HOST", raising=False)
    yield
    if sync._default is not None:
        sync._default.close()


def classes(widget) -> set[str]:
    return set(widget._dom_classes)


def fill(form, **values) -> None:
    for name, value in values.items():
        form.fields[name].value = value


def note_text(form, field: str) -> str:
    """The text of the note beside ``field`` (no markup)."""
    return html.unescape(re.sub(r"<[^>]+>", "", form.messages[field].value))


@pytest.mark.parametrize("make", [ui.track_form, ui.identify_form, ui.forget_form])
def test_every_note_is_one_sentence_naming_the_field_and_the_rule_once(make):
    form = make()
    notes = {f: note_text(form, f) for f in form.fields if note_text(form, f)}
    assert notes  # a fresh form says which fields are required
    for field, note in notes.items():
        assert not re.match(r"^[a-z_]+: ", note), note  # no rule code glued in front
        assert note.count("required") <= 1, note
        if field != "confirm":
            assert note.startswith(f"{field} is required (1 to "), note
    # blank and untouched: a grey hint, not a red error
    assert all("#b00020" not in form.messages[f].value for f in notes)


# --------------------------------------------------------------------------- track


def test_track_form_sends_what_is_typed_and_shows_the_event_id(mm_server, client):
    form = ui.track_form(client)
    assert "mm-track" in classes(form.widget)
    assert form.buttons["send"].disabled  # no event name yet
    fill(form, event="signup_completed", user_id="u-1", url="https://ex.com/?utm_source=nl",
         timestamp="2026-11-30T09:30:00Z", properties='{"plan": "pro", "seats": 3}')
    assert not form.buttons["send"].disabled
    form.buttons["send"].click()

    stored = mm_server.stored_events()
    assert len(stored) == 1
    row = stored[0]
    assert (row["event_name"], row["user_id"], row["url"]) == (
        "signup_completed", "u-1", "https://ex.com/?utm_source=nl")
    assert row["timestamp"].startswith("2026-11-30T09:30:00")
    assert row["properties"] == {"plan": "pro", "seats": 3}
    assert row["event_id"] in form.answer.value  # the answer names the stored event
    assert len(form.history) == 1 and row["event_id"] in form.history_view.value
    assert "mm-track-history" in classes(form.history_view)

    form.fields["event"].value = "second"
    form.buttons["send"].click()
    assert mm_server.count() == 2 and len(form.history) == 2


@pytest.mark.parametrize(
    ("values", "field", "says"),
    [
        ({"event": ""}, "event", "event is required (1 to 128 characters)"),
        ({"event": "e" * 129}, "event", "event must be at most 128 characters, got 129"),
        ({"properties": '{"plan": "pro"'}, "properties", "properties is not valid JSON: "),
        ({"properties": "[1, 2]"}, "properties",
         "properties must be a JSON object ({...}), not a list"),
        ({"properties": json.dumps({"blob": "x" * 8200})}, "properties",
         "properties is 8,211 bytes once JSON-encoded (limit 8,192)"),
        ({"properties": '{"source": "newsletter"}'}, "properties",
         "properties key 'source' is named like a field the server derives itself"),
        ({"properties": '{"country": "FR"}'}, "properties", "derives itself"),
        ({"timestamp": "yesterday"}, "timestamp",
         "timestamp 'yesterday' is not an ISO 8601 date-time"),
        ({"user_id": "u" * 300}, "user_id", "user_id must be at most 256 characters, got 300"),
    ],
)
def test_track_form_bad_input_is_said_beside_the_field_and_sends_nothing(
    mm_server, client, values, field, says
):
    form = ui.track_form(client, event="ok_event")
    fill(form, **values)
    note = html.unescape(form.messages[field].value)
    assert says in note
    assert note.count(field) == 1 or field == "properties"  # the field named once
    assert form.buttons["send"].disabled
    form.buttons["send"].click()  # a click that gets through anyway is refused too
    assert "nothing was sent" in form.answer.value
    assert mm_server.count() == 0
    assert form.history == []


def test_track_form_sends_through_an_async_client_too(mm_server):
    aclient = mm.AsyncClient(mm_server.keys["sk"], mm_server.url)
    form = ui.track_form(aclient, event="from_async")
    form.buttons["send"].click()
    assert [r["event_name"] for r in mm_server.stored_events()] == ["from_async"]
    assert mm_server.stored_events()[0]["event_id"] in form.answer.value
    sync.run_sync(aclient.aclose())


def test_track_form_shows_a_server_refusal_with_its_code_and_what_to_do(mm_server):
    # a key of the right shape that the server does not know: a 401, shown, not raised
    with mm.Client("sk_live_abcdefgh_notAKnownSecret", mm_server.url) as c:
        form = ui.track_form(c, event="x")
        form.buttons["send"].click()
    assert "[invalid_api_key]" in form.answer.value
    assert "connect with a current key" in form.answer.value
    assert form.history[-1]["outcome"] == "error invalid_api_key"
    assert mm_server.count() == 0


def test_track_form_without_any_client_says_how_to_connect(no_default, mm_server):
    form = ui.track_form(event="x")
    form.buttons["send"].click()
    assert "[missing_api_key]" in form.answer.value
    assert "connect_form" in form.answer.value
    assert mm_server.count() == 0


# --------------------------------------------------------------------------- identify


def test_identify_form_warns_about_personal_traits_and_stores_the_link(mm_server, client):
    form = ui.identify_form(client)
    assert "mm-identify" in classes(form.widget)
    fill(form, anonymous_id="anon-7", user_id="user-7",
         traits='{"plan": "pro", "email": "ada@example.com"}')
    warning = html.unescape(form.messages["traits"].value)
    assert "personal data" in warning and "'email'" in warning  # the accessor's rule
    assert not form.buttons["send"].disabled  # a warning, not a refusal
    form.buttons["send"].click()
    stored = mm_server.stored_events()
    assert [(r["event_name"], r["anonymous_id"], r["user_id"]) for r in stored] == [
        ("$identify", "anon-7", "user-7")]
    assert "identified" in form.answer.value


def test_identify_form_bad_input_sends_nothing(mm_server, client):
    form = ui.identify_form(client)
    fill(form, anonymous_id="anon-7", user_id="", traits="{not json")
    assert "traits is not valid JSON: " in form.messages["traits"].value
    assert note_text(form, "user_id") == "user_id is required (1 to 256 characters)"
    fill(form, anonymous_id="a" * 129)
    assert note_text(form, "anonymous_id") == (
        "anonymous_id must be at most 128 characters, got 129")
    form.buttons["send"].click()
    assert mm_server.count() == 0 and "nothing was sent" in form.answer.value


# --------------------------------------------------------------------------- forget


def test_forget_form_needs_the_id_twice_then_deletes_only_that_user(mm_server, client):
    for user in ("u-gone", "u-gone", "u-kept"):
        client.track("visit", user_id=user)
    form = ui.forget_form(client)
    assert "mm-forget" in classes(form.widget)
    assert "cannot be undone" in form.widget.children[3].value  # the statement
    assert "white-space:normal" in form.widget.children[3].value  # wrapped to the form
    assert form.buttons["send"].layout.width == "auto"  # as wide as its label
    fill(form, user_id="u-gone", confirm="u-gon")
    assert note_text(form, "confirm") == (
        "the confirmation does not match user_id: type the same id again")
    assert "#b00020" in form.messages["confirm"].value  # a mistake: red
    assert form.buttons["send"].disabled
    form.buttons["send"].click()
    assert mm_server.count() == 3  # nothing deleted

    form.fields["confirm"].value = "u-gone"
    assert not form.buttons["send"].disabled
    form.buttons["send"].click()
    assert [r["user_id"] for r in mm_server.stored_events()] == ["u-kept"]
    assert '"queued":true' in html.unescape(form.answer.value)
    # a fresh, neutral form for the next delete (both ids typed again), the answer kept
    assert (form.fields["user_id"].value, form.fields["confirm"].value) == ("", "")
    assert "does not match" not in note_text(form, "confirm")
    assert not any("#b00020" in m.value for m in form.messages.values())  # nothing red
    assert note_text(form, "user_id") == "user_id is required (1 to 256 characters)"
    assert "deleted: every event of 'u-gone'" in html.unescape(form.answer.value)
    assert form.buttons["send"].disabled


def test_forget_form_refuses_a_key_that_is_not_sk_before_any_request(mm_server):
    with mm.Client(mm_server.keys["rk"], mm_server.url) as reader:
        form = ui.forget_form(reader)
        fill(form, user_id="u-1", confirm="u-1")
        form.buttons["send"].click()
    assert "[insufficient_scope]" in form.answer.value
    assert "forget" not in mm_server.status_counts()  # no request reached the server


# --------------------------------------------------------------------------- connect


def _secret_parts(key: str) -> list[str]:
    return [key, key.split("_", 3)[3]]


def _state_text(form) -> str:
    return json.dumps([w.get_state() for w in form.all_widgets()], default=str)


def test_connect_form_connects_and_leaves_no_key_in_any_widget_state(no_default, mm_server):
    key = mm_server.keys["sk"]
    form = ui.connect_form(rate_limits="off")
    assert "mm-connect" in classes(form.widget)
    fill(form, key=key, host=mm_server.url)
    form.buttons["connect"].click()

    assert form.fields["key"].value == ""
    state = _state_text(form)
    assert not any(part in state for part in _secret_parts(key))
    assert form.client is not None and mm.default_client() is form.client
    assert form.client.key_masked in form.answer.value
    # the default client it set is the one the other forms use
    track = ui.track_form(event="via_default")
    track.buttons["send"].click()
    assert [r["event_name"] for r in mm_server.stored_events()] == ["via_default"]


@pytest.mark.parametrize(("kind", "code"), [("pk", "browser_key_refused"),
                                            ("rk", "insufficient_scope")])
def test_connect_form_refuses_a_key_that_cannot_send(no_default, mm_server, kind, code):
    key = mm_server.keys.get(kind) or f"{kind}_live_abcdefgh_someSecretValue1"
    form = ui.connect_form()
    fill(form, key=key, host=mm_server.url)
    form.buttons["connect"].click()
    assert f"[{code}]" in form.messages["key"].value
    assert form.client is None and sync._default is None
    assert form.fields["key"].value == ""
    assert not any(part in _state_text(form) for part in _secret_parts(key))


def test_connect_form_with_a_malformed_key_does_not_echo_it(no_default):
    form = ui.connect_form()
    fill(form, key="sk_live_short_hunter2secret!")
    form.buttons["connect"].click()
    assert "[malformed_api_key]" in form.answer.value
    assert "hunter2" not in _state_text(form)


def test_mm_connect_in_a_notebook_without_a_key_shows_the_form(no_default, monkeypatch):
    import IPython.display

    from millimetric_nb.ui import connect as connect_module

    shown = []
    monkeypatch.setattr(connect_module, "in_jupyter", lambda: True)
    monkeypatch.setattr(IPython.display, "display", shown.append)
    assert mm.connect() is None
    assert len(shown) == 1 and shown[0].name == "connect"
    monkeypatch.setattr(connect_module, "in_jupyter", lambda: False)  # a script: it raises
    with pytest.raises(mm.ConfigurationError):
        mm.connect()


# --------------------------------------------------------------------------- backfill


def _events(n: int, start: str = "2026-11-01") -> pd.DataFrame:
    return pd.DataFrame({
        "event": ["page_view"] * n,
        "user_id": [f"u{i % 50}" for i in range(n)],
        "timestamp": pd.date_range(start, periods=n, freq="min", tz="UTC"),
        "plan": ["pro"] * n,
        "country": ["FR"] * n,
    })


def test_backfill_panel_prefills_the_mapping_with_the_accessor_rules(client):
    panel = ui.backfill_panel(_events(3).rename(columns={"event": "name"}), client=client)
    f = panel.fields
    assert "mm-backfill" in classes(panel.widget)
    assert f["event"].value is None
    assert "no column is named 'event'" in html.unescape(panel.messages["event"].value)
    assert (f["timestamp"].value, f["user_id"].value, f["url"].value) == (
        "timestamp", "user_id", None)
    assert f["properties"].value == ("name", "plan")  # 'country' is server-enriched
    assert panel.buttons["send"].disabled
    f["event"].value = "name"  # the event column chosen: 'name' is no longer a property
    assert f["properties"].value == ("plan",) and not panel.buttons["send"].disabled
    assert "server-enriched" in panel.messages["properties"].value
    for part in ("validate", "dryrun", "send", "export"):
        assert f"mm-backfill-{part}" in classes(panel.buttons[part])
    assert "mm-backfill-journal" in classes(f["journal"])


def test_backfill_panel_validate_groups_problems_by_rule_with_the_rows(mm_server, client):
    df = _events(6)
    df.loc[2, "event"] = ""
    df.loc[4, "user_id"] = "x" * 300
    panel = ui.backfill_panel(df, client=client)
    panel.buttons["validate"].click()
    report = panel.report.value
    assert "too_short" in report and "too_long" in report
    assert "x" * 300 in report  # the offending row itself is shown
    assert "4 valid, 2 invalid" in panel.answer.value
    assert mm_server.count() == 0


def test_backfill_panel_dry_run_shows_the_plan_and_a_chart(mm_server, client):
    panel = ui.backfill_panel(_events(2500), client=client)
    panel.buttons["dryrun"].click()
    assert panel.plan is not None and panel.plan.requests == 3
    assert "<th>requests</th><td>3</td>" in panel.report.value
    assert "at the ceiling" in panel.report.value
    assert "mm-chart" in panel.chart.value and "data:image/png;base64," in panel.chart.value
    assert mm_server.count() == 0


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("missing.csv", "[source_not_found]"),
        ("notes.txt-not-a-format", "[unknown_source_format]"),
        ("empty.csv", "[EmptyDataError]"),
        ("folder.csv", "[source_empty]"),  # a folder is read as a dataset of parts
        ("latin1.csv", "[UnicodeDecodeError]"),
        ("broken.parquet", "[source_part_failed]"),
    ],
)
def test_backfill_panel_bad_path_is_said_beside_it_and_sends_nothing(
    mm_server, client, tmp_path, source, says
):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "notes.txt-not-a-format").write_text("event\na\n")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "latin1.csv").write_bytes("event,city\nvisit,Montr\xe9al\n".encode("latin-1"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    panel = ui.backfill_panel(tmp_path / source, client=client)
    assert says in panel.messages["source"].value
    assert panel.buttons["send"].disabled
    panel.buttons["send"].click()
    assert mm_server.count() == 0 and "nothing was sent" in panel.answer.value


def test_backfill_panel_frame_without_an_event_column_sends_nothing(mm_server, client):
    panel = ui.backfill_panel(pd.DataFrame({"n": [1, 2], "m": [0.5, 1.5]}), client=client)
    assert "no column that could be the event" in panel.messages["event"].value
    panel.buttons["send"].click()
    assert mm_server.count() == 0 and "nothing was sent" in panel.answer.value
    panel.fields["event_name"].value = "measured"  # one name for every row: now it may go
    assert not panel.buttons["send"].disabled


def test_backfill_panel_send_runs_as_a_task_and_accounts_for_every_row(
    mm_server, client, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    df = _events(1500)
    df.loc[[3, 700], "event"] = ""
    panel = ui.backfill_panel(df, client=client, journal=str(tmp_path / "j.sqlite"))

    async def run() -> None:
        panel.buttons["send"].click()
        assert panel.task is not None and not panel.task.done()  # the click returned at once
        assert panel.display.widget in panel.progress_box.children
        await panel.task
        await asyncio.sleep(0)  # the done callback

    asyncio.run(run())
    c = panel.result.counts
    assert (c["sent"], c["invalid"], c["total"]) == (1498, 2, 1500)
    assert mm_server.count() == 1498
    assert "sent 1,498" in panel.answer.value
    assert panel.display.result is panel.result  # the live panel shows the final account
    assert list(panel.failed.index) == [3, 700]
    assert "2 row(s) did not get in" in panel.failed_view.value
    assert "mm-chart" in panel.chart.value

    assert not panel.buttons["export"].disabled
    panel.buttons["export"].click()
    written = list(tmp_path.glob("millimetric-failed-*.csv"))
    assert len(written) == 1 and str(written[0]) in panel.answer.value
    back = pd.read_csv(written[0], index_col=0)
    assert list(back.index) == [3, 700] and list(back["user_id"]) == ["u3", "u0"]

    assert "skipped" not in panel.answer.value  # the first run skipped nothing
    assert "j.sqlite exists: Send skips" in note_text(panel, "journal")

    asyncio.run(run())  # a rerun with the same journal skips what was stored
    assert panel.result.counts["skipped"] == 1498 and mm_server.count() == 1498
    assert (f"1,498 rows already stored by an earlier run with this journal "
            f"({tmp_path / 'j.sqlite'}) were skipped") in html.unescape(panel.answer.value)


def test_backfill_panel_shows_its_default_journal_before_send_and_says_what_it_skipped(
    mm_server, client, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    panel = ui.backfill_panel(_events(30), client=client)
    assert panel.fields["journal"].value == "backfill.journal.sqlite"  # visible before Send
    where = tmp_path / "backfill.journal.sqlite"
    assert note_text(panel, "journal") == (
        f"a new journal at {where}: a rerun with it skips the rows this send stores")
    asyncio.run(_send(panel))
    assert mm_server.count() == 30 and where.exists()
    assert "already stored" not in panel.answer.value

    again = ui.backfill_panel(_events(40), client=client)  # the notebook run again, more rows
    assert f"{where} exists: Send skips the rows" in note_text(again, "journal")
    asyncio.run(_send(again))
    c = again.result.counts
    assert (c["skipped"], c["sent"]) == (30, 10) and mm_server.count() == 40
    assert ("30 rows already stored by an earlier run with this journal "
            "(backfill.journal.sqlite) were skipped") in html.unescape(again.answer.value)

    again.fields["journal"].value = ""  # no journal: said, and nothing is skipped
    assert note_text(again, "journal") == "no journal: a second Send sends every row again"


async def _send(panel) -> None:
    """Click Send (a task on this loop) and wait for the send's account."""
    panel.buttons["send"].click()
    await panel.task
    await asyncio.sleep(0)  # the done callback


async def _send_then_cancel(panel, after_sent: int) -> None:
    """Click Send, then the live panel's Cancel once ``after_sent`` rows are stored; wait
    for the send's account."""
    panel.buttons["send"].click()
    for _ in range(1000):
        if panel.display.counts["sent"] >= after_sent:
            break
        await asyncio.sleep(0.01)
    panel.display.cancel_button.click()  # the live panel's Cancel
    await panel.task  # the send ends with its account, not an exception
    await asyncio.sleep(0)  # the done callback


def test_backfill_panel_cancel_stops_the_send_accounts_for_every_row_and_a_rerun_resumes(
    mm_server, tmp_path
):
    df = _events(12_000)
    journal = str(tmp_path / "cancel.sqlite")
    slow = {"batch": RateLimit(4.0, 1)}  # 12 requests at 4/s: about 3 s in all
    with mm.Client(mm_server.keys["sk"], mm_server.url, rate_limits=slow) as c:
        panel = ui.backfill_panel(df, client=c, journal=journal)

        asyncio.run(_send_then_cancel(panel, after_sent=2000))
        result = panel.result
        assert result.error is not None and result.error.code == "cancelled"
        c1 = result.counts
        assert c1["total"] == 12_000 and 2000 <= c1["sent"] < 12_000
        assert c1["sent"] + c1["failed"] + c1["ambiguous"] == 12_000  # every row, one status
        never_sent = (result.rows["status"] == "failed") & (result.rows["error"] == "cancelled")
        assert int(never_sent.sum()) == c1["failed"] > 0
        assert panel.display.result is result  # the live panel shows the final account
        answer = html.unescape(panel.answer.value)
        assert "Cancelled after" in answer
        assert f"{c1['sent']:,} rows stored" in answer and "cancel.sqlite" in answer
        stored_at_cancel = mm_server.count()
        assert c1["sent"] <= stored_at_cancel <= c1["sent"] + c1["ambiguous"]
        asyncio.run(asyncio.sleep(0.6))  # more than one refill: nothing leaves after it
        assert mm_server.count() == stored_at_cancel

        async def resume() -> None:
            panel.buttons["send"].click()
            await panel.task

        asyncio.run(resume())
    c2 = panel.result.counts
    assert c2["skipped"] == c1["sent"] and c2["sent"] + c2["skipped"] == 12_000
    assert c2["failed"] == c2["ambiguous"] == 0
    stored_ids = {r["event_id"] for r in mm_server.stored_events()}
    assert stored_ids == set(panel.result.rows["event_id"])  # every row got in, once resumed


def test_backfill_panel_early_cancel_does_not_call_unchecked_rows_never_sent(mm_server, tmp_path):
    # rows of chunks read after the cancel were never validated: the account says so,
    # rather than counting them (invalid ones included) as valid rows never sent
    df = _events(20_000)
    df.loc[[19_990, 19_995], "event"] = ""  # in the last chunk: read after the cancel
    slow = {"batch": RateLimit(4.0, 1)}
    with mm.Client(mm_server.keys["sk"], mm_server.url, rate_limits=slow) as c:
        panel = ui.backfill_panel(df, client=c, journal="", chunksize=1000, concurrency=1)

        asyncio.run(_send_then_cancel(panel, after_sent=1000))
    result = panel.result
    assert result.error is not None and result.error.code == "cancelled"
    never, unchecked = kept_back(result)
    assert unchecked > 0
    rows = result.rows
    assert rows.loc[[19_990, 19_995], "message"].str.startswith(UNCHECKED).all()
    c = result.counts
    assert c["sent"] + c["ambiguous"] + never + unchecked + c["invalid"] + c["skipped"] == 20_000
    assert f"{unchecked:,} not yet checked or sent" in html.unescape(panel.answer.value)
