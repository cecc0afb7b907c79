"""The Binder environment, built without Docker, runs every notebook against its server.

What repo2docker does with ``binder/``, done by hand: a fresh virtual environment
(the Python of ``runtime.txt``), ``pip install -r binder/requirements.txt``, then
``binder/postBuild`` run from a copy of the repository; then ``binder/start``
wrapping a command that executes every notebook in ``notebooks/`` with nbclient.
Nothing of the test's own environment leaks in (no PYTHONPATH, no MILLIMETRIC_*),
so the notebooks import the package postBuild installed and talk to the server
``start`` launched. Afterwards that server must be gone.

Slow (a virtual environment from scratch); pip's cache makes it about a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY_RE = re.compile(r"sk_[a-z0-9]+_[A-Za-z0-9]{8}_[A-Za-z0-9_\-]{4,}")

RUNNER = r'''
"""Execute every notebook given, each in its own folder; write the results as JSON."""
import json, os, sys, time
from pathlib import Path

import nbclient, nbformat

out = Path(sys.argv[1])
report = {"env": {k: os.environ.get(k, "") for k in ("MILLIMETRIC_HOST",)},
          "has_key": bool(os.environ.get("MILLIMETRIC_KEY")), "notebooks": {}}
ok = True
for path in sys.argv[2:]:
    nb = nbformat.read(path, as_version=4)
    where = out / Path(path).stem
    where.mkdir(parents=True)
    t = time.monotonic()
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(where)}}).execute()
        error = None
    except Exception as exc:  # the report says which notebook and why
        error = f"{type(exc).__name__}: {exc}"[-2000:]
        ok = False
    nbformat.write(nb, where / Path(path).name)
    report["notebooks"][Path(path).name] = {"error": error,
                                            "seconds": round(time.monotonic() - t, 1)}
(out / "report.json").write_text(json.dumps(report))
sys.exit(0 if ok else 1)
'''


def _copy_repo(dest: Path) -> None:
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info", "build",
        ".millimetric", "backfill-demo", "artifacts", ".ipynb_checkpoints",
    ))


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
           and not k.startswith("MILLIMETRIC_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int) -> tuple[float, str]:
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    took = time.monotonic() - t
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return took, proc.stdout + proc.stderr


def _port_closed(url: str, within_s: float = 10.0) -> bool:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
        except OSError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_binder_environment_runs_every_notebook_against_the_server_start_launches(tmp_path):
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime == f"python-{sys.version_info.major}.{sys.version_info.minor}", runtime
    assert os.access(ROOT / "binder" / "start", os.X_OK)
    assert os.access(ROOT / "binder" / "postBuild", os.X_OK)
    timings: dict[str, float] = {}

    venv = tmp_path / "venv"
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    timings["venv"] = time.monotonic() - t
    env = _clean_env(venv)
    repo = tmp_path / "repo"
    _copy_repo(repo)

    timings["requirements"], _ = _run(
        # (--no-compile: no .pyc written ahead, the slowest part of installing from cache)
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
         "--disable-pip-version-check", "-r", "binder/requirements.txt"], repo, env, 900)
    timings["postBuild"], _ = _run(["bash", "binder/postBuild"], repo, env, 600)
    # the package comes from the environment, not from a source folder on the path
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import millimetric_nb, matplotlib, uvicorn; "
                            "print(millimetric_nb.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert str(venv) in where.stdout, where.stdout

    (tmp_path / "run_all.py").write_text(RUNNER)
    books = sorted(str(p) for p in (repo / "notebooks").glob("*.ipynb"))
    assert len(books) >= 3
    out = tmp_path / "out"
    timings["notebooks"], log = _run(
        [str(repo / "binder" / "start"), "python", str(tmp_path / "run_all.py"), str(out),
         *books], tmp_path, env, 900)
    print("binder timings (s):", {k: round(v, 1) for k, v in timings.items()})

    m = re.search(r"local Millimetric server at (http://127\.0\.0\.1:\d+)", log)
    assert m, log
    url = m.group(1)
    report = json.loads((out / "report.json").read_text())
    assert report["env"]["MILLIMETRIC_HOST"] == url and report["has_key"]
    assert {Path(b).name for b in books} == set(report["notebooks"])
    assert all(r["error"] is None for r in report["notebooks"].values()), report
    print("notebook seconds:", {k: r["seconds"] for k, r in report["notebooks"].items()})

    import nbformat

    for name in ("01-quickstart", "02-backfill", "04-gdpr-forget"):
        nb = nbformat.read(out / name / f"{name}.ipynb", as_version=4)
        text = "".join(str(o) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        # the notebook connected to start's server (it starts its own only without the host)
        assert f"host='{url}'" in text, (name, text[:500])
        assert not KEY_RE.search(text), name
    assert "tracked_id_stored=1 identify_stored=1" in (
        out / "01-quickstart" / "01-quickstart.ipynb").read_text()
    assert "verified_missing=0 verified_duplicated=0" in (
        out / "02-backfill" / "02-backfill.ipynb").read_text()
    forgot = re.search(r"before=(\d+) after=0 .* removed=(\d+)",
                       (out / "04-gdpr-forget" / "04-gdpr-forget.ipynb").read_text())
    assert forgot and forgot.group(1) == forgot.group(2) != "0"  # only that user's events
    assert not KEY_RE.search(log)
    # start left no server behind once the wrapped command ended
    assert _port_closed(url), f"the server at {url} is still running"
