"""Authentication and scope of the local server, over real loopback HTTP: every 401/403
code of the contract, and keys never echoed back."""

from __future__ import annotations

import httpx
import pytest

WRITES = [("/v1/track", {"event": "e"}), ("/v1/batch", {"events": [{"event": "e"}]}),
          ("/v1/identify", {"anonymous_id": "a", "user_id": "u"}),
          ("/v1/forget", {"user_id": "u"})]
READS = ["/v1/query", "/v1/stats", "/v1/sources"]
WINDOW = {"from": "2020-01-01", "to": "2030-01-01"}


def call(client: httpx.Client, path: str, body: dict | None = None, **kw) -> httpx.Response:
    if path in READS:
        return client.get(path, params=WINDOW, **kw)
    return client.post(path, json=body, **kw)


@pytest.mark.parametrize(("path", "body"), [*WRITES, *[(p, None) for p in READS]])
def test_missing_or_non_bearer_header(mm_server, mm_client, path, body):
    anon = mm_client(mm_server, kind=None)
    for headers in ({}, {"Authorization": f"Basic {mm_server.keys['sk']}"},
                    {"Authorization": "Bearer"}):
        r = call(anon, path, body, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "missing_bearer_token"
    assert mm_server.count() == 0


def test_malformed_unknown_and_mismatched_keys(mm_server, mm_client):
    anon = mm_client(mm_server, kind=None)
    sk = mm_server.keys["sk"]
    _kind, env, prefix, secret = sk.split("_", 3)
    cases = {
        "malformed_api_key": ["not-a-key", "sk_live_short_abc", "xk_dev_abcdefgh_secret"],
        "invalid_api_key": [f"sk_{env}_{prefix}_wrongsecret", "sk_dev_ZZZZZZZZ_whatever",
                            f"sk_live_{prefix}_{secret}"],
        "key_kind_mismatch": [f"rk_{env}_{prefix}_{secret}", f"pk_{env}_{prefix}_{secret}"],
    }
    for code, keys in cases.items():
        for key in keys:
            r = anon.post("/v1/track", json={"event": "e"},
                          headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 401, (code, r.text)
            assert r.json()["error"] == code
            assert secret not in r.text and "wrongsecret" not in r.text
    assert mm_server.count() == 0


def test_rk_and_ak_cannot_write(mm_server, mm_client):
    for kind in ("rk", "ak"):
        c = mm_client(mm_server, kind)
        for path, body in WRITES:
            r = c.post(path, json=body)
            assert r.status_code == 403 and r.json()["error"] == "insufficient_scope", path
    assert mm_server.count() == 0


def test_pk_needs_an_allowed_origin_and_cannot_forget_or_read(mm_server, mm_client):
    pk = mm_client(mm_server, "pk")
    r = pk.post("/v1/track", json={"event": "e"})
    assert r.status_code == 403 and r.json()["error"] == "origin_not_allowed"
    r = pk.post("/v1/track", json={"event": "e"}, headers={"Origin": "https://evil.test"})
    assert r.status_code == 403 and r.json()["error"] == "origin_not_allowed"
    ok = {"Origin": "http://localhost:3000"}
    assert pk.post("/v1/track", json={"event": "e"}, headers=ok).status_code == 202
    assert pk.post("/v1/batch", json={"events": [{"event": "e"}]}, headers=ok).status_code == 202
    r = pk.post("/v1/forget", json={"user_id": "u"}, headers=ok)
    assert r.status_code == 403 and r.json()["error"] == "forget_requires_secret_key"
    for path in READS:
        r = pk.get(path, params=WINDOW, headers=ok)
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    assert mm_server.count() == 2


def test_reads_take_sk_rk_and_ak(mm_server, mm_client):
    for kind in ("sk", "rk", "ak"):
        c = mm_client(mm_server, kind)
        for path in READS:
            assert c.get(path, params=WINDOW).status_code == 200, (kind, path)


def test_only_sk_may_forget(mm_server, mm_client):
    assert mm_client(mm_server, "sk").post("/v1/forget", json={"user_id": "u"}).status_code == 200
    for kind in ("rk", "ak"):
        r = mm_client(mm_server, kind).post("/v1/forget", json={"user_id": "u"})
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"


def test_given_keys_and_projects(mm_server_factory):
    srv = mm_server_factory(keys=["sk_test_abcd1234_s3cret", "rk_test_wxyz9876_r3ad=shop"])
    assert srv.keys == {"sk": "sk_test_abcd1234_s3cret", "rk": "rk_test_wxyz9876_r3ad"}
    with httpx.Client(base_url=srv.url) as c:
        r = c.post("/v1/track", json={"event": "e"},
                   headers={"Authorization": "Bearer sk_test_abcd1234_s3cret"})
        assert r.status_code == 202
        r = c.get("/v1/query", params=WINDOW,
                  headers={"Authorization": "Bearer rk_test_wxyz9876_r3ad"})
        assert r.json()["rows"] == []  # the rk_ key reads project "shop", not "dev"
    assert srv.count("dev") == 1 and srv.count("shop") == 0


def test_minted_keys_have_the_documented_shape(mm_server):
    from millimetric_nb import ApiKey

    assert set(mm_server.keys) == {"pk", "sk", "rk", "ak"}
    for kind, raw in mm_server.keys.items():
        key = ApiKey.parse(raw)
        assert key.kind == kind and key.env == "dev"
    assert mm_server.keys["sk"] not in repr(mm_server)


def test_config_and_handle_reprs_hide_secrets(mm_server_factory):
    from millimetric_nb.server import ServerConfig

    raw = "sk_dev_abcd1234_TopSecretValue"
    cfg = ServerConfig(keys=[raw])
    assert "TopSecretValue" not in repr(cfg)
    srv = mm_server_factory(keys=[raw])
    assert "TopSecretValue" not in repr(srv) + repr(srv.state.stored_keys)
