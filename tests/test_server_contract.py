"""Contract fidelity of the local server, over real loopback HTTP: Retry-After rounding
past one second, every fault and limit option wired through ``millimetric-nb serve``,
persistence of a file database, seeded faults, and the OpenAPI document against what
the routes really answer."""

from __future__ import annotations

import math
import sqlite3

import httpx
import pytest
from test_server_cli import SK, start_serve, stop, wait_for_listening

from millimetric_nb import contract
from millimetric_nb.cli import build_parser
from millimetric_nb.server import ManualClock, ServerConfig, run_in_thread
from millimetric_nb.server.cli import config_from_args

WINDOW = {"from": "2000-01-01", "to": "2100-01-01"}


def test_retry_after_is_whole_seconds_rounded_up(mm_server_factory, mm_client):
    clock = ManualClock()
    srv = mm_server_factory(limits="x0.1", clock=clock)  # batch: 0.5/s refill, burst 2
    c = mm_client(srv)
    body = {"events": [{"event": "e"}]}
    assert [c.post("/v1/batch", json=body).status_code for _ in range(2)] == [202, 202]
    expected = [(0.0, 2.0, "2"), (0.5, 1.5, "2"), (0.9, 0.6, "1"), (0.5, 0.1, "1")]
    for step, wait, header in expected:
        clock.advance(step)
        r = c.post("/v1/batch", json=body)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == header
        assert math.isclose(r.json()["details"]["retry_after_s"], wait)
        assert r.json()["details"]["route"] == "/v1/batch"
    clock.advance(0.1)  # exactly one token is back
    assert c.post("/v1/batch", json=body).status_code == 202
    assert srv.count() == 3
    assert srv.status_counts()["batch"] == {202: 3, 429: 4}


def test_track_refill_is_counted_per_token(mm_server_factory, mm_client):
    """50 tokens/s: each 20 ms of (virtual) time is exactly one more accepted track."""
    clock = ManualClock()
    srv = mm_server_factory(limits="production", clock=clock)
    c = mm_client(srv)
    limit = contract.RATE_LIMITS["track"]
    assert [c.post("/v1/track", json={"event": "e"}).status_code
            for _ in range(limit.burst)] == [202] * limit.burst
    accepted = 0
    for _ in range(10):
        clock.advance(1 / limit.refill)
        codes = [c.post("/v1/track", json={"event": "e"}).status_code for _ in range(2)]
        assert codes == [202, 429]
        accepted += 1
    assert srv.count() == limit.burst + accepted


def test_serve_options_reach_the_server_config():
    args = build_parser().parse_args([
        "serve", "--host", "127.0.0.2", "--port", "0", "--db", ":memory:", "--key", SK,
        "--key", "rk_live_abcd1234_other=shop", "--limits", "x2.5", "--fail-rate", "0.1",
        "--ambiguous-rate", "0.2", "--reset-rate", "0.3", "--latency-ms", "40", "--seed", "9",
        "--allow-origin", "https://a.test", "--allow-origin", "https://b.test",
    ])
    cfg = config_from_args(args)
    assert (cfg.host, cfg.port, cfg.db, cfg.limits) == ("127.0.0.2", 0, ":memory:", "x2.5")
    assert list(cfg.keys or []) == [SK, "rk_live_abcd1234_other=shop"]
    assert (cfg.fail_rate, cfg.ambiguous_rate, cfg.reset_rate) == (0.1, 0.2, 0.3)
    assert (cfg.latency_ms, cfg.seed) == (40, 9)
    assert cfg.allowed_origins == ("https://a.test", "https://b.test")
    defaults = config_from_args(build_parser().parse_args(["serve"]))
    assert (defaults.host, defaults.port, defaults.limits) == ("127.0.0.1", 8787, "production")
    assert defaults.keys is None and defaults.db.endswith("server.sqlite3")


@pytest.mark.parametrize(
    ("bad", "message"),
    [(["--limits", "x0"], "N > 0"), (["--limits", "10"], "xN"),
     (["--fail-rate", "abc"], "between 0 and 1"), (["--latency-ms", "-1"], "from 0 to"),
     (["--port", "99999999"], "from 0 to 65535"), (["--port", "-1"], "from 0 to 65535"),
     (["--reset-rate", "-0.5"], "between 0 and 1"), (["--ambiguous-rate", "nan"], "0 and 1"),
     (["--latency-ms", "1e20"], "from 0 to"), (["--latency-ms", "99999999999"], "from 0"),
     (["--key", "sk_dev_abc"], "is not of the shape")],
)
def test_serve_option_errors_name_the_option(bad, message, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", *bad])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {bad[0]}:" in err and message in err


def test_serve_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--db", "--key", "--limits", "--fail-rate",
                   "--ambiguous-rate", "--reset-rate", "--latency-ms", "--seed"):
        assert option in out
    assert "listening on http://HOST:PORT" in out and "examples:" in out
    assert "production|off|xN" in out


def test_serve_subprocess_applies_limits_and_faults(tmp_path):
    """``--limits x0.1 --ambiguous-rate 1``: each batch is written then failed, the third
    is refused with Retry-After rounded up to 2 s, and reads are never faulted."""
    db = tmp_path / "faults.sqlite3"
    proc = start_serve("--db", str(db), "--key", SK, "--limits", "x0.1",
                       "--ambiguous-rate", "1", "--seed", "4")
    try:
        url, _ = wait_for_listening(proc)
        outcomes = []
        for i in range(2):
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {SK}"}) as c:
                try:
                    r = c.post("/v1/batch", json={"events": [{"event": f"b{i}"}] * 2})
                    outcomes.append((r.status_code, r.json()["error"]))
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    outcomes.append("dropped")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {SK}"}) as c:
            r = c.post("/v1/batch", json={"events": [{"event": "late"}]})
            assert r.status_code == 429 and r.headers["Retry-After"] == "2"
            assert r.json()["error"] == "rate_limited"
            rows = c.get("/v1/query", params=WINDOW).json()["rows"]
    finally:
        code, _ = stop(proc)
    assert all(o in ("dropped", (500, "internal_error")) for o in outcomes), outcomes
    assert sorted(row["event_name"] for row in rows) == ["b0", "b0", "b1", "b1"]
    assert code == 0


def test_file_database_is_wal_and_outlives_the_server(tmp_path, mm_client):
    db = str(tmp_path / "store.sqlite3")
    keys = ["sk_dev_abcd1234_persistentsecret"]
    with run_in_thread(ServerConfig(db=db, keys=keys)) as srv:
        r = mm_client(srv).post("/v1/batch", json={"events": [
            {"event": "kept", "user_id": f"u{i}"} for i in range(3)]})
        assert r.status_code == 202
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3
    with run_in_thread(ServerConfig(db=db, keys=keys)) as again:
        rows = mm_client(again).get("/v1/query", params=WINDOW).json()["rows"]
    assert sorted(row["user_id"] for row in rows) == ["u0", "u1", "u2"]


def test_a_different_seed_gives_different_faults(mm_server_factory):
    def outcomes(seed: int) -> list[object]:
        srv = mm_server_factory(fail_rate=0.3, ambiguous_rate=0.2, reset_rate=0.2, seed=seed)
        got: list[object] = []
        for _ in range(30):
            with httpx.Client(base_url=srv.url,
                              headers={"Authorization": f"Bearer {srv.keys['sk']}"}) as c:
                try:
                    got.append(c.post("/v1/track", json={"event": "e"}).status_code)
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    got.append("dropped")
        return got

    first, again, other = outcomes(11), outcomes(11), outcomes(12)
    assert first == again
    assert first != other


# --------------------------------------------------------------------------- OpenAPI

#: Codes each route really answers (besides 404/405/413, which every route may give).
ROUTE_CODES: dict[str, set[str]] = {
    "track": {"invalid_payload", "missing_bearer_token", "malformed_api_key",
              "invalid_api_key", "key_kind_mismatch", "origin_not_allowed",
              "insufficient_scope", "rate_limited", "internal_error", "upstream_failed"},
    "batch": {"invalid_payload", "missing_bearer_token", "malformed_api_key",
              "invalid_api_key", "key_kind_mismatch", "origin_not_allowed",
              "insufficient_scope", "rate_limited", "internal_error", "upstream_failed"},
    "identify": {"invalid_payload", "missing_bearer_token", "malformed_api_key",
                 "invalid_api_key", "key_kind_mismatch", "origin_not_allowed",
                 "insufficient_scope", "internal_error", "upstream_failed"},
    "forget": {"invalid_payload", "missing_bearer_token", "malformed_api_key",
               "invalid_api_key", "key_kind_mismatch", "forget_requires_secret_key",
               "insufficient_scope", "internal_error", "forget_failed", "upstream_failed"},
    "query": {"invalid_params", "missing_bearer_token", "malformed_api_key",
              "invalid_api_key", "key_kind_mismatch", "insufficient_scope"},
    "stats": {"invalid_params", "invalid_group_by", "missing_bearer_token",
              "malformed_api_key", "invalid_api_key", "key_kind_mismatch",
              "insufficient_scope"},
    "sources": {"invalid_params", "missing_bearer_token", "malformed_api_key",
                "invalid_api_key", "key_kind_mismatch", "insufficient_scope"},
}


def test_openapi_documents_each_routes_codes_statuses_and_parameters(mm_server, mm_client):
    doc = mm_client(mm_server, kind=None).get("/openapi.json").json()
    assert set().union(*ROUTE_CODES.values()) == set(contract.ERRORS)
    for name, route in contract.ROUTES.items():
        op = doc["paths"][route.path][route.method.lower()]
        documented: dict[str, set[str]] = {}
        for status, answer in op["responses"].items():
            text = answer["description"]
            documented[status] = {code for code in contract.ERRORS if code in text}
        for code in ROUTE_CODES[name]:
            status = str(contract.ERRORS[code].status)
            assert code in documented.get(status, set()), (name, code, status)
        assert ("429" in op["responses"]) == (route.rate_limit is not None), name
    params = {name: [p["name"] for p in doc["paths"][contract.ROUTES[name].path]["get"]
                     ["parameters"]] for name in ("query", "stats", "sources")}
    assert params == {
        "query": ["from", "to", "event", "source", "medium", "user_id", "limit"],
        "stats": ["from", "to", "metric", "event", "group_by", "interval", "limit"],
        "sources": ["from", "to", "breakdown", "limit"],
    }
    group_by = doc["paths"]["/v1/stats"]["get"]["parameters"][4]["schema"]["description"]
    assert all(column in group_by for column in contract.STATS_GROUP_BY)


def test_openapi_query_rows_describe_the_served_columns(mm_server, mm_client):
    sk = mm_client(mm_server)
    assert sk.post("/v1/track", json={"event": "e"}).status_code == 202
    served = sk.get("/v1/query", params=WINDOW).json()["rows"][0]
    doc = sk.get("/openapi.json").json()
    schema = doc["paths"]["/v1/query"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    assert set(schema["properties"]["rows"]["items"]["properties"]) == set(served)
    for name in ("track", "batch", "identify", "forget"):
        route = contract.ROUTES[name]
        answer = doc["paths"][route.path]["post"]["responses"][str(route.success_status)]
        assert answer["content"]["application/json"]["schema"]["properties"]["ok"] == {
            "type": "boolean"}
