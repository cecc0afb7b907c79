"""The public sending faces: :func:`backfill`, :func:`abackfill` and their shared helpers.

A face (level 6 in DESIGN.md) does what the engine must not: it turns
``progress=True`` into a display from :mod:`millimetric_nb.ui`, bridges the async
engine to synchronous code, and issues the data warnings with
:func:`warnings.warn` pointing at the user's line. The engine
(:mod:`millimetric_nb.backfill`) only sees observers.

:func:`abackfill` owns the argument list of an event send; :func:`backfill` and
``df.millimetric.send_batch`` / ``.track`` reach it through :func:`send_sync`.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings as _warnings
from collections.abc import Coroutine
from typing import Any, Literal

import pandas as pd

from . import contract
from .backfill import (
    DEFAULT_CHUNKSIZE,
    DEFAULT_CONCURRENCY,
    OnAmbiguous,
    Source,
    event_preparer,
    field_columns,
    iter_source,
    run_rows,
)
from .errors import ConfigurationError
from .journal import Journal
from .progress import Emitter, Observer
from .results import SendResult
from .ui import progress_observer
from .ui.charts import frame_timestamps

_TRACK_NOTE = "track sends one request per row"


def observer_for(
    progress: bool | Observer, observer: Observer | None, route: str
) -> Observer | None:
    """The observer of one send: ``observer`` plus the display ``progress`` asks for.

    ``progress=True`` attaches the tqdm bar (:class:`~millimetric_nb.ui.TqdmProgress`),
    a callable is attached as is, ``False`` attaches nothing.
    """
    display = progress if callable(progress) else progress_observer(progress, f"/v1/{route}")
    emitter = Emitter([observer, display])
    return emitter if emitter else None


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


def sync_client(client: Any, dry_run: bool) -> Any:
    """The client a synchronous face will use (the default one when ``None``)."""
    if client is None and not dry_run:
        from .sync import default_client

        return default_client()
    return client


def run_sync_call(client: Any, coro: Coroutine[Any, Any, SendResult]) -> SendResult:
    """Run a send coroutine through the package's one event-loop bridge.

    A synchronous ``Client`` runs it on its own loop (where its connections live);
    otherwise :func:`millimetric_nb.sync.run_sync` does. An interrupt (Ctrl-C, a
    notebook's "interrupt kernel") cancels the send there before it propagates, so
    the abandoned run cannot wake with the loop's next use and send its rows
    alongside a rerun's (tests/test_adversarial_backfill.py).
    """
    runner = getattr(client, "run", None)
    if callable(runner):
        return runner(coro)  # type: ignore[no-any-return]
    from .sync import run_sync

    return run_sync(coro)


async def abackfill(
    source: Source,
    *,
    client: Any = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    progress: bool | Observer = True,
    observer: Observer | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunksize: int = DEFAULT_CHUNKSIZE,
    pii: str = "warn",
    on_ambiguous: OnAmbiguous = "resend",
    now: dt.datetime | None = None,
    route: Literal["batch", "track"] = "batch",
    warn_stacklevel: int = 2,
    **mapping: Any,
) -> SendResult:
    """Send every valid row of ``source`` as events; the ``await``-able backfill.

    Args:
        source: a DataFrame, an iterable of DataFrames (e.g.
            ``pd.read_csv(path, chunksize=...)``), or a path to a ``.csv``,
            ``.jsonl`` (JSON Lines) or ``.parquet`` file (streamed chunk by chunk).
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
        progress: draw a tqdm bar (or pass an observer callable).
        observer: a callable receiving every progress event.
        concurrency: requests in flight at once (the client's bucket sets the pace).
        chunksize: rows validated and encoded at a time.
        pii: ``"warn"``, ``"error"`` or ``"ignore"`` for personal-data-looking columns.
        on_ambiguous: for ids whose outcome was unknown in an earlier run of the same
            journal: ``"resend"`` (default, flagged as possible duplicates, since a
            lost event cannot be recovered but a duplicate can be found by its
            ``event_id``) or ``"skip"``.
        now: the reference time for the future-timestamp check (default: now).
        route: ``"batch"`` (default) or ``"track"`` (one request per row).
        warn_stacklevel: where the data warnings (also in ``result.warnings``) point;
            ``0`` issues none (the synchronous faces issue them themselves).
        **mapping: ``event``, ``event_col``, ``event_id_col``, ``timestamp_col``,
            ``anonymous_id_col``, ``user_id_col``, ``session_id_col``, ``url_col``,
            ``path_col``, ``referrer_col``, ``properties``.

    Returns:
        :class:`~millimetric_nb.results.SendResult` accounting for every row.
    """
    if route not in ("batch", "track"):
        raise ConfigurationError(
            f"route must be 'batch' or 'track', not {route!r}", code="invalid_route"
        )
    prepare = event_preparer(mapping, pii, now)
    chunks, total = iter_source(source, chunksize, field_columns(mapping))
    slow = track_warning(total) if route == "track" else None
    if slow and warn_stacklevel:
        _warnings.warn(slow, UserWarning, stacklevel=warn_stacklevel)
    result = await run_rows(
        chunks,
        route=route,
        prepare=prepare,
        client=client,
        journal=journal,
        dry_run=dry_run,
        observer=observer_for(progress, observer, route),
        concurrency=concurrency,
        on_ambiguous=on_ambiguous,
        total_rows=total,
        warnings=[slow] if slow else (),
    )
    if isinstance(source, pd.DataFrame):  # for result.per_day() and its chart (no copy)
        result.timestamps = frame_timestamps(source, mapping)
    if warn_stacklevel:
        issue_warnings(result, warn_stacklevel)
    return result


def send_sync(
    source: Source,
    *,
    route: Literal["batch", "track"],
    stacklevel: int,
    client: Any = None,
    dry_run: bool = False,
    **options: Any,
) -> SendResult:
    """The synchronous faces' one path to :func:`abackfill` (``options``: its keywords).

    Works in a script and inside Jupyter's running loop. ``stacklevel`` counts from
    here: the track-throughput warning is issued before the run, the data warnings
    after it, both pointing at the user's line.
    """
    if route == "track" and isinstance(source, pd.DataFrame):
        slow = track_warning(len(source))
        if slow:
            _warnings.warn(slow, UserWarning, stacklevel=stacklevel)
    client = sync_client(client, dry_run)
    result = run_sync_call(
        client,
        abackfill(
            source, route=route, warn_stacklevel=0, client=client, dry_run=dry_run, **options
        ),
    )
    issue_warnings(result, stacklevel)
    return result


def backfill(
    source: Source,
    *,
    client: Any = None,
    journal: Journal | str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    progress: bool | Observer = True,
    observer: Observer | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunksize: int = DEFAULT_CHUNKSIZE,
    pii: str = "warn",
    on_ambiguous: OnAmbiguous = "resend",
    now: dt.datetime | None = None,
    **mapping: Any,
) -> SendResult:
    """Send every valid row of ``source`` through ``/v1/batch``; see :func:`abackfill`.

    The synchronous face (works in a script and inside Jupyter's running loop).
    """
    return send_sync(
        source, route="batch", stacklevel=3, client=client, journal=journal, dry_run=dry_run,
        progress=progress, observer=observer, concurrency=concurrency, chunksize=chunksize,
        pii=pii, on_ambiguous=on_ambiguous, now=now, **mapping,
    )


__all__ = [
    "abackfill",
    "backfill",
    "issue_warnings",
    "observer_for",
    "run_sync_call",
    "send_sync",
    "sync_client",
    "track_warning",
]
