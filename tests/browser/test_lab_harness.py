"""The harness itself: a widget click in a real browser reaches the kernel and comes back.

A notebook written here (a Button and an HTML widget, each with a class) is opened in
JupyterLab, run through ``window.jupyterapp``; the test clicks the button in Chromium
and waits for the kernel's answer to show in the HTML widget. If this fails, every
other browser test's failure is about the harness, not the widgets.
"""

from __future__ import annotations

HARNESS_NB = "harness-click.ipynb"
CODE = """\
import ipywidgets as w
import os

clicks = []
button = w.Button(description="Click me")
button.add_class("mm-harness-button")
out = w.HTML("not clicked")
out.add_class("mm-harness-out")

def on_click(_):
    clicks.append(1)
    out.value = f"clicked {len(clicks)} in pid {os.getpid()}"

button.on_click(on_click)
w.VBox([button, out])
"""


def test_a_click_in_chromium_runs_the_kernels_handler(lab, page, shot):
    lab.write_notebook(HARNESS_NB, CODE, "print('ran', 6 * 7)")

    panel = lab.open_notebook(page, HARNESS_NB)
    lab.run_all(page)
    panel.get_by_text("ran 42").wait_for()  # the last cell's output: every cell ran
    assert lab.cell_errors(page) == []

    out = panel.locator(".mm-harness-out .widget-html-content")
    assert out.inner_text() == "not clicked"
    panel.locator("button.mm-harness-button").click()
    panel.locator(".mm-harness-out", has_text="clicked 1 in pid").wait_for()
    panel.locator("button.mm-harness-button").click()
    panel.locator(".mm-harness-out", has_text="clicked 2 in pid").wait_for()
    # the handler ran in the kernel: the pid it printed is the kernel's, not the server's
    kernel_pid = lab.kernel_run(page, "print(os.getpid(), len(clicks))").split()
    assert out.inner_text() == f"clicked 2 in pid {kernel_pid[0]}"
    assert kernel_pid[1] == "2" and kernel_pid[0] != str(lab.proc.pid)

    path = shot(panel.locator(".jp-Cell").first, "clicked")
    assert path.stat().st_size > 1000  # a real PNG, not an empty file
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _conftest():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).with_name("conftest.py")
    spec = importlib.util.spec_from_file_location("mm_browser_conftest", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    import pytest

    conftest = _conftest()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.unavailable("/usr/bin/chromium is missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is missing"):
        conftest.unavailable("/usr/bin/chromium is missing")
