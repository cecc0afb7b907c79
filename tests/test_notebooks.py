"""The shipped notebooks run top to bottom in a real kernel, against the local server.

Each notebook starts its own server inside the kernel when no MILLIMETRIC_HOST is set
(as on a laptop); tests/test_binder.py runs them all against the server binder/start
launches instead. Each test checks the figures the notebook prints against what it
must have done, and its displays (progress widget, chart, masked key).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SHIPPED = ("01-quickstart.ipynb", "02-backfill.ipynb", "04-gdpr-forget.ipynb")


def execute(path: Path, cwd: Path, timeout: int = 240) -> nbformat.NotebookNode:
    """Run ``path`` top to bottom in a fresh python3 kernel with ``cwd`` as its folder."""
    from notebook_run import execute as run

    return run(nbformat.read(path, as_version=4), cwd, timeout)


def outputs(nb: nbformat.NotebookNode, name: str) -> str:
    """All text a stream (``stdout`` / ``stderr``) printed."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.get("name") == name)


def figures(summary: str, text: str) -> dict[str, str]:
    """``key=value`` pairs of the line that starts with ``summary``'s first key."""
    line = next((ln for ln in text.splitlines() if ln.startswith(summary)), None)
    assert line, text
    return dict(pair.split("=", 1) for pair in line.split())


def all_text(nb: nbformat.NotebookNode) -> str:
    return "".join(str(o) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def assert_no_key_and_no_error(nb: nbformat.NotebookNode) -> None:
    text = all_text(nb)
    assert not re.search(r"sk_[a-z0-9]+_[A-Za-z0-9]{8}_[A-Za-z0-9_\-]{4,}", text)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]


def progress_bars(nb: nbformat.NotebookNode) -> list[dict]:
    """Progress bar widgets (tqdm's FloatProgress, or a panel's IntProgress), final state."""
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return [w["state"] for w in state.values()
            if w["model_name"] in ("FloatProgressModel", "IntProgressModel")]


def test_notebooks_are_stored_without_outputs_and_say_they_start_a_server():
    for name in SHIPPED:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), name
        first = nb.cells[0]
        assert first.cell_type == "markdown"
        assert "starts the local Millimetric server itself" in first.source
        assert "MILLIMETRIC_HOST" in first.source and "never type it into a cell" in first.source
        assert 'os.environ.get("MILLIMETRIC_HOST")' in nb.cells[1].source


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("MILLIMETRIC_KEY", raising=False)
    monkeypatch.delenv("MILLIMETRIC_HOST", raising=False)


def test_quickstart_tracks_identifies_and_reads_back(tmp_path, no_env):
    nb = execute(NOTEBOOKS / "01-quickstart.ipynb", tmp_path)
    got = figures("tracked_id_stored=", outputs(nb, "stdout"))
    # the id track returned is the stored one; the $identify is stored; utm_ parameters
    # were turned into the source and medium by the server
    assert got == {"tracked_id_stored": "1", "identify_stored": "1", "source": "newsletter",
                   "medium": "email"}
    text = all_text(nb)
    assert "sk_dev_" in text and "…" in text  # the key shows masked
    assert re.search(r"SendOutcome /v1/track 202 event_id=[0-9a-f-]{36}", text)
    assert_no_key_and_no_error(nb)


def test_backfill_notebook_fixes_interrupts_resumes_verifies_and_charts(tmp_path, no_env):
    nb = execute(NOTEBOOKS / "02-backfill.ipynb", tmp_path)
    got = {k: int(v) for k, v in figures("rows=", outputs(nb, "stdout")).items()}
    # 12,000 rows: 4 broken by the sample, 5 by the notebook; the epoch and the oversize
    # property are repaired, the 7 others set aside
    assert got["rows"] == 12_000 and got["repaired"] == 2 and got["set_aside"] == 7
    valid = 12_000 - 7
    # interrupted after at least 4,000 acknowledged; the resume skips exactly those
    assert 4_000 <= got["sent_before_interrupt"] < valid
    assert got["skipped"] == got["sent_before_interrupt"]
    assert got["skipped"] + got["sent_after_resume"] == valid
    # sent against stored: every event once (a duplicate only where flagged)
    assert got["verified_missing"] == 0
    assert got["verified_duplicated"] <= got["possible_duplicates"]
    assert got["stored"] == valid + got["verified_duplicated"]
    assert got["chart_total"] == got["stored"]
    # the set-aside rows were exported with why each failed
    review = pd.read_csv(tmp_path / "backfill-demo" / "needs-review.csv", index_col=0)
    assert len(review) == 7
    assert {"status", "error_code", "field", "message"} <= set(review.columns)
    assert sorted(review["error_code"]) == [
        "invalid_timestamp", "required", "required", "required", "required", "required",
        "too_long"]
    # the validate warning names the rows, once, at the notebook's own line
    err = outputs(nb, "stderr")
    assert err.count("rows 103, 2017, 5042, 7001 have no timestamp") >= 1
    assert "millimetric_nb/" not in err
    validate_cell = next(c for c in nb.cells if "df.millimetric.validate()" in c.source)
    assert "".join(o.get("text", "") for o in validate_cell.outputs
                   if o.get("name") == "stderr").count("DataWarning") == 1
    # a chart was drawn, and the resumed send's progress widget reached the end
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)
    assert any(b.get("value") == b.get("max") == valid for b in progress_bars(nb))
    # in a kernel, progress=True is the live panel (its bar carries the panel's class)
    assert any("mm-panel-bar" in b.get("_dom_classes", []) for b in progress_bars(nb))
    assert_no_key_and_no_error(nb)


def test_gdpr_notebook_forgets_one_user_and_keeps_the_others(tmp_path, no_env):
    nb = execute(NOTEBOOKS / "04-gdpr-forget.ipynb", tmp_path)
    out = outputs(nb, "stdout")
    sent = {k: int(v) for k, v in figures("sent=", out).items()}
    assert sent == {"sent": 2996, "identified": 78}
    got = {k: int(v) for k, v in figures("before=", out).items()}
    assert got["before"] > 0 and got["after"] == 0
    # only the user's events went; everyone else's stay (this server holds nothing else)
    assert got["removed"] == got["before"] == got["total_before"] - got["total_after"]
    assert got["total_before"] == sent["sent"] + sent["identified"]
    assert_no_key_and_no_error(nb)
