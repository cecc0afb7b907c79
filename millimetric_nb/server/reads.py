"""The read endpoints: ``/v1/query``, ``/v1/stats``, ``/v1/sources``.

Parameters follow the contract, and the OpenAPI document (``openapi.py``) states
exactly what is refused, from the patterns below (the server and the document
agree on every parameter):

- ``from``/``to`` are required ISO 8601 dates or date-times (:data:`WINDOW_PATTERN`:
  a real calendar day of years 0001-9999; ``T``, ``t`` or a space before the time;
  seconds and fraction optional; an offset ``Z``/``±HH[[:]MM]`` optional, UTC when
  none), ``from`` inclusive, ``to`` exclusive. A ``to`` before ``from`` is an empty
  window (no rows), not an error. An empty value is refused.
- ``limit`` is a whole number written in ASCII digits, within the route's range.
- ``metric``, ``interval``, ``breakdown``: one of their values; leave the parameter
  out for the default (an empty value is refused).
- ``group_by``: a comma list of column names without spaces (:data:`GROUP_BY_PATTERN`);
  an empty value means no grouping; a name given twice counts once.

- ``/v1/query`` rows come in timestamp order, ties in insertion order; they carry
  the contract's columns plus ``event_id`` and ``session_id``; ``properties`` is a
  JSON string.
- ``/v1/stats``: ``metric`` defaults to ``count``; ``uniques`` counts distinct
  ``anonymous_id``. With ``interval`` each row has ``bucket``, the start of its
  hour, day or week (weeks start Monday 00:00 UTC). Rows are ordered by bucket,
  then value (highest first), then the group columns. ``limit`` 1 to 1000
  (default 100).
- ``/v1/sources``: ``breakdown`` defaults to ``source_medium``; with ``source`` the
  rows' ``medium`` is ``null``. ``uniques`` counts distinct ``anonymous_id``;
  ``paid_share`` is the fraction of the events whose medium is a paid medium
  (``enrich.PAID_MEDIUMS``). Ordered by events (highest first), then source and
  medium. ``limit`` 1 to 200 (default 100).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from millimetric_nb import contract

from . import enrich
from .storage import Storage

_YEAR = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_DAY = (  # years divisible by 4, centuries only when divisible by 400 (not 0000)
    r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])"
    r"|(?:[02468][48]|[2468]0|[13579][26])00)-02-29"
)
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,9})?)?"
_OFFSET = r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)"
#: What ``from``/``to`` take (also the OpenAPI document's ``pattern``; ECMA and Python).
WINDOW_PATTERN = rf"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_DAY})(?:[Tt ]{_TIME}{_OFFSET}?)?$"
#: What ``group_by`` takes: empty, or a comma list of the contract's columns.
GROUP_BY_PATTERN = (
    rf"^(?:(?:{'|'.join(contract.STATS_GROUP_BY)})(?:,(?:{'|'.join(contract.STATS_GROUP_BY)}))*)?$"
)
#: What ``limit`` takes before its range is checked.
INTEGER_PATTERN = r"^-?[0-9]+$"
_WINDOW_RE = re.compile(WINDOW_PATTERN)
_INTEGER_RE = re.compile(INTEGER_PATTERN)

_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US
_WEEK_US = 7 * _DAY_US
_MONDAY_US = 4 * _DAY_US  # 1970-01-05, the first Monday after the epoch


def _floor(width: int, origin: int = 0) -> str:
    """SQL for the start of ``ts_us``'s bucket of ``width`` µs from ``origin``: SQLite's
    ``/`` and ``%`` truncate toward zero, which put times before 1970 one bucket late."""
    return f"(ts_us - (((ts_us - {origin}) % {width}) + {width}) % {width})"


_BUCKETS: dict[str, str] = {
    "hour": _floor(_HOUR_US),
    "day": _floor(_DAY_US),
    "week": _floor(_WEEK_US, _MONDAY_US),
}


def _window_us(raw: str) -> int | None:
    """Epoch microseconds of a ``from``/``to`` value, or ``None`` if refused.

    Computed without converting to UTC first, so that a bound near year 1 or 9999
    with an offset is still a bound (outside every stored timestamp) rather than an
    overflow.
    """
    if not _WINDOW_RE.fullmatch(raw):
        return None
    text = raw[:-1] + "+00:00" if raw[-1] in "zZ" else raw
    if "." in text:
        text = enrich.FRACTION.sub(lambda m: "." + m.group(1)[:6], text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    offset = dt.utcoffset()
    local_us = enrich.to_epoch_us(dt.replace(tzinfo=UTC))
    if offset is None:
        return local_us
    return local_us - (offset.days * 86_400 + offset.seconds) * 1_000_000 - offset.microseconds


class ParamError(Exception):
    """A refused query string: ``code`` (``invalid_params``/``invalid_group_by``) and problems."""

    def __init__(self, code: str, problems: dict[str, list[str]]) -> None:
        super().__init__(code)
        self.code = code
        self.problems = problems


#: The query parameters each read takes (the OpenAPI document lists the same; a test
#: checks); any other is refused, so a misspelt filter is not silently ignored.
READ_PARAMS: dict[str, tuple[str, ...]] = {
    "query": ("from", "to", "event", "source", "medium", "user_id", "limit"),
    "stats": ("from", "to", "metric", "event", "group_by", "interval", "limit"),
    "sources": ("from", "to", "breakdown", "limit"),
}


class _Params:
    """Collects parameter problems; raises once at the end."""

    def __init__(self, params: Mapping[str, str], route: str) -> None:
        self.params = params
        self.problems: dict[str, list[str]] = {}
        known = READ_PARAMS[route]
        for name in params:
            if name not in known:
                self.add(name[:64], "not_allowed",
                         f"unknown parameter; /v1/{route} takes {', '.join(known)}")

    def add(self, name: str, rule: str, message: str) -> None:
        self.problems.setdefault(name, []).append(f"{rule}: {message}")

    def window(self) -> tuple[int, int]:
        bounds: list[int] = []
        for name in ("from", "to"):
            raw = self.params.get(name)
            if raw is None or raw == "":
                self.add(name, contract.RULE_REQUIRED, f"`{name}` is required (ISO 8601)")
                continue
            bound = _window_us(raw)
            if bound is None:
                self.add(name, contract.RULE_TIMESTAMP,
                         f"must be an ISO 8601 date or date-time, got {raw[:64]!r}")
                continue
            bounds.append(bound)
        return (bounds[0], bounds[1]) if len(bounds) == 2 else (0, 0)

    def limit(self, maximum: int, default: int) -> int:
        raw = self.params.get("limit")
        if raw is None:
            return default
        if not _INTEGER_RE.fullmatch(raw):
            self.add("limit", contract.RULE_TYPE, f"must be an integer, got {raw[:32]!r}")
            return default
        value = int(raw)
        if not 1 <= value <= maximum:
            self.add("limit", "out_of_range", f"must be between 1 and {maximum}, got {value}")
        return value

    def choice(self, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
        raw = self.params.get(name)
        if raw is None:
            return default
        if raw not in allowed:
            self.add(name, "not_allowed", f"must be one of {', '.join(allowed)}, got {raw[:32]!r}")
            return default
        return raw

    def done(self) -> None:
        if self.problems:
            raise ParamError("invalid_params", self.problems)


#: Past this share of the table in the window, an aggregate reads the table in order.
_SCAN_SHARE = 0.25


def _aggregate_source(storage: Storage, project: str, start: int, end: int) -> str:
    """Where an aggregate that needs more than ``ts_us`` reads its rows.

    Through ``events_project_ts`` each row of the window is a jump into the table:
    for a window holding much of the table, reading the whole table in order is
    several times faster (at 1,000,000 rows, about 0.7 s against 3 s). Both counts
    come from indexes alone.
    """
    (window,) = storage.fetch(
        "SELECT COUNT(*) AS n FROM events_main WHERE project = ? AND ts_us >= ? AND ts_us < ?",
        [project, start, end], indexed=True)
    (total,) = storage.fetch("SELECT COUNT(*) AS n FROM events_main", indexed=True)
    wide = window["n"] >= _SCAN_SHARE * total["n"]
    return "events_main NOT INDEXED" if wide else "events_main"


def query(storage: Storage, project: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``GET /v1/query``: ``{"rows": [...]}``."""
    p = _Params(params, "query")
    start, end = p.window()
    limit = p.limit(contract.QUERY_LIMIT_MAX, contract.QUERY_LIMIT_DEFAULT)
    p.done()
    where = ["project = ?", "ts_us >= ?", "ts_us < ?"]
    args: list[Any] = [project, start, end]
    for param, column in (("event", "event_name"), ("source", "source"),
                          ("medium", "medium"), ("user_id", "user_id")):
        value = params.get(param)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    # one user's rows through the user index (then sorted), not every row of the window
    table = ("events_main INDEXED BY events_project_user" if "user_id" in params
             else "events_main")
    rows = storage.fetch(
        f"SELECT {', '.join(contract.QUERY_COLUMNS)} FROM {table} WHERE {' AND '.join(where)} "
        "ORDER BY ts_us, seq LIMIT ?",
        [*args, limit], indexed=True,
    )
    return {"rows": rows}


def stats(storage: Storage, project: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``GET /v1/stats``: ``{"metric": ..., "rows": [{..., "value": N}]}``."""
    p = _Params(params, "stats")
    start, end = p.window()
    metric = p.choice("metric", contract.STATS_METRICS, "count")
    interval = p.choice("interval", contract.STATS_INTERVALS, None)
    limit = p.limit(contract.QUERY_LIMIT_MAX, contract.QUERY_LIMIT_DEFAULT)
    p.done()
    group_raw = params.get("group_by") or ""
    group = group_raw.split(",") if group_raw else []
    unknown = [g for g in group if g not in contract.STATS_GROUP_BY]
    if unknown:
        raise ParamError("invalid_group_by", {"group_by": [
            f"not_allowed: unknown column(s) {', '.join(repr(g[:32]) for g in unknown[:5])}; "
            f"give a comma list, without spaces, of {', '.join(contract.STATS_GROUP_BY)}"]})
    group = list(dict.fromkeys(group))
    where = ["project = ?", "ts_us >= ?", "ts_us < ?"]
    args: list[Any] = [project, start, end]
    if params.get("event") is not None:
        where.append("event_name = ?")
        args.append(params["event"])
    value = "COUNT(*)" if metric == "count" else "COUNT(DISTINCT anonymous_id)"
    select = list(group)
    order: list[str] = []
    if interval:
        select.insert(0, f"{_BUCKETS[interval]} AS bucket")
        order.append("bucket")
    keys = (["bucket"] if interval else []) + group
    order += ["value DESC", *group]
    # counts by time bucket alone read the timestamp index only (it covers them)
    table = ("events_main" if not group and metric == "count" and "event" not in params
             else _aggregate_source(storage, project, start, end))
    sql = (
        f"SELECT {', '.join([*select, f'{value} AS value'])} FROM {table} "
        f"WHERE {' AND '.join(where)}"
        + (f" GROUP BY {', '.join(keys)}" if keys else "")
        + f" ORDER BY {', '.join(order)} LIMIT ?"
    )
    rows = storage.fetch(sql, [*args, limit], indexed=True)
    if interval:
        for row in rows:
            row["bucket"] = enrich.format_us(row["bucket"])
    return {"metric": metric, "rows": rows}


def sources(storage: Storage, project: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``GET /v1/sources``: ``{"breakdown": ..., "rows": [{source, medium, events, uniques,
    paid_share}]}``."""
    p = _Params(params, "sources")
    start, end = p.window()
    breakdown = p.choice("breakdown", contract.SOURCES_BREAKDOWNS, "source_medium")
    limit = p.limit(contract.SOURCES_LIMIT_MAX, 100)
    p.done()
    paid = ", ".join(f"'{m}'" for m in sorted(enrich.PAID_MEDIUMS))
    medium = "medium" if breakdown == "source_medium" else "NULL"
    group = "source, medium" if breakdown == "source_medium" else "source"
    table = _aggregate_source(storage, project, start, end)
    rows = storage.fetch(
        f"SELECT source, {medium} AS medium, COUNT(*) AS events, "
        "COUNT(DISTINCT anonymous_id) AS uniques, "
        f"CAST(SUM(CASE WHEN medium IN ({paid}) THEN 1 ELSE 0 END) AS REAL) / COUNT(*) "
        "AS paid_share "
        f"FROM {table} WHERE project = ? AND ts_us >= ? AND ts_us < ? "
        f"GROUP BY {group} ORDER BY events DESC, source, medium LIMIT ?",
        [project, start, end, limit], indexed=True,
    )
    return {"breakdown": breakdown, "rows": rows}
