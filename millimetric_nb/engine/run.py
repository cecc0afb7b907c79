"""The workers of a run: read and prepare chunks, send their requests, account for
every row (see :mod:`millimetric_nb.engine` for how a run goes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pandas as pd

from ..batching import body_of, stops_run
from ..errors import MillimetricError
from ..frame import RULE_PII, MergedWarnings
from ..progress import Acknowledged, Emitter, Failed, Observer, Planned, ProgressEvent, Stopping
from ..results import UNCHECKED
from . import ledger
from .journal_gate import JournalGate
from .ledger import FAILED, INVALID, PLANNED, SENT, UNSET, Chunk
from .notes import chunk_field, events_of, mark_invalid, mark_refused, refusals, short
from .plan import Request, plan_requests
from .prepare import Preparer
from .sources import ChunkReader
from .stop import CalledOff, Flight, stop_error
from .worker import Worker

log = logging.getLogger("millimetric_nb")

SendFn = Callable[[Request, Observer], Awaitable[Any]]


class _Run:
    def __init__(self, route: str, send: SendFn | None, prepare: Preparer, emit: Emitter,
                 gate: JournalGate | None, dry_run: bool, concurrency: int,
                 total_rows: int | None, show_keys: bool, announces: bool,
                 worker: Worker) -> None:
        self.route, self.send, self.prepare, self.emit = route, send, prepare, emit
        self.gate, self.dry_run, self.concurrency = gate, dry_run, concurrency
        self.total_rows, self.show_keys, self.announces = total_rows, show_keys, announces
        self.errors: list[pd.DataFrame] = []
        self.pieces: list[tuple[int, ledger.Piece]] = []
        self.failed: list[tuple[int, pd.DataFrame]] = []
        self.stop_error: MillimetricError | None = None  # nothing more is sent
        self.requests = self.events = self.bytes = 0
        self.warnings = MergedWarnings()  # row-naming and row-counting ones into one each
        self.id_column: Any = None
        self.stopping: str | None = None  # a graceful stop was asked for
        self.flights: dict[int, Flight] = {}
        self.worker = worker  # the thread that prepares the chunks (see .worker)

    # ---------------------------------------------------------------- accounting

    def settle(self, chunk: Chunk) -> None:
        if chunk.sealed and chunk.pending == 0:
            piece, failed = ledger.finish_chunk(chunk, show_keys=self.show_keys,
                                                id_column=self.id_column)
            self.pieces.append((chunk.offset, piece))
            if failed is not None:
                self.failed.append((chunk.offset, failed))

    def stop(self, err: MillimetricError) -> None:
        """Stop the run (the first reason wins): rows not yet sent end ``failed``."""
        if self.stop_error is None:
            self.stop_error = err
            self.warnings.add(f"the run stopped: {err}")

    def stop_chunk(self, chunk: Chunk, *, checked: bool = True) -> None:
        """The rows of ``chunk`` not yet accounted for end ``failed`` (not sent), with the
        stop's code; ``checked=False``: never validated, so said to be unchecked."""
        err = self.stop_error
        assert err is not None
        unset = chunk.status == UNSET
        msg = f"not sent: the run stopped ({err.code})"
        chunk.mark(unset, FAILED, error=err.code,
                   message=msg if checked else f"{UNCHECKED} ({err.code})")
        chunk.sealed = True
        self.emit(Failed(self.route, int(unset.sum()), err.code, "not sent: the run stopped"))
        self.settle(chunk)

    # ---------------------------------------------------------------- producing

    async def produce(self, reader: ChunkReader, queue: asyncio.Queue[Request | None]) -> None:
        while (got := await reader.next()) is not None:
            chunk = Chunk(*got)
            if self.stop_error is not None:
                self.stop_chunk(chunk, checked=False)
            else:
                await self.plan_chunk(chunk, queue)
        if reader.error is not None:
            self.warnings.add(str(reader.error))
        for _ in range(self.concurrency):  # only on normal completion (see run())
            await queue.put(None)

    async def plan_chunk(self, chunk: Chunk, queue: asyncio.Queue[Request | None]) -> None:
        try:
            prep = await self.worker.call(self.prepare, chunk.frame, chunk.offset)
        except MillimetricError as exc:
            # the whole chunk is at fault (no event column, pii="error"...): every row
            # is reported with it; nothing of this chunk is sent
            self.warnings.add(str(exc))
            if exc.code == RULE_PII:  # pii="error": nothing more is sent
                self.stop(exc)
            chunk.mark(slice(None), INVALID, error=exc.code, message=short(str(exc)))
            chunk.field[:] = chunk_field(exc)
            return self.seal(chunk, Planned(chunk.n, 0, chunk.n, total_rows=self.total_rows))
        except Exception as exc:  # a bug, not bad input: account for the rows, go on
            log.exception("preparing rows %d.. failed", chunk.offset)
            msg = f"not sent: preparing the chunk failed ({type(exc).__name__}: {exc})"
            self.warnings.add(msg)
            chunk.mark(slice(None), FAILED, error="prepare_failed", message=short(msg))
            self.emit(Planned(chunk.n, 0, 0, total_rows=self.total_rows))
            return self.seal(chunk, Failed(self.route, chunk.n, "prepare_failed", short(msg)))
        for w in prep.warnings:
            self.warnings.add(w)
        chunk.keys = prep.keys
        self.id_column = prep.id_column if prep.id_column is not None else self.id_column
        if len(prep.errors):
            self.errors.append(prep.errors)
        n_invalid = mark_invalid(chunk, prep.valid, prep.errors)
        gate = self.gate
        if (gate is not None and prep.id_recipe is not None and not gate.recipe_checked
                and not await gate.check_recipe(prep.id_recipe)):
            return self.stop_chunk(chunk)  # the invalid rows stay invalid, the rest fail
        requests, nbytes, skipped = await plan_requests(chunk, prep, self.route, gate,
                                                        self.dry_run)
        self.requests += len(requests)
        self.events += sum(r.count for r in requests)
        self.bytes += nbytes
        planned = Planned(chunk.n, chunk.n - n_invalid, n_invalid, skipped=skipped,
                          requests=len(requests), total_rows=self.total_rows)
        if self.dry_run:
            for req in requests:
                chunk.mark(req.positions, PLANNED)
            return self.seal(chunk, planned)
        self.emit(planned)
        chunk.pending = len(requests)
        for req in requests:
            if self.stop_error is not None:
                self.fail_request(req, self.stop_error, stopped=True)
            else:
                await queue.put(req)
        self.seal(chunk, None)

    def seal(self, chunk: Chunk, event: ProgressEvent | None) -> None:
        chunk.sealed = True
        if event is not None:
            self.emit(event)
        self.settle(chunk)

    # ---------------------------------------------------------------- sending

    async def work(self, queue: asyncio.Queue[Request | None]) -> None:
        while (req := await queue.get()) is not None:
            if self.stop_error is not None:
                self.fail_request(req, self.stop_error, stopped=True)
            else:
                await self.send_one(req)

    def request_stop(self, reason: str) -> None:
        """A graceful stop (Cancel, a first interrupt): nothing new leaves, the requests
        on the wire are awaited, every other row ends ``failed`` (not sent)."""
        if self.stopping is not None:
            return
        self.stopping = reason
        if self.stop_error is None:  # the account says it; no warning about it
            self.stop_error = stop_error(reason)
        flights = list(self.flights.values())
        for flight in flights:
            flight.call_off(on_wire=False)
        self.emit(Stopping(self.route, reason, sum(f.on_wire for f in flights)))

    def before_send(self, keys: list[Any]) -> Callable[[], None]:
        """The hook run right before each attempt of ``req`` leaves (after its rate-limit
        wait): nothing leaves once a stop was asked for, and the first attempt journals
        the ids ``pending`` (so a crash flags only rows that may have reached the
        server); a journal that cannot be written keeps the request from leaving."""
        begun = self.gate is None or not keys

        def hook() -> None:  # holds the keys, not the request: no cycle keeps its body
            nonlocal begun
            if self.stopping is not None:
                raise CalledOff(self.stopping)
            if not begun:
                begun = True
                if not self.gate.begin_now(keys):  # type: ignore[union-attr]
                    raise CalledOff("journal")
        return hook

    async def fly(self, req: Request, flight: Flight) -> Any:
        """Send ``req`` as its own task; a stop calls it off unless an attempt is on the
        wire (then it is awaited). Raises :class:`CalledOff` when called off."""
        assert self.send is not None

        def watch(event: ProgressEvent) -> None:
            if flight.observe(event, stopping=self.stopping is not None):
                self.emit(event)

        req.before_send = self.before_send(req.keys)
        flight.task = asyncio.ensure_future(self.send(req, watch))
        self.flights[id(flight)] = flight
        try:
            return await flight.task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if flight.called_off and (me is None or not me.cancelling()):
                raise CalledOff("stop") from None
            raise
        finally:
            del self.flights[id(flight)]

    async def send_one(self, req: Request) -> None:
        gate = self.gate
        if gate is not None and req.keys and not self.announces:
            # a sender that runs no before_send hook: journal before sending
            if not (await gate.call("begin", req.keys))[0]:
                return self.fail_request(req, self.stop_error, stopped=True)  # type: ignore[arg-type]
        flight = Flight(on_wire=not self.announces)
        try:
            outcome = await self.fly(req, flight)
        except CalledOff:
            return await self.call_off(req, flight)
        except MillimetricError as exc:
            return await self.record_failure(req, exc)
        except Exception as exc:  # never untyped: the outcome is unknown
            log.exception("unexpected error while sending to /v1/%s", self.route)
            return await self.record_failure(req, MillimetricError(
                f"unexpected {type(exc).__name__} while sending: {exc}",
                code="unexpected_error", ambiguous=True))
        attempts = int(getattr(outcome, "attempts", 1) or 1)
        ambiguous = bool(getattr(outcome, "ambiguous", False))
        journaled = gate is None or not req.keys or (
            await gate.call("acknowledge", req.keys, ambiguous=ambiguous))[0]
        flag = ambiguous or req.resend
        req.chunk.mark(req.positions, SENT, attempts=attempts, ambiguous=flag,
                       message=ledger.sent_note(ambiguous, req.resend, journaled))
        self.emit(Acknowledged(self.route, req.count, attempts=attempts, ambiguous=flag))
        req.chunk.pending -= 1
        self.settle(req.chunk)

    async def call_off(self, req: Request, flight: Flight) -> None:
        """A request kept from leaving (again) by a stop: ``failed`` (not sent), or
        ``ambiguous`` when an earlier attempt may have been written."""
        err = self.stop_error
        assert err is not None
        if flight.maybe_written:
            return await self.record_failure(req, MillimetricError(
                f"the run stopped ({err.code}) between attempts; an earlier attempt may have "
                "been written", code=err.code, ambiguous=True, attempts=flight.attempts))
        if flight.left and self.gate is not None and req.keys:  # certainly not written
            await self.gate.call("fail", req.keys, ambiguous=False)
        self.fail_request(req, err, stopped=True)

    async def split_refused(self, req: Request, exc: MillimetricError) -> bool:
        """A ``/v1/batch`` 400 that names its events: report those rows ``invalid`` with
        the server's rule and send the others again, so rows the server refuses do not
        take their neighbours down. ``False`` when the refusal names no single events."""
        found = refusals(exc, req.count) if self.route == "batch" and req.body else None
        events = events_of(req.body, req.count) if found else None
        if not found or events is None:
            return False
        if self.gate is not None and req.keys:  # certainly not written: no duplicate flag
            if not (await self.gate.call("fail", req.keys, ambiguous=False))[0]:
                return False
        chunk = req.chunk
        self.errors.append(mark_refused(chunk, req.positions, found, exc.attempts))
        self.emit(Failed(self.route, len(found), exc.code, short(exc.message)))
        keep = [i for i in range(req.count) if i not in found]
        if not keep:
            chunk.pending -= 1
            self.settle(chunk)
            return True
        await self.send_one(Request(  # takes over the request's place in chunk.pending
            chunk, req.positions[keep],
            [req.keys[i] for i in keep] if len(req.keys) == req.count else [],
            content=body_of([orjson.dumps(events[i]) for i in keep]), resend=req.resend))
        return True

    async def record_failure(self, req: Request, exc: MillimetricError) -> None:
        if await self.split_refused(req, exc):
            return
        if self.gate is not None and req.keys:
            await self.gate.call("fail", req.keys, ambiguous=exc.ambiguous)
        if stops_run(exc):
            self.stop(exc)
        self.fail_request(req, exc)

    def fail_request(self, req: Request, exc: MillimetricError, *, stopped: bool = False) -> None:
        status, msg = ledger.failure(exc, per_row=self.route != "batch", stopped=stopped)
        flag = exc.ambiguous and not stopped
        req.chunk.mark(req.positions, status, error=exc.code, message=short(msg),
                       attempts=0 if stopped else exc.attempts, ambiguous=flag)
        self.emit(Failed(self.route, req.count, exc.code, short(exc.message), ambiguous=flag))
        req.chunk.pending -= 1
        self.settle(req.chunk)

    # ---------------------------------------------------------------- running

    async def run(self, reader: ChunkReader) -> None:
        queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=max(2, 2 * self.concurrency))
        tasks = [asyncio.create_task(self.produce(reader, queue))]
        if not self.dry_run:
            tasks += [asyncio.create_task(self.work(queue)) for _ in range(self.concurrency)]
        else:
            tasks.append(asyncio.create_task(_drain(queue, self.concurrency)))
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)


async def _drain(queue: asyncio.Queue[Request | None], sentinels: int) -> None:
    seen = 0
    while seen < sentinels:
        if await queue.get() is None:
            seen += 1
