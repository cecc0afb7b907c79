"""Validation and normalisation of one event, identify body or forget body.

Each body is checked against the contract's field table (``contract.EVENT_FIELDS``,
``IDENTIFY_FIELDS``, ``FORGET_FIELDS``) before anything is sent:

* missing values (``None``, NaN, ``NaT``, ``pd.NA``) are dropped; a dropped
  *required* field is a ``required`` problem, and so is a ``timestamp`` given as a
  missing value unless ``missing_timestamp="server_time"`` (as for a frame with a
  timestamp column: an empty cell is a mistake, not "now");
* strings must be ``str`` (``numpy.str_`` is accepted) within the length limits,
  counted in characters, and encodable as UTF-8 (no lone surrogates);
* timestamps are converted to UTC ``...Z`` strings (naive = UTC, see ``encode``);
* objects (``properties``, ``traits``) must be mappings with ``str`` keys whose
  compact JSON (missing values written as ``null``) fits the contract's byte limit;
* the server-enriched fields (``source``, ``medium``, ...) are dropped with an
  :class:`EnrichedFieldWarning`: the server derives them and ignores any sent;
* any other field is an ``unknown_field`` problem (custom data goes in
  ``properties``).

Every problem is reported, not only the first, as ``(path, rule, message)`` in
an :class:`~millimetric_nb.errors.ValidationError`; nothing here raises any
other exception for bad input.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson

from . import contract
from .encode import (
    EncodeError,
    dumps,
    is_missing,
    member_sizes,
    to_utc_iso,
    too_large_message,
)
from .errors import EnrichedFieldWarning, ValidationError

__all__ = [
    "EnrichedFieldWarning",
    "Problem",
    "check_event",
    "encode_event",
    "prepare_event",
    "prepare_forget",
    "prepare_identify",
    "warn_enriched",
]

#: ``(field path, contract.RULE_* code, message)``
Problem = tuple[str, str, str]


def _describe(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _check_string(
    path: str, value: Any, spec: contract.FieldSpec
) -> tuple[str | None, Problem | None]:
    if isinstance(value, np.str_):
        value = str(value)
    if not isinstance(value, str):
        hint = "; decode it to str first" if isinstance(value, bytes | bytearray) else ""
        return None, (path, contract.RULE_TYPE, f"must be a string, got {_describe(value)}{hint}")
    n = len(value)
    if n < spec.min_length:
        return None, (
            path, contract.RULE_TOO_SHORT,
            f"must be at least {spec.min_length} character(s), got {n}",
        )
    if spec.max_length is not None and n > spec.max_length:
        return None, (
            path, contract.RULE_TOO_LONG,
            f"must be at most {spec.max_length} characters, got {n}",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, (
            path, contract.RULE_UNICODE, "contains a lone surrogate, which is not valid UTF-8"
        )
    return value, None


def _check_object(
    path: str, value: Any, spec: contract.FieldSpec
) -> tuple[bytes | None, Problem | None]:
    if not isinstance(value, Mapping):
        return None, (path, contract.RULE_TYPE, f"must be an object (dict), got {_describe(value)}")
    try:
        raw = dumps(value, nan_as_null=True, path=path)
    except EncodeError as exc:
        return None, (exc.path, exc.rule, exc.reason)
    if spec.max_bytes is not None and len(raw) > spec.max_bytes:
        return None, (
            path, contract.RULE_TOO_LARGE,
            too_large_message(len(raw), member_sizes(value), spec.max_bytes),
        )
    return raw, None


def _prepare(
    fields: Mapping[str, Any],
    specs: Mapping[str, contract.FieldSpec],
    *,
    prefix: str = "",
    drop_enriched: bool = False,
    fragments: bool = False,
    missing_timestamp: str = "invalid",
) -> tuple[dict[str, Any], list[Problem], list[str]]:
    """Normalise ``fields``; return ``(body, problems, dropped enriched names)``.

    A timestamp field given with a missing value is a ``required`` problem unless
    ``missing_timestamp="server_time"`` (then it is omitted), as in the frame layer.

    With ``fragments=True`` objects are kept as ``orjson.Fragment`` of their
    checked encoding (so they are not encoded twice); else as plain dicts.
    """
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    dropped: list[str] = []
    if not isinstance(fields, Mapping):
        return out, [(prefix.rstrip(".") or "event", contract.RULE_TYPE,
                      f"must be a mapping of field names to values, got {_describe(fields)}")], []
    for name, value in fields.items():
        path = f"{prefix}{name}"
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            if drop_enriched and name in contract.ENRICHED_FIELDS:
                dropped.append(name)
                continue
            problems.append((
                f"{prefix}{name!s}", contract.RULE_UNKNOWN_FIELD,
                "is not a field of the contract; put custom data in properties"
                if drop_enriched else "is not a field of this body",
            ))
            continue
        if is_missing(value):
            if spec.kind == "timestamp" and missing_timestamp != "server_time":
                problems.append((path, contract.RULE_REQUIRED,
                                 f"is required: it was given as {value!r} (leave it out, or "
                                 "pass missing_timestamp='server_time', to store the event at "
                                 "the time it is sent)"))
            continue  # omitted; required fields are checked below
        if spec.kind == "string":
            s, problem = _check_string(path, value, spec)
            if problem is not None:
                problems.append(problem)
            else:
                out[name] = s
        elif spec.kind == "timestamp":
            try:
                out[name] = to_utc_iso(value)
            except ValueError as exc:
                problems.append((path, contract.RULE_TIMESTAMP, str(exc)))
        else:
            raw, problem = _check_object(path, value, spec)
            if problem is not None:
                problems.append(problem)
            elif fragments:
                out[name] = orjson.Fragment(raw)
            else:
                out[name] = orjson.loads(raw)  # type: ignore[arg-type]
    for name, spec in specs.items():
        if spec.required and name not in out:
            if any(p[0] == f"{prefix}{name}" for p in problems):
                continue  # already reported (wrong type, too long...)
            problems.append((f"{prefix}{name}", contract.RULE_REQUIRED, "is required"))
    return out, problems, dropped


def warn_enriched(dropped: Iterable[str], stacklevel: int = 1) -> None:
    """Warn once (:class:`EnrichedFieldWarning`) naming the enriched fields dropped."""
    names = sorted(set(dropped))
    if names:
        warnings.warn(
            f"dropped server-enriched field(s) {', '.join(names)}: the server derives them "
            "from url, referrer and the request, and ignores any that are sent",
            EnrichedFieldWarning,
            stacklevel=stacklevel + 1,
        )


def _raise(what: str, problems: list[Problem]) -> None:
    raise ValidationError(
        f"{what} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}); "
        "nothing was sent",
        problems=problems,
    )


def check_event(
    fields: Mapping[str, Any], *, prefix: str = "", missing_timestamp: str = "invalid"
) -> tuple[bytes | None, list[Problem], list[str]]:
    """Validate and encode one event without raising or warning.

    Returns ``(encoded event bytes or None, problems, dropped enriched fields)``;
    problem paths start with ``prefix`` (e.g. ``"events[3]."``). For callers that
    account for many events at once (``AsyncClient.batch``, the backfill).
    ``missing_timestamp``: ``"invalid"`` (default) makes a ``timestamp`` given as a
    missing value a ``required`` problem; ``"server_time"`` omits it.
    """
    body, problems, dropped = _prepare(
        fields, contract.EVENT_FIELDS, prefix=prefix, drop_enriched=True, fragments=True,
        missing_timestamp=missing_timestamp,
    )
    if problems:
        return None, problems, dropped
    return orjson.dumps(body), [], dropped


def prepare_event(
    fields: Mapping[str, Any], *, missing_timestamp: str = "invalid"
) -> dict[str, Any]:
    """The normalised event body for ``fields`` (one ``/v1/track`` body).

    Missing values are dropped (a ``timestamp`` given as a missing value is a
    ``required`` problem unless ``missing_timestamp="server_time"``), timestamps
    become UTC ``...Z`` strings, enriched fields are dropped with an
    :class:`EnrichedFieldWarning`.

    Raises:
        ValidationError: naming every field and rule broken.
    """
    body, problems, dropped = _prepare(
        fields, contract.EVENT_FIELDS, drop_enriched=True, missing_timestamp=missing_timestamp
    )
    warn_enriched(dropped, stacklevel=2)
    if problems:
        _raise("the event", problems)
    return body


def encode_event(fields: Mapping[str, Any]) -> bytes:
    """:func:`prepare_event` then compact JSON bytes (properties encoded once)."""
    raw, problems, dropped = check_event(fields)
    warn_enriched(dropped, stacklevel=2)
    if raw is None:
        _raise("the event", problems)
    return raw  # type: ignore[return-value]


def prepare_identify(
    anonymous_id: Any, user_id: Any, traits: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``/v1/identify`` body; raises :class:`ValidationError` naming each problem."""
    fields: dict[str, Any] = {"anonymous_id": anonymous_id, "user_id": user_id}
    if traits is not None:
        fields["traits"] = traits
    body, problems, _ = _prepare(fields, contract.IDENTIFY_FIELDS)
    if problems:
        _raise("the identify body", problems)
    return body


def prepare_forget(user_id: Any) -> dict[str, Any]:
    """The ``/v1/forget`` body; raises :class:`ValidationError` naming each problem."""
    body, problems, _ = _prepare({"user_id": user_id}, contract.FORGET_FIELDS)
    if problems:
        _raise("the forget body", problems)
    return body
