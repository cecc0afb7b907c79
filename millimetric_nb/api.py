"""The public sending faces: :func:`backfill`, :func:`abackfill` and their shared helpers.

A face (level 6 in DESIGN.md) does what the engine must not: it turns
``progress=True`` into a display from :mod:`millimetric_nb.ui`, bridges the async
engine to synchronous code, and issues the data warnings with
:func:`warnings.warn` pointing at the user's line. The engine
(:mod:`millimetric_nb.engine`) only sees observers.

:func:`abackfill` owns the argument list of an event send; :func:`backfill` and
``df.millimetric.send_batch`` / ``.track`` reach it through :func:`send_sync`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import os
import signal
import sys
import threading
import warnings as _warnings
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from . import contract
from .datasources import field_columns, iter_source
from .defaults import DEFAULT_CHUNKSIZE, DEFAULT_CONCURRENCY, PII_DEFAULT
from .errors import ConfigurationError
from .journal import Journal
from .progress import Emitter, Observer, ProgressEvent, Stopping
from .results import SendResult, account_line, stopped_by
from .ui import choose_display, display_kind
from .ui.charts import frame_timestamps

if TYPE_CHECKING:  # the engine and the frame layer (polars) load when a send starts
    from .datasources import Source
    from .engine import OnAmbiguous, StopSignal
    from .frame import MissingTimestamp
    from .sync import ClientLike

_TRACK_NOTE = "track sends one request per row"
Progress = bool | str | Observer
#: How a send runs: awaited by the caller, blocking its (sync) caller, or as a task /
#: thread whose handle the caller got at once. Decides whether Cancel can work.
Mode = Literal["await", "blocking", "background"]


def observer_for(
    progress: Progress,
    observer: Observer | None,
    route: str,
    *,
    dry_run: bool = False,
    journal: Any = None,
    client: ClientLike | None = None,
    cancel: Callable[[], Any] | None = None,
) -> Observer | None:
    """The observer of one send: ``observer`` plus the display ``progress`` asks for.

    ``progress=True`` picks the display (:func:`millimetric_nb.ui.choose_display`: the
    live panel inside Jupyter, shown here, a tqdm text bar elsewhere; ``"widget"`` /
    ``"text"`` / ``$MILLIMETRIC_PROGRESS`` choose), a callable is attached as is,
    ``False`` attaches nothing. A panel gets a Cancel button calling ``cancel``, or,
    without one (a send that blocks its cell), a line saying how to stop it.
    """
    from .engine import route_limit

    display = choose_display(
        progress, route=route, limit=route_limit(client, route), dry_run=dry_run,
        journal=journal,
    )
    if display is not None and display is not progress and hasattr(display, "show"):
        display.show()
    if hasattr(display, "set_cancel"):  # a panel, maybe the caller's own (embedded)
        if dry_run:
            display.dry_run = True  # type: ignore[union-attr]
        if journal is not None and getattr(display, "journal", None) is None:
            display.journal = journal  # type: ignore[union-attr]
        display.set_cancel(cancel)  # type: ignore[union-attr]
    emitter = Emitter([observer, display])
    return emitter if emitter else None


class SendInterrupted(KeyboardInterrupt):
    """A synchronous send stopped by the first Ctrl-C / kernel interrupt, after its
    requests in flight: ``.result`` is the full :class:`SendResult`.

    A ``KeyboardInterrupt``, so a script still stops; its message is the account in one
    line (stored, cut off in flight, never sent, how to resume). In a notebook it is
    shown as that line alone, not as a traceback.
    """

    def __init__(self, result: SendResult, journal: Any = None) -> None:
        self.result = result
        self.line = account_line(result, journal)
        super().__init__(self.line)
        self.add_note("millimetric_nb: the exception's .result is the account of every row")

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead
        return [f"SendInterrupted: {self.line}",
                "(the account of every row: sys.last_value.result)"]


@contextlib.contextmanager
def interrupts_drain(stop: StopSignal) -> Iterator[None]:
    """While a send runs: the first SIGINT (Ctrl-C, a kernel interrupt) asks ``stop``
    for a graceful stop; a second one goes to the handler that was there before
    (a ``KeyboardInterrupt``, or ipykernel's cancel of an awaited cell): it stops at once.

    Only in the main thread, and only over a Python-level handler (an ignored or
    default SIGINT is left alone).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if not stop.requested:
            stop.request("interrupt")  # thread- and signal-safe: wakes the loop
            return
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)
        previous(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)


def _shows_panel(progress: Progress) -> bool:
    if callable(progress):
        return hasattr(progress, "set_cancel")
    return display_kind(progress) == "widget"


def _say_stopping(event: ProgressEvent) -> None:
    """Without a panel: say on stderr that an interrupt is draining, and what a second does."""
    if isinstance(event, Stopping) and event.reason == "interrupt":
        print(
            f"millimetric_nb: stopping: nothing new is sent; waiting for {event.in_flight} "
            "request(s) in flight (interrupt again to stop at once)",
            file=sys.stderr, flush=True,
        )


def track_warning(total: int | None) -> str | None:
    """For a large frame sent through ``/v1/track``: how long it takes against a batch."""
    if total is None or total <= 1000:
        return None
    limit = contract.RATE_LIMITS["track"]
    blimit = contract.RATE_LIMITS["batch"]
    t_track = max(0, total - limit.burst) / limit.refill
    n_batch = -(-total // contract.BATCH_MAX_EVENTS)
    t_batch = max(0, n_batch - blimit.burst) / blimit.refill
    return (
        f"{_TRACK_NOTE}: {total:,} rows take about {t_track:,.0f} s at {limit.refill:g}/s; "
        f"send_batch would take about {t_batch:,.0f} s (1000 events per request)"
    )


def issue_warnings(result: SendResult, stacklevel: int) -> None:
    """Issue a result's data warnings (:class:`~millimetric_nb.frame.DataWarning`), once each.

    ``stacklevel`` counts from the caller of this function. The track-throughput
    warning is issued before sending, not here.
    """
    from .frame import emit_warnings

    messages = [w for w in result.warnings if not w.startswith(_TRACK_NOTE)]
    emit_warnings(messages, stacklevel=stacklevel + 1)


def sync_client(client: ClientLike | None, dry_run: bool) -> ClientLike | None:
    """The client a synchronous face will use (the default one when ``None``)."""
    if client is None and not dry_run:
        from .sync import default_client

        return default_client()
    return client


def run_sync_call(client: ClientLike | None, coro: Coroutine[Any, Any, SendResult]) -> SendResult:
    """Run a send coroutine through the package's one event-loop bridge.

    A synchronous ``Client`` runs it on its own loop (where its connections live);
    otherwise :func:`millimetric_nb.sync.run_sync` does. An interrupt (Ctrl-C, a
    notebook's "interrupt kernel") cancels the send there before it propagates, so
    the abandoned run cannot wake with the loop's next use and send its rows
    alongside a rerun's (tests/test_adversarial_backfill.py).
    """
    runner = getattr(client, "run", None)
    if callable(runner):
        return runner(coro)
    from .sync import run_sync

    return run_sync(coro)


async def abackfill(
    source: Source,
    *,
    client: ClientLike | None = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    progress: bool | Observer = True,
    observer: Observer | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunksize: int = DEFAULT_CHUNKSIZE,
    pii: str = PII_DEFAULT,
    on_ambiguous: OnAmbiguous = "verify",
    now: dt.datetime | None = None,
    route: Literal["batch", "track"] = "batch",
    warn_stacklevel: int = 2,
    filter: Any = None,
    missing_timestamp: MissingTimestamp = "invalid",
    stop: StopSignal | None = None,
    _mode: Mode = "await",
    **mapping: Any,
) -> SendResult:
    """Send every valid row of ``source`` as events; the ``await``-able backfill.

    Args:
        source: a DataFrame, an iterable of DataFrames (e.g.
            ``pd.read_csv(path, chunksize=...)``), a path to a ``.csv``,
            ``.jsonl`` (JSON Lines, both also ``.gz`` / ``.zst``) or ``.parquet``
            file, a folder, glob or list of Parquet files (one dataset, hive
            partitions as columns), a pyarrow Table / RecordBatchReader / Dataset, a
            polars DataFrame / LazyFrame, a DuckDB relation or
            :func:`~millimetric_nb.sql`, or a Dask DataFrame: all streamed chunk by
            chunk (see :mod:`millimetric_nb.datasources`).
            From a file, the columns of the event's string fields (``user_id``...,
            and any ``*_col`` named) are read as written: a CSV's as text
            (``00123`` stays ``"00123"``; a blank does not turn a chunk's ids into
            floats), JSON Lines with JSON's own types (no date or number guessing).
            Other CSV columns are inferred by pandas chunk by chunk. A CSV whose
            header has semicolons and no comma is read with ``sep=";"``; files
            must be UTF-8 (else read them yourself and pass the chunks). The index of
            ``result.rows`` / ``.failed`` is the data row number from 0 (the header
            line not counted). For your own reading, pass chunks instead.
        client: a Client or AsyncClient; default: the one ``connect()`` set.
        journal: a path (or :class:`~millimetric_nb.journal.Journal`): acknowledged
            ids are recorded there and skipped on the next run.
        dry_run: validate and plan only; no request is made (no client needed).
        progress: ``True``: the live panel inside Jupyter (with Cancel, since the send
            is awaited), a tqdm text bar elsewhere; ``"widget"`` / ``"text"`` choose
            (``$MILLIMETRIC_PROGRESS`` too); a callable is an observer; ``False``: none.
        observer: a callable receiving every progress event.
        concurrency: requests in flight at once (the client's bucket sets the pace).
        chunksize: rows validated and encoded at a time.
        pii: property columns that look like personal data (named ``email``, ``phone``...,
            or holding email- or phone-shaped values): ``"error"`` (default) refuses
            the send before any request, naming them; drop them, or pass ``"allow"``
            once you have decided they may be sent. ``"warn"`` sends them with a
            warning; ``"ignore"`` (as ``"allow"``) sends them silently.
        on_ambiguous: for ids whose outcome was unknown in an earlier run of the same
            journal (in flight when it was killed or interrupted, or ambiguous):
            ``"verify"`` (default) reads back their time window (``/v1/query``, which
            needs a read-capable ``sk_``/``rk_`` key and a server whose reads carry
            ``event_id``, as the local server's do) and resends only the ids not
            stored; where reads cannot tell (no ``event_id`` in the rows, a key that
            cannot read, rows without a timestamp) it falls back to ``"resend"`` and
            says so once in ``result.warnings``. ``"resend"``: resend them, flagged
            as possible duplicates (a lost event cannot be recovered but a duplicate
            can be found by its ``event_id``). ``"skip"``: do not resend them.
        now: the reference time for the future-timestamp check (default: now).
        route: ``"batch"`` (default) or ``"track"`` (one request per row).
        warn_stacklevel: where the data warnings (also in ``result.warnings``) point;
            ``0`` issues none (the synchronous faces issue them themselves).
        filter: a ``pyarrow.compute`` Expression, pushed down to the scan of a
            Parquet dataset (or applied to an Arrow Table), e.g.
            ``pc.field("day") >= "2026-11-01"``.
        missing_timestamp: with a timestamp column, a row whose cell is empty (or
            ``NaN``, ``NaT``: e.g. "N/A" read by ``read_csv``) is ``invalid`` (rule
            ``required``) by default; ``"server_time"`` sends it without a timestamp,
            stored at the time it arrives. The warning names the first such rows.
        stop: a :class:`~millimetric_nb.engine.StopSignal`; ``stop.request()`` stops
            the send gracefully. The panel's Cancel and the first Ctrl-C / kernel
            interrupt do the same: nothing new leaves, the requests in flight are
            awaited, and the result (returned, not raised) accounts for every row,
            with ``result.error.code`` ``"cancelled"`` / ``"interrupted"``. A second
            interrupt stops at once.
        **mapping: ``event``, ``event_col``, ``event_id_col``, ``timestamp_col``,
            ``anonymous_id_col``, ``user_id_col``, ``session_id_col``, ``url_col``,
            ``path_col``, ``referrer_col``, ``properties``.

    Returns:
        :class:`~millimetric_nb.results.SendResult` accounting for every row.

    Raises:
        SourceError: the source cannot be read at all (a missing path, an empty folder
            or glob, clashing Parquet schemas, a failing query), before anything is
            sent. Once rows flow, a part that fails ends the reading and is
            ``result.error`` (a :class:`~millimetric_nb.errors.SourceError` naming it).
    """
    if route not in ("batch", "track"):
        raise ConfigurationError(
            f"route must be 'batch' or 'track', not {route!r}", code="invalid_route"
        )
    from .engine import StopSignal, event_preparer, run_rows
    from .frame import RULE_PII, refuse_personal_data

    prepare = event_preparer(mapping, pii, now, missing_timestamp)
    if pii == "error" and isinstance(source, pd.DataFrame):
        refuse_personal_data(source, mapping)  # every row, before any request
    chunks, total = iter_source(source, chunksize, field_columns(mapping), filter)
    slow = track_warning(total) if route == "track" else None
    if slow and warn_stacklevel:
        _warnings.warn(slow, UserWarning, stacklevel=warn_stacklevel)
    stop = stop if stop is not None else StopSignal()
    display = observer_for(
        progress, observer, route, dry_run=dry_run, journal=journal, client=client,
        cancel=None if _mode == "blocking" else stop.request,
    )
    # "blocking": the synchronous face installed the interrupt handler around the bridge
    drain = interrupts_drain(stop) if _mode == "await" else contextlib.nullcontext()
    with drain:
        result = await run_rows(
            chunks,
            route=route,
            prepare=prepare,
            client=client,
            journal=journal,
            dry_run=dry_run,
            observer=Emitter([display, None if _shows_panel(progress) else _say_stopping]),
            concurrency=concurrency,
            on_ambiguous=on_ambiguous,
            total_rows=total,
            warnings=[slow] if slow else (),
            stop=stop,
        )
    if isinstance(source, pd.DataFrame):  # for result.per_day() and its chart (no copy)
        result.timestamps = frame_timestamps(source, mapping)
    refused = result.error
    if (refused is not None and refused.code == RULE_PII
            and result.counts["sent"] + result.counts["ambiguous"] == 0):
        raise refused  # nothing left: the send stopped before any request
    if warn_stacklevel:
        issue_warnings(result, warn_stacklevel)
    return result


def run_blocking(
    client: ClientLike | None,
    start: Callable[[StopSignal], Coroutine[Any, Any, SendResult]],
    journal: Any = None,
) -> SendResult:
    """Run a send to its end from synchronous code, the first interrupt draining it.

    ``start(stop)`` makes the send's coroutine. The first Ctrl-C / kernel interrupt
    stops the send after its requests in flight and raises :class:`SendInterrupted`
    carrying the full account; a second one stops at once (a plain
    ``KeyboardInterrupt``, through :func:`run_sync_call`).
    """
    from .engine import StopSignal

    stop = StopSignal()
    with interrupts_drain(stop):
        result = run_sync_call(client, start(stop))
    if stopped_by(result) == "interrupted":
        raise SendInterrupted(result, journal)
    return result


_RUNNING: set[asyncio.Task[SendResult]] = set()


class SendHandle:
    """A send started with ``background=True``: it runs as a task on the running event
    loop (in Jupyter: the kernel's, so the cell returns and widget clicks work) or,
    outside one, on a background thread.

    ``.result()`` (blocks) or ``await handle`` gives the :class:`SendResult`;
    ``.cancel()`` stops it gracefully (nothing new leaves, the requests in flight are
    awaited, every row accounted for), as the panel's Cancel button does; ``.done()``.
    While ``await handle`` waits, the first interrupt cancels the same way.
    """

    def __init__(
        self,
        future: asyncio.Future[SendResult] | concurrent.futures.Future[SendResult],
        stop: StopSignal,
        panel: Any = None,
        route: str = "batch",
    ) -> None:
        self._future = future
        self._stop = stop
        self.panel = panel
        self.route = route

    def cancel(self) -> None:
        """Stop the send after its requests in flight (the result still accounts for all)."""
        self._stop.request("cancel")

    def done(self) -> bool:
        """Whether the send ended (its result is ready)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> SendResult:
        """The :class:`SendResult`, waiting for the send to end (``timeout`` seconds at most)."""
        fut = self._future
        if isinstance(fut, concurrent.futures.Future):
            return fut.result(timeout)
        if fut.done():
            return fut.result()
        from .sync import run_sync

        async def wait() -> SendResult:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)

        return run_sync(wait())

    def __await__(self) -> Generator[Any, None, SendResult]:
        return self._wait().__await__()

    async def _wait(self) -> SendResult:
        fut = self._future
        waited = asyncio.wrap_future(fut) if isinstance(fut, concurrent.futures.Future) else fut
        with interrupts_drain(self._stop):
            return await asyncio.shield(waited)

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return (f"<SendHandle /v1/{self.route} {state}: .cancel() stops it, .result() or "
                "await it for the SendResult>")


def start_background(
    source: Source,
    *,
    route: Literal["batch", "track"],
    client: ClientLike | None = None,
    dry_run: bool = False,
    progress: Progress = True,
    journal: Any = None,
    **options: Any,
) -> SendHandle:
    """Start a send and return its :class:`SendHandle` at once (``background=True``)."""
    from .engine import StopSignal, route_limit

    client = sync_client(client, dry_run)
    stop = StopSignal()
    panel = choose_display(progress, route=route, limit=route_limit(client, route),
                           dry_run=dry_run, journal=journal)
    if panel is not None and panel is not progress and hasattr(panel, "show"):
        panel.show()
    coro = abackfill(
        source, route=route, client=client, dry_run=dry_run, journal=journal,
        progress=panel if panel is not None else False, stop=stop, warn_stacklevel=0,
        _mode="background", **options,
    )
    shown = panel if hasattr(panel, "set_cancel") else None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        task = loop.create_task(coro)
        _RUNNING.add(task)  # the loop keeps only a weak reference to its tasks
        task.add_done_callback(_RUNNING.discard)
        return SendHandle(task, stop, shown, route)
    future: concurrent.futures.Future[SendResult] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(run_sync_call(client, coro))
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="millimetric-send", daemon=False).start()
    return SendHandle(future, stop, shown, route)


def send_sync(
    source: Source,
    *,
    route: Literal["batch", "track"],
    stacklevel: int,
    client: ClientLike | None = None,
    dry_run: bool = False,
    **options: Any,
) -> SendResult:
    """The synchronous faces' one path to :func:`abackfill` (``options``: its keywords).

    Works in a script and inside Jupyter's running loop. ``stacklevel`` counts from
    here: the track-throughput warning is issued before the run, the data warnings
    after it, both pointing at the user's line. The first interrupt drains the send
    and raises :class:`SendInterrupted` (see :func:`run_blocking`).
    """
    if route == "track" and isinstance(source, pd.DataFrame):
        slow = track_warning(len(source))
        if slow:
            _warnings.warn(slow, UserWarning, stacklevel=stacklevel)
    client = sync_client(client, dry_run)
    result = run_blocking(
        client,
        lambda stop: abackfill(
            source, route=route, warn_stacklevel=0, client=client, dry_run=dry_run,
            stop=stop, _mode="blocking", **options,
        ),
        options.get("journal"),
    )
    issue_warnings(result, stacklevel)
    return result


def backfill(
    source: Source,
    *,
    client: ClientLike | None = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    progress: bool | Observer = True,
    observer: Observer | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunksize: int = DEFAULT_CHUNKSIZE,
    pii: str = PII_DEFAULT,
    on_ambiguous: OnAmbiguous = "verify",
    now: dt.datetime | None = None,
    filter: Any = None,
    missing_timestamp: MissingTimestamp = "invalid",
    background: bool = False,
    **mapping: Any,
) -> SendResult | SendHandle:
    """Send every valid row of ``source`` through ``/v1/batch``; see :func:`abackfill`.

    The synchronous face (works in a script and inside Jupyter's running loop). The
    first Ctrl-C / kernel interrupt stops it after its requests in flight and raises
    :class:`SendInterrupted` (a ``KeyboardInterrupt``) whose ``.result`` is the
    account; a second one stops at once. ``background=True`` returns a
    :class:`SendHandle` at once instead (the panel's Cancel then works).
    """
    if background:
        return start_background(
            source, route="batch", client=client, journal=journal, dry_run=dry_run,
            progress=progress, observer=observer, concurrency=concurrency,
            chunksize=chunksize, pii=pii, on_ambiguous=on_ambiguous, now=now, filter=filter,
            missing_timestamp=missing_timestamp, **mapping,
        )
    return send_sync(
        source, route="batch", stacklevel=3, client=client, journal=journal, dry_run=dry_run,
        progress=progress, observer=observer, concurrency=concurrency, chunksize=chunksize,
        pii=pii, on_ambiguous=on_ambiguous, now=now, filter=filter,
        missing_timestamp=missing_timestamp, **mapping,
    )


__all__ = [
    "SendHandle",
    "SendInterrupted",
    "abackfill",
    "backfill",
    "interrupts_drain",
    "issue_warnings",
    "observer_for",
    "run_blocking",
    "run_sync_call",
    "send_sync",
    "start_background",
    "sync_client",
    "track_warning",
]
