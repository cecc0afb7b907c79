"""The shipped notebooks run top to bottom in a real kernel, against the local server.

The quick-start notebook starts its own server inside the kernel when no
MILLIMETRIC_KEY is set (as on Binder); the test checks the account it prints
against the sample it sent and that the progress bar was a live widget that
reached the end.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from millimetric_nb.sample import generate_sample

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _execute(path: Path, tmp_path: Path) -> nbformat.NotebookNode:
    from notebook_run import execute

    return execute(nbformat.read(path, as_version=4), tmp_path)


def _stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("name") == "stdout"
    )


def test_quickstart_runs_against_its_own_server(tmp_path, monkeypatch):
    monkeypatch.delenv("MILLIMETRIC_KEY", raising=False)
    monkeypatch.delenv("MILLIMETRIC_HOST", raising=False)
    nb = _execute(NOTEBOOKS / "quickstart.ipynb", tmp_path)

    # the same call the notebook makes, to know what it should have sent
    sample = generate_sample(events=5_000, visitors=500, days=14, seed=7)
    m = re.search(
        r"sent=(\d+) invalid=(\d+) identified=(\d+) stored_in_window=(\d+)", _stdout(nb)
    )
    assert m, _stdout(nb)
    sent, invalid, identified, stored = map(int, m.groups())
    assert invalid == len(sample.invalid)
    assert sent == len(sample.valid_events)
    assert identified == len(sample.identifies)
    assert stored == sent  # what the server holds in the window is what was sent

    # the key shows masked only
    text = "".join(str(o) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "sk_dev_" in text and "…" in text
    assert not re.search(r"sk_dev_[A-Za-z0-9]{8}_[A-Za-z0-9_\-]{4,}", text)

    # the progress display was the live panel (in a kernel), its bar at the end
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [
        w["state"]
        for w in state.values()
        if w["model_name"] == "IntProgressModel"
        and "mm-panel-bar" in w["state"].get("_dom_classes", [])
    ]
    assert any(b.get("value") == b.get("max") == len(sample.events) for b in bars), bars
