""":func:`run_rows`, the one engine under every send, and how it finds its client's
sender and rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from .. import contract
from ..defaults import DEFAULT_CONCURRENCY
from ..errors import ConfigurationError
from ..journal import Journal
from ..progress import Done, Emitter, Observer
from ..results import Plan, SendResult
from . import ledger
from .journal_gate import JournalGate, OnAmbiguous, open_for_run
from .plan import Request
from .prepare import EventPreparer, Preparer
from .run import SendFn, _Run
from .sources import ChunkReader
from .stop import StopSignal
from .worker import Worker

if TYPE_CHECKING:  # the HTTP stack is loaded by a run that sends, not a dry run
    from ..client import AsyncClient
    from ..sync import ClientLike


def route_limit(client: ClientLike | None, route: str) -> contract.RateLimit | None:
    """The rate limit the client applies to ``route`` (else the contract's)."""
    for holder in (client, getattr(client, "async_client", None)):
        limiter = getattr(holder, "limiter", None)
        limits = getattr(limiter, "limits", None)
        if isinstance(limits, dict):
            found = limits.get(route)
            return found if isinstance(found, contract.RateLimit) else None
    return contract.RATE_LIMITS.get(route)


def resolve_async_client(client: ClientLike | None) -> AsyncClient:
    """The AsyncClient behind ``client`` (a Client, an AsyncClient, or None: default)."""
    if client is None:
        from ..sync import default_client

        client = default_client()
    return cast("AsyncClient", getattr(client, "async_client", client))


def route_sender(aclient: AsyncClient, route: str) -> SendFn:
    """How a run sends one request through ``aclient``: a ``/v1/batch`` body, or one call.

    For the per-row routes (track, identify, forget: the client method of that name)
    the request's call is passed as keywords. The run's observer goes to the client
    too, so its RequestSent / Retrying / Waiting events reach the displays. A
    ``/v1/batch`` request's ``before_send`` hook goes to the client, which runs it
    right before the request leaves.
    """
    if route == "batch":

        async def send_body(req: Request, obs: Observer) -> Any:
            assert req.body is not None
            return await aclient.send_batch_body(req.body, req.count, observer=obs,
                                                 before_send=req.before_send)

        return send_body
    method = getattr(aclient, route)

    async def send_call(req: Request, obs: Observer) -> Any:
        assert req.call is not None
        return await method(**req.call, observer=obs, before_send=req.before_send)

    return send_call


async def run_rows(
    chunks: Iterator[pd.DataFrame],
    *,
    route: str,
    prepare: Preparer,
    send: SendFn | None = None,
    client: ClientLike | None = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    observer: Observer | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_ambiguous: OnAmbiguous = "resend",
    total_rows: int | None = None,
    warnings: Sequence[str] = (),
    show_keys: bool = True,
    stop: StopSignal | None = None,
) -> SendResult:
    """The one engine under every send: prepare each chunk, send, account for each row.

    ``prepare(chunk, offset)`` validates a chunk; ``send(request, observer)`` sends
    one request (default: :func:`route_sender` over ``client``, a Client or
    AsyncClient; ``None``: the default client, unless a dry run). ``observer``
    receives every progress event; the engine never knows what displays them.
    ``stop``: a :class:`StopSignal` whose request stops the run gracefully.
    Used by :func:`millimetric_nb.abackfill` (with :func:`event_preparer`) and by
    the accessor's identify and forget.
    """
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1", code="invalid_concurrency")
    if on_ambiguous not in ("verify", "resend", "skip"):
        raise ConfigurationError(
            "on_ambiguous must be 'verify', 'resend' or 'skip'", code="invalid_on_ambiguous"
        )
    aclient = None  # a dry run without a client needs none
    if client is not None or (send is None and not dry_run):
        aclient = resolve_async_client(client)
    announces = send is None
    if send is None and aclient is not None and not dry_run:
        send = route_sender(aclient, route)
    if dry_run and route == "batch" and isinstance(prepare, EventPreparer):
        prepare = prepare.lengths_only()  # a dry run builds no body
    emit = Emitter([observer])
    jr, owned = await asyncio.to_thread(open_for_run, journal, dry_run)
    worker = Worker()  # one thread reads and prepares every chunk of the run
    run = _Run(route, send, prepare, emit, None, dry_run, concurrency, total_rows,
               show_keys, announces, worker)
    if jr is not None:
        run.gate = JournalGate(jr, stop=run.stop, on_ambiguous=on_ambiguous, dry_run=dry_run,
                               reader=aclient if route in ("batch", "track") else None)
    for w in warnings:
        run.warnings.add(w)
    if stop is not None:
        stop.bind(asyncio.get_running_loop(), lambda: run.request_stop(stop.reason or "cancel"))
    reader = ChunkReader(chunks, worker)
    started = time.perf_counter()
    result: SendResult | None = None
    warming = None
    if announces and not dry_run and hasattr(aclient, "warm_up"):
        # the connection pool is built while the first chunk is prepared
        warming = asyncio.create_task(aclient.warm_up())  # type: ignore[union-attr]
    try:
        await run.run(reader)
        result = _result(run, reader, aclient, time.perf_counter() - started)
        if jr is not None and not dry_run:
            with contextlib.suppress(sqlite3.Error, OSError):  # the ids are what matters
                await asyncio.to_thread(jr.finish_run, result.counts)
        return result
    finally:
        worker.close()
        if warming is not None:
            warming.cancel()
            with contextlib.suppress(BaseException):
                await warming
        if stop is not None:
            stop.unbind()
        emit(Done(ledger.counts_of([p for _, p in run.pieces]), time.perf_counter() - started,
                  result=result))
        if owned and jr is not None:
            jr.close()


def _result(
    run: _Run, reader: ChunkReader, client: ClientLike | None, elapsed: float
) -> SendResult:
    if run.gate is not None:
        for w in run.gate.warnings():
            run.warnings.add(w)
    limit = route_limit(client, run.route)
    plan = Plan(run.route, run.requests, run.events, run.bytes,
                limit.refill if limit else None, limit.burst if limit else None)
    return ledger.build_result(
        pieces=run.pieces, failed=run.failed, errors=run.errors, template=reader.template,
        warnings=run.warnings.rendered(), plan=plan, elapsed=elapsed, dry_run=run.dry_run,
        route=run.route, error=run.stop_error or reader.error,
    )


__all__ = ["resolve_async_client", "route_limit", "route_sender", "run_rows"]
