"""Real-browser fixtures: JupyterLab on loopback, driven by Playwright with Debian's Chromium.

The recipe is ``notebook-testing.md`` (checked on these machines):

- ``lab`` starts ``jupyter lab`` once per session on 127.0.0.1 with port 0 (the OS picks
  a free port; the server writes the real one to its runtime file), a random token,
  ``root_dir`` a temporary copy of ``notebooks/``, fresh workspace and settings folders
  (the Jupyter news toast turned off, so it never covers a screenshot) and
  ``expose_app_in_browser`` so tests can run cells through ``window.jupyterapp``. The
  server inherits ``PYTHONPATH``, so its kernels import the checked-out package, and it
  does *not* inherit ``MILLIMETRIC_KEY`` / ``MILLIMETRIC_HOST``: the notebooks start
  their own local server. It is stopped by its PID at teardown (its kernels with it).
- ``browser`` launches ``/usr/bin/chromium`` (Playwright cannot download its own browser
  here). A missing browser is a *failure* under CI (``CI`` set to true, as ``.ci/run``
  does) and a skip with the reason elsewhere.
- ``page`` is a fresh browser context and page per test; ``shot`` saves screenshots to
  ``artifacts/browser/`` at the repository root (created here, ignored by git).

Run only these tests with ``make browser`` (or ``pytest tests/browser``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
#: Where the browser tests save their screenshots (named in the README).
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT = {"width": 1400, "height": 1000}
#: The visible notebook; every selector a test uses is scoped to it.
NOTEBOOK_PANEL = ".jp-NotebookPanel:visible"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives JupyterLab in Debian's Chromium (run alone: make browser)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so ``page`` can tell that its test failed."""
    report = yield
    setattr(item, f"mm_report_{report.when}", report)
    return report


def in_ci() -> bool:
    """True on a CI machine (``CI=true``, ``1`` or ``yes``), where nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> None:
    """Fail under CI (a missing browser must never pass unnoticed), skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the real-browser tests must run, not skip)")
    pytest.skip(reason)


def _status(url: str, token: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Lab:
    """A running JupyterLab: its base ``url``, ``token``, ``root_dir`` and process."""

    url: str
    token: str
    root_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    pages: list[Any] = field(default_factory=list)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for failure messages."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def write_notebook(self, name: str, *cells: str) -> str:
        """Write a notebook of these code cells as ``name`` under ``root_dir``; return
        ``name`` (for :meth:`open_notebook`)."""
        import nbformat

        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(code) for code in cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
        nbformat.write(nb, self.root_dir / name)
        return name

    def open_notebook(self, page: Any, name: str, timeout_ms: float = 60_000) -> Any:
        """Open ``name`` (relative to ``root_dir``) and wait for an idle kernel.

        Returns the locator of the visible notebook panel.
        """
        page.goto(f"{self.url}lab/tree/{name}?token={self.token}&reset")
        panel = page.locator(NOTEBOOK_PANEL)
        panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
            timeout=timeout_ms
        )
        return panel

    def run_all(self, page: Any) -> None:
        """Run every cell of the current notebook (returns once they are queued)."""
        page.evaluate(
            """async () => {
                const app = window.jupyterapp;
                const w = app.shell.currentWidget;
                await w.context.ready;
                await w.sessionContext.ready;
                await w.revealed;
                return await app.commands.execute('notebook:run-all-cells');
            }"""
        )

    def wait_idle(self, page: Any, timeout_ms: float = 120_000) -> None:
        """Wait until no cell of the current notebook is queued or running."""
        page.wait_for_function(
            """() => {
                const w = window.jupyterapp.shell.currentWidget;
                const cells = Array.from(document.querySelectorAll(
                    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt'));
                const busy = cells.some(c => /\\[\\*\\]/.test(c.textContent));
                return w && w.sessionContext.session &&
                       w.sessionContext.session.kernel &&
                       w.sessionContext.session.kernel.status === 'idle' && !busy;
            }""",
            timeout=timeout_ms,
        )

    def shutdown_kernels(self) -> None:
        """End every session (and its kernel) the tests opened."""
        auth = {"Authorization": f"token {self.token}"}
        req = urllib.request.Request(f"{self.url}api/sessions", headers=auth)
        with urllib.request.urlopen(req, timeout=10) as resp:
            sessions = json.load(resp)
        for session in sessions:
            req = urllib.request.Request(
                f"{self.url}api/sessions/{session['id']}", headers=auth, method="DELETE"
            )
            with urllib.request.urlopen(req, timeout=30):
                pass

    def kernel_run(self, page: Any, code: str, timeout_ms: float = 30_000) -> str:
        """Run ``code`` in the current notebook's kernel (no cell); return its stdout.

        For checking, from the kernel's side, what a click in the page did. An error
        in ``code`` raises here with its ``ename: evalue``.
        """
        answer = page.evaluate(
            """async ([code, timeoutMs]) => {
                const w = window.jupyterapp.shell.currentWidget;
                const kernel = w.sessionContext.session.kernel;
                const future = kernel.requestExecute({code, store_history: false});
                let out = '', err = null;
                future.onIOPub = (msg) => {
                    const t = msg.header.msg_type;
                    if (t === 'stream' && msg.content.name === 'stdout') out += msg.content.text;
                    if (t === 'error') err = msg.content.ename + ': ' + msg.content.evalue;
                };
                const timer = new Promise((_, reject) => setTimeout(
                    () => reject(new Error('kernel_run timed out')), timeoutMs));
                await Promise.race([future.done, timer]);
                return {out, err};
            }""",
            [code, timeout_ms],
        )
        if answer["err"]:
            raise AssertionError(f"kernel code failed: {answer['err']}")
        return str(answer["out"])

    def cell_errors(self, page: Any) -> list[str]:
        """``ename: evalue`` of every error output in the current notebook's model."""
        return page.evaluate(
            """() => {
                const nb = window.jupyterapp.shell.currentWidget.content;
                const found = [];
                for (const cell of nb.widgets) {
                    const outputs = cell.model.outputs;
                    if (!outputs) continue;
                    for (let i = 0; i < outputs.length; i++) {
                        const o = outputs.get(i).toJSON();
                        if (o.output_type === 'error') found.push(o.ename + ': ' + o.evalue);
                    }
                }
                return found;
            }"""
        )


def _settings_dir(base: Path) -> Path:
    settings = base / "settings"
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8"
    )
    return settings


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A JupyterLab server on a free loopback port, serving a copy of ``notebooks/``."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    runtime = base / "runtime"
    runtime.mkdir()
    token = secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLIMETRIC_")}
    env.update(
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        JUPYTERLAB_SETTINGS_DIR=str(_settings_dir(base)),
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTER_CONFIG_DIR=str(base / "config"),  # no user config leaks in
        PYTHONPATH=os.environ.get("PYTHONPATH", ""),  # the kernels import this checkout
    )
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        "--port=0",  # the OS picks a free port; read back from the runtime file
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    log = base / "lab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=base)
    lab_ = None
    try:
        info = runtime / f"jpserver-{proc.pid}.json"
        deadline = time.monotonic() + 60
        url = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            if url is None and info.exists():
                with_port = json.loads(info.read_text() or "{}")
                if with_port.get("port"):
                    url = f"http://127.0.0.1:{with_port['port']}/"
            if url and _status(url, token):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"jupyter lab did not answer in 60 s:\n{log.read_text()[-3000:]}")
        lab_ = Lab(url=url, token=token, root_dir=root, proc=proc, log=log)
        yield lab_
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (fails under CI when missing, skips elsewhere).

    Module-scoped on purpose: while Playwright's sync API is started, the main thread
    counts as running its event loop (``asyncio.get_running_loop()`` answers), which
    made every later test's sync bridge schedule work on a loop that never ran.
    """
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        unavailable(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (it is in the dev extra)")
    with sync_playwright() as p:
        browser_ = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser_
        finally:
            browser_.close()


@pytest.fixture
def page(browser: Any, lab: Lab, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page (own context, 1400x1000) for one test; when the test fails, the
    whole page is saved as ``artifacts/browser/<test>-FAILED.png``."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    page_ = context.new_page()
    try:
        yield page_
        report = getattr(request.node, "mm_report_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            page_.screenshot(path=str(ARTIFACTS / f"{name}-FAILED.png"), full_page=True)
    finally:
        context.close()
        lab.shutdown_kernels()  # the next test starts from an idle server


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """``shot(page_or_locator, name)`` saves ``artifacts/browser/<test>-<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def save(target: Any, name: str) -> Path:
        path = ARTIFACTS / f"{prefix}-{name}.png"
        target.screenshot(path=str(path))
        return path

    return save
