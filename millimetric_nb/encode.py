"""Python, numpy and pandas values -> JSON bytes (orjson), UTC timestamps, missing values.

The rules, in one place (every caller encodes through :func:`dumps`):

* **Missing values** (:func:`is_missing`: ``None``, float NaN, ``NaT``, ``pd.NA``):
  at the top level of an event the field is *omitted* (see ``events.prepare_event``);
  inside ``properties``/``traits`` a missing value becomes JSON ``null`` only when
  the caller asks for it (``dumps(..., nan_as_null=True)``, which ``events`` does:
  a hole in a nested object is a ``null``, the JSON spelling of "no value").
  With the default ``nan_as_null=False`` a NaN is an error. Infinity is always an
  error: it is a value JSON cannot carry, not a missing one.
* **Timestamps**: :func:`to_utc_iso` gives ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``.
  Naive datetimes (and ISO strings without an offset) are taken as **UTC**.
  Sub-microsecond digits (pandas nanoseconds) are truncated. Inside properties,
  datetimes are written the same way; a plain ``date`` stays ``YYYY-MM-DD`` and a
  ``time`` its ISO form.
* **numpy**: scalars become the matching Python value, arrays become lists
  (datetime64 arrays become lists of UTC strings). ``OPT_SERIALIZE_NUMPY`` is
  deliberately *not* used: converting through :func:`json_default` keeps one set
  of rules (NaN detection, the 53-bit integer check) for numpy and Python values.
* **Decimal**: finite and integral -> ``int``; finite with a fraction -> ``float``
  (the nearest double: JSON readers such as the Worker parse numbers as doubles
  anyway); NaN/Infinity -> error.
* **UUID** -> its canonical string; **set/frozenset** -> a sorted list when the
  items are mutually orderable, else a list in iteration order.
* **Integers** beyond +-(2**53 - 1) are refused (``OPT_STRICT_INTEGER``): the
  Worker's JavaScript would silently round them. Send them as strings.
* **Keys** of objects must be ``str`` (``OPT_NON_STR_KEYS`` is not used: ``1`` and
  ``"1"`` would collide silently).
* Lone surrogates in strings or keys are refused (not encodable as UTF-8).
* Dataclasses and other custom objects are refused (convert them to dicts first);
  ``Enum`` members are written as their value (orjson's native behaviour).

Errors are :class:`EncodeError` (a ``ValueError``) carrying the JSON ``path`` of
the offending value and the contract's rule code, so ``events`` and the
column-wise validator can report the field and the rule.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

import numpy as np
import orjson
import pandas as pd

from . import contract, rules

__all__ = [
    "ORJSON_OPTIONS",
    "EncodeError",
    "dumps",
    "encoded_size",
    "is_missing",
    "json_default",
    "member_sizes",
    "to_utc_iso",
    "too_large_message",
]

#: Options every encode uses: datetimes come to :func:`json_default` (one format),
#: integers beyond 53 bits are refused.
ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_STRICT_INTEGER
)

_MAX_DEPTH: Final = 254  # orjson's own nesting limit


class EncodeError(ValueError):
    """A value cannot be encoded as JSON under this package's rules.

    Attributes:
        path: where the value sits (``"properties.items[2]"``; ``""`` for the root).
        rule: the contract's rule code (``contract.RULE_NOT_JSON``, ``RULE_UNICODE``,
            ``RULE_INT_RANGE``).
        reason: the human explanation, without the path.
    """

    def __init__(self, path: str, rule: str, reason: str) -> None:
        self.path = path
        self.rule = rule
        self.reason = reason
        where = path or "value"
        super().__init__(f"{where}: {reason} ({rule})")


class _NotJSONType(TypeError):
    """Raised by :func:`json_default` for a type it cannot represent."""


# --------------------------------------------------------------------------- missing values


def is_missing(value: Any) -> bool:
    """``True`` for ``None``, float NaN (Python or numpy), ``NaT`` (pandas/numpy), ``pd.NA``.

    Never raises, and never treats a container as missing.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return bool(math.isnan(value))
    if isinstance(value, np.datetime64 | np.timedelta64):
        return bool(np.isnat(value))
    return False


# --------------------------------------------------------------------------- timestamps

_UTC = dt.UTC


def _format_utc(d: dt.datetime) -> str:
    if d.tzinfo is None:
        d = d.replace(tzinfo=_UTC)  # naive = UTC (documented)
    else:
        d = d.astimezone(_UTC)
    base = d.strftime("%Y-%m-%dT%H:%M:%S") if d.year >= 1000 else (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    )
    if d.microsecond:
        return f"{base}.{d.microsecond:06d}Z"
    return f"{base}Z"


# ISO 8601 as Python 3.11's fromisoformat reads it, but required to start with a
# full calendar date (fromisoformat also takes week dates and other odd shapes).
_ISO_HEAD = re.compile(r"^\d{4}-?\d{2}-?\d{2}([T ]|$)")


def to_utc_iso(value: Any) -> str:
    """A UTC ISO 8601 string ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` for ``value``.

    Accepts ``datetime`` (naive = UTC), ``date`` (midnight UTC), ``pandas.Timestamp``,
    ``numpy.datetime64`` and ISO 8601 strings (validated and normalised; a string
    without an offset is UTC; a date-only string is midnight UTC). Nanoseconds are
    truncated to microseconds.

    Raises:
        ValueError: for anything else (numbers, NaT, unparseable strings, bools...),
            with a message naming what was received.
    """
    if is_missing(value):
        raise ValueError(f"a timestamp is required, got a missing value ({value!r})")
    if isinstance(value, pd.Timestamp):
        return _format_utc(value.to_pydatetime(warn=False))
    if isinstance(value, dt.datetime):
        return _format_utc(value)
    if isinstance(value, dt.date):
        return _format_utc(dt.datetime(value.year, value.month, value.day))
    if isinstance(value, np.datetime64):
        try:
            ts = pd.Timestamp(value)
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"numpy datetime64 {value!r} is out of range") from exc
        return _format_utc(ts.to_pydatetime(warn=False))
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        if not _ISO_HEAD.match(text):
            raise ValueError(f"{_short(value)} is not an ISO 8601 date-time{_epoch_hint(text)}")
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(
                f"{_short(value)} is not an ISO 8601 date-time{_epoch_hint(text)}"
            ) from exc
        return _format_utc(parsed)
    raise ValueError(
        f"a timestamp must be a datetime, pandas Timestamp, numpy datetime64 or ISO 8601 "
        f"string, not {type(value).__name__}"
    )


_DIGITS = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def _epoch_hint(text: str) -> str:
    """For a string of digits: how to read it as a Unix epoch (seconds, or milliseconds
    from 13 digits up, the length of epoch milliseconds since 2001)."""
    if not _DIGITS.match(text):
        return ""
    unit = "ms" if len(text.split(".")[0]) >= 12 else "s"
    return (f"; it looks like a Unix epoch; convert with "
            f"pd.to_datetime(pd.to_numeric(col), unit='{unit}', utc=True)")


def member_sizes(obj: Any) -> dict[str, int]:
    """Bytes each member ``"key":value`` of a mapping takes in its compact JSON."""
    if not isinstance(obj, Mapping):
        return {}
    out: dict[str, int] = {}
    for key, value in obj.items():
        try:
            out[str(key)] = len(dumps(str(key))) + 1 + len(dumps(value, nan_as_null=True))
        except EncodeError:
            continue
    return out


def too_large_message(size: int, members: Mapping[str, int], limit: int | None = None,
                      shown: int = 3) -> str:
    """The ``too_large`` message of an object: its size, the limit and its largest
    members, e.g. ``is 9,062 bytes once JSON-encoded (limit 8,192); largest: notes
    (8,900), tags (80)``."""
    cap = contract.PROPERTIES_MAX_BYTES if limit is None else limit
    top = sorted(members.items(), key=lambda kv: (-kv[1], kv[0]))[:shown]
    largest = ", ".join(f"{k} ({v:,})" for k, v in top)
    return (f"is {size:,} bytes once JSON-encoded (limit {cap:,})"
            + (f"; largest: {largest}" if largest else ""))


def _short(text: str, limit: int = 60) -> str:
    """``repr`` of a string, cut to ``limit`` characters (safe for lone surrogates)."""
    r = repr(text if len(text) <= limit else text[:limit] + "…")
    return r.encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------- orjson default


def _array_to_list(arr: np.ndarray) -> list[Any]:
    kind = arr.dtype.kind
    if kind == "M":
        return [None if np.isnat(x) else to_utc_iso(x) for x in arr.ravel()] if arr.ndim <= 1 else [
            _array_to_list(sub) for sub in arr
        ]
    if kind in "biufUSO":
        if kind == "S":
            raise _NotJSONType("numpy bytes arrays are not JSON; decode them to str first")
        return arr.tolist()
    raise _NotJSONType(f"numpy arrays of dtype {arr.dtype} are not JSON")


def json_default(obj: Any) -> Any:
    """orjson ``default=`` handler: turn one non-native value into a JSON-native one.

    Handles numpy scalars and arrays, pandas ``Timestamp``, ``datetime``/``date``/``time``,
    ``Decimal``, ``UUID``, ``set``/``frozenset`` and the missing markers ``pd.NA``/``NaT``
    (-> ``None``; NaN floats are handled by :func:`dumps`). See the module docstring.

    Raises:
        TypeError: naming the type, for anything JSON cannot represent (bytes, custom
            objects, complex numbers, timedeltas...). :func:`dumps` turns it into an
            :class:`EncodeError` with rule ``not_json``.
    """
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, np.generic):
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.datetime64):
            return None if np.isnat(obj) else to_utc_iso(obj)
        if isinstance(obj, np.str_):
            return str(obj)
        raise _NotJSONType(f"numpy {type(obj).__name__} is not JSON-serialisable")
    if isinstance(obj, dt.datetime):
        return to_utc_iso(obj)
    if isinstance(obj, dt.date):
        return obj.isoformat()
    if isinstance(obj, dt.time):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise _NotJSONType(f"Decimal {obj} is not a finite number; JSON cannot carry it")
        if obj == obj.to_integral_value():
            return int(obj)
        return float(obj)
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, set | frozenset):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, np.ndarray):
        return _array_to_list(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        raise _NotJSONType(f"{type(obj).__name__} is not JSON; decode it to str first")
    raise _NotJSONType(f"{type(obj).__module__}.{type(obj).__qualname__} is not JSON-serialisable")


# --------------------------------------------------------------------------- dumps


def dumps(obj: Any, *, nan_as_null: bool = False, path: str = "") -> bytes:
    """Compact JSON bytes for ``obj`` under this package's rules (module docstring).

    Args:
        obj: the value (usually an event dict or a properties object).
        nan_as_null: write float NaN as ``null`` (a missing value inside an object).
            When ``False`` (default) a NaN raises. Infinity always raises.
        path: prefix for error paths (e.g. ``"properties"``).

    Raises:
        EncodeError: with ``path`` and ``rule`` (``not_json``, ``invalid_unicode``,
            ``int_out_of_range``) naming the first offending value.
    """
    try:
        out = orjson.dumps(obj, default=json_default, option=ORJSON_OPTIONS)
    except orjson.JSONEncodeError as exc:
        found = _locate(obj, path, nan_as_null=nan_as_null, depth=0)
        if found is not None:
            raise found from None
        rule, reason = _classify(exc)
        raise EncodeError(path, rule, reason) from None
    except ValueError as exc:  # defensive: a converter raised outside orjson's wrapper
        raise EncodeError(path, contract.RULE_NOT_JSON, str(exc)) from None
    # orjson writes NaN and +-Infinity as null: look closer only when a null is present.
    if b"null" in out:
        found = _locate(obj, path, nan_as_null=nan_as_null, depth=0)
        if found is not None:
            raise found
    return out


def encoded_size(obj: Any, *, nan_as_null: bool = True) -> int:
    """Bytes of the compact UTF-8 JSON of ``obj`` (raises :class:`EncodeError`)."""
    return len(dumps(obj, nan_as_null=nan_as_null))


def _classify(exc: orjson.JSONEncodeError) -> tuple[str, str]:
    cause = exc.__cause__
    if isinstance(cause, _NotJSONType | ValueError):
        return contract.RULE_NOT_JSON, str(cause)
    msg = str(exc)
    if "surrogates" in msg or "UTF-8" in msg:
        return contract.RULE_UNICODE, rules.lone_surrogate()
    if "53-bit" in msg or "64-bit" in msg or "Integer" in msg:
        return contract.RULE_INT_RANGE, rules.int_beyond()
    if "Recursion" in msg or "recursion" in msg:
        return contract.RULE_NOT_JSON, "nested too deeply (or refers to itself)"
    if "Dict key" in msg:
        return contract.RULE_NOT_JSON, "object keys must be strings"
    return contract.RULE_NOT_JSON, msg


_MAX_PATH: Final = 120  # characters of a JSON path shown; deeper levels become "…"


def _child(path: str, key: str | int) -> str:
    if path.endswith("…"):
        return path
    if len(path) > _MAX_PATH:
        return path + "…"
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = key.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{path}.{key}" if path else key


def _check_str(s: str, path: str) -> EncodeError | None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return EncodeError(path, contract.RULE_UNICODE, rules.lone_surrogate())
    return None


def _locate(obj: Any, path: str, *, nan_as_null: bool, depth: int) -> EncodeError | None:
    """Find the first value in ``obj`` that breaks a rule; ``None`` if there is none."""
    if depth > _MAX_DEPTH:
        return EncodeError(path, contract.RULE_NOT_JSON, "nested too deeply (or refers to itself)")
    if obj is None or isinstance(obj, bool):
        return None
    if isinstance(obj, str):
        return _check_str(obj, path)
    if isinstance(obj, int):
        if abs(obj) > contract.MAX_SAFE_INTEGER:
            shown = str(obj) if obj.bit_length() <= 256 else f"of {obj.bit_length()} bits"
            return EncodeError(path, contract.RULE_INT_RANGE, rules.int_beyond(shown))
        return None
    if isinstance(obj, float):
        if math.isnan(obj):
            if nan_as_null:
                return None
            return EncodeError(path, contract.RULE_NOT_JSON, rules.not_a_json_number("NaN"))
        if math.isinf(obj):
            return EncodeError(path, contract.RULE_NOT_JSON, rules.not_a_json_number(str(obj)))
        return None
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if type(k) is not str:  # orjson refuses str subclasses (numpy.str_) as keys
                return EncodeError(
                    _child(path, str(k)), contract.RULE_NOT_JSON,
                    f"object keys must be str, not {type(k).__name__}",
                )
            bad = _check_str(k, path)
            if bad is not None:
                return EncodeError(
                    path, contract.RULE_UNICODE, rules.lone_surrogate(what="a key contains")
                )
            bad = _locate(v, _child(path, k), nan_as_null=nan_as_null, depth=depth + 1)
            if bad is not None:
                return bad
        return None
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            bad = _locate(v, _child(path, i), nan_as_null=nan_as_null, depth=depth + 1)
            if bad is not None:
                return bad
        return None
    if isinstance(obj, enum.Enum):  # orjson writes an Enum as its value
        return _locate(obj.value, path, nan_as_null=nan_as_null, depth=depth + 1)
    # Anything else goes through the same converter orjson uses.
    try:
        converted = json_default(obj)
    except Exception as exc:  # whatever a strange value raises, it is not JSON
        return EncodeError(path, contract.RULE_NOT_JSON,
                           str(exc) if isinstance(exc, TypeError | ValueError)
                           else f"{type(obj).__name__} cannot be encoded "
                                f"({type(exc).__name__})")
    if converted is obj:  # pragma: no cover - json_default never returns its input
        return None
    return _locate(converted, path, nan_as_null=nan_as_null, depth=depth + 1)
