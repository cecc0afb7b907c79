"""Proof: a sentinel ``sk_`` key (a key the local server holds, whose secret is a
distinctive string) goes through the demo, every notebook, every ``millimetric-nb``
sub-command, widget state, DEBUG logs, journals, pickles and every file written, and
its secret is found 0 times (as text and as bytes, UTF-8 and UTF-16).

Everything runs in one temporary directory, which is scanned at the end; a control
file holding the secret is scanned the same way first, so the scan is known to see it.
Figures go to ``artifacts/reliability/sentinel_key.json`` (RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability import record

import millimetric_nb as mm
from millimetric_nb.sample import generate_sample
from millimetric_nb.server import run_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SECRET = "Zq9SentinelSecretXk7Vw3"
SENTINEL = f"sk_dev_SNTNL042_{SECRET}"
NEEDLES = (SECRET.encode("utf-8"), SECRET.encode("utf-16-le"), SECRET.encode("utf-16-be"))
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def occurrences(path: Path) -> int:
    """How many times the secret is in ``path``'s bytes (UTF-8 or UTF-16)."""
    data = path.read_bytes()
    return sum(data.count(needle) for needle in NEEDLES)


def scan(root: Path) -> tuple[int, int, dict[str, int]]:
    """(files, bytes, {file: occurrences}) of every file under ``root``."""
    files = size = 0
    found: dict[str, int] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        files += 1
        size += path.stat().st_size
        n = occurrences(path)
        if n:
            found[str(path.relative_to(root))] = n
    return files, size, found


@contextlib.contextmanager
def debug_log(path: Path) -> Iterator[None]:
    """Every logger of the process at DEBUG into ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        handler.close()


def cli_invocations(csv: Path, window: list[str], work: Path) -> dict[str, list[list[str]]]:
    """The runs of each sub-command, against the server holding the sentinel key."""
    return {
        "validate": [["validate", str(csv), "--errors", str(work / "errors.csv")]],
        "backfill": [["backfill", str(csv)], ["backfill", str(csv), "--key", SENTINEL]],
        "verify": [["verify", str(csv)]],
        "forget": [["forget", "--user-id", "u1", "--yes"]],
        "query": [["query", *window, "--all", "-o", str(work / "query.csv")],
                  ["query", *window, "--limit", "5"]],
        "stats": [["stats", *window, "--group-by", "event_name", "-o",
                   str(work / "stats.parquet")]],
        "sources": [["sources", *window]],
    }


def subcommands() -> list[str]:
    """Every sub-command ``millimetric-nb --help`` lists."""
    from millimetric_nb.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions  # type: ignore[union-attr]
                  if a.dest == "command")
    return sorted(action.choices)


def test_sentinel_secret_is_found_nowhere(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    control = tmp_path / "control"
    control.mkdir()
    (control / "leak.txt").write_text(f"key={SENTINEL}")  # the scan must see this
    (control / "leak.pickle").write_bytes(pickle.dumps({"k": SENTINEL}))
    assert scan(control)[2] == {"leak.txt": 1, "leak.pickle": 1}

    # The demo (in this process: it mints its keys, so the minted sk_ is the sentinel)
    import millimetric_nb.server.config as server_config

    real_mint = server_config.mint_key
    monkeypatch.setattr(server_config, "mint_key",
                        lambda kind, env="dev": SENTINEL if kind == "sk" else real_mint(kind))
    from millimetric_nb.cli import main

    with debug_log(work / "demo-debug.log"):
        status = main(["demo", "--events", "1500", "--visitors", "200", "--days", "10",
                       "--limits", "off", "--no-progress"])
    out = capsys.readouterr()
    (work / "demo.out").write_text(out.out + out.err)
    assert status == 0, out.err[-2000:]
    assert "sk_dev_SNTNL042_…" in out.out  # the key was the sentinel, shown masked
    monkeypatch.setattr(server_config, "mint_key", real_mint)

    sample = generate_sample(1500, 200, 10, seed=7)
    csv = work / "events.csv"
    sample.events.drop(columns=["event_id"]).to_csv(csv, index=False)
    window = ["--from", f"{sample.start:%Y-%m-%d}", "--to", f"{sample.end:%Y-%m-%d}"]
    commands = subcommands()
    cli_runs = 0
    with run_in_thread(keys=[SENTINEL, "rk_dev_READ0001_readonlysecret"], limits="off",
                       db=str(work / "server.sqlite")) as srv:
        monkeypatch.setenv("MILLIMETRIC_KEY", SENTINEL)
        monkeypatch.setenv("MILLIMETRIC_HOST", srv.url)

        # The library in this process: a backfill with a journal, reads, errors, pickles
        with debug_log(work / "library-debug.log"):
            client = mm.connect()
            result = mm.backfill(sample.events.drop(columns=["event_id"]), client=client,
                                 journal=work / "journal.sqlite", progress=False,
                                 on_ambiguous="resend")
            assert result.counts["sent"] > 0
            frames = [mm.stats("count", sample.start, sample.end, group_by="event_name")]
            texts = [repr(client), str(client), repr(result), repr(frames[0])]
            with (pytest.raises(mm.MillimetricError) as refused,
                  mm.Client(SENTINEL.replace("SNTNL042", "SNTNL043"), srv.url) as other):
                other.track("x")
            texts += [repr(refused.value), str(refused.value)]
            with (pytest.raises(mm.MillimetricError) as unreachable,
                  mm.Client(SENTINEL, "http://127.0.0.1:9", max_attempts=1) as nowhere):
                nowhere.track("x")
            texts += [repr(unreachable.value), str(unreachable.value)]
            (work / "reprs.txt").write_text("\n".join(texts))
            pickled = 0
            for name, obj in (("result", result), ("refused", refused.value),
                              ("unreachable", unreachable.value), ("frame", frames[0])):
                with contextlib.suppress(TypeError):  # refusing to pickle is fine too
                    (work / f"{name}.pickle").write_bytes(pickle.dumps(obj))
                    pickled += 1
            assert pickled >= 3
            for obj in (client, client.async_client, client.async_client._key):
                with pytest.raises(TypeError):
                    pickle.dumps(obj)
            # widget state of every widget made in this process (progress bars, panels)
            try:
                import ipywidgets

                with warnings.catch_warnings():  # Widget.widgets: deprecated, still kept
                    warnings.simplefilter("ignore", DeprecationWarning)
                    instances = list(ipywidgets.Widget.widgets.items())
                states = {mid: w.get_state() for mid, w in instances}
                (work / "widgets.json").write_text(json.dumps(states, default=str))
            except ImportError:  # pragma: no cover - ipywidgets is a dependency
                pass
            client.close()

        # Every sub-command of `millimetric-nb`, as a subprocess (stdout/stderr to files)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MILLIMETRIC_KEY": SENTINEL,
               "MILLIMETRIC_HOST": srv.url}
        runs = cli_invocations(csv, window, work)
        for name in commands:
            if name in ("serve", "demo"):
                continue  # below, and above
            assert name in runs, f"no sentinel run for the new sub-command {name!r}"
            for argv in runs[name]:
                done = subprocess.run([sys.executable, "-m", "millimetric_nb.cli", *argv],
                                      env=env, cwd=work, input="", capture_output=True,
                                      text=True, timeout=240)
                cli_runs += 1
                shown = " ".join(argv).replace(SECRET, "<secret>")  # (this file's own echo)
                (work / f"cli-{cli_runs:02d}-{name}.out").write_text(
                    f"$ {shown}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}")
                assert "Traceback" not in done.stderr, done.stderr[-2000:]
                assert done.returncode in (0, 1), (shown, done.stderr[-2000:])  # 1: rows

        # Every notebook, executed in a kernel pointed at this server
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
        notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
        assert notebooks
        for path in notebooks:
            nb = nbformat.read(path, as_version=4)
            nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                    store_widget_state=True,
                                    resources={"metadata": {"path": str(work)}}).execute()
            nbformat.write(nb, work / f"executed-{path.name}")
        stored = srv.count()

    # `millimetric-nb serve --key SENTINEL` with a file database, stopped by SIGTERM
    served = subprocess.Popen(
        [sys.executable, "-m", "millimetric_nb.cli", "serve", "--port", "0", "--key", SENTINEL,
         "--db", str(work / "serve.sqlite"), "--limits", "off"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=work, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert served.stdout is not None
    line = served.stdout.readline()
    assert line.startswith("listening on "), line
    url = line.split()[-1]
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {SENTINEL}"}) as http:
        assert http.post("/v1/track", json={"event": "served"}).status_code == 202
        assert http.post("/v1/track", content=b"x", headers={"content-type": "text/plain"}
                         ).status_code == 415
    served.send_signal(signal.SIGTERM)
    rest, err = served.communicate(timeout=60)
    (work / "serve.out").write_text(line + rest + err)
    assert served.returncode == 0

    # the places were really exercised: DEBUG lines logged, the notebook used this server
    assert " DEBUG " in (work / "library-debug.log").read_text()
    executed = "".join(p.read_text() for p in work.glob("executed-*.ipynb"))
    assert "sk_dev_SNTNL042_" in executed  # its client was the sentinel (shown masked)
    files, size, found = scan(tmp_path / "work")
    assert found == {}, f"the sentinel secret was found in {found}"
    assert stored > 0 and files >= 10
    record("sentinel_key", files_scanned=files, bytes_scanned=size, secret_found=len(found),
           subcommands=commands, cli_runs=cli_runs,
           notebooks=[p.name for p in notebooks], pickles=pickled,
           logs=["demo-debug.log", "library-debug.log"],
           encodings=["utf-8", "utf-16-le", "utf-16-be"])
    assert "widgets.json" in {p.name for p in work.iterdir()}
