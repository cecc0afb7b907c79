"""Fault injection of the local server (write routes only), over real loopback HTTP."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError)


_CLIENTS: dict[str, httpx.Client] = {}


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _CLIENTS:
        _CLIENTS.popitem()[1].close()


def send(srv, path: str = "/v1/track", body: dict | None = None) -> int | str:
    """Status of one request (one pooled client per server), or 'dropped'."""
    c = _CLIENTS.get(srv.url)
    if c is None:
        c = _CLIENTS[srv.url] = httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {srv.keys['sk']}"})
    try:
        r = c.post(path, json=body if body is not None else {"event": "e"})
    except CONNECTION_ERRORS:
        return "dropped"
    if r.status_code >= 500:
        assert r.headers["content-type"].startswith("application/json")
        return f"{r.status_code} {r.json()['error']}"
    return r.status_code


def test_fail_rate_answers_500_or_502_before_writing(mm_server_factory):
    srv = mm_server_factory(fail_rate=1.0, seed=7)
    outcomes = [send(srv) for _ in range(16)]
    assert set(outcomes) == {"500 internal_error", "502 upstream_failed"}
    assert srv.count() == 0
    assert srv.fault_counts() == {"fail": 16, "ambiguous": 0, "reset": 0}
    # reads are never faulted
    with httpx.Client(base_url=srv.url,
                      headers={"Authorization": f"Bearer {srv.keys['sk']}"}) as c:
        assert c.get("/v1/query", params={"from": "2020-01-01", "to": "2030-01-01"}
                     ).status_code == 200


def test_ambiguous_rate_writes_then_fails_or_drops(mm_server_factory):
    srv = mm_server_factory(ambiguous_rate=1.0, seed=3)
    outcomes = [send(srv, "/v1/batch", {"events": [{"event": "e"}, {"event": "f"}]})
                for _ in range(12)]
    assert set(outcomes) == {"500 internal_error", "dropped"}
    assert srv.count() == 24  # every batch was written although none was acknowledged
    assert srv.fault_counts()["ambiguous"] == 12
    assert 202 not in srv.status_counts().get("batch", {})


def test_reset_rate_drops_the_connection_without_writing(mm_server_factory):
    srv = mm_server_factory(reset_rate=1.0, seed=1)
    for _ in range(5):
        with httpx.Client(base_url=srv.url,
                          headers={"Authorization": f"Bearer {srv.keys['sk']}"}) as c:
            with pytest.raises(CONNECTION_ERRORS):
                c.post("/v1/track", json={"event": "e"})
    assert srv.count() == 0
    assert srv.fault_counts() == {"fail": 0, "ambiguous": 0, "reset": 5}
    assert srv.status_counts().get("track", {}) == {}  # no answer at all


def test_faults_do_not_apply_to_invalid_payloads_or_auth_errors(mm_server_factory):
    srv = mm_server_factory(fail_rate=1.0, seed=1)
    assert send(srv, body={"event": ""}) == 400
    with httpx.Client(base_url=srv.url) as c:
        assert c.post("/v1/track", json={"event": "e"}).status_code == 401
    assert srv.fault_counts()["fail"] == 0


def test_same_seed_same_faults(mm_server_factory):
    runs = []
    for _ in range(2):
        srv = mm_server_factory(fail_rate=0.3, ambiguous_rate=0.2, reset_rate=0.2, seed=42)
        runs.append([send(srv) for _ in range(30)])
    assert runs[0] == runs[1]
    kinds = set(runs[0])
    assert 202 in kinds and "dropped" in kinds and "502 upstream_failed" in kinds


def test_partial_fail_rate_counts_add_up(mm_server_factory):
    srv = mm_server_factory(fail_rate=0.5, seed=5)
    outcomes = [send(srv) for _ in range(40)]
    ok = outcomes.count(202)
    assert 0 < ok < 40
    assert srv.count() == ok
    assert srv.fault_counts()["fail"] == 40 - ok


def test_latency_delays_every_answer(mm_server_factory):
    """With 400 ms of latency no answer can arrive within a 100 ms read timeout (no
    timing assertion: the timeout is the probe); the write itself is not delayed away."""
    srv = mm_server_factory(latency_ms=400)
    timeout = httpx.Timeout(5.0, read=0.1)
    with httpx.Client(base_url=srv.url, timeout=timeout,
                      headers={"Authorization": f"Bearer {srv.keys['sk']}"}) as c:
        for method, path in (("POST", "/v1/track"), ("GET", "/v1/nope"),
                             ("GET", "/openapi.json")):
            with pytest.raises(httpx.ReadTimeout):
                c.request(method, path, json={"event": "e"} if method == "POST" else None)
    deadline = time.monotonic() + 10
    while srv.count() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.count() == 1  # the track was stored; only its answer waited
    with httpx.Client(base_url=srv.url, timeout=httpx.Timeout(5.0)) as c:
        assert c.get("/openapi.json").status_code == 200  # a patient client gets it


def test_injected_faults_per_route(mm_server, mm_client):
    sk = mm_client(mm_server)
    sk.post("/v1/batch", json={"events": [{"event": "e", "user_id": "u1"}] * 3})
    mm_server.inject("forget", "forget_failed")
    r = sk.post("/v1/forget", json={"user_id": "u1"})
    assert r.status_code == 500 and r.json()["error"] == "forget_failed"
    assert mm_server.count() == 3  # nothing deleted
    mm_server.inject("forget", "upstream_failed")
    r = sk.post("/v1/forget", json={"user_id": "u1"})
    assert r.status_code == 502 and r.json()["error"] == "upstream_failed"
    assert mm_server.count() == 3
    mm_server.inject("track", "ambiguous_500", count=2)
    for _ in range(2):
        r = sk.post("/v1/track", json={"event": "t"})
        assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert sk.post("/v1/forget", json={"user_id": "u1"}).status_code == 200
    assert [row["event_name"] for row in mm_server.stored_events()] == ["t", "t"]
    with pytest.raises(ValueError):
        mm_server.inject("query", "reset")
    with pytest.raises(ValueError):
        mm_server.inject("track", "meteor")


def test_storage_errors_become_forget_failed_and_upstream_failed(mm_server, mm_client):
    sk = mm_client(mm_server)
    storage = mm_server.state.storage

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    real_delete, real_insert = storage.delete_user, storage.insert
    storage.delete_user, storage.insert = broken, broken  # type: ignore[method-assign]
    try:
        r = sk.post("/v1/forget", json={"user_id": "u"})
        assert r.status_code == 500 and r.json()["error"] == "forget_failed"
        r = sk.post("/v1/track", json={"event": "e"})
        assert r.status_code == 502 and r.json()["error"] == "upstream_failed"
        assert "Traceback" not in r.text
    finally:
        storage.delete_user, storage.insert = real_delete, real_insert
    assert sk.post("/v1/track", json={"event": "e"}).status_code == 202


def test_unhandled_error_is_json_internal_error(mm_server, mm_client):
    sk = mm_client(mm_server)
    storage = mm_server.state.storage

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    real = storage.fetch
    storage.fetch = boom  # type: ignore[method-assign]
    try:
        r = sk.get("/v1/query", params={"from": "2020-01-01", "to": "2030-01-01"})
    finally:
        storage.fetch = real  # type: ignore[method-assign]
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error", "details": {"message": "unhandled server error"}}
    assert "Traceback" not in r.text
