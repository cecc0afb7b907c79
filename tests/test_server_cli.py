"""``millimetric-nb serve`` as a real subprocess, the seed document's curl examples
against it, and the served OpenAPI document."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from millimetric_nb import contract
from millimetric_nb.server import create_app

SEED = Path("/work/shared/seed/000_048996d6ede02b8f.txt")
SK = "sk_live_1a2b3c4d_Curl5ecretValue"


def start_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "millimetric_nb.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def wait_for_listening(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[str, list]:
    """The URL printed on the 'listening on' line, and every line printed before it."""
    assert proc.stdout is not None
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.5):
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        m = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", line)
        if m:
            assert int(m.group(2)) > 0
            return m.group(1), lines
        lines.append(line)
    proc.kill()
    raise AssertionError(f"no 'listening on' line; got {lines!r}, stderr {proc.stderr.read()!r}")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_mints_keys_prints_url_and_stops_cleanly(tmp_path, sig):
    proc = start_serve("--db", str(tmp_path / "m.sqlite3"))
    try:
        url, before = wait_for_listening(proc)
        keys = dict(re.findall(r"^\s+(pk|sk|rk|ak): (\S+)$", "".join(before), re.M))
        assert set(keys) == {"pk", "sk", "rk", "ak"}
        for kind, key in keys.items():
            assert re.fullmatch(contract.KEY_PATTERN, key) and key.startswith(f"{kind}_dev_")
        r = httpx.post(f"{url}/v1/track", json={"event": "e"},
                       headers={"Authorization": f"Bearer {keys['sk']}"})
        assert r.status_code == 202
    finally:
        code, err = stop(proc, sig)
    assert code == 0, err
    assert keys["sk"].rsplit("_", 1)[1] not in err  # never in logs
    assert (tmp_path / "m.sqlite3").exists()


def test_serve_with_given_key_prints_no_keys():
    proc = start_serve("--db", ":memory:", "--key", SK, "--limits", "x10")
    try:
        url, before = wait_for_listening(proc)
        assert before == []
        r = httpx.post(f"{url}/v1/track", json={"event": "e"},
                       headers={"Authorization": f"Bearer {SK}"})
        assert r.status_code == 202
    finally:
        code, err = stop(proc)
    assert code == 0
    assert "Curl5ecretValue" not in err


def test_serve_refuses_bad_options():
    cases = [(["--limits", "fast"], "production, off, or xN"),
             (["--fail-rate", "2"], "between 0 and 1"),
             (["--key", "sk_dev_abcdefgh"], "not of the shape")]
    procs = [start_serve("--db", ":memory:", *bad) for bad, _ in cases]  # run side by side
    for proc, (_, message) in zip(procs, cases, strict=True):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert message in err
        assert "listening on" not in out


def seed_curl_commands() -> dict[str, str]:
    text = SEED.read_text()
    commands = re.findall(r'(curl -X POST "\$MILLIMETRIC_HOST/v1/(\w+)".*?\}\')', text, re.S)
    return {route: command for command, route in commands}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_seed_curl_examples_work_unchanged(tmp_path):
    commands = seed_curl_commands()
    assert set(commands) == {"track", "identify", "batch", "forget"}
    # make curl print the status after the body, without touching the commands
    (tmp_path / ".curlrc").write_text('silent\nwrite-out = "\\n%{http_code}"\n')
    proc = start_serve("--db", ":memory:", "--key", SK)
    try:
        url, _ = wait_for_listening(proc)
        env = {**os.environ, "MILLIMETRIC_HOST": url, "MILLIMETRIC_KEY": SK,
               "CURL_HOME": str(tmp_path), "HOME": str(tmp_path)}
        answers = {}
        for route in ("track", "identify", "batch", "forget"):
            out = subprocess.run(["bash", "-c", commands[route]], env=env, capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            body, status = out.rsplit("\n", 1)
            answers[route] = (int(status), httpx.Response(200, content=body).json())
        rows = httpx.get(f"{url}/v1/query", params={"from": "2000-01-01", "to": "2100-01-01"},
                         headers={"Authorization": f"Bearer {SK}"}).json()["rows"]
    finally:
        code, _ = stop(proc)
    status, body = answers["track"]
    assert status == 202 and body["ok"] is True and body["event_id"]
    assert answers["identify"] == (200, {"ok": True})
    assert answers["batch"] == (202, {"ok": True, "count": 2})
    assert answers["forget"] == (200, {"ok": True, "queued": True})
    # forget removed user_42's track and $identify rows; the batch remains
    assert sorted((r["event_name"], r["user_id"]) for r in rows) == [
        ("purchase", "user_1"), ("purchase", "user_2")]
    assert code == 0


def test_openapi_matches_the_apps_routes(mm_server, mm_client):
    doc = mm_client(mm_server, kind=None).get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    app = create_app()
    served = {
        (route.path, method)
        for route in app.routes if isinstance(route, Route)
        for method in (route.methods or ()) if method != "HEAD"
    }
    assert documented == served
    for route in contract.ROUTES.values():
        op = doc["paths"][route.path][route.method.lower()]
        assert str(route.success_status) in op["responses"]
        if route.rate_limit is not None:
            assert "429" in op["responses"]
    event = doc["components"]["schemas"]["Event"]
    assert set(event["properties"]) == set(contract.EVENT_FIELDS)
    assert event["required"] == ["event"]
    assert set(doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]) >= set(
        contract.ERRORS)
