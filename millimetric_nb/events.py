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

Each value is checked by the kind of its field in the table (string, timestamp,
object), so a new field of a known kind needs no code here. Every problem is
reported, not only the first: :func:`violations` gives them as
:class:`~millimetric_nb.rules.Violation` (messages from :mod:`millimetric_nb.rules`,
shared with the column-wise validator), and a
:class:`~millimetric_nb.errors.ValidationError` holds their ``(path, rule, message)``
triples; nothing here raises any other exception for bad input.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

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
from .rules import (
    Violation,
    describe,
    not_a_timestamp,
    required,
    short,
    string_violation,
    timestamp_required,
    wrong_type,
)

__all__ = [
    "EnrichedFieldWarning",
    "Problem",
    "check_event",
    "encode_event",
    "prepare_event",
    "prepare_forget",
    "prepare_identify",
    "violations",
    "warn_enriched",
]

#: ``(field path, contract.RULE_* code, message)``
Problem = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class _Options:
    fragments: bool


def _check_string(
    path: str, value: Any, spec: contract.FieldSpec, opts: _Options
) -> tuple[Any, Violation | None]:
    return string_violation(path, value, spec)


def _check_timestamp(
    path: str, value: Any, spec: contract.FieldSpec, opts: _Options
) -> tuple[Any, Violation | None]:
    if isinstance(value, bool | int | float | np.number):  # epoch s and ms look alike
        return None, Violation.of(path, contract.RULE_TIMESTAMP,
                                  not_a_timestamp(f"a number ({short(value)})"), value)
    try:
        return to_utc_iso(value), None
    except ValueError as exc:
        return None, Violation.of(path, contract.RULE_TIMESTAMP, str(exc), value)


def _check_object(
    path: str, value: Any, spec: contract.FieldSpec, opts: _Options
) -> tuple[Any, Violation | None]:
    if not isinstance(value, Mapping):
        return None, Violation.of(path, contract.RULE_TYPE,
                                  wrong_type("an object (dict)", describe(value)), value)
    try:
        raw = dumps(value, nan_as_null=True, path=path)
    except EncodeError as exc:
        return None, Violation.of(exc.path, exc.rule, exc.reason, value)
    if spec.max_bytes is not None and len(raw) > spec.max_bytes:
        return None, Violation.of(
            path, contract.RULE_TOO_LARGE,
            too_large_message(len(raw), member_sizes(value), spec.max_bytes), value,
        )
    if opts.fragments:
        return orjson.Fragment(raw), None
    return orjson.loads(raw), None


#: The check of one value, by the kind of its field in the contract's table:
#: ``(path, value, spec, options) -> (normalised value, None) | (None, violation)``.
_CHECKS: Final[dict[str, Callable[[str, Any, contract.FieldSpec, _Options],
                                  tuple[Any, Violation | None]]]] = {
    "string": _check_string,
    "timestamp": _check_timestamp,
    "object": _check_object,
}


def violations(
    fields: Mapping[str, Any],
    specs: Mapping[str, contract.FieldSpec] | None = None,
    *,
    prefix: str = "",
    drop_enriched: bool = False,
    fragments: bool = False,
    missing_timestamp: str = "invalid",
) -> tuple[dict[str, Any], list[Violation], list[str]]:
    """Normalise ``fields``; return ``(body, violations, dropped enriched names)``.

    ``specs``: the field table (default: the contract's event fields, read when
    called). Each value is checked by the kind of its field (:data:`_CHECKS`). A
    timestamp field given with a missing value is a ``required`` violation unless
    ``missing_timestamp="server_time"`` (then it is omitted), as in the frame layer.

    With ``fragments=True`` objects are kept as ``orjson.Fragment`` of their
    checked encoding (so they are not encoded twice); else as plain dicts.
    """
    if specs is None:
        specs = contract.EVENT_FIELDS
    out: dict[str, Any] = {}
    found: list[Violation] = []
    dropped: list[str] = []
    if not isinstance(fields, Mapping):
        return out, [Violation.of(
            prefix.rstrip(".") or "event", contract.RULE_TYPE,
            wrong_type("a mapping of field names to values", describe(fields)), fields,
        )], []
    opts = _Options(fragments=fragments)
    for name, value in fields.items():
        path = f"{prefix}{name}"
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            if drop_enriched and name in contract.ENRICHED_FIELDS:
                dropped.append(name)
                continue
            found.append(Violation.of(
                f"{prefix}{name!s}", contract.RULE_UNKNOWN_FIELD,
                "is not a field of the contract; put custom data in properties"
                if drop_enriched else "is not a field of this body", value,
            ))
            continue
        if is_missing(value):
            if spec.kind == "timestamp" and missing_timestamp != "server_time":
                found.append(Violation(path, contract.RULE_REQUIRED, timestamp_required(
                    f"it was given as {short(value)}")))
            continue  # omitted; required fields are checked below
        normal, violation = _CHECKS[spec.kind](path, value, spec, opts)
        if violation is not None:
            found.append(violation)
        else:
            out[name] = normal
    for name, spec in specs.items():
        if spec.required and name not in out:
            if any(v.path == f"{prefix}{name}" for v in found):
                continue  # already reported (wrong type, too long...)
            found.append(Violation(f"{prefix}{name}", contract.RULE_REQUIRED, required()))
    return out, found, dropped


def _prepare(
    fields: Mapping[str, Any], specs: Mapping[str, contract.FieldSpec] | None = None,
    **options: Any,
) -> tuple[dict[str, Any], list[Problem], list[str]]:
    """:func:`violations` with each as its ``(path, rule, message)`` triple."""
    body, found, dropped = violations(fields, specs, **options)
    return body, [v.problem for v in found], dropped


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
        fields, prefix=prefix, drop_enriched=True, fragments=True,
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
        fields, drop_enriched=True, missing_timestamp=missing_timestamp
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
