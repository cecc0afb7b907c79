"""The local server's write endpoints over real loopback HTTP: track, batch, identify,
forget, enrichment and bad input."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millimetric_nb import contract


@pytest.fixture
def sk(mm_server, mm_client) -> httpx.Client:
    return mm_client(mm_server)


def stored(srv) -> list[dict]:
    return srv.stored_events("dev")


# --------------------------------------------------------------------------- track


def test_track_stores_one_enriched_row(mm_server, sk):
    before = datetime.now(UTC)
    r = sk.post("/v1/track", json={"event": "signup", "anonymous_id": "u_abc",
                                   "user_id": "user_42", "properties": {"plan": "free"}})
    after = datetime.now(UTC)
    assert r.status_code == 202
    body = r.json()
    assert body["ok"] is True
    rows = stored(mm_server)
    assert len(rows) == 1
    row = rows[0]
    assert row["event_id"] == body["event_id"]
    assert row["event_name"] == "signup"
    assert row["anonymous_id"] == "u_abc" and row["user_id"] == "user_42"
    assert row["properties"] == {"plan": "free"}
    ts = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= ts <= after  # defaulted to now
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", row["timestamp"])


def test_track_keeps_given_event_id_and_does_not_deduplicate(mm_server, sk):
    for _ in range(2):
        r = sk.post("/v1/track", json={"event": "e", "event_id": "same-id"})
        assert r.status_code == 202 and r.json()["event_id"] == "same-id"
    assert [r["event_id"] for r in stored(mm_server)] == ["same-id", "same-id"]


def test_generated_ids_and_session_default(mm_server, sk):
    sk.post("/v1/track", json={"event": "a", "timestamp": "2024-01-01T00:29:59Z",
                               "anonymous_id": "v1"})
    sk.post("/v1/track", json={"event": "b", "timestamp": "2024-01-01T00:30:00Z",
                               "anonymous_id": "v1"})
    sk.post("/v1/track", json={"event": "c", "session_id": "mine"})
    a, b, c = stored(mm_server)
    assert a["session_id"] == f"v1-{1704068999 // 1800}"
    assert b["session_id"] == f"v1-{1704069000 // 1800}"
    assert a["session_id"] != b["session_id"]
    assert c["session_id"] == "mine"
    uuid.UUID(c["anonymous_id"])  # generated
    uuid.UUID(c["event_id"])


def test_timestamp_offsets_are_normalised_to_utc(mm_server, sk):
    for ts in ("2024-01-01T01:00:00+01:00", "2024-01-01T00:00:00", "2024-01-01 00:00:00.000Z"):
        assert sk.post("/v1/track", json={"event": "t", "timestamp": ts}).status_code == 202
    assert {r["timestamp"] for r in stored(mm_server)} == {"2024-01-01T00:00:00.000000Z"}


def test_enriched_and_unknown_fields_from_client_are_ignored(mm_server, sk):
    sent = {"event": "e", "source": "evil", "medium": "evil", "country": "ZZ",
            "ip_hash": "forged", "device_type": "toaster", "not_a_field": 1}
    assert sk.post("/v1/track", json=sent).status_code == 202
    (row,) = stored(mm_server)
    assert row["source"] == "direct" and row["medium"] == "none"
    assert row["country"] is None and row["ip_hash"] != "forged"
    assert row["device_type"] != "toaster"
    assert "not_a_field" not in row


# --------------------------------------------------------------------------- enrichment

CLASSIFIER_CASES = [
    # (url, referrer, source, medium, campaign, confidence, rule)
    ("https://shop.test/?utm_source=Newsletter&utm_medium=Email&utm_campaign=Spring", None,
     "newsletter", "email", "spring", "high", "utm"),
    ("https://shop.test/?utm_source=facebook&utm_medium=cpc&fbclid=abc", None,
     "facebook", "cpc", None, "high", "utm"),
    ("https://shop.test/?gclid=xyz&utm_campaign=brand", "https://www.google.com/",
     "google", "cpc", "brand", "high", "click_id.gclid"),
    ("https://shop.test/?fbclid=abc", None, "facebook", "paid_social", None, "medium",
     "click_id.fbclid"),
    ("https://shop.test/?msclkid=1", None, "bing", "cpc", None, "high", "click_id.msclkid"),
    ("https://shop.test/?ttclid=9&utm_campaign=Launch", None, "tiktok", "paid_social",
     "launch", "high", "click_id.ttclid"),
    ("https://shop.test/?gclid=1&fbclid=2", None, "google", "cpc", None, "high",
     "click_id.gclid"),
    ("https://shop.test/", "https://www.google.co.uk/search?q=x", "google", "organic", None,
     "medium", "referrer.search"),
    ("https://shop.test/", "https://duckduckgo.com/", "duckduckgo", "organic", None, "medium",
     "referrer.search"),
    ("https://shop.test/", "https://t.co/abc", "twitter", "social", None, "medium",
     "referrer.social"),
    ("https://shop.test/", "https://l.facebook.com/l.php?u=x", "facebook", "social", None,
     "medium", "referrer.social"),
    ("https://shop.test/", "https://x.com/someone", "twitter", "social", None, "medium",
     "referrer.social"),
    ("https://shop.test/", "https://www.bing.com/search?q=x", "bing", "organic", None,
     "medium", "referrer.search"),
    ("https://shop.test/", "https://www.someblog.example/post", "someblog.example", "referral",
     None, "medium", "referrer.other"),
    ("https://shop.test/", "https://docs.x.ai/", "docs.x.ai", "referral", None, "medium",
     "referrer.other"),
    ("https://shop.test/", "https://notgoogle.com/", "notgoogle.com", "referral", None,
     "medium", "referrer.other"),
    ("https://shop.test/a", "https://shop.test/b", "direct", "none", None, "low",
     "referrer.internal"),
    ("https://shop.test/", None, "direct", "none", None, "low", "direct"),
    (None, None, "direct", "none", None, "low", "direct"),
]


@pytest.mark.parametrize(
    ("url", "referrer", "source", "medium", "campaign", "confidence", "rule"), CLASSIFIER_CASES
)
def test_classifier(mm_server, sk, url, referrer, source, medium, campaign, confidence, rule):
    event = {"event": "$pageview"}
    if url is not None:
        event["url"] = url
    if referrer is not None:
        event["referrer"] = referrer
    assert sk.post("/v1/track", json=event).status_code == 202
    (row,) = stored(mm_server)
    got = (row["source"], row["medium"], row["campaign"], row["source_confidence"],
           row["source_rule_id"])
    assert got == (source, medium, campaign, confidence, rule)
    assert row["source_confidence"] in contract.SOURCE_CONFIDENCE


UA_CASES = [
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1", ("mobile", "Safari", "iOS")),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0 Safari/537.36", ("desktop", "Chrome", "Windows")),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0 Safari/537.36 Edg/120.0", ("desktop", "Edge", "macOS")),
    ("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.0 Mobile/15E148 Safari/604.1", ("tablet", "Safari", "iOS")),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0 Mobile Safari/537.36", ("mobile", "Chrome", "Android")),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
     ("desktop", "Firefox", "Linux")),
    ("Googlebot/2.1 (+http://www.google.com/bot.html)", ("bot", None, None)),
]


@pytest.mark.parametrize(("ua", "expected"), UA_CASES)
def test_user_agent_parsing(mm_server, sk, ua, expected):
    r = sk.post("/v1/track", json={"event": "e"}, headers={"User-Agent": ua})
    assert r.status_code == 202
    (row,) = stored(mm_server)
    assert (row["device_type"], row["browser"], row["os"]) == expected


def test_country_header_and_salted_ip_hash(mm_server_factory, mm_client):
    srv = mm_server_factory(ip_salt="pepper")
    c = mm_client(srv)
    c.post("/v1/track", json={"event": "a"}, headers={"CF-IPCountry": "de"})
    c.post("/v1/track", json={"event": "b"})
    c.post("/v1/track", json={"event": "c"}, headers={"CF-Connecting-IP": "203.0.113.9"})
    a, b, c_row = srv.stored_events()
    assert a["country"] == "DE" and b["country"] is None
    assert re.fullmatch(r"[0-9a-f]{32}", a["ip_hash"])
    assert a["ip_hash"] == b["ip_hash"] != c_row["ip_hash"]
    for row in (a, b, c_row):
        assert "127.0.0.1" not in orjson.dumps(row).decode()
        assert "203.0.113.9" not in orjson.dumps(row).decode()
    other = mm_server_factory(ip_salt="other-salt")
    mm_client(other).post("/v1/track", json={"event": "a"})
    assert other.stored_events()[0]["ip_hash"] != a["ip_hash"]  # the salt matters


# --------------------------------------------------------------------------- batch


def test_batch_stores_every_event_in_order(mm_server, sk):
    events = [{"event": "purchase", "anonymous_id": f"u_{i}", "properties": {"i": i}}
              for i in range(1000)]
    r = sk.post("/v1/batch", json={"events": events})
    assert r.status_code == 202 and r.json() == {"ok": True, "count": 1000}
    rows = stored(mm_server)
    assert [row["properties"]["i"] for row in rows] == list(range(1000))


def test_batch_is_all_or_nothing_with_element_paths(mm_server, sk):
    events = [{"event": "ok"} for _ in range(5)]
    events[3] = {"event": 7}
    events[4] = {"event": "x", "user_id": "", "properties": []}
    r = sk.post("/v1/batch", json={"events": events})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_payload"
    fe = body["details"]["fieldErrors"]
    assert set(fe) == {"events.3.event", "events.4.user_id", "events.4.properties"}
    assert fe["events.3.event"][0].startswith("type:")
    assert fe["events.4.user_id"][0].startswith("too_short:")
    assert fe["events.4.properties"][0].startswith("type:")
    assert mm_server.count() == 0


@pytest.mark.parametrize(
    ("body", "path", "rule"),
    [
        ({"events": []}, "events", "too_short"),
        ({"events": [{"event": "e"}] * 1001}, "events", "too_long"),
        ({}, "events", "required"),
        ({"events": {"event": "e"}}, "events", "type"),
        ({"events": [{"event": "e"}, "nope"]}, "events.1", "type"),
        ([{"event": "e"}], "body", "type"),
    ],
)
def test_batch_shape_errors(mm_server, sk, body, path, rule):
    r = sk.post("/v1/batch", json=body)
    assert r.status_code == 400 and r.json()["error"] == "invalid_payload"
    messages = r.json()["details"]["fieldErrors"][path]
    assert messages[0].startswith(f"{rule}:")
    assert mm_server.count() == 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("event", "path", "rule"),
    [
        ({}, "event", "required"),
        ({"event": ""}, "event", "too_short"),
        ({"event": "x" * 129}, "event", "too_long"),
        ({"event": 12}, "event", "type"),
        ({"event": None}, "event", "type"),
        ({"event": "e", "user_id": "u" * 257}, "user_id", "too_long"),
        ({"event": "e", "anonymous_id": ["a"]}, "anonymous_id", "type"),
        ({"event": "e", "timestamp": "yesterday"}, "timestamp", "invalid_timestamp"),
        ({"event": "e", "timestamp": 1700000000}, "timestamp", "type"),
        ({"event": "e", "url": "u" * 2049}, "url", "too_long"),
        ({"event": "e", "properties": "plan=free"}, "properties", "type"),
        ({"event": "e", "properties": {"blob": "x" * 8200}}, "properties", "too_large"),
    ],
)
def test_track_field_errors_name_field_and_rule(mm_server, sk, event, path, rule):
    r = sk.post("/v1/track", json=event)
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_payload"
    assert list(body["details"]["fieldErrors"]) == [path]
    assert body["details"]["fieldErrors"][path][0].startswith(f"{rule}:")
    assert mm_server.count() == 0


def test_properties_at_the_size_limit_are_accepted(mm_server, sk):
    pad = contract.PROPERTIES_MAX_BYTES - len(b'{"b":""}')
    props = {"b": "x" * pad}
    assert len(orjson.dumps(props)) == contract.PROPERTIES_MAX_BYTES
    assert sk.post("/v1/track", json={"event": "e", "properties": props}).status_code == 202
    assert sk.post("/v1/track", json={"event": "e", "properties": {"b": "x" * (pad + 1)}}
                   ).status_code == 400
    assert mm_server.count() == 1


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe", b'{"event": "a",}'])
def test_not_json_is_invalid_payload(mm_server, sk, content):
    r = sk.post("/v1/track", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_payload"
    assert r.json()["details"]["formErrors"][0].startswith("not_json:")


def test_huge_body_is_413_json_and_nothing_written(mm_server, sk):
    blob = b'{"events": [' + b",".join([b'{"event": "e", "path": "' + b"p" * 2000 + b'"}'] * 3200)
    blob += b"]}"
    assert len(blob) > 6 * 1024 * 1024
    r = sk.post("/v1/batch", content=blob, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert mm_server.count() == 0
    # the connection pool still works afterwards
    assert sk.post("/v1/track", json={"event": "after"}).status_code == 202


def test_five_megabyte_batch_fits(mm_server, sk):
    event = {"event": "e", "properties": {"pad": "x" * 4900}}
    events = [event] * 1000
    body = orjson.dumps({"events": events})
    assert 4_900_000 < len(body) <= contract.BATCH_MAX_BYTES
    r = sk.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 202 and mm_server.count() == 1000


def test_unknown_route_and_wrong_method_are_json(mm_server, sk):
    r = sk.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert r.headers["content-type"].startswith("application/json")
    r = sk.get("/v1/track")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = sk.post("/v1/query")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    counts = mm_server.status_counts()
    assert counts["other"] == {404: 1}
    assert counts["track"] == {405: 1}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)
event_like = st.dictionaries(
    st.sampled_from([*contract.EVENT_FIELDS, "extra"]), json_values, max_size=6
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, event_like, st.fixed_dictionaries({"events": st.lists(
    event_like, max_size=3)})))
def test_any_json_body_gets_202_or_400_never_500(mm_server, sk, body):
    for route in ("/v1/track", "/v1/batch", "/v1/identify", "/v1/forget"):
        # encoded by hand: httpx's json=None would send no body (and no Content-Type)
        r = sk.post(route, content=orjson.dumps(body),
                    headers={"content-type": "application/json"})
        assert r.status_code in (200, 202, 400), (route, r.status_code, r.text)
        if r.status_code == 400:
            assert r.json()["error"] == "invalid_payload"
            details = r.json()["details"]
            assert details.get("fieldErrors") or details.get("formErrors")


# --------------------------------------------------------------------------- identify, forget


def test_identify_stores_identify_event(mm_server, sk):
    r = sk.post("/v1/identify", json={"anonymous_id": "u_abc", "user_id": "user_42",
                                      "traits": {"plan": "pro"}})
    assert r.status_code == 200 and r.json() == {"ok": True}
    (row,) = stored(mm_server)
    assert row["event_name"] == contract.IDENTIFY_EVENT
    assert (row["anonymous_id"], row["user_id"]) == ("u_abc", "user_42")
    assert row["properties"] == {"plan": "pro"}


@pytest.mark.parametrize(
    ("body", "path", "rule"),
    [
        ({"user_id": "u"}, "anonymous_id", "required"),
        ({"anonymous_id": "a"}, "user_id", "required"),
        ({"anonymous_id": "a", "user_id": "u", "traits": "x"}, "traits", "type"),
        ({"anonymous_id": "", "user_id": "u"}, "anonymous_id", "too_short"),
        (["a"], "body", "type"),
    ],
)
def test_identify_bad_input(mm_server, sk, body, path, rule):
    r = sk.post("/v1/identify", json=body)
    assert r.status_code == 400 and r.json()["error"] == "invalid_payload"
    assert r.json()["details"]["fieldErrors"][path][0].startswith(f"{rule}:")
    assert mm_server.count() == 0


def test_forget_deletes_only_that_users_rows_in_that_project(mm_server_factory, mm_client):
    keys = ["sk_dev_aaaaaaaa_secretone", "sk_dev_bbbbbbbb_secrettwo=other"]
    srv = mm_server_factory(keys=keys)
    dev = mm_client(srv)
    other = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {keys[1][:-6]}"})
    try:
        dev.post("/v1/batch", json={"events": [
            {"event": "a", "user_id": "user_42"}, {"event": "b", "user_id": "user_7"},
            {"event": "c"}, {"event": "d", "user_id": "user_42"}]})
        other.post("/v1/track", json={"event": "o", "user_id": "user_42"})
        r = dev.post("/v1/forget", json={"user_id": "user_42"})
        assert r.status_code == 200 and r.json() == {"ok": True, "queued": True}
    finally:
        other.close()
    assert [r["event_name"] for r in srv.stored_events("dev")] == ["b", "c"]
    assert [r["user_id"] for r in srv.stored_events("other")] == ["user_42"]


def test_forget_bad_input(mm_server, sk):
    r = sk.post("/v1/forget", json={"user": "x"})
    assert r.status_code == 400
    assert r.json()["details"]["fieldErrors"]["user_id"][0].startswith("required:")


def test_big_bodies_still_get_their_error_answer(mm_server, mm_client):
    body = orjson.dumps({"events": [{"event": "e", "properties": {"pad": "x" * 4900}}] * 1000})
    anon = mm_client(mm_server, kind=None)
    for _ in range(2):  # twice on the same pooled connection
        r = anon.post("/v1/batch", content=body,
                      headers={"Authorization": "Bearer sk_dev_abcdefgh_unknown"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_api_key"
    r = anon.post("/v1/nope", content=body)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = anon.put("/v1/batch", content=body)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert mm_server.count() == 0
