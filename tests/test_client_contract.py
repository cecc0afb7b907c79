"""AsyncClient against the contract, over real loopback HTTP to the local server: every
error code mapped to its exception class and ``code``, bad input refused before any
request, logs that never carry a key nor print a line per retry, the route-wide pause
of a 429, concurrent batch requests, another plan's limits, and value encoding as
stored by the server.

httpx.MockTransport appears only to replay, byte for byte, answers the real server gave
for codes this client cannot provoke itself (it refuses those requests first).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from millimetric_nb import contract
from millimetric_nb.client import AsyncClient
from millimetric_nb.contract import RateLimit
from millimetric_nb.errors import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    ValidationError,
)
from millimetric_nb.progress import Acknowledged, RequestSent, Retrying, Waiting
from millimetric_nb.server import ManualClock

WIDE = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "limit": 1000}
CLASS_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
    429: RateLimitedError, 500: ServerError, 502: ServerError,
}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch) -> None:
    monkeypatch.delenv(contract.ENV_KEY, raising=False)
    monkeypatch.delenv(contract.ENV_HOST, raising=False)


def secret(key: str) -> str:
    return key.split("_", 3)[3]


# --------------------------------------------------------------------------- error codes


def _raw_answers(srv, limited) -> dict[str, tuple[str, httpx.Response]]:
    """``{code: (client call, the real server's answer)}`` for every code of the contract."""
    sk, pk, rk = srv.keys["sk"], srv.keys["pk"], srv.keys["rk"]
    _, env, prefix, sec = sk.split("_", 3)
    origin = {"Origin": "http://localhost:3000"}

    def post(path: str, body: Any, key: str | None = sk, **headers: str) -> httpx.Response:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.post(srv.url + path, json=body, headers=headers)

    def get(path: str, params: dict[str, str]) -> httpx.Response:
        return httpx.get(srv.url + path, params=params, headers={"Authorization": f"Bearer {sk}"})

    answers = {
        "invalid_payload": ("track", post("/v1/track", {"event": ""})),
        "invalid_params": ("query", get("/v1/query", {"from": "2024-01-01"})),
        "invalid_group_by": ("stats", get("/v1/stats", {**WIDE, "group_by": "secret"})),
        "missing_bearer_token": ("track", post("/v1/track", {"event": "e"}, key=None)),
        "malformed_api_key": ("track", post("/v1/track", {"event": "e"}, key="not-a-key")),
        "invalid_api_key": ("track", post("/v1/track", {"event": "e"},
                                          key=f"sk_{env}_{prefix}_unknownsecret")),
        "key_kind_mismatch": ("track", post("/v1/track", {"event": "e"},
                                            key=f"rk_{env}_{prefix}_{sec}")),
        "origin_not_allowed": ("track", post("/v1/track", {"event": "e"}, key=pk)),
        "insufficient_scope": ("track", post("/v1/track", {"event": "e"}, key=rk)),
        "forget_requires_secret_key": ("forget", post("/v1/forget", {"user_id": "u"}, key=pk,
                                                      **origin)),
    }
    srv.inject("track", "internal_error")
    answers["internal_error"] = ("track", post("/v1/track", {"event": "e"}))
    srv.inject("track", "upstream_failed")
    answers["upstream_failed"] = ("track", post("/v1/track", {"event": "e"}))
    srv.inject("forget", "forget_failed")
    answers["forget_failed"] = ("forget", post("/v1/forget", {"user_id": "u"}))
    lk = limited.keys["sk"]
    for _ in range(contract.RATE_LIMITS["batch"].burst):
        httpx.post(limited.url + "/v1/batch", json={"events": [{"event": "e"}]},
                   headers={"Authorization": f"Bearer {lk}"})
    answers["rate_limited"] = ("batch", httpx.post(
        limited.url + "/v1/batch", json={"events": [{"event": "e"}]},
        headers={"Authorization": f"Bearer {lk}"}))
    return answers


def _call(client: AsyncClient, route: str) -> Any:
    if route == "track":
        return client.track("e")
    if route == "forget":
        return client.forget("u")
    if route == "batch":
        return client.send_batch_body(b'{"events":[{"event":"e"}]}', 1)
    return client.read(route, WIDE)  # type: ignore[arg-type]


def test_every_contract_error_code_maps_to_its_class_and_code(mm_server_factory):
    srv = mm_server_factory()
    limited = mm_server_factory(limits="production", clock=ManualClock())
    answers = _raw_answers(srv, limited)
    assert set(answers) == set(contract.ERRORS)
    for code, (route, answer) in answers.items():
        spec = contract.ERRORS[code]
        assert (answer.status_code, answer.json()["error"]) == (spec.status, code)

        def replay(request: httpx.Request, answer: httpx.Response = answer) -> httpx.Response:
            headers = {k: v for k, v in answer.headers.items()
                       if k.lower() in ("content-type", "retry-after")}
            return httpx.Response(answer.status_code, headers=headers, content=answer.content)

        async def go(route: str = route) -> Exception:
            async with AsyncClient("sk_live_1a2b3c4d_replaysecret", "http://127.0.0.1:1",
                                   transport=httpx.MockTransport(replay), max_attempts=1,
                                   rate_limits="off") as c:
                with pytest.raises(APIError) as info:
                    await _call(c, route)
                return info.value

        exc = run(go())
        assert type(exc) is CLASS_BY_STATUS[spec.status], code
        assert (exc.code, exc.status, exc.attempts) == (code, spec.status, 1), code
        assert exc.details == answer.json()["details"]
        assert exc.ambiguous is (spec.status >= 500), code
        if spec.status == 400:
            assert exc.field_errors, code  # the fields the server named
        if code == "rate_limited":
            assert exc.retry_after == float(answer.headers["Retry-After"]) == 1.0
            assert answer.json()["details"]["retry_after_s"] == 0.2
        else:
            assert exc.retry_after is None


@pytest.mark.parametrize(
    ("code", "cls", "attempts"),
    [("invalid_payload", InvalidRequestError, 1), ("invalid_params", InvalidRequestError, 1),
     ("invalid_group_by", InvalidRequestError, 1), ("invalid_api_key", AuthenticationError, 1),
     ("key_kind_mismatch", AuthenticationError, 1), ("internal_error", ServerError, 3),
     ("upstream_failed", ServerError, 3), ("forget_failed", ServerError, 3)],
)
def test_codes_the_client_can_meet_over_loopback(mm_server, code, cls, attempts):
    sk = mm_server.keys["sk"]
    _, env, prefix, sec = sk.split("_", 3)
    key = {"invalid_api_key": f"sk_{env}_{prefix}_unknownsecret",
           "key_kind_mismatch": f"rk_{env}_{prefix}_{sec}"}.get(code, sk)
    if code in ("internal_error", "upstream_failed"):
        mm_server.inject("track", code, attempts)
    if code == "forget_failed":
        mm_server.inject("forget", code, attempts)

    async def go() -> Exception:
        async with AsyncClient(key, mm_server.url, max_attempts=3) as c:
            with pytest.raises(cls) as info:
                if code == "invalid_payload":
                    await c.send_batch_body(b'{"events":[{"event":""}]}', 1)
                elif code == "invalid_params":
                    await c.read("query", {"from": "yesterday", "to": "2100-01-01"})
                elif code == "invalid_group_by":
                    await c.read("stats", {**WIDE, "group_by": "password"})
                elif code == "key_kind_mismatch":
                    await c.read("query", WIDE)  # an rk_ key may read: the server says no
                elif code == "forget_failed":
                    await c.forget("u")
                else:
                    await c.track("e")
            return info.value

    exc = run(go())
    assert (exc.code, exc.attempts) == (code, attempts)
    assert exc.status == contract.ERRORS[code].status
    assert secret(sk) not in str(exc) + repr(exc.details)
    assert mm_server.count() == 0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_retryable_statuses_are_retried(status):
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(status, json={"error": "internal_error", "details": {}})
        return httpx.Response(202, json={"ok": True, "event_id": "x"})

    async def go() -> Any:
        async with AsyncClient("sk_live_1a2b3c4d_secretsecret", "http://127.0.0.1:1",
                               transport=httpx.MockTransport(handler)) as c:
            return await c.track("e")

    out = run(go())
    assert (out.attempts, out.ambiguous, len(calls)) == (2, True, 2)


@pytest.mark.parametrize("status", [401, 403, 404, 405, 409, 413, 422])
def test_other_4xx_are_never_retried(status):
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, json={"error": "nope", "details": {}})

    async def go() -> APIError:
        async with AsyncClient("sk_live_1a2b3c4d_secretsecret", "http://127.0.0.1:1",
                               transport=httpx.MockTransport(handler)) as c:
            with pytest.raises(APIError) as info:
                await c.track("e")
            return info.value

    exc = run(go())
    assert len(calls) == 1 and exc.attempts == 1 and exc.status == status
    assert exc.code == "nope" and exc.ambiguous is False


def test_backoff_is_exponential_with_full_jitter(mm_server_factory):
    srv = mm_server_factory(fail_rate=1.0, seed=2)
    seen: list[Any] = []

    async def go() -> Exception:
        async with AsyncClient(srv.keys["sk"], srv.url, max_attempts=6,
                               observer=seen.append) as c:
            with pytest.raises(ServerError) as info:
                await c.track("e")
            return info.value

    exc = run(go())
    retries = [e for e in seen if isinstance(e, Retrying)]
    assert [r.attempt for r in retries] == [1, 2, 3, 4, 5] and exc.attempts == 6
    for r in retries:
        ceiling = min(5.0, contract.BACKOFF_INITIAL_S * 2 ** (r.attempt - 1))
        assert 0.0 <= r.delay <= ceiling, (r.attempt, r.delay)
        assert r.code in ("internal_error", "upstream_failed") and r.ambiguous is True
    assert sum(srv.status_counts()["track"].values()) == 6


# --------------------------------------------------------------------------- logs


def test_logs_at_debug_never_carry_the_key_and_retries_print_no_warning(mm_server_factory,
                                                                          caplog):
    srv = mm_server_factory(fail_rate=0.3, ambiguous_rate=0.1, reset_rate=0.1, seed=5)
    key = srv.keys["sk"]
    unknown = "sk_dev_ABCDEFGH_" + "Q" * 32
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        async with AsyncClient(key, srv.url, max_attempts=30) as c:
            for i in range(8):
                await c.track("e", properties={"i": i})
            await c.batch([{"event": "b"}] * 3)
        async with AsyncClient(unknown, srv.url) as bad:
            with pytest.raises(AuthenticationError):
                await bad.track("e")

    run(go())
    records = caplog.records
    loggers = {r.name.split(".")[0] for r in records}
    assert {"httpx", "httpcore", "millimetric_nb"} <= loggers  # DEBUG capture really works
    text = caplog.text + "\n".join(r.getMessage() + repr(r.args) for r in records)
    for leak in (secret(key), secret(unknown), "Bearer", "authorization", "Authorization"):
        assert leak not in text
    loud = [(r.name, r.levelname, r.getMessage()) for r in records if r.levelno >= logging.WARNING]
    assert loud == []  # nothing a notebook would print by default (stamina logged WARNING)
    retried = [r for r in records if r.name == "millimetric_nb.client" and "retrying" in
               r.getMessage()]
    assert retried and all(r.levelno == logging.INFO for r in retried)
    assert sum(srv.fault_counts().values()) > 0


# --------------------------------------------------------------------------- bad input

S = "x" * 10_000
BAD_CALLS: list[tuple[str, Callable[[AsyncClient], Any], str, str]] = [
    ("event None", lambda c: c.track(None), "event", contract.RULE_REQUIRED),
    ("event int", lambda c: c.track(123), "event", contract.RULE_TYPE),
    ("event bytes", lambda c: c.track(b"signup"), "event", contract.RULE_TYPE),
    ("event 10k", lambda c: c.track(S), "event", contract.RULE_TOO_LONG),
    ("event surrogate", lambda c: c.track("sign\ud800up"), "event", contract.RULE_UNICODE),
    ("user_id 10k", lambda c: c.track("e", user_id=S), "user_id", contract.RULE_TOO_LONG),
    ("url 10k", lambda c: c.track("e", url=S), "url", contract.RULE_TOO_LONG),
    ("session bytes", lambda c: c.track("e", session_id=b"s"), "session_id", contract.RULE_TYPE),
    ("props surrogate", lambda c: c.track("e", properties={"k": "\udc00"}), "properties.k",
     contract.RULE_UNICODE),
    ("props object", lambda c: c.track("e", properties={"o": {"inner": object()}}),
     "properties.o.inner", contract.RULE_NOT_JSON),
    ("props timedelta", lambda c: c.track("e", properties={"d": dt.timedelta(1)}),
     "properties.d", contract.RULE_NOT_JSON),
    ("props bytes", lambda c: c.track("e", properties={"b": b"raw"}), "properties.b",
     contract.RULE_NOT_JSON),
    ("props 10k x2", lambda c: c.track("e", properties={"a": S}), "properties",
     contract.RULE_TOO_LARGE),
    ("props list", lambda c: c.track("e", properties=["a"]), "properties", contract.RULE_TYPE),
    ("timestamp word", lambda c: c.track("e", timestamp="yesterday"), "timestamp",
     contract.RULE_TIMESTAMP),
    ("timestamp int", lambda c: c.track("e", timestamp=1_700_000_000), "timestamp",
     contract.RULE_TIMESTAMP),
    ("unknown field", lambda c: c.track("e", colour="red"), "colour",
     contract.RULE_UNKNOWN_FIELD),
    ("identify None", lambda c: c.identify(None, "u"), "anonymous_id", contract.RULE_REQUIRED),
    ("identify bytes", lambda c: c.identify("a", b"u"), "user_id", contract.RULE_TYPE),
    ("identify 10k", lambda c: c.identify(S, "u"), "anonymous_id", contract.RULE_TOO_LONG),
    ("traits object", lambda c: c.identify("a", "u", traits={"o": object()}), "traits.o",
     contract.RULE_NOT_JSON),
    ("traits str", lambda c: c.identify("a", "u", traits="pro"), "traits", contract.RULE_TYPE),
    ("forget None", lambda c: c.forget(None), "user_id", contract.RULE_REQUIRED),
    ("forget int", lambda c: c.forget(42), "user_id", contract.RULE_TYPE),
    ("forget 10k", lambda c: c.forget(S), "user_id", contract.RULE_TOO_LONG),
    ("forget surrogate", lambda c: c.forget("\ud83d"), "user_id", contract.RULE_UNICODE),
    ("batch None", lambda c: c.batch([{"event": "ok"}, {"event": None}]), "events[1].event",
     contract.RULE_REQUIRED),
    ("batch str", lambda c: c.batch([{"event": "ok"}, "nope"]), "events[1]", contract.RULE_TYPE),
    ("batch None", lambda c: c.batch(None), "events", contract.RULE_TYPE),
    ("batch one event", lambda c: c.batch({"event": "e"}), "events", contract.RULE_TYPE),
    ("batch text", lambda c: c.batch("events"), "events", contract.RULE_TYPE),
    ("batch nested",
     lambda c: c.batch([{"event": "ok", "properties": {"s": [1, {"o": object()}]}}]),
     "events[0].properties.s[1].o", contract.RULE_NOT_JSON),
]


@pytest.mark.parametrize(("label", "call", "path", "rule"), BAD_CALLS,
                         ids=[b[0] for b in BAD_CALLS])
def test_bad_input_is_a_validation_error_naming_field_and_rule_and_nothing_is_sent(
    mm_server, label, call, path, rule
):
    async def go() -> ValidationError:
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as c:
            with pytest.raises(ValidationError) as info:
                await call(c)
            return info.value

    exc = run(go())
    assert (path, rule) in [p[:2] for p in exc.problems], exc.problems
    assert path in str(exc) and rule in str(exc)
    assert exc.code == "validation_failed" and exc.status is None
    assert "\ud800" not in repr(exc)
    str(exc).encode("utf-8")  # printable: no lone surrogate copied into the message
    assert mm_server.status_counts() == {}


# --------------------------------------------------------------------------- rate limits


@pytest.mark.parametrize("limits", [{"batch": RateLimit(0.0, 5)}, {"track": (50, 200)}, "fast"])
def test_bad_rate_limits_are_a_configuration_error(limits):
    from millimetric_nb.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        AsyncClient("sk_live_1a2b3c4d_secretsecret", "http://127.0.0.1:1", rate_limits=limits)
    assert info.value.code == "invalid_rate_limits"


@pytest.mark.parametrize("option", [{"max_concurrency": "3"}, {"max_attempts": True},
                                    {"timeout": "30"}, {"timeout": 0},
                                    {"backoff_initial": -1}, {"backoff_max": float("nan")}])
def test_bad_client_options_are_a_configuration_error(option):
    from millimetric_nb.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        AsyncClient("sk_live_1a2b3c4d_secretsecret", "http://127.0.0.1:1", **option)
    assert next(iter(option)) in str(info.value)


def test_a_burst_past_200_tracks_meets_no_429(mm_server_factory):
    """The client's track bucket mirrors the server's: 230 concurrent tracks wait for
    the refill instead of being refused."""
    srv = mm_server_factory(limits="production")
    seen: list[Any] = []

    async def go() -> None:
        async with AsyncClient(srv.keys["sk"], srv.url, observer=seen.append) as c:
            await asyncio.gather(*(c.track("t", event_id=str(i)) for i in range(230)))

    run(go())
    assert srv.status_counts() == {"track": {202: 230}}
    assert sorted(int(r["event_id"]) for r in srv.stored_events()) == list(range(230))
    assert any(isinstance(e, Waiting) and e.reason == "rate_limit" for e in seen)


def test_a_429_pauses_the_whole_route_for_every_caller(mm_server_factory):
    """A's 429 holds the route: B, started after it, reaches the server only once the
    pause is over, so the server answers exactly one 429."""
    clock = ManualClock()
    srv = mm_server_factory(limits="production", clock=clock)
    key = srv.keys["sk"]
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}) as raw:
        for _ in range(contract.RATE_LIMITS["batch"].burst):  # empty the server's bucket
            assert raw.post("/v1/batch", json={"events": [{"event": "x"}]}).status_code == 202
    seen_a: list[Any] = []
    seen_b: list[Any] = []
    paused_when_b_sent: list[float] = []

    async def go() -> None:
        limited = asyncio.Event()

        def observe_a(event: Any) -> None:
            seen_a.append(event)
            if isinstance(event, Retrying):
                clock.advance(1.0)  # the server refills while the client waits Retry-After
                limited.set()

        async with AsyncClient(key, srv.url, rate_limits="off") as c:
            bucket = c.limiter.bucket("batch")

            def observe_b(event: Any) -> None:
                seen_b.append(event)
                if isinstance(event, RequestSent):
                    paused_when_b_sent.append(bucket.paused_for)

            body = b'{"events":[{"event":"%s"}]}'
            a = asyncio.create_task(c.send_batch_body(body % b"a", 1, observer=observe_a))
            await limited.wait()
            assert bucket.paused_for > 0.5  # Retry-After: 1
            b = await c.send_batch_body(body % b"b", 1, observer=observe_b)
            assert (await a).attempts == 2 and b.attempts == 1

    run(go())
    assert srv.status_counts()["batch"] == {202: 22, 429: 1}
    assert paused_when_b_sent == [0.0]  # B left only once the route's pause was over
    assert [e.code for e in seen_a if isinstance(e, Retrying)] == ["rate_limited"]
    # one wait for the route's pause (reported by the caller at the head of the queue)
    waits = [e for e in seen_a + seen_b if isinstance(e, Waiting)]
    assert [w.reason for w in waits] == ["retry_after"] and 0 < waits[0].seconds <= 1.0
    assert sorted(r["event_name"] for r in srv.stored_events())[:2] == ["a", "b"]


def test_another_plans_limits_are_mirrored(mm_server_factory):
    """A plan twice production (server ``x2``): the client given that plan sends the
    bigger burst at once and still meets no 429."""
    srv = mm_server_factory(limits="x2")
    plan = {"batch": RateLimit(10.0, 40)}
    seen: list[Any] = []

    async def go() -> None:
        async with AsyncClient(srv.keys["sk"], srv.url, rate_limits=plan,
                               observer=seen.append) as c:
            await asyncio.gather(*(c.send_batch_body(b'{"events":[{"event":"x"}]}', 1)
                                   for _ in range(46)))

    run(go())
    assert srv.status_counts() == {"batch": {202: 46}}
    first_wait = next(i for i, e in enumerate(seen) if isinstance(e, Waiting))
    sent_before = sum(isinstance(e, RequestSent) for e in seen[:first_wait])
    assert sent_before > contract.RATE_LIMITS["batch"].burst  # the plan's burst, not 20


@pytest.mark.parametrize(("concurrency", "overlap"), [(8, True), (1, False)])
def test_batch_requests_are_sent_concurrently(mm_server_factory, concurrency, overlap):
    srv = mm_server_factory(latency_ms=80)
    seen: list[Any] = []

    async def go() -> Any:
        async with AsyncClient(srv.keys["sk"], srv.url, max_concurrency=concurrency,
                               observer=seen.append) as c:
            return await c.batch([{"event": "e", "properties": {"i": i}} for i in range(4000)])

    result = run(go())
    assert result.ok and len(result.requests) == 4
    order = [type(e).__name__ for e in seen if isinstance(e, RequestSent | Acknowledged)]
    in_flight = peak = 0
    for name in order:
        in_flight += 1 if name == "RequestSent" else -1
        peak = max(peak, in_flight)
    assert (peak > 1) is overlap and peak <= concurrency
    assert sorted(r["properties"]["i"] for r in srv.stored_events()) == list(range(4000))


# --------------------------------------------------------------------------- values


def test_values_are_encoded_as_the_server_stores_them(mm_server):
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    sent = [
        (pd.Timestamp("2024-05-01 12:00", tz="Europe/Paris"), "2024-05-01T10:00:00.000000Z"),
        (dt.datetime(2024, 5, 1, 12, 0), "2024-05-01T12:00:00.000000Z"),  # naive = UTC
        (np.datetime64("2024-05-01T12:00:00.123456789"), "2024-05-01T12:00:00.123456Z"),
        ("2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00.000000Z"),
        (dt.datetime(2024, 5, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=-4))),
         "2024-05-01T12:00:00.000000Z"),
    ]
    properties = {
        "np_int": np.int64(3), "np_float": np.float32(1.5), "np_bool": np.bool_(True),
        "arr": np.array([1, 2]), "ts": pd.Timestamp("2024-01-02T03:04:05Z"),
        "dec": Decimal("2.50"), "dec_int": Decimal("7"), "uid": uid, "tags": {"b", "a"},
        "nan": float("nan"), "none": None, "nat": pd.NaT, "na": pd.NA,
    }

    async def go() -> None:
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as c:
            for i, (ts, _) in enumerate(sent):
                await c.track("t", timestamp=ts, event_id=f"t{i}")
            await c.track("p", event_id="p", properties=properties, user_id=float("nan"),
                          anonymous_id=pd.NA, session_id=None, path=pd.NaT)

    run(go())
    rows = {r["event_id"]: r for r in mm_server.stored_events()}
    assert [rows[f"t{i}"]["timestamp"] for i in range(len(sent))] == [s[1] for s in sent]
    p = rows["p"]
    assert p["properties"] == {
        "np_int": 3, "np_float": 1.5, "np_bool": True, "arr": [1, 2],
        "ts": "2024-01-02T03:04:05Z", "dec": 2.5, "dec_int": 7, "uid": str(uid),
        "tags": ["a", "b"], "nan": None, "none": None, "nat": None, "na": None,
    }
    assert p["user_id"] is None and p["path"] is None  # omitted, not "NaN"
    uuid.UUID(p["anonymous_id"])  # generated by the server: none was sent
    assert p["session_id"].startswith(p["anonymous_id"] + "-")


def test_enriched_fields_are_dropped_before_sending_with_a_warning(mm_server):
    from millimetric_nb.events import EnrichedFieldWarning

    sent: list[Any] = []

    async def go() -> None:
        async with AsyncClient(mm_server.keys["sk"], mm_server.url, observer=sent.append) as c:
            await c.track("same", event_id="plain")
            with pytest.warns(EnrichedFieldWarning, match="country, ip_hash, source"):
                await c.track("same", event_id="dirty", source="google", country="FR",
                              ip_hash="forged")
            with pytest.warns(EnrichedFieldWarning, match="medium"):
                await c.batch([{"event": "b", "medium": "cpc"}])

    run(go())
    sizes = [e.bytes for e in sent if isinstance(e, RequestSent) and e.route == "track"]
    assert sizes[0] == sizes[1]  # the same bytes on the wire: the fields never left
    rows = {r["event_id"]: r for r in mm_server.stored_events() if r["event_id"] != "b"}
    assert rows["dirty"]["source"] == "direct" and rows["dirty"]["country"] is None
    assert len(mm_server.stored_events()) == 3
