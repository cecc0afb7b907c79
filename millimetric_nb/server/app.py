"""The local Millimetric server as an ASGI app (Starlette).

Every answer follows the contract: success bodies as documented, errors as
``{"error": code, "details": {...}}``. Besides the contract's codes the server
answers ``404 not_found`` (unknown route), ``405 method_not_allowed``,
``413 payload_too_large`` (body above ``ServerConfig.max_body_bytes``) and
``415 unsupported_media_type`` (a write whose ``Content-Type`` is not JSON).

Choices (the public reference is silent):
- Keys: ``pk_``/``sk_`` may ingest; ``pk_`` needs an allow-listed ``Origin``;
  only ``sk_`` may forget (``pk_`` -> ``forget_requires_secret_key``, ``rk_``/``ak_``
  -> ``insufficient_scope``); reads take ``sk_``, ``rk_`` and ``ak_`` (an account
  read key is a read-scope key).
- A key's identity is env + prefix + secret; one presented with another kind's
  prefix than the kind it was stored with gets ``key_kind_mismatch``.
- Order of checks: route, body size (the body is always read first), auth, scope,
  media type (``application/json``, or any ``application/*+json``; charset and other
  parameters allowed), rate limit, JSON and fields, faults, write.
- A client that disconnects before its body has arrived gets no answer (there is no
  one to answer): the server counts it (:meth:`ServerState.disconnects`) and logs one
  INFO line on the ``millimetric_nb.server`` logger, never a traceback.
- ``/v1/query`` rows come in timestamp order, ties in insertion order.
- ``/v1/forget`` deletes the rows whose ``user_id`` is that user (in the key's project).
- ``/v1/identify`` stores a ``$identify`` event and rewrites no other row.
- Storage calls (writes and reads) run in a worker thread, so the event loop keeps
  reading and checking other requests meanwhile; a write is committed before its
  answer is sent.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import random
import re
import secrets
import sqlite3
import threading
from collections import defaultdict, deque
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from millimetric_nb import contract

from . import checks, enrich, reads
from .config import ServerConfig, StoredKey, parse_limits, resolve_keys, secret_digest
from .openapi import openapi_document
from .ratelimit import RateLimiter
from .storage import Storage

#: Codes this server answers besides the contract's table: {code: status}.
EXTRA_ERRORS: dict[str, int] = {
    "not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
}
#: Fault kinds that can be injected (randomly by rate, or queued with ``inject``).
FAULT_KINDS: tuple[str, ...] = (
    "internal_error", "upstream_failed", "forget_failed", "reset", "ambiguous_500",
    "ambiguous_drop",
)
_PATH_TO_ROUTE: dict[str, str] = {r.path: name for name, r in contract.ROUTES.items()}
_PATH_TO_ROUTE["/openapi.json"] = "openapi"
_DRAIN_LIMIT = 256 * 1024 * 1024  # past this, stop reading an oversize body
#: The body's media type every write route takes (``application/*+json`` too).
JSON_MEDIA_TYPE = "application/json"
log = logging.getLogger("millimetric_nb.server")


class JSONResponse(Response):
    """A JSON answer encoded with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Refusal(Exception):
    """Raised inside a handler to answer an error of the contract."""

    def __init__(
        self, code: str, details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code)
        self.code = code
        self.details = details or {}
        self.headers = headers


class Disconnected(Exception):
    """The client went away before its request was read to the end."""


class _Dropped(Response):
    """The 'answer' of a dropped connection: nothing is sent."""

    def __init__(self) -> None:
        super().__init__(b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def error_response(
    code: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"error": code, "details": {...}}`` with the code's status."""
    spec = contract.ERRORS.get(code)
    status = spec.status if spec is not None else EXTRA_ERRORS.get(code, 500)
    return JSONResponse({"error": code, "details": details or {}}, status, headers=headers)


def field_errors(problems: dict[str, list[str]]) -> dict[str, Any]:
    """``details`` of a validation failure."""
    return {"fieldErrors": problems}


class ServerState:
    """Everything one server holds: config, keys, storage, buckets, faults, counters."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.stored_keys, self.keys = resolve_keys(config.keys)
        self._key_index: dict[tuple[str, str], list[StoredKey]] = defaultdict(list)
        for key in self.stored_keys:
            self._key_index[(key.env, key.prefix)].append(key)
        self.storage = Storage(config.db, dedup=config.dedup)
        self.limiter = RateLimiter(parse_limits(config.limits), config.clock)
        self.rng = random.Random(config.seed)
        self.salt = config.ip_salt if config.ip_salt is not None else secrets.token_hex(16)
        self._lock = threading.Lock()
        self._status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._faults: dict[str, int] = {"fail": 0, "ambiguous": 0, "reset": 0}
        self._queued: dict[str, deque[str]] = defaultdict(deque)
        self._disconnects = 0

    # ------------------------------------------------------------ counters

    def record_status(self, route: str, status: int) -> None:
        """Count one answer."""
        with self._lock:
            self._status[route][status] += 1

    def status_counts(self) -> dict[str, dict[int, int]]:
        """``{route name: {status: n}}`` of every answer given so far."""
        with self._lock:
            return {route: dict(counts) for route, counts in self._status.items()}

    def count_disconnect(self) -> int:
        """Count one client gone before its request was read; return the total."""
        with self._lock:
            self._disconnects += 1
            return self._disconnects

    def disconnects(self) -> int:
        """How many clients disconnected before their request was read to the end."""
        with self._lock:
            return self._disconnects

    def fault_counts(self) -> dict[str, int]:
        """``{"fail": n, "ambiguous": n, "reset": n}``: faults injected so far."""
        with self._lock:
            return dict(self._faults)

    # ------------------------------------------------------------ faults

    def inject(self, route: str, kind: str, count: int = 1) -> None:
        """Make the next ``count`` valid requests to write ``route`` fail with ``kind``."""
        if route not in contract.ROUTES or not contract.ROUTES[route].write:
            raise ValueError(f"faults apply to write routes only, not {route!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {kind!r}")
        with self._lock:
            self._queued[route].extend([kind] * count)

    def draw_fault(self, route: str) -> str | None:
        """The fault for this write request, if any (queued first, then by rate)."""
        cfg = self.config
        with self._lock:
            queue = self._queued.get(route)
            if queue:
                kind: str | None = queue.popleft()
            elif cfg.fail_rate or cfg.ambiguous_rate or cfg.reset_rate:
                r = self.rng.random()
                flip = self.rng.random() < 0.5
                if r < cfg.reset_rate:
                    kind = "reset"
                elif r < cfg.reset_rate + cfg.fail_rate:
                    if flip:
                        kind = "upstream_failed"
                    else:
                        kind = "forget_failed" if route == "forget" else "internal_error"
                elif r < cfg.reset_rate + cfg.fail_rate + cfg.ambiguous_rate:
                    kind = "ambiguous_drop" if flip else "ambiguous_500"
                else:
                    kind = None
            else:
                kind = None
            if kind is not None:
                group = ("reset" if kind == "reset" else
                         "ambiguous" if kind.startswith("ambiguous") else "fail")
                self._faults[group] += 1
        return kind

    # ------------------------------------------------------------ auth

    def authenticate(self, request: Request) -> tuple[StoredKey, str]:
        """The stored key of the request and the kind it was presented as."""
        header = request.headers.get("authorization")
        if not header:
            raise Refusal("missing_bearer_token", {"message": "send Authorization: Bearer <key>"})
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refusal("missing_bearer_token", {"message": "send Authorization: Bearer <key>"})
        m = _KEY_MATCH(token)
        if not m:
            raise Refusal("malformed_api_key", {"expected_shape": contract.KEY_SHAPE})
        kind, env, prefix, secret = m.groups()
        digest = secret_digest(secret)
        for key in self._key_index.get((env, prefix), ()):
            if hmac.compare_digest(key.secret_digest, digest):
                if key.kind != kind:
                    raise Refusal("key_kind_mismatch", {"key": f"{kind}_{env}_{prefix}_…"})
                return key, kind
        raise Refusal("invalid_api_key", {"key": f"{kind}_{env}_{prefix}_…"})

    def authorize(self, request: Request, route: str) -> StoredKey:
        """Authenticate and check the key's kind may use ``route``; raise a Refusal if not."""
        key, kind = self.authenticate(request)
        spec = contract.KEY_KINDS[kind]
        if route == "forget":
            if kind == "pk":
                raise Refusal("forget_requires_secret_key", {"route": "/v1/forget"})
            if not spec.can_forget:
                raise Refusal("insufficient_scope", {"route": "/v1/forget", "kind": kind})
        elif contract.ROUTES[route].write:
            if not spec.can_ingest:
                raise Refusal("insufficient_scope",
                              {"route": contract.ROUTES[route].path, "kind": kind})
        elif not spec.can_read:
            raise Refusal("insufficient_scope", {"route": contract.ROUTES[route].path,
                                                 "kind": kind})
        if kind == "pk" and request.headers.get("origin") not in self.config.allowed_origins:
            raise Refusal("origin_not_allowed", {"origin": request.headers.get("origin")})
        return key

    def check_rate(self, project: str, route: str) -> None:
        """Raise ``rate_limited`` when the project's bucket for ``route`` is empty."""
        wait = self.limiter.take(project, route)
        if wait > 0.0:
            raise Refusal(
                "rate_limited",
                {"retry_after_s": wait, "route": contract.ROUTES[route].path},
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def context(self, request: Request, project: str) -> checks.RequestContext:
        """What the request contributes to every row it stores."""
        now_us = enrich.to_epoch_us(datetime.now(UTC))
        ip = request.headers.get("cf-connecting-ip") or (
            request.client.host if request.client else None
        )
        return checks.RequestContext(
            project=project,
            now_us=now_us,
            received_at=enrich.format_us(now_us),
            country=enrich.country_from_header(request.headers.get("cf-ipcountry")),
            device=enrich.parse_user_agent(request.headers.get("user-agent")),
            ip_hash=enrich.hash_ip(ip, self.salt),
        )


_KEY_MATCH = re.compile(contract.KEY_PATTERN).match


async def read_body(request: Request, cap: int) -> bytes:
    """The raw body; ``payload_too_large`` past ``cap`` bytes.

    Write routes read the body before any other check, and an oversize body is read
    to its end (and dropped), so that the client always sees the answer (401, 429,
    413...) rather than a connection reset while it is still sending.
    """
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > cap
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                too_big = True
            if too_big:
                chunks.clear()
                if size > _DRAIN_LIMIT:
                    break
                continue
            chunks.append(chunk)
    except ClientDisconnect:
        raise Disconnected from None
    if too_big:
        raise Refusal("payload_too_large", {"max_bytes": cap, "formErrors": [
            f"{contract.RULE_TOO_LARGE}: the body must be at most {cap} bytes"]})
    return b"".join(chunks)


def check_media_type(request: Request) -> None:
    """``415 unsupported_media_type`` unless the body is declared JSON."""
    given = request.headers.get("content-type")
    media = (given or "").partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    if media == JSON_MEDIA_TYPE or (kind == "application" and subtype.endswith("+json")):
        return
    raise Refusal("unsupported_media_type", {
        "content_type": given[:128] if given is not None else None,
        "expected": JSON_MEDIA_TYPE,
        "formErrors": [f"unsupported_media_type: send the body as {JSON_MEDIA_TYPE} "
                       "(Content-Type header)"],
    })


def parse_json(body: bytes) -> Any:
    """The decoded body, or ``invalid_payload`` (rule ``not_json``)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refusal("invalid_payload", {"formErrors": [
            f"{contract.RULE_NOT_JSON}: the body is not valid JSON ({exc})"], "fieldErrors": {}}
        ) from None


def _drop_connection(request: Request) -> Response:
    """Close the client's connection at once, without an answer."""
    raw_send = request.scope.get("millimetric.raw_send")
    cycle = getattr(raw_send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        # Not under uvicorn (e.g. an in-memory ASGI transport): fail the exchange.
        raise ConnectionResetError("connection dropped by fault injection")
    transport.abort()
    if cycle is not None and hasattr(cycle, "disconnected"):
        cycle.disconnected = True  # uvicorn then sends nothing for this request
    return _Dropped()


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.millimetric
    return state


async def _write(
    request: Request, route: str, rows_for: Any, success: dict[str, Any]
) -> Response:
    """The shared tail of every write: faults, the write itself, the answer."""
    state = _state(request)
    fault = state.draw_fault(route)
    if fault == "reset":
        return _drop_connection(request)
    if fault in ("internal_error", "upstream_failed", "forget_failed"):
        return error_response(fault, {"injected": True})
    try:
        # in a worker thread: SQLite writes without the GIL while the loop reads and
        # checks the next request
        await asyncio.to_thread(rows_for)
    except sqlite3.Error as exc:
        code = "forget_failed" if route == "forget" else "upstream_failed"
        return error_response(code, {"message": f"storage error: {type(exc).__name__}"})
    if fault == "ambiguous_drop":
        return _drop_connection(request)
    if fault == "ambiguous_500":
        return error_response("internal_error", {"injected": True})
    answer = JSONResponse(success, contract.ROUTES[route].success_status)
    if state.storage.move_due:  # the tail's move waits until this answer is sent
        answer.background = BackgroundTask(state.storage.maintain)
    return answer


async def _admit(request: Request, route: str) -> tuple[ServerState, StoredKey, Any]:
    """The checks every write makes first, in order: body size, key and scope, rate
    limit, JSON. Returns the server state, the request's key and the decoded body."""
    state = _state(request)
    raw = await read_body(request, state.config.max_body_bytes)
    key = state.authorize(request, route)
    check_media_type(request)
    state.check_rate(key.project, route)
    return state, key, parse_json(raw)


# ---------------------------------------------------------------- endpoints


async def track(request: Request) -> Response:
    """``POST /v1/track``: store one event; ``202 {"ok": true, "event_id": ...}``."""
    state, key, body = await _admit(request, "track")
    problems: checks.Problems = {}
    row = checks.check_event(body, "", problems, state.context(request, key.project))
    if row is None:
        raise Refusal("invalid_payload", field_errors(problems))
    return await _write(request, "track", lambda: state.storage.insert([row], move=False),
                        {"ok": True, "event_id": row[1]})


async def batch(request: Request) -> Response:
    """``POST /v1/batch``: 1 to 1000 events, all or nothing; ``202 {"ok": true, "count": N}``."""
    state, key, body = await _admit(request, "batch")
    problems: checks.Problems = {}
    rows = checks.check_batch(body, problems, state.context(request, key.project))
    if problems:
        raise Refusal("invalid_payload", field_errors(problems))
    return await _write(request, "batch", lambda: state.storage.insert(rows, move=False),
                        {"ok": True, "count": len(rows)})


def _check_body(
    body: object, specs: dict[str, contract.FieldSpec]
) -> tuple[dict[str, Any], str | None]:
    """An identify/forget body checked against ``specs``: the body and the compact JSON
    of its object field (``traits``), or ``invalid_payload``."""
    if type(body) is not dict:
        raise Refusal("invalid_payload", field_errors({"body": [
            f"{contract.RULE_TYPE}: the body must be a JSON object, got {checks.json_type(body)}"
        ]}))
    problems: checks.Problems = {}
    ok, encoded, _ = checks.check_fields(body, specs, "", problems)
    if not ok:
        raise Refusal("invalid_payload", field_errors(problems))
    return body, encoded


async def identify(request: Request) -> Response:
    """``POST /v1/identify``: store a ``$identify`` event; ``200 {"ok": true}``."""
    state, key, raw = await _admit(request, "identify")
    body, traits = _check_body(raw, contract.IDENTIFY_FIELDS)
    event = {"event": contract.IDENTIFY_EVENT, "anonymous_id": body["anonymous_id"],
             "user_id": body["user_id"]}
    row = checks.build_row(event, traits, state.context(request, key.project))
    return await _write(request, "identify", lambda: state.storage.insert([row], move=False),
                        {"ok": True})


async def forget(request: Request) -> Response:
    """``POST /v1/forget``: delete every event of the user; ``200 {"ok": true, "queued": true}``."""
    state, key, raw = await _admit(request, "forget")
    body, _ = _check_body(raw, contract.FORGET_FIELDS)
    user_id = body["user_id"]
    return await _write(request, "forget",
                        lambda: state.storage.delete_user(key.project, user_id),
                        {"ok": True, "queued": True})


def _read_endpoint(name: str) -> Any:
    runner = getattr(reads, name)

    async def endpoint(request: Request) -> Response:
        state = _state(request)
        key = state.authorize(request, name)
        names = [k for k, _ in request.query_params.multi_items()]
        repeated = sorted({k for k in names if names.count(k) > 1})
        if repeated:  # which one would count? Refused rather than guessed.
            raise Refusal("invalid_params", field_errors({
                k: [f"repeated: given {names.count(k)} times; give it once "
                    "(group_by takes a comma list)"] for k in repeated
            }))
        try:
            answer = await asyncio.to_thread(runner, state.storage, key.project,
                                             request.query_params)
        except reads.ParamError as exc:
            raise Refusal(exc.code, field_errors(exc.problems)) from None
        return JSONResponse(answer, 200)

    endpoint.__name__ = name
    endpoint.__doc__ = f"``GET /v1/{name}``."
    return endpoint


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: this server's OpenAPI document."""
    return JSONResponse(openapi_document(), 200)


# ---------------------------------------------------------------- app


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    size = 0
    try:
        async for chunk in request.stream():  # read what the client sends before answering
            size += len(chunk)
            if size > _DRAIN_LIMIT:
                break
    except ClientDisconnect:
        return await _disconnected(request, Disconnected())
    if exc.status_code == 405:
        return error_response("method_not_allowed", {"path": request.url.path,
                                                     "method": request.method},
                              headers=dict(exc.headers or {}))
    if exc.status_code == 404:
        return error_response("not_found", {"path": request.url.path})
    return JSONResponse({"error": "http_error", "details": {"status": exc.status_code}},
                        exc.status_code)


async def _refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return error_response(exc.code, exc.details, exc.headers)


async def _disconnected(request: Request, exc: Exception) -> Response:
    total = _state(request).count_disconnect()
    log.info("client disconnected before its %s %s was read (%d so far)",
             request.method, request.url.path, total)
    return _Dropped()


async def _unhandled(request: Request, exc: Exception) -> Response:
    return error_response("internal_error", {"message": "unhandled server error"})


class MillimetricApp(Starlette):
    """Starlette, plus what must sit outside every middleware: the answer counter,
    injected latency, and access to the server's own ``send`` (to drop connections)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        state: ServerState = self.state.millimetric
        route = _PATH_TO_ROUTE.get(scope["path"], "other")
        delay = state.config.latency_ms / 1000.0
        scope["millimetric.raw_send"] = send

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if delay:
                    await asyncio.sleep(delay)
                state.record_status(route, message["status"])
            await send(message)

        await super().__call__(scope, receive, counting_send)


def create_app(config: ServerConfig | None = None, **kwargs: Any) -> MillimetricApp:
    """The server's ASGI app for ``config`` (or ``ServerConfig(**kwargs)``).

    ``app.state.millimetric`` is its :class:`ServerState` (storage, counters, faults).
    """
    if config is None:
        config = ServerConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass either a ServerConfig or keyword options, not both")
    routes = [
        Route("/v1/track", track, methods=["POST"]),
        Route("/v1/batch", batch, methods=["POST"]),
        Route("/v1/identify", identify, methods=["POST"]),
        Route("/v1/forget", forget, methods=["POST"]),
        Route("/v1/query", _read_endpoint("query"), methods=["GET"]),
        Route("/v1/stats", _read_endpoint("stats"), methods=["GET"]),
        Route("/v1/sources", _read_endpoint("sources"), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = MillimetricApp(
        routes=routes,
        exception_handlers={
            HTTPException: _http_exception,
            Refusal: _refusal,
            Disconnected: _disconnected,
            Exception: _unhandled,
        },
    )
    app.state.millimetric = ServerState(config)
    return app
