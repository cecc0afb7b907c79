"""``notebooks/03-forms.ipynb`` runs headless (nbclient) and its forms work from the kernel.

The notebook runs top to bottom against the local server it starts itself (no
``MILLIMETRIC_HOST``), with a key this test mints and passes as ``MILLIMETRIC_KEY``, so
the test knows the secret it must never find. Cells appended after the notebook's own
connect through the connect form (typing the key into its password field), fill the
track form and click Send, and try invalid properties; then the test reads the saved
widget state (every form and the background send's panel, by CSS class) and what the
server stored, and checks that neither the key nor its secret is anywhere in the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from millimetric_nb.server.config import mint_key

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03-forms.ipynb"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# Appended cells: what a person does with the forms, done from the kernel.
CONNECT = """\
connect.fields['key'].value = os.environ['MILLIMETRIC_KEY']  # as if typed
connect.buttons['connect'].click()
print('CONNECT', json.dumps({'key_left': connect.fields['key'].value,
                             'answer': connect.answer.value}))
"""
TRACK = """\
import asyncio
track.fields['event'].value = 'nb_forms_signup'
track.fields['anonymous_id'].value = 'anon-nb-forms-1'
track.fields['url'].value = 'https://shop.example.com/welcome?utm_source=newsletter'
track.fields['properties'].value = '{"plan": "pro", "seats": 3}'
send_enabled = not track.buttons['send'].disabled
track.buttons['send'].click()
for _ in range(200):  # the send may run as a task on this loop: let it
    if track.history:
        break
    await asyncio.sleep(0.05)
stored = [
    {k: r[k] for k in ('event_id', 'event_name', 'anonymous_id', 'properties', 'source')}
    for r in server.stored_events() if r['event_name'] == 'nb_forms_signup'
]
print('TRACK', json.dumps({'send_enabled': send_enabled, 'answer': track.answer.value,
                           'history': track.history, 'stored': stored}))
"""
PANEL = """\
def part(w, css):
    if css in w._dom_classes:
        return w
    found = [part(child, css) for child in getattr(w, 'children', ())]
    return next((f for f in found if f is not None), None)
bar = part(handle.panel.widget, 'mm-panel-bar')
summary = part(handle.panel.widget, 'mm-panel-summary')
print('PANEL', json.dumps({'bar': bar.value, 'max': bar.max, 'summary': summary.value,
                           'done': handle.done()}))
"""
BAD_JSON = """\
before = server.count()
track.fields['properties'].value = '{"plan": '
bad = {'disabled': track.buttons['send'].disabled,
       'note': track.messages['properties'].value}
track.buttons['send'].click()  # a click on a disabled button must still send nothing
print('BAD', json.dumps({**bad, 'added': server.count() - before}))
"""


def _printed(nb: Any, tag: str) -> dict[str, Any]:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith(tag + " "):
                    return json.loads(line[len(tag) + 1 :])
    raise AssertionError(f"no {tag} line in the outputs")


def _models_with_class(states: dict[str, Any], css: str) -> list[dict[str, Any]]:
    return [m for m in states.values() if css in m["state"].get("_dom_classes", [])]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """The notebook, run with its appended cells, and the key it ran with."""
    key = mint_key("sk")
    tmp_path = tmp_path_factory.mktemp("forms-nb")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell("import json"))
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in (PANEL, CONNECT, TRACK, BAD_JSON))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MILLIMETRIC_HOST", raising=False)
        mp.setenv("MILLIMETRIC_KEY", key)
        from notebook_run import execute

        execute(nb, tmp_path)
    return nb, key


def test_the_committed_notebook_holds_no_outputs_and_no_key():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "widgets" not in nb.metadata
    assert not re.search(r"[a-z]{2}_[a-z]+_[A-Za-z0-9]{8}_[A-Za-z0-9]{8,}", NOTEBOOK.read_text())


def test_every_form_and_the_panel_are_in_the_saved_widget_state(executed):
    nb, _ = executed
    states = nb.metadata["widgets"][WIDGET_STATE]["state"]
    for form in ("connect", "track", "identify", "forget", "backfill"):
        assert _models_with_class(states, f"mm-{form}"), f"no widget with class mm-{form}"
    for field in ("event", "anonymous_id", "user_id", "url", "referrer", "timestamp",
                  "properties", "send", "answer"):
        assert _models_with_class(states, f"mm-track-{field}"), field
    for css in ("mm-forget-user_id", "mm-forget-confirm", "mm-forget-send",
                "mm-identify-traits", "mm-connect-key", "mm-backfill-send"):
        assert _models_with_class(states, css), css
    (key_field,) = _models_with_class(states, "mm-connect-key")
    assert key_field["model_name"] == "PasswordModel"

    # the background send: a live panel (with its Cancel) in the saved state...
    assert _models_with_class(states, "mm-panel") and _models_with_class(states, "mm-panel-cancel")
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    m = re.search(r"background send: sent=(\d+) of (\d+) rows", printed)
    assert m, printed[-2000:]
    sent, rows = map(int, m.groups())
    assert sent == rows > 0
    # ...whose widgets, read in the kernel, reached the end with the account. (nbclient
    # saves only updates made while their own cell runs, so the saved state keeps the
    # panel as the cell that started the background send left it.)
    panel = _printed(nb, "PANEL")
    assert panel["done"] and panel["bar"] == panel["max"] == rows, panel
    assert f"{rows:,}" in panel["summary"], panel


def test_the_track_form_sends_and_the_server_stores_it(executed):
    nb, _ = executed
    track = _printed(nb, "TRACK")
    assert track["send_enabled"]
    (row,) = track["stored"]
    assert row["anonymous_id"] == "anon-nb-forms-1"
    assert row["properties"]["plan"] == "pro" and row["properties"]["seats"] == 3
    assert row["source"] == "newsletter"  # the server enriched the url the form sent
    assert row["event_id"] in track["answer"]  # the form shows the id the server stored
    assert len(track["history"]) == 1 and track["history"][0]["ok"]


def test_invalid_properties_disable_send_and_send_nothing(executed):
    nb, _ = executed
    bad = _printed(nb, "BAD")
    assert bad["disabled"]
    assert "JSON" in bad["note"] or "json" in bad["note"]
    assert bad["added"] == 0


def test_the_connect_form_clears_the_key_and_no_key_is_saved(executed):
    nb, key = executed
    connect = _printed(nb, "CONNECT")
    assert connect["key_left"] == ""
    assert key[:15] in connect["answer"]  # sk_dev_<prefix>: the masked key is shown
    secret = key.rsplit("_", 1)[1]
    saved = nbformat.writes(nb)  # the file as it would be saved, outputs and widget state
    assert key not in saved
    assert secret not in saved
