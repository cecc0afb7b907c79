"""The account of a send: :class:`SendResult`, and the dry-run :class:`Plan`.

Every input row appears in ``SendResult.rows`` exactly once, with exactly one
status:

``sent``
    the server acknowledged the request that carried the row.
``failed``
    the request finally failed and was certainly not written (a 400 rejects the
    whole batch; a 401/403 stops the run), or the row was never sent because the
    run stopped. ``error`` holds the code.
``ambiguous``
    the outcome is unknown: the request finally failed after an attempt that may
    have reached the server, so the row may or may not be stored.
``invalid``
    the row broke a field rule and was not sent; ``error`` is the rule code and
    ``message`` names the field.
``skipped``
    a journal says an earlier run already got it acknowledged.
``planned``
    dry run: valid and would be sent.

The ``ambiguous`` *column* is a flag, separate from the status: it is true for
every row whose request hit an attempt that may have reached the server, that
is for ``ambiguous`` rows and for ``sent`` rows that were acknowledged only after
such an attempt (stored, possibly twice). ``counts["ambiguous"]`` counts status
``ambiguous`` (outcome unknown); ``counts["possible_duplicates"]`` counts the
``sent`` rows so flagged. The statuses partition the rows: ``sent + failed +
ambiguous + invalid + skipped + planned == total``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .contract import RateLimit
from .errors import MillimetricError
from .ratelimit import estimate_seconds

STATUSES: tuple[str, ...] = ("sent", "failed", "ambiguous", "invalid", "skipped", "planned")
STATUS_CODES: dict[str, int] = {s: i for i, s in enumerate(STATUSES)}
ROWS_COLUMNS: tuple[str, ...] = ("status", "event_id", "error", "attempts", "ambiguous", "message")
#: The columns ``SendResult.failed`` adds after the input's: why each row did not get in.
REASON_COLUMNS: tuple[str, ...] = ("status", "error_code", "field", "message")
#: Their names when the input already has a column of one of those names.
REASON_COLUMNS_PREFIXED: tuple[str, ...] = tuple(f"mm_{c}" for c in REASON_COLUMNS)


def reason_names(columns: Any) -> tuple[str, ...]:
    """The names the reason columns take next to ``columns`` (an input's labels)."""
    taken = set(columns)
    return REASON_COLUMNS_PREFIXED if taken & set(REASON_COLUMNS) else REASON_COLUMNS


def reason_columns(columns: Any) -> list[str]:
    """The reason columns of a ``SendResult.failed`` frame found among ``columns``.

    A frame (or its CSV export) holding all four of :data:`REASON_COLUMNS` (or of
    :data:`REASON_COLUMNS_PREFIXED`) is taken for a ``.failed`` frame being resent:
    those columns are the account of the last run, not event properties.
    """
    labels = set(columns)
    for names in (REASON_COLUMNS_PREFIXED, REASON_COLUMNS):
        if labels.issuperset(names):
            return list(names)
    return []


@dataclass(frozen=True, slots=True)
class Plan:
    """What a send would do (filled for dry runs, and for real runs as it went)."""

    route: str
    requests: int
    events: int
    bytes: int
    refill_per_s: float | None
    burst: int | None

    @property
    def estimated_s(self) -> float:
        """Seconds at the route's rate limit, from a full bucket: the burst at once, then
        the sustained rate, plus the last request's round trip
        (:func:`~millimetric_nb.ratelimit.estimate_seconds`); 0 for no request."""
        limit = (
            RateLimit(self.refill_per_s, self.burst)
            if self.refill_per_s and self.burst is not None
            else None
        )
        return estimate_seconds(self.requests, limit)

    def as_dict(self) -> dict[str, Any]:
        """The plan as plain data."""
        return {
            "route": self.route,
            "requests": self.requests,
            "events": self.events,
            "bytes": self.bytes,
            "estimated_s": self.estimated_s,
            "refill_per_s": self.refill_per_s,
            "burst": self.burst,
        }

    def __str__(self) -> str:
        rate = (
            f" at {self.refill_per_s:g}/s after a burst of {self.burst}"
            if self.refill_per_s
            else ""
        )
        return (
            f"{self.requests:,} request(s) to /v1/{self.route}, {self.events:,} events, "
            f"{_human_bytes(self.bytes)}, about {self.estimated_s:.1f} s{rate}"
        )


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def empty_rows(index: pd.Index | None = None) -> pd.DataFrame:
    """An empty ``.rows`` frame with the stable columns and dtypes."""
    idx = index if index is not None else pd.RangeIndex(0)
    return pd.DataFrame(
        {
            "status": pd.Categorical([], categories=STATUSES),
            "event_id": pd.Series([], dtype="string"),
            "error": pd.Categorical([]),
            "attempts": pd.Series([], dtype="int16"),
            "ambiguous": pd.Series([], dtype=bool),
            "message": pd.Series([], dtype="string"),
        },
        index=idx[:0],
    )


class DeferredRows:
    """``SendResult.rows`` not built yet: what a run keeps compactly (status codes,
    packed ids...) until ``.rows`` is first read. Subclasses give the counts without
    building the frame, and build it once."""

    def __len__(self) -> int:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """Rows by status, plus ``possible_duplicates`` and ``total``."""
        raise NotImplementedError

    def build(self) -> pd.DataFrame:
        """The ``.rows`` frame (called once; may let the compact parts go)."""
        raise NotImplementedError


class _RowsField:
    """The ``rows`` field of :class:`SendResult`: a frame, or a :class:`DeferredRows`
    built into one on first access (the frame is kept, the deferred parts let go)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> pd.DataFrame:
        if obj is None:
            raise AttributeError(self.slot)  # dataclasses: the field has no default
        value = obj.__dict__[self.slot]
        if isinstance(value, DeferredRows):
            value = value.build()
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj: Any, value: pd.DataFrame | DeferredRows) -> None:
        obj.__dict__[self.slot] = value


def pending_rows(result: SendResult) -> DeferredRows | None:
    """``result``'s rows while they are not built yet (``None`` once they are)."""
    value = result.__dict__.get("_rows")
    return value if isinstance(value, DeferredRows) else None


@dataclass(eq=False)
class SendResult:
    """The account of one send (or dry run): counts, per-row statuses, what failed.

    Attributes:
        rows: one row per input row, aligned with the input's index: ``status``
            (categorical, see module docs), ``event_id``, ``error`` (code or rule),
            ``attempts`` (HTTP attempts of the row's request), ``ambiguous`` (flag),
            ``message``.
        failed: the input rows that did not get in (invalid, failed, ambiguous),
            with the input's columns, ready to fix and resend, followed by why:
            ``status``, ``error_code`` (the rule or error code), ``field`` (the field
            at fault, when one is) and ``message`` (named ``mm_status``... when the
            input has a column of one of those names). Export it, fix it, send it
            again as it is: a send ignores these four columns (they never become
            properties). For event sends the
            rows also carry their ids (an ``event_id`` column added at the end, or
            the missing cells of the mapped ``event_id`` column filled), so resending
            ``.failed`` reuses them: a derived id numbers repeats of identical
            content, which the subset alone would number differently (and a
            journal would then take a repeat for its acknowledged twin). Invalid
            rows have no id; a resend derives it from the fixed content.
        errors: validation problems, one row per problem (row, position, field,
            rule, message).
        warnings: messages an analyst needs (no timestamp, PII-looking columns...).
        plan: requests, bytes and the estimated duration at the rate limit.
        elapsed_s: wall time of the run.
        dry_run: nothing was sent.
        error: the error that stopped the run early (401/403, refused key), if any;
            rows not sent because of it are ``failed`` with its code.
        timestamps: the input's ``timestamp`` column, row for row, when the source was
            one DataFrame with one (for :meth:`per_day` and the chart in the HTML repr).

    ``rows`` may be given as a :class:`DeferredRows` (a run over a large source keeps
    its account compactly): the frame is built on first access, and ``counts`` (so
    the headline, ``ok``...) do not need it.
    """

    # a descriptor without a default at runtime (see _RowsField); mypy takes it for one
    rows: pd.DataFrame = _RowsField()  # type: ignore[assignment]
    failed: pd.DataFrame  # type: ignore[misc]
    errors: pd.DataFrame  # type: ignore[misc]
    warnings: list[str] = field(default_factory=list)
    plan: Plan | None = None
    elapsed_s: float = 0.0
    dry_run: bool = False
    route: str = "batch"
    error: MillimetricError | None = None
    timestamps: pd.Series | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ counts

    @property
    def counts(self) -> dict[str, int]:
        """Rows by status, plus ``possible_duplicates`` and ``total`` (without building
        ``rows`` when they are still deferred)."""
        deferred = pending_rows(self)
        if deferred is not None:
            return deferred.counts()
        vc = self.rows["status"].value_counts()
        out = {s: int(vc.get(s, 0)) for s in STATUSES}
        sent = self.rows["status"] == "sent"
        out["possible_duplicates"] = int((sent & self.rows["ambiguous"]).sum())
        out["total"] = len(self.rows)
        return out

    @property
    def sent(self) -> int:
        """Rows acknowledged by the server."""
        return self.counts["sent"]

    @property
    def failed_count(self) -> int:
        """Rows whose request failed for certain, or that were not sent."""
        return self.counts["failed"]

    @property
    def invalid(self) -> int:
        """Rows that broke a field rule."""
        return self.counts["invalid"]

    @property
    def skipped(self) -> int:
        """Rows a journal says were already acknowledged."""
        return self.counts["skipped"]

    @property
    def ambiguous(self) -> int:
        """Rows whose outcome is unknown (may or may not be stored)."""
        return self.counts["ambiguous"]

    @property
    def planned(self) -> int:
        """Dry run: rows that would be sent."""
        return self.counts["planned"]

    @property
    def possible_duplicates(self) -> int:
        """Sent rows acknowledged after an attempt that may also have been written."""
        return self.counts["possible_duplicates"]

    @property
    def ok(self) -> bool:
        """True when every row is sent, skipped or planned, without a stop."""
        c = self.counts
        return self.error is None and (
            c["failed"] + c["ambiguous"] + c["invalid"] == 0
        )

    def raise_for_error(self) -> SendResult:
        """Raise the error that stopped the run, if any; else return ``self``."""
        if self.error is not None:
            raise self.error
        return self

    # ------------------------------------------------------------------ display

    def _headline(self) -> str:
        c = self.counts
        what = "Dry run" if self.dry_run else f"Send via /v1/{self.route}"
        parts = [f"{c['total']:,} rows"]
        keys = ("planned",) if self.dry_run else ("sent", "failed", "ambiguous")
        for k in (*keys, "invalid", "skipped"):
            if not self.dry_run or c[k]:
                parts.append(f"{k} {c[k]:,}")
        if c["possible_duplicates"]:
            parts.append(f"possible duplicates {c['possible_duplicates']:,}")
        return f"{what}: " + ", ".join(parts) + f" ({self.elapsed_s:.1f} s)"

    def _notes(self) -> list[str]:
        notes: list[str] = []
        if self.error is not None:
            notes.append(f"STOPPED: {self.error}")
        if self.plan is not None and self.dry_run:
            notes.append(f"Plan: {self.plan}")
        notes.extend(f"warning: {w}" for w in self.warnings)
        return notes

    def __repr__(self) -> str:
        lines = [f"<SendResult {self._headline()}>"]
        lines.extend(f"  {n}" for n in self._notes())
        if len(self.failed):
            lines.append(f"  .failed holds {len(self.failed):,} row(s) to fix and resend")
        return "\n".join(lines)

    def per_day(self) -> pd.DataFrame:
        """Rows per UTC day (of their ``timestamp``) and status; empty without timestamps.

        Rows with no timestamp (the server gives them its own time) are not counted.
        """
        from .ui.charts import per_day

        if self.timestamps is None or len(self.timestamps) != len(self.rows):
            return per_day([], [])
        return per_day(self.timestamps.to_numpy(), self.rows["status"].to_numpy())

    def _repr_html_(self) -> str:
        e = html.escape
        c = self.counts
        cells = "".join(
            f"<td style='padding:2px 8px'><b>{c[k]:,}</b><br><small>{e(k)}</small></td>"
            for k in (*STATUSES, "possible_duplicates")
            if c[k] or k in ("sent", "failed", "invalid")
        )
        notes = "".join(f"<li>{e(n)}</li>" for n in self._notes())
        sample = ""
        bad = self.rows[~self.rows["status"].isin(["sent", "skipped", "planned"])]
        if len(bad):
            sample = "<details><summary>rows that did not get in</summary>" + (
                bad.head(20).to_html(escape=True)
            ) + "</details>"
        chart = ""
        if self.timestamps is not None:
            from .ui.charts import chart_html

            chart = chart_html(self.per_day(), title="rows per day")
        return (
            "<div class='millimetric-result'>"
            f"<p>{e(self._headline())}</p><table><tr>{cells}</tr></table>"
            f"<ul>{notes}</ul>{chart}{sample}</div>"
        )


#: ``result.error.code`` of a run stopped on request: the Cancel button / ``.cancel()``
#: (``"cancelled"``) or the first Ctrl-C / kernel interrupt (``"interrupted"``).
STOP_CODES: tuple[str, ...] = ("cancelled", "interrupted")


#: How the ``message`` of a row a stop kept back before its part of the input was
#: validated starts (``failed`` with the stop's code): it may be valid or invalid.
UNCHECKED = "not checked or sent: the run stopped before this part of the input was validated"


def kept_back(result: SendResult) -> tuple[int, int]:
    """Rows a stop on request kept back: ``(never sent, not checked)``.

    ``never sent``: valid rows that never left; ``not checked``: rows of a part of the
    input the run had not validated yet (some may be invalid). Both are ``failed``
    with the stop's code; ``(0, 0)`` when the run was not stopped on request.
    """
    how = stopped_by(result)
    if how is None:
        return 0, 0
    rows = result.rows
    kept = (rows["status"] == "failed") & (rows["error"] == how)
    unchecked = kept & rows["message"].str.startswith(UNCHECKED, na=False)
    return int(kept.sum() - unchecked.sum()), int(unchecked.sum())


def stopped_by(result: SendResult) -> str | None:
    """``"cancelled"`` or ``"interrupted"`` when the run was stopped on request, else None."""
    code = result.error.code if result.error is not None else None
    return code if code in STOP_CODES else None


def resume_hint(journal: Any = None) -> str:
    """One sentence on how to send what is left without sending anything twice."""
    if journal is not None:
        where = getattr(journal, "path", journal)
        return (f"to resume, run the same call again with journal={str(where)!r}: "
                "the rows it stored are skipped")
    return ("to resume, send result.failed (it keeps each row's event_id); pass journal=... "
            "so that a rerun skips what was stored")


def account_line(result: SendResult, journal: Any = None) -> str:
    """The account of a send in one line; for a stopped run: stored, cut off in flight,
    never sent, and how to resume (``journal``: its path, if the run had one)."""
    c = result.counts
    how = stopped_by(result)
    if how is None:
        return result._headline()
    never, unchecked = kept_back(result)
    parts = [f"{c['sent']:,} rows stored", f"{c['ambiguous']:,} cut off in flight (may be stored)",
             f"{never:,} never sent"]
    if unchecked:
        parts.append(f"{unchecked:,} not yet checked or sent")
    other = c["failed"] - never - unchecked
    if other:
        parts.append(f"{other:,} failed")
    for k in ("invalid", "skipped"):
        if c[k]:
            parts.append(f"{c[k]:,} {k}")
    what = "Cancelled" if how == "cancelled" else "Interrupted"
    return f"{what} after {result.elapsed_s:.1f} s: " + ", ".join(parts) + "; " + resume_hint(
        journal
    )


__all__ = [
    "REASON_COLUMNS",
    "REASON_COLUMNS_PREFIXED",
    "ROWS_COLUMNS",
    "STATUSES",
    "STOP_CODES",
    "UNCHECKED",
    "DeferredRows",
    "Plan",
    "SendResult",
    "account_line",
    "empty_rows",
    "kept_back",
    "pending_rows",
    "reason_columns",
    "reason_names",
    "resume_hint",
    "stopped_by",
]
