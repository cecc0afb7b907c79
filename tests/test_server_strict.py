"""The stricter local server (issue 10, item 5): the OpenAPI document says what is
refused, a client gone mid-body is counted (no traceback), write routes take JSON
only (415 otherwise), bad options and a key given for two projects stop ``serve``
with status 2 and one line. Also ``--dedup``: an ``event_id`` stored once."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from millimetric_nb.server import ServerConfig, run_in_thread
from millimetric_nb.server.config import mint_key
from millimetric_nb.server.openapi import openapi_document

WINDOW = {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z"}
EVENT = {"event": "signup", "event_id": "e-1", "timestamp": "2024-01-05T10:00:00Z"}


def _param(path: str, name: str) -> dict:
    params = openapi_document()["paths"][path]["get"]["parameters"]
    return next(p for p in params if p["name"] == name)


# ------------------------------------------------------------------ reads and the document


@pytest.mark.parametrize("route", ["/v1/query", "/v1/stats", "/v1/sources"])
@pytest.mark.parametrize("name", ["from", "to"])
def test_empty_window_bound_is_refused_and_the_document_says_so(mm_server, mm_client, route,
                                                                 name):
    schema = _param(route, name)["schema"]
    assert schema["minLength"] == 1
    assert re.search(schema["pattern"], "") is None  # the document refuses "" too
    r = mm_client(mm_server).get(route, params={**WINDOW, name: ""})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_params"
    assert name in r.json()["details"]["fieldErrors"]


@pytest.mark.parametrize("route", ["query", "stats", "sources"])
def test_an_unknown_read_parameter_is_refused_by_name_and_the_document_lists_the_known(
        mm_server, mm_client, route):
    from millimetric_nb.server.reads import READ_PARAMS

    listed = openapi_document()["paths"][f"/v1/{route}"]["get"]["parameters"]
    assert {p["name"] for p in listed} == set(READ_PARAMS[route])
    r = mm_client(mm_server).get(f"/v1/{route}", params={**WINDOW, "evnet": "signup"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_params"
    assert "unknown parameter" in r.json()["details"]["fieldErrors"]["evnet"][0]
    assert mm_client(mm_server).get(f"/v1/{route}", params=WINDOW).status_code == 200


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("2024-01-01", True), ("2024-01-01T10:00", True), ("2024-01-01t10:00:00.123456789z", True),
     ("2024-02-29T00:00+05", True), ("0001-01-01T00:00+05:00", True),
     ("9999-12-31T23:59:59-23:59", True), ("2023-02-29", False), ("2024-04-31", False),
     ("2024-01-01T24:00", False), ("2024-1-01", False), ("0000-01-01", False),
     ("2024-01-01\n", False), ("last week", False)],
)
def test_window_pattern_and_server_agree(mm_server, mm_client, value, accepted):
    pattern = _param("/v1/query", "from")["schema"]["pattern"]
    assert (re.fullmatch(pattern, value) is not None) is accepted
    r = mm_client(mm_server).get("/v1/query", params={"from": value, "to": "2024-02-01"})
    assert r.status_code == (200 if accepted else 400), r.text


def test_to_before_from_is_an_empty_window(mm_server, mm_client):
    sk = mm_client(mm_server)
    assert sk.post("/v1/track", json=EVENT).status_code == 202
    r = sk.get("/v1/query", params={"from": "2024-02-01", "to": "2024-01-01"})
    assert r.status_code == 200 and r.json() == {"rows": []}
    assert len(sk.get("/v1/query", params=WINDOW).json()["rows"]) == 1


@pytest.mark.parametrize(
    ("group_by", "status"),
    [("", 200), ("source", 200), ("source,medium,source", 200), ("source, medium", 400),
     ("source,,medium", 400), ("nope", 400)],
)
def test_group_by_pattern_and_server_agree(mm_server, mm_client, group_by, status):
    pattern = _param("/v1/stats", "group_by")["schema"]["pattern"]
    assert (re.fullmatch(pattern, group_by) is not None) is (status == 200)
    r = mm_client(mm_server).get("/v1/stats", params={**WINDOW, "group_by": group_by})
    assert r.status_code == status, r.text


# ------------------------------------------------------------------ media type


@pytest.mark.parametrize("route", ["/v1/track", "/v1/batch", "/v1/identify", "/v1/forget"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_write_routes_answer_415_for_a_body_that_is_not_json(mm_server, mm_client, route,
                                                             content_type):
    sk = mm_client(mm_server)
    headers = {} if content_type is None else {"content-type": content_type}
    r = sk.post(route, content=orjson.dumps({"events": [EVENT], **EVENT, "anonymous_id": "a",
                                             "user_id": "u"}), headers=headers)
    assert r.status_code == 415
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == "unsupported_media_type"
    assert body["details"]["expected"] == "application/json"
    assert mm_server.count() == 0
    doc = openapi_document()
    assert "415" in doc["paths"][route]["post"]["responses"]
    assert "unsupported_media_type" in doc["components"]["schemas"]["Error"]["properties"][
        "error"]["enum"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_media_types_with_parameters_are_accepted(mm_server, mm_client, content_type):
    r = mm_client(mm_server).post("/v1/track", content=orjson.dumps(EVENT),
                                  headers={"content-type": content_type})
    assert r.status_code == 202, r.text
    assert mm_server.count() == 1


# ------------------------------------------------------------------ disconnects


def test_client_gone_mid_body_is_counted_and_logged_in_one_line(mm_server, caplog):
    host, port = mm_server.url.removeprefix("http://").rsplit(":", 1)
    head = (f"POST /v1/batch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {mm_server.keys['sk']}\r\nContent-Length: 100000\r\n\r\n")
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(head.encode() + b'{"events": [')
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while mm_server.disconnects() < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mm_server.disconnects() == 3
    assert mm_server.count() == 0
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 3
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert mm_server.keys["sk"].split("_")[3] not in caplog.text


# ------------------------------------------------------------------ keys and options


def test_one_key_for_two_projects_is_refused():
    key = mint_key("sk")
    with pytest.raises(ValueError, match="two projects") as info, run_in_thread(
            ServerConfig(keys=[f"{key}=shop", f"{key}=blog"])):
        pass
    assert key.split("_")[3] not in str(info.value)
    with run_in_thread(keys=[key, key]) as srv:  # the same key for the same project: one key
        assert srv.keys == {"sk": key}


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "millimetric_nb.cli", "serve", "--db",
                           ":memory:", *args], capture_output=True, text=True, timeout=60)


def test_serve_refuses_a_key_for_two_projects_with_status_2_and_one_line():
    key = mint_key("sk")
    done = _serve("--port", "0", "--key", f"{key}=shop", "--key", f"{key}=blog")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "two projects" in done.stderr
    assert key.split("_")[3] not in done.stderr + done.stdout


@pytest.mark.parametrize("bad", [["--port", "99999999"], ["--fail-rate", "-0.1"],
                                 ["--latency-ms", "-5"], ["--key", "sk_dev_short"]])
def test_serve_bad_values_are_argparse_errors(bad):
    done = _serve(*bad)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "OverflowError" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {bad[0]}" in errors[0]


def test_fault_rates_adding_past_one_end_in_one_line():
    done = _serve("--fail-rate", "0.6", "--reset-rate", "0.6")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "must not exceed 1" in done.stderr


# ------------------------------------------------------------------ --dedup


def test_dedup_stores_an_event_id_once_per_project(mm_server_factory):
    a, b = mint_key("sk"), mint_key("sk")
    srv = mm_server_factory(dedup=True, keys=[f"{a}=shop", f"{b}=blog"])
    events = [{**EVENT, "event_id": f"e-{i}"} for i in range(5)]
    with httpx.Client(base_url=srv.url, headers={"authorization": f"Bearer {a}"}) as shop:
        first = shop.post("/v1/batch", json={"events": events})
        again = shop.post("/v1/batch", json={"events": [*events, {**EVENT, "event_id": "e-9"},
                                                        {**EVENT, "event_id": "e-9"}]})
        single = shop.post("/v1/track", json=events[0])
    # answers keep their contract shape: count = events accepted
    assert first.status_code == 202 and first.json() == {"ok": True, "count": 5}
    assert again.status_code == 202 and again.json() == {"ok": True, "count": 7}
    assert single.status_code == 202 and single.json() == {"ok": True, "event_id": "e-0"}
    ids = [r["event_id"] for r in srv.stored_events("shop")]
    assert sorted(ids) == [*(f"e-{i}" for i in range(5)), "e-9"]
    with httpx.Client(base_url=srv.url, headers={"authorization": f"Bearer {b}"}) as blog:
        assert blog.post("/v1/batch", json={"events": events}).json()["count"] == 5
    assert srv.count("blog") == 5  # once per project, not once per server


def test_without_dedup_a_resend_is_stored_twice(mm_server, mm_client):
    sk = mm_client(mm_server)
    for _ in range(2):
        assert sk.post("/v1/batch", json={"events": [EVENT]}).status_code == 202
    assert mm_server.count() == 2


def test_serve_dedup_option_reaches_the_server(tmp_path):
    from millimetric_nb.cli import build_parser
    from millimetric_nb.server.cli import config_from_args

    args = build_parser().parse_args(["serve", "--dedup", "--db", ":memory:"])
    assert config_from_args(args).dedup is True
    args = build_parser().parse_args(["serve", "--db", ":memory:"])
    assert config_from_args(args).dedup is False


def test_stats_buckets_before_the_year_1000_are_iso_8601(mm_server, mm_client):
    """Found by schemathesis: strftime's %Y wrote the year 956 as "956"."""
    sk = mm_client(mm_server)
    assert sk.post("/v1/track", json={**EVENT, "timestamp": "0956-11-20T10:30:00Z"}
                   ).status_code == 202
    r = sk.get("/v1/stats", params={"from": "0900-01-01", "to": "1000-01-01",
                                    "interval": "hour"})
    assert r.json()["rows"] == [{"bucket": "0956-11-20T10:00:00.000000Z", "value": 1}]


@pytest.mark.parametrize(("stamp", "interval", "bucket"), [
    ("1969-12-31T23:30:00Z", "hour", "1969-12-31T23:00:00.000000Z"),
    ("1969-12-31T23:30:00Z", "day", "1969-12-31T00:00:00.000000Z"),
    ("1969-12-31T23:30:00Z", "week", "1969-12-29T00:00:00.000000Z"),  # a Monday
    ("1970-01-04T23:30:00Z", "week", "1969-12-29T00:00:00.000000Z"),
    ("1970-01-05T00:00:00Z", "week", "1970-01-05T00:00:00.000000Z"),
    ("2024-01-03T12:00:00Z", "week", "2024-01-01T00:00:00.000000Z"),
])
def test_buckets_before_and_after_1970_start_where_they_should(mm_server, mm_client, stamp,
                                                               interval, bucket):
    sk = mm_client(mm_server)
    assert sk.post("/v1/track", json={**EVENT, "timestamp": stamp}).status_code == 202
    r = sk.get("/v1/stats", params={"from": "1900-01-01", "to": "2100-01-01",
                                    "interval": interval})
    assert r.json()["rows"] == [{"bucket": bucket, "value": 1}]
