"""AsyncClient against the local server over real loopback HTTP.

Faults come from the server's own injection (fail_rate, reset_rate, ambiguous_rate,
inject()); httpx.MockTransport appears only in the few unit tests at the end that
shape a response the server never gives.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback

import httpx
import pytest

from millimetric_nb import contract
from millimetric_nb.client import (
    AsyncClient,
    BatchFailedError,
    _full_jitter,
    _split,
)
from millimetric_nb.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    KeyRefusedError,
    MillimetricError,
    RateLimitedError,
    ServerError,
    TransportError,
    ValidationError,
)
from millimetric_nb.events import EnrichedFieldWarning
from millimetric_nb.progress import Acknowledged, Planned, RequestSent, Retrying, Waiting

WIDE = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "limit": 1000}


def run(coro):
    return asyncio.run(coro)


pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch) -> None:
    monkeypatch.delenv(contract.ENV_KEY, raising=False)
    monkeypatch.delenv(contract.ENV_HOST, raising=False)


def secrets_of(*keys: str) -> list[str]:
    return [k.split("_", 3)[3] for k in keys]


def exception_texts(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, traceback, and its whole chain."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts += [str(cur), repr(cur), repr(cur.args)]
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- keys and config


def test_pk_key_refused_before_any_request(mm_server):
    with pytest.raises(KeyRefusedError) as info:
        AsyncClient(mm_server.keys["pk"], mm_server.url)
    assert info.value.code == "browser_key_refused"
    assert "sk_" in str(info.value) and "browser" in str(info.value)
    assert mm_server.status_counts() == {}
    assert mm_server.count() == 0
    assert secrets_of(mm_server.keys["pk"])[0] not in exception_texts(info.value)


@pytest.mark.parametrize("kind", ["rk", "ak"])
def test_read_keys_refused_for_writes_before_any_request(mm_server, kind):
    async def go() -> None:
        async with AsyncClient(mm_server.keys[kind], mm_server.url) as c:
            for call in (
                c.track("x"),
                c.identify("a", "u"),
                c.forget("u"),
                c.batch([{"event": "x"}]),
                c.send_batch_body(b'{"events":[{"event":"x"}]}', 1),
            ):
                with pytest.raises(KeyRefusedError) as info:
                    await call
                assert info.value.code == "insufficient_scope"
                assert "sk_" in str(info.value)

    run(go())
    assert mm_server.status_counts() == {}


def test_read_key_can_read(mm_server):
    async def go() -> dict:
        async with AsyncClient(mm_server.keys["rk"], mm_server.url) as c:
            return await c.read("query", WIDE)

    assert run(go()) == {"rows": []}
    assert mm_server.status_counts() == {"query": {200: 1}}


@pytest.mark.parametrize(
    "raw", ["sk_live_short_QWERTYSECRET", "QWERTYSECRET", "sk_live_1a2b3c4d_QWERTY SECRET",
            "Bearer sk_live_1a2b3c4d_QWERTYSECRET"],
)
def test_malformed_key_refused_with_shape(raw):
    with pytest.raises(KeyRefusedError) as info:
        AsyncClient(raw, "http://127.0.0.1:9")
    assert info.value.code == "malformed_api_key"
    assert contract.KEY_SHAPE in str(info.value)
    assert "QWERTY" not in exception_texts(info.value)


def test_missing_key_says_how_to_set_it():
    with pytest.raises(ConfigurationError) as info:
        AsyncClient(host="http://127.0.0.1:9")
    assert contract.ENV_KEY in str(info.value)


def test_env_configuration(monkeypatch, mm_server):
    monkeypatch.setenv(contract.ENV_KEY, mm_server.keys["sk"])
    monkeypatch.setenv(contract.ENV_HOST, mm_server.url + "/")

    async def go() -> None:
        async with AsyncClient() as c:
            assert c.host == mm_server.url
            assert c.key_masked == mm_server.keys["sk"].rsplit("_", 1)[0] + "_…"
            await c.track("from-env")

    run(go())
    assert [e["event_name"] for e in mm_server.stored_events()] == ["from-env"]


def test_default_host_is_the_contracts():
    c = AsyncClient("sk_live_1a2b3c4d_secretsecret")
    assert c.host == contract.DEFAULT_HOST
    run(c.aclose())


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("http://example.com", False),
        ("http://10.0.0.1:8787", False),
        ("http://localhost:8787", True),
        ("http://127.0.0.1:1", True),
        ("http://[::1]:8787", True),
        ("https://example.com", True),
        ("ftp://example.com", False),
        ("example.com", False),
    ],
)
def test_insecure_http_refused_for_non_loopback(host, ok):
    if ok:
        run(AsyncClient("sk_live_1a2b3c4d_secretsecret", host).aclose())
    else:
        with pytest.raises(ConfigurationError):
            AsyncClient("sk_live_1a2b3c4d_secretsecret", host)


def test_insecure_http_allowed_when_asked():
    c = AsyncClient("sk_live_1a2b3c4d_secretsecret", "http://example.com",
                    allow_insecure_http=True)
    assert c.host == "http://example.com"
    run(c.aclose())


# --------------------------------------------------------------------------- no key leaks


def test_key_never_shown_anywhere(mm_server_factory, caplog):
    srv = mm_server_factory(fail_rate=0.5, seed=3)
    good = srv.keys["sk"]
    unknown = "sk_dev_ABCDEFGH_" + "Z" * 32  # well-shaped, unknown to the server
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    async def go() -> None:
        async with AsyncClient(good, srv.url, max_attempts=2) as c:
            texts.extend([repr(c), str(c), c.key_masked])
            for i in range(10):
                try:
                    await c.track("e", properties={"i": i})
                except MillimetricError as exc:
                    texts.append(exception_texts(exc))
        async with AsyncClient(unknown, srv.url) as bad:
            texts.append(repr(bad))
            with pytest.raises(AuthenticationError) as info:
                await bad.track("e")
            assert info.value.status == 401 and info.value.attempts == 1
            texts.append(exception_texts(info.value))
        async with AsyncClient(good, f"http://127.0.0.1:{free_port()}", max_attempts=2) as down:
            with pytest.raises(TransportError) as info2:
                await down.track("e")
            texts.append(exception_texts(info2.value))

    run(go())
    texts.append(caplog.text)
    everything = "\n".join(texts)
    assert "Bearer" not in everything
    for secret in secrets_of(good, unknown):
        assert secret not in everything
    assert "_…" in everything  # the masked form is what shows


def test_no_httpx_exception_in_the_chain(mm_server):
    """httpx exceptions hold the request (and its Authorization header): never chained."""

    async def go() -> TransportError:
        async with AsyncClient(mm_server.keys["sk"], f"http://127.0.0.1:{free_port()}",
                               max_attempts=1) as c:
            with pytest.raises(TransportError) as info:
                await c.track("e")
            return info.value

    exc = run(go())
    assert exc.__cause__ is None and exc.__context__ is None
    assert not any(isinstance(x, httpx.HTTPError) for x in (exc.__cause__, exc.__context__))


def test_server_details_echoing_the_key_are_scrubbed():
    key = "sk_live_1a2b3c4d_TOPSECRETVALUE123"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_payload", "details": {
            "fieldErrors": {"event": [f"bad {key}"]}, "echo": request.headers["authorization"]}})

    async def go() -> InvalidRequestError:
        async with AsyncClient(key, "http://127.0.0.1:1",
                               transport=httpx.MockTransport(handler)) as c:
            with pytest.raises(InvalidRequestError) as info:
                await c.track("x")
            return info.value

    exc = run(go())
    assert "TOPSECRETVALUE123" not in exception_texts(exc) + repr(exc.details) + repr(
        exc.field_errors)
    assert exc.field_errors == {"event": ["bad sk_live_1a2b3c4d_…"]}


def test_client_cannot_be_pickled():
    import pickle

    c = AsyncClient("sk_live_1a2b3c4d_secretsecret", "http://127.0.0.1:1")
    with pytest.raises(TypeError):
        pickle.dumps(c)
    run(c.aclose())


@pytest.mark.parametrize("protocol", range(6))
def test_api_key_cannot_be_pickled_and_its_secret_is_in_no_pickle(protocol):
    """Issue 10 (6): ``pickle.dumps(ApiKey.parse(key))`` held the secret."""
    import copy
    import pickle

    from millimetric_nb.keys import ApiKey

    key = ApiKey.parse("sk_live_1a2b3c4d_PICKLEDSECRET42")
    with pytest.raises(TypeError, match="cannot be pickled") as info:
        pickle.dumps(key, protocol=protocol)
    assert "PICKLEDSECRET42" not in str(info.value)
    with pytest.raises(TypeError):
        pickle.dumps({"inside": [key]}, protocol=protocol)  # nor inside a container
    assert copy.deepcopy(key) is key and copy.copy(key) is key  # copies still work
    assert copy.deepcopy(key).reveal().endswith("PICKLEDSECRET42")


# --------------------------------------------------------------------------- sending


def test_track_identify_forget_round_trip(mm_server):
    async def go() -> None:
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as c:
            out = await c.track("signup", user_id="u1", anonymous_id="a1",
                                timestamp="2024-05-01T10:00:00+02:00", properties={"plan": "pro"})
            assert out.status == 202 and out.body["ok"] is True and out.body["event_id"]
            assert out.attempts == 1 and out.ambiguous is False
            await c.track("view", user_id="u2")
            ident = await c.identify(anonymous_id="a9", user_id="u2", traits={"plan": "free"})
            assert ident.status == 200
            gone = await c.forget(user_id="u1")
            assert gone.status == 200 and gone.body.get("queued") is True

    run(go())
    rows = mm_server.stored_events()
    assert {r["user_id"] for r in rows} == {"u2"}
    assert sorted(r["event_name"] for r in rows) == ["$identify", "view"]


def test_track_validation_error_sends_nothing(mm_server):
    async def go() -> None:
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as c:
            with pytest.raises(ValidationError) as info:
                await c.track("x" * 200, user_id=b"u", properties={"n": float("inf")})
            assert {p[:2] for p in info.value.problems} == {
                ("event", contract.RULE_TOO_LONG),
                ("user_id", contract.RULE_TYPE),
                ("properties.n", contract.RULE_NOT_JSON),
            }
            with pytest.warns(EnrichedFieldWarning, match="source"):
                await c.track("ok", source="google")

    run(go())
    assert mm_server.status_counts() == {"track": {202: 1}}
    assert mm_server.stored_events()[0]["source"] == "direct"  # the server's own, not ours


def test_batch_splits_by_count_and_validates_all_first(mm_server):
    events = [{"event": "e", "properties": {"i": i}} for i in range(2500)]
    seen = []

    async def go():
        async with AsyncClient(mm_server.keys["sk"], mm_server.url, observer=seen.append) as c:
            bad = [*events[:57], {"event": "e", "user_id": 3}, *events[57:]]
            with pytest.raises(ValidationError) as info:
                await c.batch(bad)
            assert [p[:2] for p in info.value.problems] == [("events[57].user_id", "type")]
            assert mm_server.status_counts() == {}
            empty = await c.batch([])
            assert empty.ok and empty.requests == [] and empty.events == 0
            return await c.batch(iter(events))

    result = run(go())
    assert [r.events for r in result.requests] == [1000, 1000, 500]
    assert result.ok and result.stored == 2500 and result.ambiguous_requests == []
    stored = sorted(r["properties"]["i"] for r in mm_server.stored_events())
    assert stored == list(range(2500))
    assert mm_server.status_counts() == {"batch": {202: 3}}
    assert sum(1 for e in seen if isinstance(e, RequestSent)) == 3
    assert sum(e.events for e in seen if isinstance(e, Acknowledged)) == 2500
    assert [e.requests for e in seen if isinstance(e, Planned)] == [0, 3]


def test_batch_splits_by_bytes(mm_server):
    big = "x" * 7900  # ~7.9 KB properties: 5 MB holds ~630 of them
    events = [{"event": "e", "properties": {"i": i, "pad": big}} for i in range(1000)]

    async def go():
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as c:
            return await c.batch(events)

    result = run(go())
    assert len(result.requests) == 2
    assert all(r.bytes <= contract.BATCH_MAX_BYTES for r in result.requests)
    assert result.requests[0].bytes > contract.BATCH_MAX_BYTES - 8000  # filled, not halved
    assert mm_server.count() == 1000


def test_split_plan_limits():
    ev = b'{"event":"e"}'
    assert _split([ev] * 2001) == [(0, 1000), (1000, 2000), (2000, 2001)]
    assert _split([]) == []
    fat = b"x" * 2_000_000
    assert _split([fat] * 5) == [(0, 2), (2, 4), (4, 5)]


# --------------------------------------------------------------------------- retries, ambiguity


def test_retries_through_fail_and_reset_lose_nothing(mm_server_factory):
    srv = mm_server_factory(fail_rate=0.3, reset_rate=0.2, seed=7)
    events = [{"event": "b", "event_id": f"b{i}"} for i in range(3000)]

    async def go():
        async with AsyncClient(srv.keys["sk"], srv.url, max_attempts=20) as c:
            singles = await asyncio.gather(*(c.track("t", event_id=f"t{i}") for i in range(40)))
            return singles, await c.batch(events)

    singles, result = run(go())
    faults = srv.fault_counts()
    assert faults["fail"] > 0 and faults["reset"] > 0  # the faults did happen
    assert result.ok
    ids = [r["event_id"] for r in srv.stored_events()]
    # fail and reset write nothing: every event exactly once, none lost
    assert sorted(ids) == sorted([f"t{i}" for i in range(40)] + [f"b{i}" for i in range(3000)])
    assert any(s.attempts > 1 for s in singles) or any(r.attempts > 1 for r in result.requests)


@pytest.mark.parametrize("fault", ["ambiguous_500", "ambiguous_drop"])
def test_success_after_ambiguous_failure_is_flagged(mm_server, fault):
    mm_server.inject("track", fault, 1)
    seen = []

    async def go():
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as c:
            return await c.track("dup", event_id="e1", observer=seen.append)

    out = run(go())
    assert out.attempts == 2 and out.ambiguous is True
    assert [r["event_id"] for r in mm_server.stored_events()] == ["e1", "e1"]  # the duplicate
    retry = [e for e in seen if isinstance(e, Retrying)]
    assert len(retry) == 1 and retry[0].ambiguous is True
    assert [e.ambiguous for e in seen if isinstance(e, Acknowledged)] == [True]


def test_final_ambiguous_failure_raises_with_ambiguous(mm_server_factory):
    srv = mm_server_factory(ambiguous_rate=1.0, seed=1)

    async def go():
        async with AsyncClient(srv.keys["sk"], srv.url, max_attempts=3) as c:
            with pytest.raises(MillimetricError) as info:
                await c.track("x", event_id="amb")
            return info.value

    exc = run(go())
    assert exc.ambiguous is True and exc.attempts == 3
    assert srv.count() == 3  # written three times although no success was seen


def test_connect_error_is_not_ambiguous():
    async def go():
        async with AsyncClient("sk_live_1a2b3c4d_secretsecret",
                               f"http://127.0.0.1:{free_port()}", max_attempts=3) as c:
            with pytest.raises(TransportError) as info:
                await c.track("x")
            return info.value

    exc = run(go())
    assert exc.code == "connect_failed" and exc.ambiguous is False and exc.attempts == 3


def test_5xx_exhausted_is_server_error_with_attempts(mm_server):
    mm_server.inject("track", "upstream_failed", 5)

    async def go():
        async with AsyncClient(mm_server.keys["sk"], mm_server.url, max_attempts=4) as c:
            with pytest.raises(ServerError) as info:
                await c.track("x")
            return info.value

    exc = run(go())
    assert (exc.code, exc.status, exc.attempts, exc.ambiguous) == ("upstream_failed", 502, 4, True)
    assert mm_server.status_counts() == {"track": {502: 4}}
    assert mm_server.count() == 0


def test_4xx_is_never_retried_and_carries_field_errors(mm_server):
    body = b'{"events":[{"event":"ok"},{"event":""}]}'  # the server's own validation refuses it

    async def go():
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as c:
            with pytest.raises(InvalidRequestError) as info:
                await c.send_batch_body(body, 2)
            return info.value

    exc = run(go())
    assert exc.code == "invalid_payload" and exc.status == 400 and exc.attempts == 1
    assert exc.field_errors and any("event" in path for path in exc.field_errors)
    assert exc.ambiguous is False
    assert mm_server.status_counts() == {"batch": {400: 1}}
    assert mm_server.count() == 0


def test_send_batch_body_refuses_out_of_contract_sizes(mm_server):
    async def go():
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as c:
            with pytest.raises(ValidationError):
                await c.send_batch_body(b'{"events":[]}', 0)
            with pytest.raises(ValidationError):
                await c.send_batch_body(b"{}", 1001)
            with pytest.raises(ValidationError):
                await c.send_batch_body(b"x" * (contract.BATCH_MAX_BYTES + 1), 1)

    run(go())
    assert mm_server.status_counts() == {}


def test_batch_failure_accounts_for_every_event(mm_server):
    mm_server.inject("batch", "ambiguous_500", 2)  # the first request fails twice

    async def go():
        async with AsyncClient(mm_server.keys["sk"], mm_server.url, max_attempts=2,
                               max_concurrency=1) as c:
            with pytest.raises(BatchFailedError) as info:
                await c.batch([{"event": "e"}] * 1500)
            return info.value

    exc = run(go())
    r = exc.result
    assert [q.state for q in r.requests] == ["failed", "stored"]
    assert r.failed == 1000 and r.stored == 500 and r.failed + r.stored == r.events
    assert exc.ambiguous is True and r.ambiguous_requests == [0]
    assert r.requests[0].error is not None and r.requests[0].error.code == "internal_error"


# --------------------------------------------------------------------------- rate limits


def test_429_pauses_the_route_and_everything_gets_in(mm_server_factory):
    srv = mm_server_factory(limits="production")
    seen = []

    async def go():
        async with AsyncClient(srv.keys["sk"], srv.url, rate_limits="off",
                               observer=seen.append, max_attempts=10) as c:
            await asyncio.gather(*(
                c.send_batch_body(b'{"events":[{"event":"x","event_id":"%d"}]}' % i, 1)
                for i in range(32)
            ))

    run(go())
    assert srv.status_counts()["batch"].get(429, 0) > 0  # the server did push back
    assert sorted(int(r["event_id"]) for r in srv.stored_events()) == list(range(32))
    assert any(isinstance(e, Waiting) and e.reason == "retry_after" for e in seen)


def test_429_surfaces_retry_after_when_out_of_attempts(mm_server_factory):
    srv = mm_server_factory(limits="production")

    async def go():
        async with AsyncClient(srv.keys["sk"], srv.url, rate_limits="off", max_attempts=1) as c:
            for _ in range(20):
                await c.send_batch_body(b'{"events":[{"event":"x"}]}', 1)
            with pytest.raises(RateLimitedError) as info:
                await c.send_batch_body(b'{"events":[{"event":"x"}]}', 1)
            return info.value

    exc = run(go())
    assert exc.status == 429 and exc.code == "rate_limited" and exc.retry_after >= 1
    assert exc.ambiguous is False


def test_mirrored_buckets_get_no_429(mm_server_factory):
    srv = mm_server_factory(limits="production")
    seen = []

    async def go():
        async with AsyncClient(srv.keys["sk"], srv.url, observer=seen.append) as c:
            await asyncio.gather(*(
                c.send_batch_body(b'{"events":[{"event":"x"}]}', 1) for _ in range(28)
            ))

    run(go())
    assert srv.status_counts() == {"batch": {202: 28}}
    assert any(isinstance(e, Waiting) and e.reason == "rate_limit" for e in seen)


# --------------------------------------------------------------------------- odds and ends


def test_read_routes_and_closed_client(mm_server):
    async def go():
        c = AsyncClient(mm_server.keys["sk"], mm_server.url)
        await c.track("x")
        rows = (await c.read("query", WIDE))["rows"]
        with pytest.raises(ConfigurationError):
            await c.read("track", {})  # type: ignore[arg-type]
        await c.aclose()
        await c.aclose()  # idempotent
        with pytest.raises(ConfigurationError):
            await c.track("late")
        return rows

    rows = run(go())
    assert [r["event_name"] for r in rows] == ["x"]


def test_full_jitter_bounds():
    draws = [_full_jitter(n, 0.1, 5.0) for n in range(1, 12) for _ in range(50)]
    assert all(0.0 <= d <= 5.0 for d in draws)
    assert max(_full_jitter(1, 0.1, 5.0) for _ in range(200)) <= 0.1
    assert len({round(d, 6) for d in draws}) > 100  # jittered, not fixed


def test_non_json_5xx_is_retried_then_mapped():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, text="<html>busy</html>")
        return httpx.Response(202, json={"ok": True, "event_id": "z"})

    async def go():
        async with AsyncClient("sk_live_1a2b3c4d_secretsecret", "http://127.0.0.1:1",
                               transport=httpx.MockTransport(handler)) as c:
            return await c.track("x")

    out = run(go())
    assert out.attempts == 3 and out.ambiguous is True and len(calls) == 3
    assert calls[0].headers["authorization"] == "Bearer sk_live_1a2b3c4d_secretsecret"
    assert calls[0].headers["content-type"] == "application/json"


def test_read_timeout_is_ambiguous():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async def go():
        async with AsyncClient("sk_live_1a2b3c4d_secretsecret", "http://127.0.0.1:1",
                               transport=httpx.MockTransport(handler), max_attempts=2) as c:
            with pytest.raises(TransportError) as info:
                await c.track("x")
            return info.value

    exc = run(go())
    assert exc.code == "timeout" and exc.ambiguous is True and exc.attempts == 2
    assert exc.__context__ is None and exc.__cause__ is None
    assert "secretsecret" not in exception_texts(exc)
