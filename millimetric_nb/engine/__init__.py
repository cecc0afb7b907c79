"""The engine: chunks -> validate + encode -> requests -> send -> account.

One async code path, :func:`run_rows`, does everything: events through
``/v1/batch`` or ``/v1/track`` (with :func:`event_preparer`) and the accessor's
identify and forget are built on it. The engine takes observers only; the public faces
(:func:`millimetric_nb.backfill`, :func:`millimetric_nb.abackfill`, ``df.millimetric``,
in :mod:`millimetric_nb.api` and :mod:`millimetric_nb.accessor`) choose the display
for ``progress=True`` and bridge to synchronous code.

How a run goes:

* the source is read chunk by chunk by :mod:`millimetric_nb.datasources` (a
  DataFrame is sliced; files, Parquet datasets, Arrow, polars, DuckDB and Dask
  are streamed), so memory stays bounded;
* each chunk is validated and encoded column-wise by the frame layer in a worker
  thread, ahead of the sending (a bounded queue of ready requests keeps the
  pipeline full without holding the whole input's payloads);
* valid rows already acknowledged in the journal are ``skipped``; the rest are
  packed into ``/v1/batch`` bodies of at most 1000 events and 5 MB
  (:mod:`millimetric_nb.batching`, the client's packer too);
* ``concurrency`` workers send requests; the client's token bucket sets the pace
  and retries transient failures;
* every outcome is written to the journal (committed) *before* it is counted,
  and every row ends in :class:`~millimetric_nb.results.SendResult` with exactly
  one status.

Errors: a ``/v1/batch`` request is all-or-nothing. A 400 that names events
(``events.N.field``, a rule the server applies and the client did not) marks those
rows ``invalid`` with the server's rule and sends the others again; any other
request rejected for good marks its rows ``failed`` with the code and the run goes
on. A 401/403 or a refused key stops the run: rows not yet sent are marked
``failed`` with that code, the result is *returned* (so the account of what was
already sent is not lost) with ``result.error`` set, shown at the top of its repr; call
``result.raise_for_error()`` to turn it into an exception. A journal that
cannot be written stops the run the same way (``journal_failed``). A source that
cannot be read further (a corrupt line, an item that is not a DataFrame) ends the
reading: the rows read so far are sent and accounted, and ``result.error`` says
where it stopped. A graceful stop (``stop=``, a :class:`StopSignal`: the Cancel
button, the first Ctrl-C) sends nothing new, awaits the requests on the wire, and
returns the full account (rows never sent are ``failed`` with ``cancelled`` /
``interrupted``). A hard interruption (KeyboardInterrupt, task cancellation)
propagates; the journal holds what was acknowledged, and running again with it resumes.

Ambiguity: see :mod:`millimetric_nb.results` (statuses) and
:mod:`millimetric_nb.journal` (resume policy). Ids whose outcome an earlier run
left unknown are, with ``on_ambiguous="verify"`` (the faces' default), looked for
by reading back their time window
(:meth:`~millimetric_nb.engine.journal_gate.JournalGate.read_back`): found ones are
``skipped``, absent ones sent as new, and only those reads cannot tell about are
resent and flagged (as ``"resend"`` does for all; ``"skip"`` skips them). The
journal needs no timestamps for this: a resume rebuilds the same payloads from
the same source, and the ids' timestamps are read from them.

The modules, one job each:

* :mod:`~millimetric_nb.engine.sources`: reading the input chunk by chunk;
* :mod:`~millimetric_nb.engine.prepare`: what a preparer gives for a chunk, and the
  preparer of event sends over the frame layer;
* :mod:`~millimetric_nb.engine.plan`: a prepared chunk as requests (packed by
  :func:`~millimetric_nb.batching.pack_arrays`);
* :mod:`~millimetric_nb.engine.journal_gate`: recipe check, send / skip / resend,
  ``pending`` before a request leaves, outcomes recorded; a journal failure stops the run;
* :mod:`~millimetric_nb.engine.notes`: each row's note, from structured problems;
* :mod:`~millimetric_nb.engine.ledger`: per-chunk status arrays, counts, ``SendResult``;
* :mod:`~millimetric_nb.engine.stop`: the graceful stop;
* :mod:`~millimetric_nb.engine.run`: the workers; :mod:`~millimetric_nb.engine.rows`:
  :func:`run_rows`, the entry.
"""

from __future__ import annotations

from ..batching import body_of, pack
from ..defaults import DEFAULT_CONCURRENCY
from .journal_gate import OnAmbiguous
from .prepare import EventPreparer, PreparedRows, Preparer, event_preparer
from .rows import resolve_async_client, route_limit, route_sender, run_rows
from .sources import DEFAULT_CHUNKSIZE, Source, field_columns, iter_source
from .stop import StopSignal

__all__ = [
    "DEFAULT_CHUNKSIZE",
    "DEFAULT_CONCURRENCY",
    "EventPreparer",
    "OnAmbiguous",
    "PreparedRows",
    "Preparer",
    "Source",
    "StopSignal",
    "body_of",
    "event_preparer",
    "field_columns",
    "iter_source",
    "pack",
    "resolve_async_client",
    "route_limit",
    "route_sender",
    "run_rows",
]
