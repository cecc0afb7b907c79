"""The server's own checks of request bodies, and event rows built from them.

These checks read the contract's field tables but share no code with the
client's validation: the two sides check each other. Each problem is reported
as ``"<rule>: <message>"`` under its field path (``event``, ``events.3.user_id``),
the rule being one of the contract's ``RULE_*`` codes.

Choices (the public reference is silent):
- Fields the contract does not define are ignored (additive API); enriched
  fields a client sends are ignored and replaced by the server's own.
- ``null`` is refused for every field (rule ``type``): leave a field out instead.
- A timestamp without an offset is taken as UTC.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from millimetric_nb import contract

from . import enrich

#: The stored columns, in order (``seq`` aside).
COLUMNS: tuple[str, ...] = (
    "project", "event_id", "event_name", "timestamp", "ts_us", "anonymous_id", "user_id",
    "session_id", "url", "path", "referrer", "properties", "source", "medium", "campaign",
    "source_confidence", "source_rule_id", "country", "device_type", "browser", "os",
    "ip_hash", "received_at",
)

Problems = dict[str, list[str]]
Row = tuple[Any, ...]


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _add(problems: Problems, path: str, rule: str, message: str) -> None:
    problems.setdefault(path, []).append(f"{rule}: {message}")


class _Checked:
    """What checking one body's fields found besides problems: the compact JSON of its
    object field (``properties``/``traits``) and its parsed timestamp, if present."""

    __slots__ = ("encoded", "parsed")

    def __init__(self) -> None:
        self.encoded: str | None = None
        self.parsed: datetime | None = None


def _check_object(value: Any, spec: contract.FieldSpec, found: _Checked) -> tuple[str, str] | None:
    if type(value) is not dict:
        return contract.RULE_TYPE, f"must be a JSON object, got {json_type(value)}"
    raw = orjson.dumps(value)
    if spec.max_bytes is not None and len(raw) > spec.max_bytes:
        return (contract.RULE_TOO_LARGE,
                f"must be at most {spec.max_bytes} bytes once JSON-encoded, got {len(raw)}")
    found.encoded = raw.decode("utf-8")
    return None


def _check_text(value: Any, spec: contract.FieldSpec, expected: str) -> tuple[str, str] | None:
    if type(value) is not str:
        return contract.RULE_TYPE, f"must be {expected}, got {json_type(value)}"
    n = len(value)
    if n < spec.min_length:
        return contract.RULE_TOO_SHORT, f"must be at least {spec.min_length} character(s), got {n}"
    if spec.max_length is not None and n > spec.max_length:
        return contract.RULE_TOO_LONG, f"must be at most {spec.max_length} characters, got {n}"
    return None


def _check_string(value: Any, spec: contract.FieldSpec, found: _Checked) -> tuple[str, str] | None:
    return _check_text(value, spec, "a string")


def _check_timestamp(
    value: Any, spec: contract.FieldSpec, found: _Checked
) -> tuple[str, str] | None:
    bad = _check_text(value, spec, "an ISO 8601 date-time string")
    if bad is not None:
        return bad
    found.parsed = enrich.parse_timestamp(value)
    if found.parsed is None:
        return (contract.RULE_TIMESTAMP, "must be an ISO 8601 date-time (e.g. "
                f"2024-05-01T12:00:00Z), got {value[:64]!r}")
    return None


#: The server's check of one value, by the kind of its field in the contract's table:
#: ``None`` when it is valid, else ``(rule, message)``.
_CHECKS: dict[str, Callable[[Any, contract.FieldSpec, _Checked], tuple[str, str] | None]] = {
    "string": _check_string,
    "timestamp": _check_timestamp,
    "object": _check_object,
}


def check_fields(
    body: dict[str, Any], specs: dict[str, contract.FieldSpec], prefix: str, problems: Problems
) -> tuple[bool, str | None, datetime | None]:
    """Check ``body`` against ``specs``; add problems; return (ok, object JSON, timestamp).

    Each field is checked by its kind in the table, so a field added to the table is
    checked here without code. The second value is the compact JSON of the
    (``properties``/``traits``) object field if present, and the third the parsed
    timestamp field if present, so that neither is computed twice.
    """
    ok = True
    found = _Checked()
    for name, spec in specs.items():
        if name not in body:
            if spec.required:
                _add(problems, prefix + name, contract.RULE_REQUIRED, f"`{name}` is required")
                ok = False
            continue
        bad = _CHECKS[spec.kind](body[name], spec, found)
        if bad is not None:
            _add(problems, prefix + name, *bad)
            ok = False
    return ok, found.encoded, found.parsed


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a request contributes to every event it stores."""

    project: str
    now_us: int
    received_at: str
    country: str | None
    device: enrich.Device
    ip_hash: str | None


def build_row(
    ev: dict[str, Any], props: str | None, ctx: RequestContext, ts: datetime | None = None
) -> Row:
    """An enriched, storable row from one already-checked event (``ts``: its parsed
    timestamp, ``None`` for now)."""
    if ts is None:
        ts_us = ctx.now_us
        stamp = ctx.received_at
    else:
        ts_us = enrich.to_epoch_us(ts)
        stamp = enrich.format_dt(ts)
    anonymous_id = ev.get("anonymous_id") or str(uuid.uuid4())
    session_id = ev.get("session_id") or f"{anonymous_id}-{enrich.session_bucket(ts_us)}"
    url = ev.get("url")
    referrer = ev.get("referrer")
    c = enrich.classify(url or None, referrer or None)
    d = ctx.device
    return (
        ctx.project, ev.get("event_id") or str(uuid.uuid4()), ev["event"],
        stamp, ts_us, anonymous_id, ev.get("user_id"), session_id,
        url, ev.get("path"), referrer, props if props is not None else "{}",
        c.source, c.medium, c.campaign, c.confidence, c.rule_id,
        ctx.country, d.device_type, d.browser, d.os, ctx.ip_hash, ctx.received_at,
    )


def check_event(ev: object, prefix: str, problems: Problems, ctx: RequestContext) -> Row | None:
    """Check one event (``prefix`` is ``""`` for track, ``"events.3."`` in a batch).

    Returns its row when it is valid, else ``None`` with ``problems`` filled in.
    """
    if type(ev) is not dict:
        _add(problems, prefix.rstrip(".") or "body", contract.RULE_TYPE,
             f"an event must be a JSON object, got {json_type(ev)}")
        return None
    ok, props, ts = check_fields(ev, contract.EVENT_FIELDS, prefix, problems)
    if not ok:
        return None
    return build_row(ev, props, ctx, ts)


def check_batch(body: object, problems: Problems, ctx: RequestContext) -> list[Row]:
    """Check a ``/v1/batch`` body; rows for all events, or ``[]`` with problems."""
    if type(body) is not dict:
        _add(problems, "body", contract.RULE_TYPE,
             f"the body must be a JSON object, got {json_type(body)}")
        return []
    if "events" not in body:
        _add(problems, "events", contract.RULE_REQUIRED, "`events` is required")
        return []
    events = body["events"]
    if type(events) is not list:
        _add(problems, "events", contract.RULE_TYPE,
             f"must be an array of events, got {json_type(events)}")
        return []
    n = len(events)
    if n < contract.BATCH_MIN_EVENTS:
        _add(problems, "events", contract.RULE_TOO_SHORT,
             f"a batch holds {contract.BATCH_MIN_EVENTS} to {contract.BATCH_MAX_EVENTS} "
             "events, got 0")
        return []
    if n > contract.BATCH_MAX_EVENTS:
        _add(problems, "events", contract.RULE_TOO_LONG,
             f"a batch holds {contract.BATCH_MIN_EVENTS} to {contract.BATCH_MAX_EVENTS} "
             f"events, got {n}")
        return []
    rows: list[Row] = []
    for i, ev in enumerate(events):
        row = check_event(ev, f"events.{i}.", problems, ctx)
        if row is not None:
            rows.append(row)
    return [] if problems else rows
