"""The shipped notebooks in JupyterLab, in Chromium: run all, as a person would, and look.

Each notebook is opened in a real JupyterLab (the ``lab``/``page``/``shot`` fixtures of
tests/browser/conftest.py), run with Run All, and checked for what a person sees: the
figures it prints, no error output, the chart drawn (02), and screenshots kept in
``artifacts/browser/``. They start their own local server (the harness clears
MILLIMETRIC_HOST).
"""

from __future__ import annotations

from pathlib import Path

import pytest

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.skipif(
    not (Path(__file__).with_name("conftest.py")).exists(),
    reason="needs the browser harness tests/browser/conftest.py (from the notebook UI work)",
)


def _run(lab, page, name: str, sentinel: str):
    panel = lab.open_notebook(page, name)
    lab.run_all(page)
    panel.get_by_text(sentinel).first.wait_for(timeout=240_000)
    lab.wait_idle(page)
    assert lab.cell_errors(page) == []
    return panel


def _png(path: Path) -> None:
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart_in_jupyterlab(lab, page, shot):
    panel = _run(lab, page, "01-quickstart.ipynb", "tracked_id_stored=1 identify_stored=1")
    track = panel.locator(".jp-OutputArea-output", has_text="/v1/track").first
    track.scroll_into_view_if_needed()
    expect(track).to_contain_text("event_id")
    _png(shot(panel.locator(".jp-Cell", has_text="tracked_id_stored=1").last, "summary"))


def test_backfill_notebook_in_jupyterlab_draws_its_chart(lab, page, shot):
    panel = _run(lab, page, "02-backfill.ipynb", "verified_missing=0 verified_duplicated=0")
    # the validation report and the fixed rows set aside, as rendered HTML tables
    report = panel.locator(".millimetric-validation").first
    report.scroll_into_view_if_needed()
    expect(report).to_contain_text("9 invalid row(s)")  # retried: cells render as scrolled
    expect(report).to_contain_text("looks like a Unix epoch")
    _png(shot(report, "validation-report"))
    # the chart is an image the browser decoded (not a broken one)
    chart = panel.locator(".jp-OutputArea-output img").last
    chart.scroll_into_view_if_needed()
    assert page.evaluate("(img) => img.naturalWidth > 300 && img.complete", chart.element_handle())
    _png(shot(panel.locator(".jp-Cell", has=page.locator("img")).last, "chart"))
    # the resumed send's progress display reached the end
    bar = panel.locator(".widget-hprogress .progress-bar").last
    bar.scroll_into_view_if_needed()
    assert bar.evaluate("(b) => b.style.width") == "100%"


def test_gdpr_notebook_in_jupyterlab(lab, page, shot):
    panel = _run(lab, page, "04-gdpr-forget.ipynb", " after=0 ")
    _png(shot(panel.locator(".jp-Cell", has_text=" after=0 ").last, "forgotten"))
