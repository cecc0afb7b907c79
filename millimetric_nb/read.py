"""Reading results back: ``/v1/query``, ``/v1/stats`` and ``/v1/sources`` as DataFrames.

Every function takes ``client=None`` (the default client from
:func:`millimetric_nb.connect`) and needs a read-capable key (``sk_`` or ``rk_``).
Times (``from_``, ``to``) may be ``datetime``, ``pandas.Timestamp``, ``date``,
``numpy.datetime64`` or ISO 8601 strings; naive values are taken as UTC. The
window is ``from_`` inclusive, ``to`` exclusive, as in the API.

Parameters are checked before any request: a bad one raises
:class:`~millimetric_nb.errors.ValidationError` whose message names the parameter
and whose ``code`` is the server's (``invalid_params``, ``invalid_group_by``).

The API has no cursor: ``/v1/query`` returns at most 1000 rows of a window.
:func:`query_all` reads *every* row of a window by splitting it into smaller
windows wherever one comes back full. Its one limit: more than 1000 rows that
share the very same instant (to the microsecond) cannot be told apart, so only
1000 of them can be read; it warns (:class:`IncompleteReadWarning`) when that
happens and marks the frame ``attrs["complete"] = False``. A full instant is
counted with ``/v1/stats`` first, so exactly 1000 events at one instant (a batch
sent without timestamps) is known to be complete.

Each sync function has an ``async`` twin (``aquery``, ``aquery_all``, ``astats``,
``asources``) for use with ``await`` and an :class:`~millimetric_nb.AsyncClient`.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
import pandas as pd

from . import contract
from .encode import to_utc_iso
from .errors import IncompleteReadWarning, PossiblyTruncatedWarning, ValidationError

if TYPE_CHECKING:  # the client (httpx) is imported when one is made
    from .client import AsyncClient, ReadRoute
    from .sync import ClientLike

T = TypeVar("T")

#: Rule codes for read parameters (the field rules live in ``contract.RULE_*``).
RULE_OUT_OF_RANGE = "out_of_range"
RULE_CHOICE = "invalid_choice"
RULE_EMPTY_WINDOW = "empty_window"

_STRING_COLUMNS = tuple(
    c for c in contract.QUERY_COLUMNS if c not in ("timestamp", "properties", "source_confidence")
)
#: Column names a stats row may use for its time bucket when ``interval`` is given.
_TIME_COLUMNS = ("bucket", "period", "interval", "time", "timestamp", "date", "hour", "day",
                 "week", "start")


# --------------------------------------------------------------------------- clients


def _resolve(client: ClientLike | None) -> ClientLike:
    """The client to use: the one given, else the default client."""
    if client is not None:
        return client
    from .sync import default_client

    return default_client()


def _async_of(client: ClientLike | None) -> AsyncClient:
    """The async client behind ``client`` (a sync ``Client`` or an ``AsyncClient``)."""
    client = _resolve(client)
    return cast("AsyncClient", getattr(client, "async_client", client))


def _run_sync(
    client: ClientLike | None, make: Callable[[AsyncClient], Coroutine[Any, Any, T]]
) -> T:
    """Run ``make(async_client)`` to completion from synchronous code."""
    resolved = _resolve(client)
    runner = getattr(resolved, "run", None)
    inner = getattr(resolved, "async_client", None)
    if runner is not None and inner is not None:
        return runner(make(inner))
    from .sync import run_sync

    return run_sync(make(_async_of(resolved)))


async def _get(client: AsyncClient, route: ReadRoute, params: Mapping[str, str]) -> dict[str, Any]:
    answer = await client.read(route, params)
    if not isinstance(answer, dict):  # pragma: no cover - the client always returns dicts
        raise TypeError(f"/v1/{route} answered {type(answer).__name__}, expected an object")
    return answer


# --------------------------------------------------------------------------- parameters


def _refuse(param: str, rule: str, message: str, code: str = "invalid_params") -> ValidationError:
    return ValidationError(
        f"{param}: {message}", problems=[(param, rule, message)], code=code
    )


def _instant(param: str, value: Any) -> pd.Timestamp:
    try:
        text = to_utc_iso(value)
    except ValueError as exc:
        raise _refuse(param, contract.RULE_TIMESTAMP, str(exc)) from None
    return pd.Timestamp(text)


def _iso(ts: pd.Timestamp) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six digits: fixed width sorts as text)."""
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _window(from_: Any, to: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    if from_ is None:
        raise _refuse("from_", contract.RULE_REQUIRED, "the window's start is required")
    if to is None:
        raise _refuse("to", contract.RULE_REQUIRED, "the window's end is required")
    start, end = _instant("from_", from_), _instant("to", to)
    if start >= end:
        raise _refuse(
            "to", RULE_EMPTY_WINDOW,
            f"must be after from_ (from_ is inclusive, to exclusive): got from_={_iso(start)}, "
            f"to={_iso(end)}",
        )
    return start, end


def _limit(param: str, value: Any, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(param, contract.RULE_TYPE, f"must be an integer, got {type(value).__name__}")
    if value < 1 or (high is not None and value > high):
        span = f"from 1 to {high}" if high is not None else "of at least 1"
        raise _refuse(param, RULE_OUT_OF_RANGE, f"must be an integer {span}, got {value}")
    return value


def _choice(param: str, value: Any, allowed: Sequence[str], code: str = "invalid_params") -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _refuse(
            param, RULE_CHOICE, f"must be one of {', '.join(allowed)}; got {value!r}", code
        )
    return value


def _text(param: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str):
        raise _refuse(param, contract.RULE_TYPE, f"must be a string, got {type(value).__name__}")
    if not value:
        raise _refuse(param, contract.RULE_TOO_SHORT, "must not be empty")
    if len(value) > max_length:
        raise _refuse(param, contract.RULE_TOO_LONG, f"must be at most {max_length} characters")
    return value


def _group_by(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    cols = [c.strip() if isinstance(c, str) else c for c in items]
    unknown = [c for c in cols if c not in contract.STATS_GROUP_BY]
    if unknown:
        raise _refuse(
            "group_by", RULE_CHOICE,
            f"unknown column(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(contract.STATS_GROUP_BY)}",
            "invalid_group_by",
        )
    if len(set(cols)) != len(cols):
        raise _refuse("group_by", RULE_CHOICE, f"names a column twice: {cols}", "invalid_group_by")
    return cols


@dataclass(frozen=True, slots=True)
class _QueryFilter:
    event: str | None
    source: str | None
    medium: str | None
    user_id: str | None

    @classmethod
    def checked(
        cls, event: str | None, source: str | None, medium: str | None, user_id: str | None
    ) -> _QueryFilter:
        ev, uid = contract.EVENT_FIELDS["event"], contract.EVENT_FIELDS["user_id"]
        return cls(
            None if event is None else _text("event", event, ev.max_length or 128),
            None if source is None else _text("source", source, 2048),
            None if medium is None else _text("medium", medium, 2048),
            None if user_id is None else _text("user_id", user_id, uid.max_length or 256),
        )

    def params(self, start: pd.Timestamp, end: pd.Timestamp, limit: int) -> dict[str, str]:
        p = {"from": _iso(start), "to": _iso(end), "limit": str(limit)}
        for name in ("event", "source", "medium", "user_id"):
            v = getattr(self, name)
            if v is not None:
                p[name] = v
        return p


# --------------------------------------------------------------------------- frames


def _properties(value: Any) -> dict[str, Any]:
    if value is None or (isinstance(value, float) and value != value):
        return {}
    if isinstance(value, dict):
        return value
    parsed = orjson.loads(value)
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True, format="ISO8601").astype("datetime64[ns, UTC]")


def query_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``/v1/query`` rows as a typed DataFrame.

    Columns: :data:`contract.QUERY_COLUMNS` first (always present, even when empty),
    then any other field the server sent. ``timestamp`` is ``datetime64[ns, UTC]``,
    ``properties`` holds dicts (``{}`` when the event had none), ``source_confidence``
    is a categorical of ``low``/``medium``/``high``, the rest are strings.
    """
    df = pd.DataFrame(list(rows))
    extra = [c for c in df.columns if c not in contract.QUERY_COLUMNS]
    df = df.reindex(columns=[*contract.QUERY_COLUMNS, *extra])
    df["timestamp"] = _utc(df["timestamp"])
    df["properties"] = pd.Series(
        [_properties(v) for v in df["properties"]], index=df.index, dtype=object
    )
    df["source_confidence"] = pd.Categorical(
        df["source_confidence"], categories=list(contract.SOURCE_CONFIDENCE)
    )
    for c in _STRING_COLUMNS:
        df[c] = df[c].astype("str")
    return df


def stats_frame(rows: Sequence[Mapping[str, Any]], group_by: Sequence[str] = ()) -> pd.DataFrame:
    """``/v1/stats`` rows as a DataFrame: the time bucket (``datetime64[ns, UTC]``) if any,
    the ``group_by`` columns (strings), and ``value`` (``int64``)."""
    df = pd.DataFrame(list(rows))
    if "value" not in df.columns:
        df["value"] = pd.Series(dtype="int64")
    for c in group_by:
        df[c] = df[c].astype("str") if c in df.columns else pd.Series(dtype="str")
    time_cols = [c for c in df.columns if c in _TIME_COLUMNS]
    for c in time_cols:
        df[c] = _utc(df[c])
    others = [c for c in df.columns if c not in (*time_cols, *group_by, "value")]
    df = df[[*time_cols, *group_by, *others, "value"]]
    df["value"] = pd.to_numeric(df["value"]).astype("int64")
    return df


def sources_frame(rows: Sequence[Mapping[str, Any]], breakdown: str) -> pd.DataFrame:
    """``/v1/sources`` rows as a DataFrame: ``source`` (and ``medium``), ``events`` and
    ``uniques`` (``int64``), ``paid_share`` (``float64``)."""
    keys = ["source", "medium"] if breakdown == "source_medium" else ["source"]
    df = pd.DataFrame(list(rows))
    cols = [*keys, "events", "uniques", "paid_share"]
    extra = [c for c in df.columns if c not in cols and not (c == "medium" and not keys[1:])]
    df = df.reindex(columns=[*cols, *extra])
    for c in keys:
        df[c] = df[c].astype("str")
    df["events"] = pd.to_numeric(df["events"]).astype("int64")
    df["uniques"] = pd.to_numeric(df["uniques"]).astype("int64")
    df["paid_share"] = pd.to_numeric(df["paid_share"]).astype("float64")
    return df


def _warn_if_full(
    n: int, limit: int, route: str, window: tuple[pd.Timestamp, pd.Timestamp], hint: str
) -> None:
    # The window is in the text so that each read's warning shows (Python shows a
    # warning once per text and location).
    if n >= limit:
        warnings.warn(
            f"/v1/{route} returned {n} rows, its limit: there may be more in "
            f"[{_iso(window[0])}, {_iso(window[1])}). {hint}",
            PossiblyTruncatedWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------- query


async def aquery(
    from_: Any,
    to: Any,
    *,
    event: str | None = None,
    source: str | None = None,
    medium: str | None = None,
    user_id: str | None = None,
    limit: int = contract.QUERY_LIMIT_DEFAULT,
    client: ClientLike | None = None,
) -> pd.DataFrame:
    """Async :func:`query`."""
    start, end = _window(from_, to)
    filt = _QueryFilter.checked(event, source, medium, user_id)
    limit = _limit("limit", limit, contract.QUERY_LIMIT_MAX)
    answer = await _get(_async_of(client), "query", filt.params(start, end, limit))
    rows = answer.get("rows", [])
    _warn_if_full(len(rows), limit, "query", (start, end),
                  "Raise limit (up to 1000) or use query_all().")
    return query_frame(rows)


def query(
    from_: Any,
    to: Any,
    *,
    event: str | None = None,
    source: str | None = None,
    medium: str | None = None,
    user_id: str | None = None,
    limit: int = contract.QUERY_LIMIT_DEFAULT,
    client: ClientLike | None = None,
) -> pd.DataFrame:
    """Stored events of the window ``[from_, to)``, at most ``limit`` (1 to 1000) of them.

    Filters (``event``, ``source``, ``medium``, ``user_id``) are exact matches.
    Returns a typed DataFrame (see :func:`query_frame`). Warns with
    :class:`PossiblyTruncatedWarning` when ``limit`` rows come back; use
    :func:`query_all` to read every row of a window.
    """
    return _run_sync(client, lambda c: aquery(
        from_, to, event=event, source=source, medium=medium, user_id=user_id, limit=limit,
        client=c,
    ))


#: Smallest window query_all will split (one microsecond: the timestamps' precision).
_MIN_WINDOW = pd.Timedelta(microseconds=1)


async def aquery_all(
    from_: Any,
    to: Any,
    *,
    event: str | None = None,
    source: str | None = None,
    medium: str | None = None,
    user_id: str | None = None,
    max_rows: int | None = None,
    concurrency: int = 4,
    split: int = 4,
    client: ClientLike | None = None,
) -> pd.DataFrame:
    """Async :func:`query_all`."""
    start, end = _window(from_, to)
    filt = _QueryFilter.checked(event, source, medium, user_id)
    if max_rows is not None:
        max_rows = _limit("max_rows", max_rows, None)
    concurrency = _limit("concurrency", concurrency, 64)
    split = _limit("split", split, 64)
    if split < 2:
        raise _refuse("split", RULE_OUT_OF_RANGE, f"must be at least 2, got {split}")
    page = contract.QUERY_LIMIT_MAX
    ac = _async_of(client)
    sem = asyncio.Semaphore(concurrency)

    async def fetch(w: tuple[pd.Timestamp, pd.Timestamp]) -> list[dict[str, Any]]:
        async with sem:
            answer = await _get(ac, "query", filt.params(w[0], w[1], page))
        return list(answer.get("rows", []))

    done: dict[pd.Timestamp, tuple[pd.Timestamp, list[dict[str, Any]]]] = {}
    pending: list[tuple[pd.Timestamp, pd.Timestamp]] = [(start, end)]
    requests = 0
    unsplittable: list[tuple[pd.Timestamp, int]] = []
    stopped_early = False
    while pending:
        results = await asyncio.gather(*(fetch(w) for w in pending))
        requests += len(pending)
        nxt: list[tuple[pd.Timestamp, pd.Timestamp]] = []
        for (a, b), rows in zip(pending, results, strict=True):
            if len(rows) < page:
                done[a] = (b, rows)
            elif b - a <= _MIN_WINDOW:
                done[a] = (b, rows)
                unsplittable.append((a, len(rows)))
            else:
                nxt.extend(_split(a, b, split))
        pending = nxt
        if max_rows is not None and pending and _prefix_rows(done, pending) >= max_rows:
            stopped_early = True
            break

    if unsplittable and not stopped_early:
        checked = await _count_instants(ac, filt, unsplittable, sem)
        requests += len(unsplittable)
    else:
        checked = [(a, n, None) for a, n in unsplittable]
    # Still short: more events at the instant than were read (or not countable).
    short = [(a, n, m) for a, n, m in checked if m is None or m > n]
    cut = min(a for a, _ in pending) if stopped_early else end
    rows_all = [r for a, (_, rows) in sorted(done.items()) if a < cut for r in rows]
    df = query_frame(rows_all).sort_values("timestamp", kind="stable", ignore_index=True)
    truncated = max_rows is not None and len(df) > max_rows
    if truncated:
        df = df.iloc[:max_rows].reset_index(drop=True)
    if truncated or stopped_early:
        warnings.warn(
            f"query_all stopped at max_rows={max_rows}: the window holds more rows; the frame "
            f"holds the earliest {len(df)}.",
            IncompleteReadWarning,
            stacklevel=3,
        )
    if short:
        where = "; ".join(
            f"{m:,} events share one instant at {_iso(a)} ({n:,} read)" if m is not None
            else f"{n:,} events read at {_iso(a)}, and more may share that instant (a "
            "user_id filter cannot be counted)"
            for a, n, m in short[:5]
        )
        warnings.warn(
            f"query_all could not read every row: {where}. The API has no cursor, so at "
            f"most {page} rows of a single microsecond can be read; narrow the filters "
            "(event, source, medium, user_id) to read the rest.",
            IncompleteReadWarning,
            stacklevel=3,
        )
    df.attrs["requests"] = requests
    df.attrs["complete"] = not (truncated or stopped_early or short)
    df.attrs["window"] = (_iso(start), _iso(end))
    return df


def query_all(
    from_: Any,
    to: Any,
    *,
    event: str | None = None,
    source: str | None = None,
    medium: str | None = None,
    user_id: str | None = None,
    max_rows: int | None = None,
    concurrency: int = 4,
    split: int = 4,
    client: ClientLike | None = None,
) -> pd.DataFrame:
    """Every stored event of the window ``[from_, to)``, however many, sorted by time.

    The API has no cursor, so the window is read in pieces: a piece that comes back
    full (1000 rows, the API's maximum) is cut into ``split`` narrower pieces, read
    ``concurrency`` at a time, until every piece holds fewer than 1000 rows. Each
    event is read exactly once (the pieces do not overlap: ``from`` is inclusive,
    ``to`` exclusive).

    Args:
        max_rows: stop once the earliest ``max_rows`` rows are read (warns
            :class:`IncompleteReadWarning` if the window holds more).
        concurrency: requests in flight at once (read endpoints have no rate limit).
        split: how many pieces a full window is cut into.

    Returns:
        A typed DataFrame (see :func:`query_frame`) with ``attrs``: ``requests`` (how
        many were made), ``complete`` (``False`` if rows may be missing), ``window``.

    Limitation: more than 1000 events with the very same timestamp (to the
    microsecond) cannot be split apart; only 1000 of them are read, with an
    :class:`IncompleteReadWarning` naming the instant. An instant that holds exactly
    1000 (one batch sent without timestamps) is counted with ``/v1/stats`` and is
    complete; with a ``user_id`` filter it cannot be counted and is reported as
    possibly incomplete.
    """
    return _run_sync(client, lambda c: aquery_all(
        from_, to, event=event, source=source, medium=medium, user_id=user_id,
        max_rows=max_rows, concurrency=concurrency, split=split, client=c,
    ))


async def _count_instants(
    ac: Any,
    filt: _QueryFilter,
    full: Sequence[tuple[pd.Timestamp, int]],
    sem: asyncio.Semaphore,
) -> list[tuple[pd.Timestamp, int, int | None]]:
    """For each one-microsecond window that came back full (``(start, rows read)``),
    how many events there match the filters, counted with ``/v1/stats``; ``None``
    where that cannot be counted (stats has no ``user_id`` filter).

    A batch sent without timestamps is stamped with one server time, so exactly
    1000 events at one instant is common: counted, it is known to be complete.
    """

    async def count(a: pd.Timestamp, n: int) -> tuple[pd.Timestamp, int, int | None]:
        if filt.user_id is not None:
            return a, n, None
        params = {"metric": "count", "from": _iso(a), "to": _iso(a + _MIN_WINDOW)}
        if filt.event is not None:
            params["event"] = filt.event
        groups = [g for g in ("source", "medium") if getattr(filt, g) is not None]
        if groups:
            params["group_by"] = ",".join(groups)
            params["limit"] = str(contract.QUERY_LIMIT_MAX)
        async with sem:
            answer = await _get(ac, "stats", params)
        rows = answer.get("rows", [])
        if groups and len(rows) >= contract.QUERY_LIMIT_MAX:
            return a, n, None  # the groups themselves were cut off
        matching = sum(
            int(r.get("value") or 0) for r in rows
            if all(r.get(g) == getattr(filt, g) for g in groups)
        )
        return a, n, matching

    return list(await asyncio.gather(*(count(a, n) for a, n in full)))


def _split(a: pd.Timestamp, b: pd.Timestamp, parts: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """``[a, b)`` cut into up to ``parts`` windows of (nearly) equal width, in order."""
    width_us = (b - a) // _MIN_WINDOW
    parts = max(1, min(parts, int(width_us)))
    cuts = [a + _MIN_WINDOW * (width_us * i // parts) for i in range(parts)] + [b]
    return [(cuts[i], cuts[i + 1]) for i in range(parts) if cuts[i] < cuts[i + 1]]


def _prefix_rows(
    done: Mapping[pd.Timestamp, tuple[pd.Timestamp, list[Any]]],
    pending: Sequence[tuple[pd.Timestamp, pd.Timestamp]],
) -> int:
    """Rows read in the windows that come before the first window still to read."""
    first_pending = min(a for a, _ in pending)
    return sum(len(rows) for a, (_, rows) in done.items() if a < first_pending)


# --------------------------------------------------------------------------- stats, sources


async def astats(
    metric: str = "count",
    from_: Any = None,
    to: Any = None,
    *,
    event: str | None = None,
    group_by: str | Sequence[str] | None = None,
    interval: str | None = None,
    limit: int | None = None,
    client: ClientLike | None = None,
) -> pd.DataFrame:
    """Async :func:`stats`."""
    metric = _choice("metric", metric, contract.STATS_METRICS)
    start, end = _window(from_, to)
    params = {"metric": metric, "from": _iso(start), "to": _iso(end)}
    if event is not None:
        params["event"] = _text("event", event, contract.EVENT_FIELDS["event"].max_length or 128)
    cols = _group_by(group_by)
    if cols:
        params["group_by"] = ",".join(cols)
    if interval is not None:
        params["interval"] = _choice("interval", interval, contract.STATS_INTERVALS)
    if limit is not None:
        params["limit"] = str(_limit("limit", limit, contract.QUERY_LIMIT_MAX))
    answer = await _get(_async_of(client), "stats", params)
    rows = answer.get("rows", [])
    if cols or interval:
        shown = limit if limit is not None else contract.QUERY_LIMIT_DEFAULT
        _warn_if_full(len(rows), shown, "stats", (start, end), "Raise limit (up to 1000).")
    return stats_frame(rows, cols)


def stats(
    metric: str = "count",
    from_: Any = None,
    to: Any = None,
    *,
    event: str | None = None,
    group_by: str | Sequence[str] | None = None,
    interval: str | None = None,
    limit: int | None = None,
    client: ClientLike | None = None,
) -> pd.DataFrame:
    """Counts (``metric="count"``) or distinct visitors (``"uniques"``) over ``[from_, to)``.

    Args:
        event: only this event name.
        group_by: columns to break the figure down by (a list or a comma-separated
            string), from :data:`contract.STATS_GROUP_BY`.
        interval: ``hour``, ``day`` or ``week`` for a time series.
        limit: at most this many rows, 1 to 1000 (the API's default is 100; a
            :class:`PossiblyTruncatedWarning` says when that many come back).

    Returns:
        One row per group (and time bucket): the bucket as ``datetime64[ns, UTC]``,
        the ``group_by`` columns, and ``value`` (``int64``).
    """
    return _run_sync(client, lambda c: astats(
        metric, from_, to, event=event, group_by=group_by, interval=interval, limit=limit,
        client=c,
    ))


async def asources(
    from_: Any,
    to: Any,
    *,
    breakdown: str = "source_medium",
    limit: int = contract.SOURCES_LIMIT_MAX,
    client: ClientLike | None = None,
) -> pd.DataFrame:
    """Async :func:`sources`."""
    start, end = _window(from_, to)
    breakdown = _choice("breakdown", breakdown, contract.SOURCES_BREAKDOWNS)
    limit = _limit("limit", limit, contract.SOURCES_LIMIT_MAX)
    params = {"from": _iso(start), "to": _iso(end), "breakdown": breakdown, "limit": str(limit)}
    answer = await _get(_async_of(client), "sources", params)
    rows = answer.get("rows", [])
    _warn_if_full(len(rows), limit, "sources", (start, end),
                  "Narrow the window or use breakdown='source'.")
    return sources_frame(rows, breakdown)


def sources(
    from_: Any,
    to: Any,
    *,
    breakdown: str = "source_medium",
    limit: int = contract.SOURCES_LIMIT_MAX,
    client: ClientLike | None = None,
) -> pd.DataFrame:
    """Where the traffic of ``[from_, to)`` came from, as the server's classifier saw it.

    ``breakdown="source_medium"`` (default) gives one row per (source, medium);
    ``"source"`` one per source. ``limit`` is 1 to 200. Columns: ``source``
    (``medium``), ``events``, ``uniques`` (``int64``) and ``paid_share`` (``float64``).
    """
    return _run_sync(client, lambda c: asources(
        from_, to, breakdown=breakdown, limit=limit, client=c
    ))


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class Verification:
    """How a set of event ids compares with what the server stored in a window.

    Attributes:
        expected: how many distinct ids were expected.
        stored: rows the server holds in the window (under the filters).
        missing: expected ids the server does not hold.
        unexpected: ids the server holds that were not expected (each once).
        duplicated: ids stored more than once, with their count.
        complete: ``False`` if the read could not see every stored row.
        per_day: rows per UTC day: ``sent`` (the expected ids, dated by the
            ``timestamps`` given to :func:`verify`, else by their stored time) and
            ``stored`` (every row of the window); drawn by the HTML repr and :meth:`plot`.
    """

    expected: int
    stored: int
    missing: list[str]
    unexpected: list[str]
    duplicated: dict[str, int]
    complete: bool
    per_day: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def plot(self) -> bytes | None:
        """Sent against stored per day as PNG bytes (``None`` without matplotlib or days)."""
        from .ui.charts import chart_png

        if self.per_day is None:
            return None
        return chart_png(self.per_day, title="sent vs stored per day", stacked=False)

    def _repr_html_(self) -> str:
        import html

        from .ui.charts import chart_html

        color = "#1b5e20" if self.ok else "#b00020"
        chart = "" if self.per_day is None else chart_html(
            self.per_day, title="sent vs stored per day", stacked=False
        )
        return (
            f"<div class='millimetric-verify'><p style='color:{color}'>"
            f"{html.escape(str(self))}</p>{chart}</div>"
        )

    @property
    def ok(self) -> bool:
        """Every expected id stored exactly once, nothing else, and every row was read."""
        return self.complete and not (self.missing or self.unexpected or self.duplicated)

    def __str__(self) -> str:
        head = "verified" if self.ok else "MISMATCH"
        return (
            f"{head}: {self.expected} expected, {self.stored} stored, {len(self.missing)} "
            f"missing, {len(self.unexpected)} unexpected, {len(self.duplicated)} duplicated"
            + ("" if self.complete else " (read incomplete)")
        )


async def averify(
    event_ids: Iterable[str],
    from_: Any,
    to: Any,
    *,
    event: str | None = None,
    client: ClientLike | None = None,
    timestamps: Iterable[Any] | None = None,
) -> Verification:
    """Async :func:`verify`."""
    sent_ids = [str(e) for e in event_ids]
    expected = set(sent_ids)
    stamps = None if timestamps is None else list(timestamps)
    if stamps is not None and len(stamps) != len(sent_ids):  # refused before any read
        raise ValidationError(
            f"timestamps has {len(stamps)} values for {len(sent_ids)} event ids",
            code="invalid_params",
        )
    stored = await aquery_all(from_, to, event=event, client=client)
    ids = stored["event_id"]
    if len(stored) and ids.isna().all():
        raise ValidationError(
            "this server's /v1/query rows carry no event_id, so stored events cannot be "
            "matched to sent ones; compare counts with stats() instead",
            code="unsupported",
        )
    counts = ids.dropna().value_counts()
    return Verification(
        expected=len(expected),
        stored=len(stored),
        missing=sorted(expected - set(counts.index)),
        unexpected=sorted(set(counts.index) - expected),
        duplicated={str(k): int(v) for k, v in counts[counts > 1].items()},
        complete=bool(stored.attrs.get("complete", True)),
        per_day=_sent_and_stored(sent_ids, stamps, stored),
    )


def _sent_and_stored(
    ids: list[str], timestamps: list[Any] | None, stored: pd.DataFrame
) -> pd.DataFrame:
    """Rows per day: the expected ids (``sent``) and every stored row (``stored``)."""
    from .ui.charts import per_day

    if timestamps is not None:
        sent_days = timestamps
    else:  # dated by where they were stored; missing ones have no day to show
        first = stored.dropna(subset=["event_id"]).drop_duplicates("event_id")
        when = dict(zip(first["event_id"], first["timestamp"], strict=True))
        sent_days = [when.get(i) for i in ids]
    days = [*sent_days, *stored["timestamp"]]
    labels = ["sent"] * len(sent_days) + ["stored"] * len(stored)
    return per_day(days, labels)


def verify(
    event_ids: Iterable[str],
    from_: Any,
    to: Any,
    *,
    event: str | None = None,
    client: ClientLike | None = None,
    timestamps: Iterable[Any] | None = None,
) -> Verification:
    """Check that the events with ``event_ids`` are stored, each exactly once, in ``[from_, to)``.

    Reads every stored row of the window with :func:`query_all` and compares
    event ids: what is missing, what is there unexpectedly (another send, a
    duplicate replay), what is stored twice (the server does not deduplicate).
    Needs ``event_id`` in ``/v1/query`` rows (this project's local server serves it).
    Typical use after a backfill: ``verify(result.rows.event_id[result.rows.status ==
    "sent"], start, end)``. ``timestamps`` (optional, one per id: the sent rows'
    timestamps) date the sent events in ``.per_day`` and the chart; without them
    each is dated by its stored time.
    """
    ids = list(event_ids)
    stamps = None if timestamps is None else list(timestamps)
    return _run_sync(
        client, lambda c: averify(ids, from_, to, event=event, client=c, timestamps=stamps)
    )


__all__ = [
    "IncompleteReadWarning",
    "PossiblyTruncatedWarning",
    "Verification",
    "aquery",
    "aquery_all",
    "asources",
    "astats",
    "averify",
    "query",
    "query_all",
    "query_frame",
    "sources",
    "sources_frame",
    "stats",
    "stats_frame",
    "verify",
]
