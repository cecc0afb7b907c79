"""What a broken rule says: :class:`Violation` and the one message of each rule.

Both validators build their messages here, so a rule reads the same whether it was
broken by one event (:mod:`millimetric_nb.events`, value by value) or by a cell of a
DataFrame (:mod:`millimetric_nb.frame`, column-wise): the column-wise validator adds
only where the value came from (``where="column 'user_id'"``). The rule codes are the
contract's (``contract.RULE_*``).

A problem travels as a :class:`Violation`; :attr:`Violation.problem` is the
``(path, rule, message)`` triple of :attr:`~millimetric_nb.errors.ValidationError.problems`
and :attr:`Violation.field_error` the ``"rule: message"`` text of ``field_errors``
(:meth:`Violation.parse` reads it back). Cells are shown by :func:`short`, bounded and
never raising, whatever the cell.

Also here, because both validators and the mapping need it for a single value:
:func:`string_violation`, the string rules of one field spec (type, lengths, UTF-8).
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import contract

__all__ = [
    "ERROR_COLUMNS",
    "Violation",
    "column_fields",
    "describe",
    "fields_of",
    "int_beyond",
    "lone_surrogate",
    "not_a_json_number",
    "not_a_timestamp",
    "required",
    "short",
    "string_violation",
    "timestamp_required",
    "too_long",
    "too_short",
    "type_hint",
    "wrong_type",
    "year_out_of_range",
]

_UNSET: Final = object()

#: Columns of every errors DataFrame, in order (``value``: a short repr of the offending
#: cell, :func:`short`; null when there is no single cell to show).
ERROR_COLUMNS: Final = ("row", "position", "field", "rule", "message", "value")


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule.

    Attributes:
        path: the field (``user_id``), property (``properties.amount``) or nested
            place (``events[3].properties.tags[0]``).
        rule: the contract's rule code (``required``, ``too_long``...).
        message: what is wrong, for a person (without the path).
        value: a short, printable ``repr`` of the offending value (:func:`short`),
            or ``None`` when there is none to show (a field left out, an empty cell).
    """

    path: str
    rule: str
    message: str
    value: str | None = None

    @classmethod
    def of(cls, path: str, rule: str, message: str, value: Any = _UNSET) -> Violation:
        """A violation showing ``value`` (any object, shown with :func:`short`)."""
        return cls(path, rule, message, None if value is _UNSET else short(value))

    @property
    def problem(self) -> tuple[str, str, str]:
        """``(path, rule, message)``, as :class:`~millimetric_nb.errors.ValidationError`
        holds problems."""
        return (self.path, self.rule, self.message)

    @property
    def field_error(self) -> str:
        """``"rule: message"``, one entry of ``field_errors[path]``."""
        return f"{self.rule}: {self.message}"

    @classmethod
    def parse(cls, path: str, text: str, default_rule: str = "invalid") -> Violation:
        """A ``field_errors`` entry (``"rule: message"``) read back; text without a
        rule keeps ``default_rule``."""
        rule, sep, message = text.partition(": ")
        if not sep or " " in rule:
            return cls(path, default_rule, text)
        return cls(path, rule, message)

    def with_prefix(self, prefix: str) -> Violation:
        """The same violation with ``prefix`` before its path (``events[3].``)."""
        return Violation(prefix + self.path, self.rule, self.message, self.value)


# --------------------------------------------------------------------------- showing values

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def short(value: Any, limit: int = 40) -> str:
    """A short, printable ``repr`` of any value; never raises.

    Cells and labels can be hostile: a list nested thousands of levels deep, an
    object whose ``__repr__`` raises, an integer too long for ``str()``, a lone
    surrogate. ``reprlib`` bounds depth and length; whatever still cannot be shown
    is named by its type; the text is made encodable as UTF-8.
    """
    try:
        r = _REPR.repr(value)
    except Exception:  # a __repr__ that raises, an int beyond str()'s digit limit...
        r = f"<{type(value).__name__} that cannot be shown>"
    if len(r) > limit:
        r = r[: limit - 1] + "…"
    return r.encode("utf-8", "backslashreplace").decode("utf-8")


def _at(message: str, where: str | None, hint: str = "") -> str:
    """``message (where)hint``: the column-wise validator says where the value was."""
    return (f"{message} ({where})" if where else message) + hint


# --------------------------------------------------------------------------- messages

_EPOCH_HINT: Final = "convert epoch numbers with pd.to_datetime(col, unit='s' or 'ms')"


def required(detail: str | None = None, where: str | None = None) -> str:
    """Rule ``required``: a required field is missing (``detail``: how)."""
    return _at("is required" if detail is None else f"is required ({detail})", where)


def timestamp_required(given: str) -> str:
    """Rule ``required`` for a timestamp given as an empty value (``given``: how it
    was given, e.g. ``"it was given as None"`` or ``"column 'ts' is empty in this row"``)."""
    return (f"is required: {given} (fill it in, or pass missing_timestamp='server_time' to "
            "store the event at the time it is sent)")


def wrong_type(expected: str, got: str, where: str | None = None, hint: str = "") -> str:
    """Rule ``type``: ``must be <expected>, got <got>``."""
    return _at(f"must be {expected}, got {got}", where, hint)


def type_hint(value: Any) -> str:
    """The hint a wrongly typed string value gets (bytes: decode them)."""
    return "; decode it to str first" if isinstance(value, bytes | bytearray) else ""


def too_short(min_length: int, got: int, where: str | None = None) -> str:
    """Rule ``too_short``: fewer characters than the field's ``min_length``."""
    return _at(f"must be at least {min_length} character(s), got {got}", where)


def too_long(max_length: int, got: int, where: str | None = None) -> str:
    """Rule ``too_long``: more characters than the field's ``max_length``."""
    return _at(f"must be at most {max_length} characters, got {got}", where)


def lone_surrogate(where: str | None = None, what: str = "contains") -> str:
    """Rule ``invalid_unicode``: text UTF-8 cannot carry (``what="a key contains"``)."""
    return _at(f"{what} a lone surrogate, which is not valid UTF-8", where)


def int_beyond(shown: str | None = None, where: str | None = None) -> str:
    """Rule ``int_out_of_range``: an integer JSON readers would round."""
    what = f"the integer {shown}" if shown is not None else "an integer"
    return _at(f"{what} is beyond +-{contract.MAX_SAFE_INTEGER}; send it as a string", where)


def not_a_json_number(shown: str, where: str | None = None) -> str:
    """Rule ``not_json`` for a float JSON has no number for (``inf``, ``NaN``)."""
    return _at(f"{shown} is not a JSON number", where)


def not_a_timestamp(got: str, where: str | None = None) -> str:
    """Rule ``invalid_timestamp`` for a value of the wrong kind (``got``: its type, or
    ``"a number (5)"``): numbers are refused, epoch seconds and milliseconds look alike."""
    return _at(f"must be a datetime or an ISO 8601 string, not {got}", where,
               f"; {_EPOCH_HINT}")


def year_out_of_range(where: str | None = None, what: str = "is") -> str:
    """Rule ``invalid_timestamp`` (or ``not_json`` in properties): a year JSON dates
    cannot hold (``what="datetime"`` for a property value)."""
    return _at(f"{what} outside the years 1 to 9999", where)


# --------------------------------------------------------------------------- one string value


def describe(value: Any) -> str:
    """A value's type as a message names it (``bytes of length 3``)."""
    if isinstance(value, bytes | bytearray):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def string_violation(
    path: str, value: Any, spec: contract.FieldSpec
) -> tuple[str | None, Violation | None]:
    """``(the value as a plain str, None)`` when ``value`` keeps ``spec``'s string
    rules, else ``(None, the violation)``: type (``numpy.str_`` is a str), length in
    characters, UTF-8 (no lone surrogates)."""
    if isinstance(value, str) and type(value) is not str:
        value = str.__str__(value)
    if not isinstance(value, str):
        return None, Violation.of(path, contract.RULE_TYPE,
                                  wrong_type("a string", describe(value), hint=type_hint(value)),
                                  value)
    n = len(value)
    if n < spec.min_length:
        return None, Violation.of(path, contract.RULE_TOO_SHORT,
                                  too_short(spec.min_length, n), value)
    if spec.max_length is not None and n > spec.max_length:
        return None, Violation.of(path, contract.RULE_TOO_LONG,
                                  too_long(spec.max_length, n), value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, Violation.of(path, contract.RULE_UNICODE, lone_surrogate(), value)
    return value, None


def fields_of(specs: Mapping[str, contract.FieldSpec], *kinds: str) -> tuple[str, ...]:
    """The names of ``specs``' fields of the given kinds, in the table's order."""
    return tuple(name for name, spec in specs.items() if spec.kind in kinds)


def column_fields() -> tuple[str, ...]:
    """The event fields fed by one column each (every string and timestamp field of
    ``contract.EVENT_FIELDS`` but ``event``), in the table's order, read when called."""
    return tuple(n for n in fields_of(contract.EVENT_FIELDS, "string", "timestamp")
                 if n != "event")
