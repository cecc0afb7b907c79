"""What the engine says about rows, from structured problems, never from text read back.

* The frame layer's problems (``PreparedRows.errors``: ``position``, ``field``,
  ``rule``, ``message`` columns) become each invalid row's note, column by column
  (:func:`first_problems`).
* A chunk-level :class:`~millimetric_nb.errors.ValidationError` names its field in
  ``problems`` (:func:`chunk_field`).
* A ``/v1/batch`` 400 that names events is read once, where it enters the engine,
  into :class:`Refusal` records by event index (:func:`refusals`); everything after
  uses their fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..errors import MillimetricError, ValidationError
from .ledger import INVALID, Chunk

_EVENT_PATH = re.compile(r"events\.(\d+)(?:\.(.+))?$")


def short(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Problems:
    """The first problem of each invalid row of a chunk, as arrays (chunk positions)."""

    pos: np.ndarray
    field: np.ndarray
    rule: np.ndarray
    message: np.ndarray


def first_problems(errors: pd.DataFrame, offset: int, n: int) -> Problems | None:
    """Each row's first problem out of the frame layer's ``errors`` (global positions),
    for the rows of the chunk at ``offset`` with ``n`` rows; ``None`` if there is none."""
    if not len(errors):
        return None
    first = errors.drop_duplicates("position")
    pos = first["position"].to_numpy(dtype=np.int64) - offset
    ok = (pos >= 0) & (pos < n)
    return Problems(
        pos[ok],
        first["field"].to_numpy(dtype=object)[ok],
        first["rule"].to_numpy(dtype=object)[ok],
        first["message"].to_numpy(dtype=object)[ok],
    )


def chunk_field(exc: MillimetricError) -> str | None:
    """The field a chunk-level error is about, when it names one."""
    if isinstance(exc, ValidationError) and exc.problems:
        return exc.problems[0][0]
    return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """The server's refusal of one event of a batch request."""

    field: str
    rule: str
    message: str


def refusals(exc: MillimetricError, count: int) -> dict[int, Refusal] | None:
    """The events a ``/v1/batch`` 400 refuses, by index in the request; ``None`` when the
    refusal is about the body as a whole (or names an event the request does not hold).

    The server names them in ``details.fieldErrors`` as ``events.N.field`` paths with
    ``"rule: message"`` texts (the contract's format); this is the one place they are read.
    """
    if exc.status != 400 or exc.ambiguous or not exc.field_errors:
        return None
    out: dict[int, Refusal] = {}
    for path, msgs in exc.field_errors.items():
        m = _EVENT_PATH.match(path)
        if m is None or not 0 <= int(m.group(1)) < count:
            return None
        text = msgs[0] if msgs else exc.code
        rule, sep, message = text.partition(": ")
        if not sep:
            rule, message = exc.code, text
        out.setdefault(int(m.group(1)), Refusal(m.group(2) or "event", rule, message))
    return out


def events_of(body: bytes | None, count: int) -> list[Any] | None:
    """The ``count`` events of a ``/v1/batch`` body (``None`` if it holds other than that)."""
    try:
        events = orjson.loads(body or b"")["events"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return events if isinstance(events, list) and len(events) == count else None


def mark_refused(
    chunk: Chunk, positions: np.ndarray, found: dict[int, Refusal], attempts: int
) -> pd.DataFrame:
    """Mark the refused events of a request (``positions``: its rows in ``chunk``)
    ``invalid`` with the server's field and rule; their problems, as ``errors`` rows."""
    bad = sorted(found)
    pos = positions[bad]
    fields = np.array([found[i].field for i in bad], dtype=object)
    rules = np.array([found[i].rule for i in bad], dtype=object)
    detail = np.array([f"{found[i].message} (refused by the server)" for i in bad],
                      dtype=object)
    chunk.mark(pos, INVALID, attempts=attempts)
    chunk.note(pos, fields, rules, detail)
    return pd.DataFrame({"row": chunk.frame.index[pos], "position": chunk.offset + pos,
                         "field": fields, "rule": rules, "message": detail})


def mark_invalid(chunk: Chunk, valid: np.ndarray, errors: pd.DataFrame) -> int:
    """Mark the invalid rows of ``chunk`` with their first problem; how many there are."""
    n_invalid = int(chunk.n - np.count_nonzero(valid))
    if n_invalid:
        chunk.mark(~valid, INVALID, error="invalid", message="invalid row")
        if (first := first_problems(errors, chunk.offset, chunk.n)) is not None:
            chunk.note(first.pos, first.field, first.rule, first.message)
    return n_invalid
