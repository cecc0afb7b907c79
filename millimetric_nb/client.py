"""``AsyncClient``: the one boundary to HTTP (the only module that imports httpx).

What it guarantees:

* **Keys are checked before any request leaves the machine** (``keys.ApiKey``):
  malformed keys and ``pk_`` keys are refused when the client is built; ``rk_``/``ak_``
  keys are refused for writes when a write is attempted. The key is kept only in an
  :class:`~millimetric_nb.keys.ApiKey` and written into the ``Authorization`` header of
  each request; every message from outside (server details, transport errors) is
  scrubbed of it, and no raised error chains an httpx exception (whose request
  carries the header).
* **Bodies are validated first** (``events``): nothing is sent if anything is invalid.
* **Rate limits**: every request first takes a token from its route's bucket
  (``ratelimit``), shared by every concurrent call of this client; a 429 pauses the
  whole route for ``Retry-After``.
* **Retries** (``tenacity``): 429 after ``Retry-After``; 500/502/503/504, timeouts and
  connection errors with exponential backoff and *full jitter* (a uniform draw in
  ``[0, min(backoff_max, 0.1 * 2**(n-1))]``), at most ``max_attempts`` attempts; other
  4xx are never retried. Use :func:`no_backoff` in tests to zero the waits.
  Each retry is announced as a ``progress.Retrying`` event and logged at INFO on the
  ``millimetric_nb.client`` logger (never WARNING, so a notebook without logging set
  up shows nothing but its progress display). tenacity is used rather than stamina
  because stamina's only switch for its WARNING line per retry is global
  (``stamina.instrumentation.set_on_retry_hooks``), and flipping it here would
  silence a user's own stamina retries too.
* **Ambiguity**: an attempt that failed after the request may have reached the server
  (read timeout, connection dropped after sending, any 5xx) marks the request
  *ambiguous*; the server does not deduplicate, so a later success still reports
  ``ambiguous=True`` (a duplicate may exist) and a final failure raises with
  ``.ambiguous=True``. A connect error (the request never left), a 429 and any
  failure of a read (``GET``, which writes nothing) are not ambiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import importlib.util
import ipaddress
import logging
import math
import os
import random
import select
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpcore
import httpx
import numpy as np
import orjson
import tenacity

from . import contract
from .batching import body_of, pack_arrays, stops_run
from .errors import (
    ConfigurationError,
    MillimetricError,
    TransportError,
    ValidationError,
    error_for_status,
)
from .events import check_event, prepare_forget, prepare_identify, warn_enriched
from .keys import ApiKey, Use
from .progress import (
    Acknowledged,
    Done,
    Emitter,
    Failed,
    Observer,
    Planned,
    RequestSent,
    Retrying,
    Waiting,
)
from .ratelimit import RateLimiter, RateLimitsArg

__all__ = [
    "AsyncClient",
    "BatchFailedError",
    "BatchRequest",
    "BatchResult",
    "SendOutcome",
    "no_backoff",
]

log = logging.getLogger("millimetric_nb.client")

# httpcore imports ``sniffio`` each time it takes a lock (about 10 times per request);
# when sniffio is not installed, every such import searches sys.path again (measured:
# 1.5 µs of CPU per event on a batch send). A None entry makes that import fail at once,
# as it would anyway (installing sniffio later needs a restart to be seen).
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

#: A hook called right before a request leaves (see :meth:`AsyncClient.send_batch_body`).
BeforeSend = Callable[[], Awaitable[None] | None]

ReadRoute = Literal["query", "stats", "sources"]

_VERSION = "0.1.0"
#: Retry-After when a 429 carries none (the contract always sends one).
_DEFAULT_RETRY_AFTER = 1.0
#: Connections of one client on one event loop at most (httpx's own default).
_MAX_CONNECTIONS = 100
#: The limits of each of :class:`_Shards`' pools: one connection, kept alive 5 s (httpx's
#: default expiry).
_ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1,
                               keepalive_expiry=5.0)
_RETRY_STATUSES = contract.RETRYABLE_STATUSES
_USE_BY_ROUTE: dict[str, Use] = {
    "track": "ingest",
    "batch": "ingest",
    "identify": "ingest",
    "forget": "forget",
    "query": "read",
    "stats": "read",
    "sources": "read",
}


_no_backoff_depth = 0


@contextlib.contextmanager
def no_backoff() -> Iterator[None]:
    """Within this block, retries happen at once (the backoff waits are skipped; the
    attempt limit is kept). For tests; restores itself on exit.

    Waits for a 429's ``Retry-After`` still happen: they hold the route's bucket.
    """
    global _no_backoff_depth
    _no_backoff_depth += 1
    try:
        yield
    finally:
        _no_backoff_depth -= 1


async def _backoff_sleep(seconds: float) -> None:
    if seconds > 0 and not _no_backoff_depth:
        await asyncio.sleep(seconds)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """A request the server accepted.

    Attributes:
        route: route name (``"batch"``...).
        status: the success status (202 or 200).
        body: the server's JSON answer.
        attempts: HTTP attempts made (1 when the first one succeeded).
        ambiguous: an earlier attempt may have been written too (a duplicate may exist).
    """

    route: str
    status: int
    body: dict[str, Any]
    attempts: int
    ambiguous: bool

    @property
    def event_id(self) -> str | None:
        """The stored event's id where the server returns one (``/v1/track``), else ``None``."""
        value = self.body.get("event_id") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None

    def _facts(self) -> list[str]:
        facts = [f"/v1/{self.route}", str(self.status)]
        if self.event_id is not None:
            facts.append(f"event_id={self.event_id}")
        elif isinstance(self.body, dict) and isinstance(self.body.get("count"), int):
            facts.append(f"count={self.body['count']}")
        if self.attempts > 1:
            facts.append(f"{self.attempts} attempts")
        if self.ambiguous:
            facts.append("possible duplicate")
        return facts

    def __repr__(self) -> str:
        return f"<SendOutcome {' '.join(self._facts())}>"

    def _repr_html_(self) -> str:
        import html

        cells = "".join(f"<td><code>{html.escape(f)}</code></td>" for f in self._facts())
        return f"<table class='millimetric-outcome'><tr>{cells}</tr></table>"


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One request of a :meth:`AsyncClient.batch` call: events ``[start, stop)`` of the input.

    ``state`` is ``"stored"`` (acknowledged), ``"failed"`` (finally refused or
    unanswered; ``error`` says why) or ``"not_sent"`` (abandoned after an
    authentication or permission failure made every request pointless).
    """

    index: int
    start: int
    stop: int
    bytes: int
    state: Literal["stored", "failed", "not_sent"]
    attempts: int = 0
    ambiguous: bool = False
    error: MillimetricError | None = None

    @property
    def events(self) -> int:
        """Number of events in the request."""
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The account of a :meth:`AsyncClient.batch` call: every event is in one request."""

    events: int
    requests: list[BatchRequest] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """Events the server acknowledged."""
        return sum(r.events for r in self.requests if r.state == "stored")

    @property
    def failed(self) -> int:
        """Events in requests that finally failed."""
        return sum(r.events for r in self.requests if r.state == "failed")

    @property
    def not_sent(self) -> int:
        """Events never sent (abandoned)."""
        return sum(r.events for r in self.requests if r.state == "not_sent")

    @property
    def ambiguous_requests(self) -> list[int]:
        """Indexes of requests that may have been written more than once or without an answer."""
        return [r.index for r in self.requests if r.ambiguous]

    @property
    def ok(self) -> bool:
        """Every event was acknowledged."""
        return self.stored == self.events

    @property
    def counts(self) -> dict[str, int]:
        """``{"events", "stored", "failed", "not_sent", "requests", "ambiguous_requests"}``."""
        return {
            "events": self.events,
            "stored": self.stored,
            "failed": self.failed,
            "not_sent": self.not_sent,
            "requests": len(self.requests),
            "ambiguous_requests": len(self.ambiguous_requests),
        }


class BatchFailedError(MillimetricError):
    """Some requests of a :meth:`AsyncClient.batch` call did not get in; ``result`` says which."""

    code = "batch_incomplete"

    def __init__(self, message: str, *, result: BatchResult, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.result = result


# --------------------------------------------------------------------------- helpers


def _is_loopback(hostname: str) -> bool:
    name = hostname.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _normalise_host(host: str, allow_insecure_http: bool) -> str:
    if not isinstance(host, str) or not host.strip():
        raise ConfigurationError(
            f"the host must be a URL such as {contract.DEFAULT_HOST}", code="invalid_host"
        )
    text = host.strip().rstrip("/")
    try:
        url = httpx.URL(text)
    except Exception:  # httpx.InvalidURL and friends; never chained (may echo input)
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"the host must be an http(s) URL such as {contract.DEFAULT_HOST}",
            code="invalid_host",
        )
    if url.scheme == "http" and not _is_loopback(url.host) and not allow_insecure_http:
        raise ConfigurationError(
            f"refusing plain http:// to {url.host}: the API key would travel unencrypted. "
            "Use https://, or pass allow_insecure_http=True if you really mean it.",
            code="insecure_http_refused",
        )
    if url.query or url.fragment:
        raise ConfigurationError(
            "the host must not carry a query string or fragment", code="invalid_host"
        )
    return text


def _full_jitter(attempt: int, initial: float, cap: float) -> float:
    return random.uniform(0.0, min(cap, initial * (2 ** (attempt - 1))))


class _Stream(httpcore.AsyncNetworkStream):
    """httpcore's stream, with the idle check made cheap.

    Before giving a request a connection, httpcore's pool asks every idle connection
    whether its server closed it (``get_extra_info("is_readable")``); anyio answers
    that by building its whole table of socket attributes (a ``getpeername`` call
    among them) each time: with 20 connections, about 0.8 µs of CPU per event of a
    batch send. This stream looks its socket up once and polls it directly, the
    same test with the same answer; everything else goes to the wrapped stream."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._sock: socket.socket | None = inner.get_extra_info("socket")
        self._poll: Any = None  # a select.poll on the socket, made on first use

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._sock is not None and _POLL is not None:
            fd = self._sock.fileno()
            if fd < 0:  # closed: the next read would end at once, as httpcore assumes
                return True
            if self._poll is None:
                self._poll = _POLL()
                self._poll.register(fd, select.POLLIN)
            return bool(self._poll.poll(0))
        return self._inner.get_extra_info(info)


#: ``select.poll`` where it exists (not on Windows): elsewhere the wrapped stream answers.
_POLL = getattr(select, "poll", None)


class _Backend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, whose streams are wrapped in :class:`_Stream`."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _cheap_idle_checks(transport: httpx.AsyncHTTPTransport) -> None:
    """Give ``transport``'s own connection pool the :class:`_Backend` (only httpx's
    default transport, whose pool keeps its backend in ``_network_backend``; an
    httpcore laid out otherwise is left as it is)."""
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if (type(pool) is httpcore.AsyncConnectionPool
            and isinstance(inner, httpcore.AsyncNetworkBackend)
            and not isinstance(inner, _Backend)):
        pool._network_backend = _Backend(inner)


class _PoolCloser:
    """Closes a connection pool when its event loop shuts down.

    A pool belongs to the loop it was used on. Closing a loop (``asyncio.run`` does,
    when its coroutine ends) does not close the sockets of its transports: they would
    stay open until the garbage collector found them (with a ``ResourceWarning``).
    The loop does close its open asynchronous generators first
    (``loop.shutdown_asyncgens()``, which ``asyncio.run`` calls), so the pool is tied
    to one: a generator started on the loop, whose ``finally`` closes the pool inside
    that loop. If the client is dropped while the loop runs on (a notebook's kernel),
    the loop's generator finalizer closes the pool there; once the loop is closed, the
    finalizer does nothing.
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._gen: Any = None
        if sys.get_asyncgen_hooks().finalizer is None:  # no loop tracks generators
            return
        gen = self._hold()
        step: Any = gen.__anext__()  # the loop tracks the generator from here
        try:
            step.send(None)  # runs it to its ``yield``
        except StopIteration:
            self._gen = gen

    async def _hold(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.http.aclose()

    async def aclose(self) -> None:
        """Close the pool now (on its loop, which is running)."""
        if self._gen is not None:
            await self._gen.aclose()
        else:
            await self.http.aclose()


class _Shards(httpx.AsyncBaseTransport):
    """Many one-connection pools in place of one pool of many connections.

    httpcore's pool, each time it hands out a connection or takes one back, walks all
    its queued requests and, for each, all its connections: with the 20 requests a
    batch send keeps in flight, that walk (and its idle checks) cost more CPU than the
    rest of sending a 1,000-event body. Here each request goes to a pool of its own
    (the first one with nothing in flight, so warm keep-alive connections are reused
    first), whose walk is one connection long. Past ``most`` pools, a request waits in
    the least busy one, as it would have waited in the single pool.
    """

    def __init__(self, make: Callable[[], httpx.AsyncHTTPTransport], most: int) -> None:
        self._make = make
        self._most = most
        self._shards: list[httpx.AsyncHTTPTransport] = []
        self._busy: list[int] = []  # requests in flight per pool, until their body is closed

    @property
    def in_flight(self) -> int:
        """Requests sent whose response is not closed yet."""
        return sum(self._busy)

    def _pick(self) -> int:
        for i, busy in enumerate(self._busy):
            if not busy:
                return i
        if len(self._shards) < self._most:
            self._shards.append(self._make())
            self._busy.append(0)
            return len(self._shards) - 1
        return min(range(len(self._busy)), key=self._busy.__getitem__)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = self._pick()
        self._busy[i] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._busy[i] -= 1

        try:
            response = await self._shards[i].handle_async_request(request)
        except BaseException:
            release()
            raise
        response.stream = _Releasing(response.stream, release)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _Releasing(httpx.AsyncByteStream):
    """A response body that tells its :class:`_Shards` pool when it is closed."""

    def __init__(self, inner: Any, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            yield part

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


def _retry_after(response: httpx.Response, body: Mapping[str, Any]) -> float:
    header = response.headers.get("retry-after")
    if header is not None:
        seconds: float | None
        try:
            seconds = float(header)
        except ValueError:
            seconds = _retry_after_date(header)
        if seconds is not None and math.isfinite(seconds):  # "inf" would hold the route forever
            return max(0.0, seconds)
    details = body.get("details")
    if isinstance(details, Mapping):
        value = details.get("retry_after_s")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return max(0.0, float(value))
    return _DEFAULT_RETRY_AFTER


def _retry_after_date(header: str) -> float | None:
    """Seconds until an HTTP-date ``Retry-After`` (RFC 9110's other form), else None."""
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return (when - datetime.datetime.now(datetime.UTC)).total_seconds()


class _Attempt(Exception):
    """One failed attempt, with what the retry decision needs; never escapes this module."""

    def __init__(self, error: MillimetricError, retryable: bool, delay: float | None) -> None:
        super().__init__(error.code)
        self.error = error
        self.retryable = retryable
        self.delay = delay  # None: use the exponential backoff


class _CallState:
    """Per-request bookkeeping shared by the attempts and tenacity's retry and wait."""

    __slots__ = ("ambiguous", "attempts", "client", "count", "emit", "route")

    def __init__(self, client: AsyncClient, route: str, count: int, emit: Emitter) -> None:
        self.client = client
        self.route = route
        self.count = count
        self.emit = emit
        self.attempts = 0
        self.ambiguous = False

    def retry(self, exc: BaseException) -> bool:
        """tenacity predicate: whether this failed attempt may be tried again."""
        return (
            isinstance(exc, _Attempt) and exc.retryable
            and self.attempts < self.client.max_attempts
        )

    def wait(self, retry_state: tenacity.RetryCallState) -> float:
        """tenacity wait: the 429's own delay (0: the bucket holds the route), else the
        exponential backoff with full jitter. Announced as a ``Retrying`` event."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        assert isinstance(exc, _Attempt)
        delay = exc.delay
        if delay is None:
            delay = _full_jitter(
                self.attempts, self.client.backoff_initial, self.client.backoff_max
            )
        self.emit(Retrying(self.route, self.attempts, delay, exc.error.code, self.ambiguous))
        log.info(
            "retrying %s (attempt %d failed: %s%s) in %.3f s", self.route, self.attempts,
            exc.error.code, ", ambiguous" if self.ambiguous else "", delay,
        )
        return delay


# --------------------------------------------------------------------------- the client


class AsyncClient:
    """The async Millimetric client (see the module docstring for its guarantees).

    Args:
        key: the API key (an ``sk_`` key to send); else ``$MILLIMETRIC_KEY``.
        host: base URL; else ``$MILLIMETRIC_HOST``; else ``https://api.millimetric.ai``.
        rate_limits: ``None`` for the production limits (``contract.RATE_LIMITS``),
            ``"off"``, ``{route: RateLimit}`` for another plan, or a ready
            :class:`~millimetric_nb.ratelimit.RateLimiter`.
        max_attempts: HTTP attempts per request, retries included (>= 1).
        timeout: seconds for each of connect, write, read and pool waits.
        allow_insecure_http: allow ``http://`` to a non-loopback host.
        observer: receives progress events for every request of this client.
        transport: an httpx transport (tests shape faults with it).
        backoff_initial, backoff_max: the exponential backoff's first and largest
            ceiling, in seconds.
        max_concurrency: at most this many requests of one :meth:`batch` in flight.

    Raises:
        ConfigurationError: no key, or a bad or insecure host.
        KeyRefusedError: a malformed key, or a ``pk_`` (browser) key.
    """

    def __init__(
        self,
        key: str | None = None,
        host: str | None = None,
        *,
        rate_limits: RateLimitsArg | RateLimiter = None,
        max_attempts: int = 6,
        timeout: float = 30.0,
        allow_insecure_http: bool = False,
        observer: Observer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_initial: float = contract.BACKOFF_INITIAL_S,
        backoff_max: float = 5.0,
        max_concurrency: int = 8,
    ) -> None:
        raw = key if key is not None else os.environ.get(contract.ENV_KEY)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise ConfigurationError(
                f"no API key: pass key='sk_live_…' or set the {contract.ENV_KEY} environment "
                "variable (an sk_ key from your Millimetric project settings)",
                code="missing_api_key",
            )
        self._key = ApiKey.parse(raw)  # malformed -> KeyRefusedError, secret never quoted
        if self._key.kind == "pk":
            self._key.check_use("ingest")  # raises browser_key_refused with the reason
        for name, value, least in (("max_attempts", max_attempts, 1),
                                   ("max_concurrency", max_concurrency, 1)):
            if type(value) is not int or value < least:
                raise ConfigurationError(f"{name} must be an int >= {least}, got {value!r}")
        for name, number, zero_ok in (("timeout", timeout, False),
                                      ("backoff_initial", backoff_initial, True),
                                      ("backoff_max", backoff_max, True)):
            is_number = isinstance(number, int | float) and not isinstance(number, bool)
            in_range = is_number and math.isfinite(number) and (
                number > 0 or (zero_ok and number == 0))
            if not in_range:
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds {'>=' if zero_ok else '>'} 0, "
                    f"got {number!r}"
                )
        self._host = _normalise_host(
            host if host is not None
            else os.environ.get(contract.ENV_HOST) or contract.DEFAULT_HOST,
            allow_insecure_http,
        )
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_concurrency = max_concurrency
        try:
            self.limiter = (
                rate_limits if isinstance(rate_limits, RateLimiter) else RateLimiter(rate_limits)
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc), code="invalid_rate_limits") from None
        self._observer = observer
        # No pool timeout: waiting for a free connection is this client's own queue
        # (more concurrent calls than connections), not a failure of the server; every
        # request holding a connection is bounded by the connect/write/read timeouts.
        self._timeout = httpx.Timeout(timeout, pool=None)
        self._transport = transport
        #: One connection pool per event loop (httpx's pool belongs to the loop it was
        #: used on): a script may use the client under its sync face, then under
        #: ``asyncio.run``, then again synchronously.
        self._pools: dict[asyncio.AbstractEventLoop, _PoolCloser] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    # ------------------------------------------------------------------ identity

    @property
    def key_masked(self) -> str:
        """The key as it may be shown: ``sk_live_1a2b3c4d_…``."""
        return self._key.masked

    @property
    def key_kind(self) -> str:
        """``"sk"``, ``"rk"`` or ``"ak"``."""
        return self._key.kind

    def check_key(self, use: Use) -> None:
        """Raise :class:`~millimetric_nb.errors.KeyRefusedError` unless this client's key
        may be used to ``use`` (``"ingest"``, ``"read"`` or ``"forget"``), before any request.
        """
        self._key.check_use(use)

    @property
    def host(self) -> str:
        """The base URL requests go to."""
        return self._host

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def __repr__(self) -> str:
        return f"AsyncClient(key={self.key_masked!r}, host={self._host!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never let the key travel by pickling
        raise TypeError("AsyncClient cannot be pickled (it holds an API key)")

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the connection pool of the running loop and refuse further calls.

        Idempotent; calling it again on another loop closes that loop's pool too (a
        sync ``Client`` does so for its own loop). A pool of a loop that has ended was
        closed by that loop's shutdown (see :class:`_PoolCloser`), or cannot be closed
        any more (a loop closed without it); either way it is dropped.
        """
        self._closed = True
        self._drop_ended()
        closer = self._pools.pop(asyncio.get_running_loop(), None)
        if closer is not None:
            await closer.aclose()

    def _drop_ended(self) -> None:
        for owner in [o for o in self._pools if o.is_closed()]:
            del self._pools[owner]

    def _pool(self) -> httpx.AsyncClient:
        """The connection pool of the running event loop (made on first use there)."""
        loop = asyncio.get_running_loop()
        closer = self._pools.get(loop)
        if closer is None:
            self._drop_ended()
            closer = self._pools[loop] = _PoolCloser(self._new_pool())
        return closer.http

    def _new_pool(self) -> httpx.AsyncClient:
        if self._tls is None:
            if self._host.startswith("https://"):
                self._tls = httpx.create_ssl_context()  # httpx's default, built once
            else:
                # plain http never does TLS on this pool (one base URL, no redirects): a
                # bare context spares loading the CA bundle (about 20 ms, on the first
                # request of a burst)
                self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        return httpx.AsyncClient(
            base_url=self._host,
            timeout=self._timeout,
            transport=self._transport if self._transport is not None
            else _Shards(self._one_connection, _MAX_CONNECTIONS),
            headers={"user-agent": f"millimetric-nb/{_VERSION}"},
            follow_redirects=False,
            verify=self._tls,
        )

    def _one_connection(self) -> httpx.AsyncHTTPTransport:
        """A pool of one keep-alive connection (see :class:`_Shards`), sharing the
        client's TLS context."""
        assert self._tls is not None
        transport = httpx.AsyncHTTPTransport(verify=self._tls, limits=_ONE_CONNECTION)
        _cheap_idle_checks(transport)
        return transport

    async def warm_up(self) -> None:
        """Build this loop's connection pool in a worker thread (its first construction
        costs some tens of ms), so that the first request does not wait for it."""
        loop = asyncio.get_running_loop()
        if loop in self._pools or self._closed:
            return
        http = await asyncio.to_thread(self._new_pool)
        if loop in self._pools or self._closed:  # a request made its own meanwhile
            await http.aclose()
        else:
            self._pools[loop] = _PoolCloser(http)

    close = aclose  # ``await client.close()`` reads naturally too

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ plumbing

    def _scrub(self, value: Any) -> Any:
        """``value`` with any occurrence of the key (or its secret) masked."""
        if isinstance(value, str):
            full = self._key.reveal()
            secret = full.split("_", 3)[3]
            if full in value:
                value = value.replace(full, self.key_masked)
            if len(secret) >= 8 and secret in value:  # a tiny secret would mangle text
                value = value.replace(secret, "…")
            return value
        if isinstance(value, Mapping):
            return {self._scrub(str(k)): self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value

    def _check(self, route: str) -> contract.Route:
        if self._closed:
            raise ConfigurationError("this client is closed", code="client_closed")
        self._key.check_use(_USE_BY_ROUTE[route])
        return contract.ROUTES[route]

    def _emitter(self, observer: Observer | None) -> Emitter:
        return Emitter((self._observer, observer))

    def _api_error(
        self, route: contract.Route, response: httpx.Response, body: Mapping[str, Any]
    ) -> MillimetricError:
        status = response.status_code
        code = body.get("error") if isinstance(body.get("error"), str) else None
        details = body.get("details") if isinstance(body.get("details"), Mapping) else {}
        details = self._scrub(details)
        field_errors: dict[str, list[str]] = {}
        fe = details.get("fieldErrors")
        if isinstance(fe, Mapping):
            for path, msgs in fe.items():
                if isinstance(msgs, list):
                    field_errors[str(path)] = [str(m) for m in msgs]
                else:
                    field_errors[str(path)] = [str(msgs)]
        form = details.get("formErrors")
        if isinstance(form, list) and form:
            field_errors.setdefault("(body)", []).extend(str(m) for m in form)
        retry_after = _retry_after(response, body) if status == 429 else None
        code = code or f"http_{status}"
        meaning = contract.ERRORS[code].meaning if code in contract.ERRORS else "error"
        message = f"{route.method} {route.path} answered {status} {code}: {meaning}"
        if status == 429:
            message += f"; retry after {retry_after:g} s"
        cls = error_for_status(status)
        return cls(
            self._scrub(message),
            code=code,
            status=status,
            field_errors=field_errors,
            retry_after=retry_after,
            details=details,
        )

    async def _attempt(
        self,
        state: _CallState,
        route: contract.Route,
        *,
        content: bytes | None,
        params: Mapping[str, Any] | None,
        before_send: BeforeSend | None = None,
    ) -> SendOutcome:
        emit = state.emit
        await self.limiter.acquire(
            route.name, on_wait=lambda s, r: emit(Waiting(route.name, s, r))
        )
        if before_send is not None:
            # if it raises, this attempt does not leave and the error propagates as it
            # is (only _Attempt is retried)
            began = before_send()
            if began is not None:
                await began
        state.attempts += 1
        emit(RequestSent(route.name, state.count, len(content or b""), state.attempts))
        headers = {"authorization": f"Bearer {self._key.reveal()}"}
        if content is not None:
            headers["content-type"] = "application/json"
        failure: MillimetricError | None = None
        ambiguous = False
        # A read (GET) writes nothing: its failures are never ambiguous.
        writes = route.method != "GET"
        maybe_written = "; the server may have written it" if writes else ""
        try:
            response = await self._pool().request(
                route.method, route.path, content=content, params=params, headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: not ambiguous.
            failure = TransportError(
                self._scrub(f"could not connect to {self._host}: {type(exc).__name__}: {exc}"),
                code="connect_failed",
            )
        except httpx.TimeoutException as exc:
            ambiguous = writes
            failure = TransportError(
                self._scrub(
                    f"{route.method} {route.path} timed out ({type(exc).__name__}) after the "
                    f"request was sent{maybe_written}"
                ),
                code="timeout",
            )
        except httpx.HTTPError as exc:  # read/write errors, dropped connections, decoding
            ambiguous = writes
            failure = TransportError(
                self._scrub(
                    f"{route.method} {route.path}: the connection failed after sending "
                    f"({type(exc).__name__}: {exc}){maybe_written}"
                ),
                code="connection_lost",
            )
        # Whatever happened, the server's bucket has started refilling by now.
        self.limiter.confirm(route.name)
        if failure is not None:
            # Raised outside the except blocks: no httpx exception in __context__.
            state.ambiguous = state.ambiguous or ambiguous
            failure.ambiguous = state.ambiguous
            raise _Attempt(failure, retryable=True, delay=None)

        try:
            body = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {"value": body}
        status = response.status_code
        if 200 <= status < 300:
            return SendOutcome(route.name, status, body, state.attempts, state.ambiguous)

        error = self._api_error(route, response, body)
        if status == 429:
            assert error.retry_after is not None
            self.limiter.pause(route.name, error.retry_after)
            error.ambiguous = state.ambiguous
            # The bucket holds the route (for every caller) until Retry-After passes.
            raise _Attempt(error, retryable=True, delay=0.0)
        if status >= 500 and writes:
            state.ambiguous = True
        error.ambiguous = state.ambiguous
        raise _Attempt(error, retryable=status in _RETRY_STATUSES, delay=None)

    async def _send(
        self,
        route_name: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        count: int = 1,
        observer: Observer | None = None,
        before_send: BeforeSend | None = None,
    ) -> SendOutcome:
        """One logical request: bucket, attempts, retries. Emits RequestSent/Retrying/Waiting.

        ``before_send`` is called before each attempt leaves (after its rate-limit wait);
        if it raises, the request does not leave and the error propagates."""
        route = self._check(route_name)
        state = _CallState(self, route.name, count, self._emitter(observer))
        final: MillimetricError | None = None
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(state.retry),
            wait=state.wait,
            sleep=_backoff_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(state, route, content=content, params=params,
                                               before_send=before_send)
        except _Attempt as exc:
            final = exc.error
        assert final is not None
        final.attempts = state.attempts
        final.ambiguous = state.ambiguous
        if state.attempts > 1:
            final.message += f" (after {state.attempts} attempts)"
            final.args = (final.message,)
        raise final

    # ------------------------------------------------------------------ the engine's API

    async def send_batch_body(
        self,
        body: bytes,
        count: int,
        *,
        observer: Observer | None = None,
        before_send: BeforeSend | None = None,
    ) -> SendOutcome:
        """Send one ready ``/v1/batch`` body (``b'{"events":[...]}'``, 1..1000 events, <= 5 MB).

        The caller validated and encoded it. Goes through the batch bucket and the
        retries; emits ``RequestSent``/``Retrying``/``Waiting`` (the caller emits
        ``Acknowledged``/``Failed``, it knows the rows).

        ``before_send``: called (and awaited, if it returns an awaitable) right before
        each attempt leaves, after its rate-limit wait; the engine journals the ids
        ``pending`` there. If it raises, that attempt does not leave and the exception
        propagates to the caller as it is (it is not retried).

        Raises:
            MillimetricError: on final failure, with ``code``, ``status``, ``attempts``,
                ``ambiguous`` and ``field_errors``.
        """
        if not contract.BATCH_MIN_EVENTS <= count <= contract.BATCH_MAX_EVENTS:
            raise ValidationError(
                f"a batch request holds {contract.BATCH_MIN_EVENTS} to "
                f"{contract.BATCH_MAX_EVENTS} events, got {count}",
                problems=[("events", contract.RULE_TOO_LONG if count else contract.RULE_TOO_SHORT,
                           f"{count} events")],
            )
        if len(body) > contract.BATCH_MAX_BYTES:
            raise ValidationError(
                f"a batch request body is at most {contract.BATCH_MAX_BYTES} bytes, "
                f"got {len(body)}",
                problems=[("events", contract.RULE_TOO_LARGE, f"{len(body)} bytes")],
            )
        return await self._send("batch", content=body, count=count, observer=observer,
                                before_send=before_send)

    async def read(self, route: ReadRoute, params: Mapping[str, Any]) -> dict[str, Any]:
        """GET ``/v1/{route}`` with ``params``; the key's read scope is checked first."""
        if route not in ("query", "stats", "sources"):
            raise ConfigurationError(
                f"read() serves query, stats and sources, not {route!r}", code="invalid_route"
            )
        if not isinstance(params, Mapping):
            raise ValidationError(
                f"read() takes its query parameters as a mapping (a dict), got "
                f"{type(params).__name__}; nothing was sent",
                problems=[("params", contract.RULE_TYPE,
                           f"must be a mapping, got {type(params).__name__}")],
            )
        outcome = await self._send(route, params=dict(params), count=0)
        return outcome.body

    # ------------------------------------------------------------------ single calls

    async def _single(self, route: str, content: bytes, observer: Observer | None,
                      before_send: BeforeSend | None = None) -> SendOutcome:
        emit = self._emitter(observer)
        try:
            outcome = await self._send(route, content=content, count=1, observer=observer,
                                       before_send=before_send)
        except MillimetricError as exc:
            emit(Failed(route, 1, exc.code, str(exc), exc.ambiguous))
            raise
        emit(Acknowledged(route, 1, outcome.attempts, outcome.ambiguous))
        return outcome

    async def track(
        self, event: str, *, observer: Observer | None = None,
        before_send: BeforeSend | None = None, **fields: Any
    ) -> SendOutcome:
        """Send one event (``POST /v1/track``).

        ``fields`` are the contract's event fields (``user_id``, ``timestamp``,
        ``properties``...). Validated first (:class:`ValidationError` naming each field
        and rule; nothing sent); server-enriched fields are dropped with a warning.
        The answer's ``body["event_id"]`` is the stored event's id. ``before_send``: as
        for :meth:`send_batch_body`.
        """
        self._check("track")
        raw, problems, dropped = check_event({"event": event, **fields})
        warn_enriched(dropped)
        if raw is None:
            raise ValidationError(_invalid("the event is", len(problems)), problems=problems)
        return await self._single("track", raw, observer, before_send)

    async def identify(
        self,
        anonymous_id: str,
        user_id: str,
        traits: Mapping[str, Any] | None = None,
        *,
        observer: Observer | None = None,
        before_send: BeforeSend | None = None,
    ) -> SendOutcome:
        """Link an anonymous visitor to a user (``POST /v1/identify``); validated first.
        ``before_send``: as for :meth:`send_batch_body`."""
        self._check("identify")
        body = prepare_identify(anonymous_id, user_id, traits)
        return await self._single("identify", orjson.dumps(body), observer, before_send)

    async def forget(
        self, user_id: str, *, observer: Observer | None = None,
        before_send: BeforeSend | None = None,
    ) -> SendOutcome:
        """Delete every event of ``user_id`` (``POST /v1/forget``; ``sk_`` keys only).
        ``before_send``: as for :meth:`send_batch_body`."""
        self._check("forget")
        return await self._single("forget", orjson.dumps(prepare_forget(user_id)), observer,
                                  before_send)

    # ------------------------------------------------------------------ batch

    async def batch(
        self,
        events: Iterable[Mapping[str, Any]],
        *,
        observer: Observer | None = None,
        raise_on_error: bool = True,
    ) -> BatchResult:
        """Send any number of events through ``/v1/batch``.

        If the call is cancelled (a notebook interrupt, Ctrl-C through the sync
        ``Client``), every request stops: requests cut off in flight are ``failed``
        with code ``interrupted`` and ``ambiguous=True`` (they may have been written),
        requests not yet sent are ``not_sent``. The cancellation propagates with the
        account as its ``.result`` attribute (the sync ``Client`` moves it onto the
        ``KeyboardInterrupt``).

        Every event is validated first: if any is invalid, a :class:`ValidationError`
        names each (``events[i].field``) and nothing is sent. The events are then
        split into requests of at most 1000 events and 5 MB, sent concurrently as far
        as the batch bucket allows (built on :meth:`send_batch_body`).

        Returns:
            a :class:`BatchResult` accounting for every event by request.

        Raises:
            BatchFailedError: (when ``raise_on_error``) some requests finally failed;
                ``.result`` is the full account, ``.ambiguous`` says whether any failed
                request may have been written anyway.
        """
        self._check("batch")
        # A pandas/polars frame iterates over its column names, never its rows.
        frame = hasattr(events, "columns") and (
            hasattr(events, "to_dict") or hasattr(events, "to_dicts"))
        if (isinstance(events, Mapping | str | bytes) or not isinstance(events, Iterable)
                or frame):
            what = "one event (a mapping)" if isinstance(events, Mapping) else type(
                events).__name__
            hint = (" (iterating a frame gives its column names): send a pandas DataFrame "
                    "with df.millimetric.send_batch(), or pass df.to_dict('records')"
                    if frame else "")
            raise ValidationError(
                f"batch() takes an iterable of events (e.g. a list of dicts), got {what}"
                f"{hint}; nothing was sent",
                problems=[("events", contract.RULE_TYPE,
                           f"must be an iterable of event mappings, got {what}")],
            )
        encoded: list[bytes] = []
        problems: list[tuple[str, str, str]] = []
        dropped: set[str] = set()
        for i, ev in enumerate(events):
            raw, probs, drop = check_event(ev, prefix=f"events[{i}].")
            if raw is None:
                problems.extend(probs)
            else:
                encoded.append(raw)
            dropped.update(drop)
        n = len(encoded) + _count_events(problems)
        warn_enriched(dropped)
        if problems:
            raise ValidationError(
                _invalid(f"{_count_events(problems)} of {n} events are", len(problems)),
                problems=problems,
            )
        emit = self._emitter(observer)
        plan = _split(encoded)
        emit(Planned(rows=n, valid=n, invalid=0, requests=len(plan), total_rows=n))
        loop = asyncio.get_running_loop()
        started = loop.time()
        sem = asyncio.Semaphore(self.max_concurrency)
        abandon = asyncio.Event()
        interrupted: dict[int, BatchRequest] = {}  # requests a KeyboardInterrupt landed in

        async def send(index: int, start: int, stop: int) -> BatchRequest:
            body = body_of(encoded[start:stop])
            sent = 0  # attempts that left (RequestSent), for the account of a cancellation

            def watch(event: Any) -> None:
                nonlocal sent
                if isinstance(event, RequestSent):
                    sent += 1
                if observer is not None:
                    observer(event)

            def cut_off() -> BatchRequest:
                if not sent:
                    return BatchRequest(index, start, stop, len(body), "not_sent")
                cut = MillimetricError(
                    f"interrupted while POST /v1/batch was in flight ({stop - start} events); "
                    "the server may have written it",
                    code="interrupted", attempts=sent, ambiguous=True,
                )
                emit(Failed("batch", stop - start, cut.code, str(cut), True))
                return BatchRequest(index, start, stop, len(body), "failed", sent, True, cut)

            try:
                async with sem:
                    if abandon.is_set():
                        return BatchRequest(index, start, stop, len(body), "not_sent")
                    try:
                        outcome = await self.send_batch_body(body, stop - start, observer=watch)
                    except MillimetricError as exc:
                        if stops_run(exc):
                            abandon.set()
                        emit(Failed("batch", stop - start, exc.code, str(exc), exc.ambiguous))
                        return BatchRequest(index, start, stop, len(body), "failed",
                                            exc.attempts, exc.ambiguous, exc)
            except asyncio.CancelledError:
                # Interrupted (Ctrl-C, a kernel interrupt, a cancelled task): account for
                # this request instead of vanishing; batch() re-raises the cancellation.
                return cut_off()
            except KeyboardInterrupt:
                # The interrupt landed in this request's own code: note its account for
                # batch() and let the interrupt go on stopping everything.
                interrupted[index] = cut_off()
                raise
            emit(Acknowledged("batch", stop - start, outcome.attempts, outcome.ambiguous))
            return BatchRequest(index, start, stop, len(body), "stored",
                                outcome.attempts, outcome.ambiguous)

        tasks = [asyncio.ensure_future(send(i, a, b)) for i, (a, b) in enumerate(plan)]
        try:
            requests = list(await asyncio.gather(*tasks))
        except (asyncio.CancelledError, KeyboardInterrupt) as cancelled:
            # Cancelled, or interrupted inside one of the requests (gather then passes the
            # KeyboardInterrupt on): stop the others and wait for each to give its account.
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.wait(tasks)  # pragma: no branch - normally all done already
            result = BatchResult(n, [
                task.result() if not task.cancelled() and task.exception() is None
                else interrupted.get(i, BatchRequest(i, a, b, 0, "not_sent"))
                for task, (i, (a, b)) in zip(tasks, enumerate(plan), strict=True)
            ])
            emit(Done(result.counts, loop.time() - started))
            cancelled.result = result  # type: ignore[union-attr]  # read by sync.run_sync
            cancelled.add_note(interrupted_note(result))  # shown under a notebook's traceback
            raise
        result = BatchResult(n, requests)
        emit(Done(result.counts, loop.time() - started))
        if raise_on_error and not result.ok:
            failed = [r for r in requests if r.state == "failed"]
            first = failed[0].error if failed else None
            raise BatchFailedError(
                f"{result.failed + result.not_sent} of {n} events did not get in "
                f"({len(failed)} of {len(requests)} requests failed"
                + (f", first: {first}" if first is not None else "")
                + "); see .result for the account of every request",
                result=result,
                code="batch_incomplete",
                status=first.status if first is not None else None,
                ambiguous=any(r.ambiguous for r in failed),
                attempts=max((r.attempts for r in requests), default=0),
            )
        return result


# --------------------------------------------------------------------------- module helpers


def interrupted_note(result: BatchResult) -> str:
    """The account of an interrupted :meth:`AsyncClient.batch`, as a traceback note."""
    cut = sum(r.events for r in result.requests if r.state == "failed" and r.ambiguous)
    return (
        f"millimetric_nb: the batch was interrupted: {result.stored:,} of "
        f"{result.events:,} events stored, {cut:,} in requests cut off in flight (the "
        f"server may have written them), {result.not_sent:,} never sent; "
        "the exception's .result has the account of every request"
    )


def _invalid(what: str, n: int) -> str:
    return f"{what} invalid ({n} problem{'s' if n != 1 else ''}); nothing was sent"


def _count_events(problems: list[tuple[str, str, str]]) -> int:
    return len({p[0].split(".", 1)[0] for p in problems})


def _split(encoded: list[bytes]) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most BATCH_MAX_EVENTS events and BATCH_MAX_BYTES bytes
    (:func:`~millimetric_nb.batching.pack_arrays`)."""
    starts, stops, _ = pack_arrays(np.fromiter(map(len, encoded), dtype=np.int64,
                                               count=len(encoded)))
    return list(zip(starts.tolist(), stops.tolist(), strict=True))
