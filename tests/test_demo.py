"""`millimetric-nb demo`: runs end to end, and its summary is the server's truth."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from millimetric_nb import demo
from millimetric_nb.sample import DEFAULT_SEED, generate_sample

EVENTS, VISITORS = 3000, 300
SECRET_KEY_RE = re.compile(r"\b(?:sk|rk|pk|ak)_[a-z0-9]+_[A-Za-z0-9]{8}_[A-Za-z0-9_\-]+")


def _summary(text: str) -> dict[str, int]:
    lines = [ln for ln in text.splitlines() if ln.startswith("summary: ")]
    assert len(lines) == 1, text
    return {k: int(v) for k, v in (kv.split("=") for kv in lines[0].split()[1:])}


@pytest.fixture(scope="module")
def demo_run() -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("millimetric-nb")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "millimetric_nb.cli"]
    return subprocess.run(
        [*cmd, "demo", "--events", str(EVENTS), "--visitors", str(VISITORS),
         "--limits", "off", "--no-progress"],
        capture_output=True, text=True, timeout=240, check=False,
    )


def test_demo_exits_0_and_its_summary_matches_the_sample(demo_run):
    assert demo_run.returncode == 0, demo_run.stdout[-3000:] + demo_run.stderr[-3000:]
    got = _summary(demo_run.stdout)
    sample = generate_sample(EVENTS, VISITORS, seed=DEFAULT_SEED, end=demo.sample_end())
    valid = EVENTS - len(sample.invalid)
    assert got["rows"] == EVENTS
    assert got["invalid"] == len(sample.invalid) > 0
    assert got["sent"] == valid
    assert got["failed"] == got["ambiguous"] == 0
    assert got["identified"] == len(sample.identifies) > 0
    # what the server holds, read back three ways, equals what was sent
    assert got["stored"] == valid + len(sample.identifies)
    assert got["source_total"] == valid
    assert got["read_back"] == valid
    m = re.search(r"^(\d+) of (\d+) checks passed", demo_run.stdout, re.M)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 10
    assert "CHECK FAILED" not in demo_run.stderr


def test_demo_prints_the_validation_problems_and_the_sources(demo_run):
    out = demo_run.stdout
    sample = generate_sample(EVENTS, VISITORS, seed=DEFAULT_SEED, end=demo.sample_end())
    for rule in sample.invalid["rule"]:
        assert rule in out  # each broken row's rule is shown
    for source in ("newsletter", "google"):
        assert source in out


def test_demo_never_prints_a_key_secret(demo_run):
    text = demo_run.stdout + demo_run.stderr
    assert SECRET_KEY_RE.search(text) is None
    assert re.search(r"sk_[a-z0-9]+_[A-Za-z0-9]{8}_…", text)  # the masked form is shown


def test_a_failed_check_exits_non_zero_naming_it(monkeypatch, capsys):
    """The demo's checks have teeth: a sample that misstates its broken rows fails the run."""
    real = generate_sample

    def lying_sample(*args, **kwargs):
        s = real(*args, **kwargs)
        fake = s.invalid.copy()
        fake.loc[0, "row"] = int(s.events.index[-1])  # claims a clean row is broken
        return type(s)(s.events, s.identifies, fake, s.start, s.end, s.seed)

    monkeypatch.setattr(demo, "generate_sample", lying_sample)
    args = demo.build_args(["--events", "400", "--visitors", "60", "--limits", "off",
                            "--no-progress"])
    assert demo.run(args) == 1
    err = capsys.readouterr().err
    assert "CHECK FAILED: rows reported invalid are the rows broken on purpose" in err


def test_run_demo_returns_its_figures_in_process():
    buf = io.StringIO()
    out = demo.run_demo(events=500, visitors=50, limits="off", progress=False, stream=buf)
    assert all(c.ok for c in out.checks), [c for c in out.checks if not c.ok]
    assert out.stored == out.sent + out.identified
    assert out.summary_line() in buf.getvalue()


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--limits", "fast"], "--limits"), (["--events", "10", "--visitors", "100"], "visitors")],
)
def test_bad_options_exit_1_with_a_clear_message(argv, named, capsys):
    assert demo.run(demo.build_args([*argv, "--no-progress"])) == 1
    err = capsys.readouterr().err
    assert err.startswith("demo failed:") and named in err


def test_client_rate_limits_mirror_the_server_modes():
    from millimetric_nb import contract

    assert demo.client_rate_limits("production") is None
    assert demo.client_rate_limits("off") == "off"
    scaled = demo.client_rate_limits("x10")
    assert scaled["batch"] == contract.RATE_LIMITS["batch"].scaled(10)
    assert scaled["track"].burst == 2000
