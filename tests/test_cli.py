"""The ``millimetric-nb`` command, run as a subprocess over real HTTP against the local
server: validate, backfill (journal, resume, FILE.failed.csv), verify, forget,
query / stats / sources, the key's ways in, and every bad input (exit 2, one line)."""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from millimetric_nb.cli import build_parser
from millimetric_nb.sample import generate_sample

ROOT = Path(__file__).resolve().parents[1]
WINDOW = ["--from", "2026-10-01", "--to", "2026-11-02"]


def command_env(key: str | None = None, host: str | None = None) -> dict[str, str]:
    """This checkout's code; ``key``/``host`` through the environment, nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLIMETRIC_")}
    env["PYTHONPATH"] = str(ROOT)
    if key is not None:
        env["MILLIMETRIC_KEY"] = key
    if host is not None:
        env["MILLIMETRIC_HOST"] = host
    return env


def cli(*args: str, key: str | None = None, host: str | None = None, cwd: Path | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "millimetric_nb.cli", *args], env=command_env(key, host),
        cwd=cwd, input=stdin if stdin is not None else "", capture_output=True, text=True,
        timeout=240,
    )


def cli_at_once(runs: list[list[str]], **kw: str) -> list[subprocess.CompletedProcess[str]]:
    """Run several commands side by side (each one's start-up is most of its time)."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "millimetric_nb.cli", *args],
                         env=command_env(**kw), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in runs
    ]
    done = []
    for args, proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def no_key_in(proc: subprocess.CompletedProcess[str], key: str) -> None:
    secret = key.split("_", 3)[3]
    assert key not in proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def sample():
    return generate_sample(1500, 200, 10, seed=7)


@pytest.fixture
def events_csv(tmp_path, sample):
    path = tmp_path / "events.csv"
    sample.events.drop(columns=["event_id"]).to_csv(path, index=False)
    return path


def test_help_of_every_command_lists_its_options():
    top = cli("--help")
    assert top.returncode == 0
    for name in ("serve", "demo", "validate", "backfill", "verify", "forget", "query", "stats",
                 "sources"):
        assert re.search(rf"^\s+{name}\s+\S", top.stdout, re.M), name
    expected = {
        "validate": ["FILE_OR_DIR", "--event-col", "--errors", "exit status"],
        "backfill": ["FILE_OR_DIR", "--event", "--event-col", "--event-id-col", "--timestamp-col",
                     "--anonymous-id-col", "--user-id-col", "--session-id-col", "--url-col",
                     "--path-col", "--referrer-col", "--properties", "--journal", "--dry-run",
                     "--pii", "--progress", "--host", "--key", "MILLIMETRIC_KEY", "exit status"],
        "verify": ["FILE", "--journal", "--from", "--to"],
        "forget": ["--user-id", "--from-file", "--yes"],
        "query": ["--from", "--to", "--event", "--limit", "--all", "--output"],
        "stats": ["--metric", "--group-by", "--interval", "--output"],
        "sources": ["--breakdown", "--output"],
    }
    proc = cli("backfill", "--help")  # one as a subprocess; all through the same parser
    assert proc.returncode == 0, proc.stderr
    assert all(option in proc.stdout for option in expected["backfill"])
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, options in expected.items():
        text = sub.choices[name].format_help()
        for option in options:
            assert option in text, (name, option)


def test_validate_groups_problems_by_rule_with_row_numbers(tmp_path, events_csv, sample):
    errors = tmp_path / "errors.csv"
    proc = cli("validate", str(events_csv), "--errors", str(errors))
    assert proc.returncode == 1, proc.stderr
    n, bad = len(sample.events), len(sample.invalid)
    assert f"{n:,} rows, {n - bad:,} valid, {bad:,} invalid" in proc.stdout
    for rec in sample.invalid.itertuples():
        # the empty event is read from the CSV as a missing value: rule "required"
        rule = "required" if rec.kind == "empty_event" else rec.rule
        assert re.search(rf"^  {rec.field}: {rule}: 1 row\(s\): {rec.row}$", proc.stdout, re.M)
    written = pd.read_csv(errors)
    assert sorted(written["position"]) == sorted(sample.invalid["row"])
    assert "Traceback" not in proc.stderr

    clean = tmp_path / "clean.csv"
    sample.valid_events.drop(columns=["event_id"]).to_csv(clean, index=False)
    ok = cli("validate", str(clean))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all rows valid" in ok.stdout


def test_backfill_sends_writes_the_failed_rows_with_reasons_and_a_rerun_sends_nothing_twice(
    mm_server, events_csv, sample
):
    key = mm_server.keys["sk"]
    proc = cli("backfill", str(events_csv), "--progress", key=key, host=mm_server.url)
    n_valid = len(sample.valid_events)
    assert proc.returncode == 1, proc.stderr  # the invalid rows did not get in
    assert mm_server.count() == n_valid
    assert f"sent {n_valid:,}" in proc.stdout
    assert re.search(rf"{len(sample.events)}/{len(sample.events)}", proc.stderr)  # the bar
    journal = events_csv.with_name("events.csv.journal.sqlite")
    assert journal.exists() and str(journal.name) in proc.stdout
    no_key_in(proc, key)

    failed = pd.read_csv(events_csv.with_name("events.csv.failed.csv"))
    assert list(failed.columns[-4:]) == ["status", "error_code", "field", "message"]
    assert set(failed["status"]) == {"invalid"}
    by_field = dict(zip(failed["field"], failed["error_code"], strict=True))
    assert by_field == {
        rec.field: ("required" if rec.kind == "empty_event" else rec.rule)
        for rec in sample.invalid.itertuples()
    }
    assert failed["message"].notna().all()

    again = cli("backfill", str(events_csv), key=key, host=mm_server.url)
    assert again.returncode == 1
    assert mm_server.count() == n_valid  # nothing sent twice
    assert f"sent 0, already sent {n_valid:,}" in again.stdout

    # fix the failed rows in the CSV and send that file as it is
    fixed = failed.copy()
    fixed["event"] = fixed["event"].fillna("signup")
    fixed["user_id"] = fixed["user_id"].map(lambda u: u[:20] if isinstance(u, str) else u)
    fixed["timestamp"] = "2026-10-20T10:00:00Z"
    fixed["title"] = fixed["title"].map(lambda t: t[:20] if isinstance(t, str) else t)
    fixed_path = events_csv.with_name("fixed.csv")
    fixed.to_csv(fixed_path, index=False)
    resend = cli("backfill", str(fixed_path), key=key, host=mm_server.url)
    assert resend.returncode == 0, resend.stdout + resend.stderr
    assert mm_server.count() == n_valid + len(failed)
    for stored in mm_server.stored_events():
        assert not {"status", "error_code", "field", "message"} & set(stored["properties"] or {})


def test_backfill_exit_status_says_whether_every_valid_row_was_sent(mm_server, tmp_path):
    key = mm_server.keys["sk"]
    path = tmp_path / "ok.csv"
    pd.DataFrame({"event": ["a"] * 30, "user_id": [f"u{i}" for i in range(30)],
                  "timestamp": ["2026-10-05T00:00:00Z"] * 30}).to_csv(path, index=False)
    dry = cli("backfill", str(path), "--dry-run")  # no key needed
    assert dry.returncode == 0, dry.stderr
    assert "30 would be sent" in dry.stdout and mm_server.count() == 0
    assert not path.with_name("ok.csv.journal.sqlite").exists()

    # every attempt of the one request fails: the rows are not in, exit 1, reasons written
    mm_server.inject("batch", "internal_error", 6)
    first = cli("backfill", str(path), key=key, host=mm_server.url)
    assert first.returncode == 1, first.stdout + first.stderr
    assert mm_server.count() == 0
    failed = pd.read_csv(path.with_name("ok.csv.failed.csv"))
    assert len(failed) == 30
    assert set(failed["error_code"]) == {"internal_error"}
    assert set(failed["status"]) <= {"failed", "ambiguous"}

    second = cli("backfill", str(path), key=key, host=mm_server.url)
    assert second.returncode == 0, second.stdout + second.stderr
    assert mm_server.count() == 30


@pytest.mark.parametrize("command", ["validate", "backfill"])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, mm_server, command):
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, content: bytes | None, expect: str) -> None:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        cases[name] = (path, expect)

    case("missing.csv", None, "no such file")
    case("empty.csv", b"", "is empty")
    case("header.csv", b"event,user_id\n", "has no rows")
    case("noevent.csv", b"name,user\nsignup,u1\n", "--event-col")
    case("data.xlsx", b"PK\x03\x04", "format")
    case("latin.csv", b"event,city\nsignup,M\xfcnchen\n", "not UTF-8")
    (tmp_path / "nodata").mkdir()
    cases["nodata"] = (tmp_path / "nodata", "no data files")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("no events here\n")
    cases["notes"] = (tmp_path / "notes", "notes")
    runs = cli_at_once([[command, str(path)] for path, _ in cases.values()],
                       key=mm_server.keys["sk"], host=mm_server.url)
    for (name, (_path, expect)), proc in zip(cases.items(), runs, strict=True):
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (name, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert lines[0].startswith(f"millimetric-nb {command}: error: ")
        assert name in lines[0] and expect in lines[0], (name, lines[0])
    assert mm_server.count() == 0


def test_keys_come_from_the_environment_a_flag_with_a_warning_and_never_show(
    mm_server, tmp_path
):
    key = mm_server.keys["sk"]
    path = tmp_path / "few.csv"
    pd.DataFrame({"event": ["a", "b"], "timestamp": ["2026-10-05T00:00:00Z"] * 2}).to_csv(
        path, index=False)
    none = cli("backfill", str(path), host=mm_server.url)  # no key, no terminal
    assert none.returncode == 2 and "MILLIMETRIC_KEY" in none.stderr
    assert len(none.stderr.strip().splitlines()) == 1

    flag = cli("backfill", str(path), "--key", key, "--host", mm_server.url)
    assert flag.returncode == 0, flag.stderr
    assert "shell history" in flag.stderr
    no_key_in(flag, key)
    assert mm_server.count() == 2

    unknown = "sk_dev_zzzzzzzz_" + "q" * 32
    refused = cli("query", *WINDOW, key=unknown, host=mm_server.url)
    assert refused.returncode == 2 and "invalid_api_key" in refused.stderr
    assert "Traceback" not in refused.stderr
    no_key_in(refused, unknown)

    read_only = mm_server.keys["rk"]
    ingest = cli("backfill", str(path), "--no-journal", key=read_only, host=mm_server.url)
    assert ingest.returncode == 2, ingest.stdout + ingest.stderr
    assert mm_server.count() == 2
    no_key_in(ingest, read_only)


def _run_in_a_terminal(
    args: list[str], env: dict[str, str], answer: str, prompt: bytes = b"not shown"
) -> tuple[int, str]:
    """Run the command on a pseudo-terminal, type ``answer`` at its ``prompt``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the terminal
        os.execvpe(sys.executable, [sys.executable, "-m", "millimetric_nb.cli", *args], env)
    seen = b""
    typed = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            seen += data
        if not typed and prompt in seen:
            os.write(fd, answer.encode() + b"\n")
            typed = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_the_key_prompt_does_not_echo(mm_server, tmp_path):
    key = mm_server.keys["sk"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLIMETRIC_")}
    env.update(PYTHONPATH=str(ROOT), MILLIMETRIC_HOST=mm_server.url, COLUMNS="200")
    out = tmp_path / "sources.csv"
    code, seen = _run_in_a_terminal(["sources", *WINDOW, "-o", str(out)], env, key)
    assert code == 0, seen
    assert "API key" in seen and f"wrote 0 rows to {out}" in seen
    assert key not in seen and key.split("_", 3)[3] not in seen


def test_forget_asks_refuses_without_a_terminal_and_deletes_with_yes(mm_server, tmp_path):
    key = mm_server.keys["sk"]
    path = tmp_path / "users.csv"
    pd.DataFrame({"event": ["a"] * 6, "user_id": ["u1", "u1", "u2", "u3", "u4", "u5"],
                  "timestamp": ["2026-10-05T00:00:00Z"] * 6}).to_csv(path, index=False)
    assert cli("backfill", str(path), key=key, host=mm_server.url).returncode == 0
    users = lambda: sorted(e["user_id"] for e in mm_server.stored_events())  # noqa: E731

    refused = cli("forget", "--user-id", "u1", key=key, host=mm_server.url)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert users() == ["u1", "u1", "u2", "u3", "u4", "u5"]

    done = cli("forget", "--user-id", "u1", "--user-id", "u2", "--yes", key=key,
               host=mm_server.url)
    assert done.returncode == 0, done.stderr
    assert "forgot 2 of 2 user(s)" in done.stdout
    assert users() == ["u3", "u4", "u5"]

    ids = tmp_path / "ids.txt"
    ids.write_text("u3\n\nu4\n")
    by_file = cli("forget", "--from-file", str(ids), "--yes", key=key, host=mm_server.url)
    assert by_file.returncode == 0 and users() == ["u5"]
    table = tmp_path / "ids.csv"
    pd.DataFrame({"user_id": ["u5"]}).to_csv(table, index=False)
    by_table = cli("forget", "--from-file", str(table), "--yes", key=key, host=mm_server.url)
    assert by_table.returncode == 0 and users() == []

    # in a terminal, without --yes, it asks; only "yes" deletes
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLIMETRIC_")}
    env.update(PYTHONPATH=str(ROOT), MILLIMETRIC_HOST=mm_server.url, MILLIMETRIC_KEY=key)
    cli("backfill", str(path), "--no-journal", key=key, host=mm_server.url)
    code, seen = _run_in_a_terminal(["forget", "--user-id", "u1"], env, "no", b"Type 'yes'")
    assert code == 2 and "nothing deleted" in seen and "u1" in users()
    code, seen = _run_in_a_terminal(["forget", "--user-id", "u1"], env, "yes", b"Type 'yes'")
    assert code == 0 and "forgot 1 of 1" in seen and "u1" not in users()
    no_key_in(subprocess.CompletedProcess([], 0, seen, ""), key)

    rk = cli("forget", "--user-id", "u9", "--yes", key=mm_server.keys["rk"], host=mm_server.url)
    assert rk.returncode == 2 and "sk_" in rk.stderr
    no_key_in(rk, mm_server.keys["rk"])


def test_query_stats_sources_print_a_table_or_write_csv_and_parquet(
    mm_server, events_csv, sample, tmp_path
):
    key = mm_server.keys["sk"]
    cli("backfill", str(events_csv), key=key, host=mm_server.url)
    valid = sample.valid_events

    table = cli("query", *WINDOW, "--limit", "5", "--event", "signup", key=key,
                host=mm_server.url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["timestamp", "event_name"] and len(lines) == 6
    assert all(" signup " in line for line in lines[1:])

    out = tmp_path / "all.csv"
    every = cli("query", *WINDOW, "--all", "-o", str(out), key=key, host=mm_server.url)
    assert every.returncode == 0, every.stderr
    stored = pd.read_csv(out)
    assert len(stored) == len(valid)
    assert sorted(stored["event_name"].value_counts().items()) == sorted(
        valid["event"].value_counts().items())

    pq = tmp_path / "by_event.parquet"
    st = cli("stats", *WINDOW, "--group-by", "event_name", "-o", str(pq), key=key,
             host=mm_server.url)
    assert st.returncode == 0, st.stderr
    counts = pd.read_parquet(pq).set_index("event_name")["value"].to_dict()
    assert counts == valid["event"].value_counts().to_dict()

    src = cli("sources", *WINDOW, "--breakdown", "source", key=key, host=mm_server.url)
    assert src.returncode == 0, src.stderr
    assert src.stdout.split()[:3] == ["source", "events", "uniques"]
    total = sum(int(line.split()[1]) for line in src.stdout.strip().splitlines()[1:])
    assert total == len(valid)

    bad = cli("query", *WINDOW, "--limit", "0", key=key, host=mm_server.url)
    assert bad.returncode == 2 and "limit" in bad.stderr and "Traceback" not in bad.stderr
    fmt = cli("stats", *WINDOW, "-o", str(tmp_path / "x.xlsx"), key=key, host=mm_server.url)
    assert fmt.returncode == 2 and ".parquet" in fmt.stderr


def test_verify_compares_what_was_sent_with_what_is_stored(mm_server, tmp_path):
    key = mm_server.keys["sk"]
    path = tmp_path / "v.csv"
    pd.DataFrame({
        "event": ["a"] * 20, "user_id": ["u1"] * 5 + ["u2"] * 15,
        "timestamp": [f"2026-10-05T00:00:{s:02d}Z" for s in range(20)],
    }).to_csv(path, index=False)
    assert cli("backfill", str(path), key=key, host=mm_server.url).returncode == 0
    ok = cli("verify", str(path), "--journal", str(tmp_path / "v.csv.journal.sqlite"),
             key=key, host=mm_server.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "stored once: 20, missing: 0" in ok.stdout and "verified" in ok.stdout

    cli("forget", "--user-id", "u1", "--yes", key=key, host=mm_server.url)
    gone = cli("verify", str(path), key=key, host=mm_server.url)  # the default journal
    assert gone.returncode == 1 and "missing: 5" in gone.stdout and "MISMATCH" in gone.stdout

    cli("backfill", str(path), "--no-journal", key=key, host=mm_server.url)  # a replay
    twice = cli("verify", str(path), key=key, host=mm_server.url)
    assert twice.returncode == 1 and "stored more than once: 15" in twice.stdout

    nojournal = cli("verify", str(path), "--journal", str(tmp_path / "nope.sqlite"), key=key,
                    host=mm_server.url)
    assert nojournal.returncode == 2 and "nope.sqlite" in nojournal.stderr


def test_ctrl_c_stops_a_backfill_and_the_same_command_resumes_it(mm_server_factory, tmp_path):
    import signal

    srv = mm_server_factory(limits="off", latency_ms=250)
    key = srv.keys["sk"]
    path = tmp_path / "big.csv"
    n = 12_000
    pd.DataFrame({"event": ["view"] * n, "user_id": [f"u{i % 97}" for i in range(n)],
                  "timestamp": pd.date_range("2026-10-01", periods=n, freq="s", tz="UTC")
                  .strftime("%Y-%m-%dT%H:%M:%SZ")}).to_csv(path, index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLIMETRIC_")}
    env.update(PYTHONPATH=str(ROOT), MILLIMETRIC_KEY=key, MILLIMETRIC_HOST=srv.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "millimetric_nb.cli", "backfill", str(path), "--concurrency", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while srv.count() < 1000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert 0 < srv.count() < n

    again = cli("backfill", str(path), key=key, host=srv.url)
    assert again.returncode == 0, again.stdout + again.stderr
    stored = [e["event_id"] for e in srv.stored_events()]
    assert len(set(stored)) == n  # every row in
    dupes = re.search(r"possible duplicates ([\d,]+)", again.stdout)
    assert len(stored) - n == (int(dupes.group(1).replace(",", "")) if dupes else 0)
