"""Validate a whole DataFrame of events: a tidy report, one row per problem.

:func:`validate_frame` maps the columns (:func:`~millimetric_nb.frame.resolve_mapping`),
checks every row column-wise (:func:`~millimetric_nb.frame.prepare_chunk` with
``encode=False``) and returns a :class:`ValidationReport`: ``.ok``, ``.errors``
(row label, position, field, rule code, message, offending value), ``.summary`` and an
HTML repr
for notebooks. Nothing is sent.
"""

from __future__ import annotations

import html
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .frame import (
    ERROR_COLUMNS,
    PII_DEFAULT,
    EventIdState,
    MissingTimestamp,
    PiiMode,
    check_mapping_keywords,
    emit_warnings,
    prepare_chunk,
    resolve_mapping,
)

__all__ = ["ValidationReport", "validate_frame"]

_SUMMARY_COLUMNS = ("field", "rule", "rows", "example_row", "example")
_HTML_MAX_ERRORS = 20


@dataclass
class ValidationReport:
    """What is wrong with a frame of events, row by row.

    Attributes:
        errors: one row per problem: ``row`` (index label), ``position`` (0-based
            row number), ``field`` (``event``, ``properties.amount``...), ``rule``
            (the contract's stable code: ``required``, ``too_long``...), ``message``,
            ``value`` (a short repr of the offending cell, :func:`millimetric_nb.rules.short`;
            missing for an empty cell).
        n_rows: rows checked.
        warnings: things worth knowing that do not make a row invalid.
    """

    errors: pd.DataFrame
    n_rows: int
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when no row has a problem."""
        return self.errors.empty

    @property
    def n_invalid_rows(self) -> int:
        """How many rows have at least one problem."""
        return int(self.errors["position"].nunique()) if len(self.errors) else 0

    @property
    def n_valid_rows(self) -> int:
        """How many rows would be sent."""
        return self.n_rows - self.n_invalid_rows

    @property
    def summary(self) -> pd.DataFrame:
        """Problems grouped by field and rule: rows affected and a first example."""
        if self.errors.empty:
            return pd.DataFrame({c: pd.Series([], dtype=object) for c in _SUMMARY_COLUMNS})
        g = self.errors.groupby(["field", "rule"], sort=False, dropna=False)
        first = g.head(1).set_index(["field", "rule"])
        out = pd.DataFrame({
            "rows": g["position"].nunique(),
        })
        out["example_row"] = first["row"]
        out["example"] = first["message"]
        out = out.reset_index().sort_values(["rows", "field"], ascending=[False, True])
        return out.reset_index(drop=True)[list(_SUMMARY_COLUMNS)]

    def invalid_rows(self) -> list[Hashable]:
        """Index labels of the invalid rows, in row order (each once)."""
        if self.errors.empty:
            return []
        return list(self.errors.drop_duplicates("position")["row"])

    def __repr__(self) -> str:
        head = (
            f"ValidationReport({self.n_rows} rows: "
            f"{self.n_valid_rows} valid, {self.n_invalid_rows} invalid"
            f"{', ' + str(len(self.warnings)) + ' warning(s)' if self.warnings else ''})"
        )
        lines = [head]
        if not self.errors.empty:
            for rec in self.summary.itertuples(index=False):
                lines.append(
                    f"  {rec.field}: {rec.rule} in {rec.rows} row(s), e.g. row {rec.example_row!r}:"
                    f" {rec.example}"
                )
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        status = "all rows valid" if self.ok else f"{self.n_invalid_rows} invalid row(s)"
        parts = [
            '<div class="millimetric-validation">',
            f"<p><strong>Validation</strong>: {self.n_rows} rows, {self.n_valid_rows} valid, "
            f"{e(status)}</p>",
        ]
        if self.warnings:
            parts.append("<ul>" + "".join(f"<li>{e(w)}</li>" for w in self.warnings) + "</ul>")
        if not self.errors.empty:
            parts.append(_table(self.summary, "Problems by field and rule"))
            shown = self.errors.head(_HTML_MAX_ERRORS)
            caption = "First problems" if len(self.errors) > _HTML_MAX_ERRORS else "Problems"
            parts.append(_table(shown[list(ERROR_COLUMNS)], caption))
            if len(self.errors) > _HTML_MAX_ERRORS:
                parts.append(
                    f"<p>{len(self.errors) - _HTML_MAX_ERRORS} more in <code>.errors</code></p>"
                )
        parts.append("</div>")
        return "".join(parts)


def _table(df: pd.DataFrame, caption: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(_cell(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False, name=None)
    )
    return (f"<table><caption>{e(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _cell(v: Any) -> str:
    text = v if isinstance(v, str) else repr(v)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validate_frame(
    df: pd.DataFrame,
    *,
    pii: PiiMode = PII_DEFAULT,
    now: pd.Timestamp | None = None,
    warn: bool = True,
    missing_timestamp: MissingTimestamp = "invalid",
    warn_stacklevel: int = 2,
    **mapping_kwargs: Any,
) -> ValidationReport:
    """Check every row of ``df`` against the contract, column-wise; send nothing.

    Args:
        df: the events, one per row.
        pii: property columns that look like personal data: ``"error"`` (default: raise,
            :class:`~millimetric_nb.errors.ValidationError` code ``personal_data``, as a
            send would refuse them), ``"warn"``, ``"allow"`` or ``"ignore"``.
        now: reference time for "timestamp in the future" (default: now).
        warn: also issue each warning with :func:`warnings.warn`
            (:class:`~millimetric_nb.frame.DataWarning`), once per kind.
        missing_timestamp: with a timestamp column, an empty cell makes the row
            invalid (``"invalid"``, rule ``required``) or is sent without a timestamp
            (``"server_time"``).
        warn_stacklevel: where the warnings point, counted from this function's
            caller (``2``); a face calling this on the user's behalf passes ``3``.
        **mapping_kwargs: the column mapping (``event=``, ``event_col=``,
            ``user_id_col=``, ``properties=``...), as for
            :func:`~millimetric_nb.frame.resolve_mapping`.

    Raises:
        ValidationError: ``invalid_mapping`` for a named column that does not exist or
            duplicate column labels; ``pii="error"`` with personal-looking columns.
        ConfigurationError: ``invalid_mapping`` for an unknown mapping keyword.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"validate_frame needs a pandas DataFrame, not {type(df).__name__}")
    check_mapping_keywords(mapping_kwargs)
    mapping, mwarns = resolve_mapping(df.columns, **mapping_kwargs)
    chunk = prepare_chunk(df, mapping, pii=pii, now=now, ids=EventIdState(), encode=False,
                          missing_timestamp=missing_timestamp)
    warns = [*mwarns, *chunk.warnings]
    if warn:
        emit_warnings(warns, stacklevel=warn_stacklevel)
    return ValidationReport(errors=chunk.errors, n_rows=len(df), warnings=warns)
