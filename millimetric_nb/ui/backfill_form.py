"""The backfill panel: map a frame's (or a file's) columns, validate, plan, send, export.

``backfill_panel(df_or_path)`` -> CSS class ``mm-backfill``. Inputs:
``mm-backfill-source`` (the file path, or a description of the DataFrame),
one dropdown per field, ``mm-backfill-event``, ``mm-backfill-event_id``,
``mm-backfill-timestamp``, ``mm-backfill-anonymous_id``, ``mm-backfill-user_id``,
``mm-backfill-session_id``, ``mm-backfill-url``, ``mm-backfill-path``,
``mm-backfill-referrer``, then ``mm-backfill-event_name`` (one event name for
every row, instead of a column), ``mm-backfill-properties`` (the property
columns), ``mm-backfill-journal`` (the journal path). Buttons:
``mm-backfill-validate``, ``mm-backfill-dryrun``, ``mm-backfill-send``,
``mm-backfill-export``. Outputs: ``mm-backfill-report`` (the validation table or
the plan), ``mm-backfill-progress`` (holds the live
:class:`~millimetric_nb.ui.panel.SendPanel` of a send, class ``mm-panel``, whose
Cancel button is ``mm-panel-cancel``), ``mm-backfill-chart`` (rows per day),
``mm-backfill-failed`` (the rows that did not get in), ``mm-backfill-answer``,
``mm-backfill-history``. The note beside an input is ``mm-backfill-<field>-msg``.

The dropdowns are pre-filled by the accessor's own mapping rules
(:func:`millimetric_nb.frame.resolve_mapping`: a column named like a field feeds
it; every other column, except those named like server-enriched fields, is a
property). Validate and Dry run are dry runs of :func:`millimetric_nb.abackfill`
(no client, no request: the plan's duration is at the production ceiling).
Send runs :func:`millimetric_nb.abackfill` as an ``asyncio`` task on the running
loop (the kernel's, in a notebook): the click returns at once, the live panel
updates while the cell is idle, and its Cancel stops the send gracefully (a
:class:`~millimetric_nb.engine.StopSignal`: nothing new leaves, the requests in
flight are awaited and journaled, and the account covers every row). Without a
running loop (a plain script) Send runs to the end before returning.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import os
import warnings
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from ..engine import StopSignal
from ..errors import MillimetricError
from ..frame import COLUMN_FIELDS, resolve_mapping
from ..results import SendResult, account_line, resume_hint, stopped_by
from .charts import chart_html
from .forms import Form, check_key, resolve_client

if TYPE_CHECKING:  # the client (httpx) is imported when the panel sends
    from ..sync import ClientLike

__all__ = ["BackfillPanel", "backfill_panel"]

_FIELDS = ("event", *COLUMN_FIELDS)
_NONE = "(none)"
_ERROR_ROWS_SHOWN = 5
_FAILED_ROWS_SHOWN = 20
_LOAD_ROWS = 1000
_ERRORS = (MillimetricError, OSError, ValueError)
_GREY = "color:#616161"
_AMBER = "color:#8a5a00"


def backfill_panel(
    source: pd.DataFrame | str | os.PathLike[str],
    *,
    client: ClientLike | None = None,
    journal: str | os.PathLike[str] | None = None,
    pii: str = "warn",
    chunksize: int | None = None,
    concurrency: int | None = None,
) -> BackfillPanel:
    """A panel to backfill a DataFrame or a file (``.csv``, ``.jsonl``, ``.parquet``).

    Args:
        source: the DataFrame, or the path of the file (streamed chunk by chunk).
        client: a Client or AsyncClient; default: the one ``connect()`` set, looked up
            when Send is clicked.
        journal: pre-fills the journal path (default ``<file stem>.journal.sqlite``,
            or ``backfill.journal.sqlite`` for a DataFrame; blank: no journal).
        pii: ``"warn"``, ``"error"`` or ``"ignore"``, as for the accessor.
        chunksize, concurrency: as for :func:`millimetric_nb.abackfill`.
    """
    return BackfillPanel(
        source, client=client, journal=journal, pii=pii, chunksize=chunksize,
        concurrency=concurrency,
    )


class BackfillPanel(Form):
    """The backfill panel (see the module docstring); build it with :func:`backfill_panel`.

    Attributes:
        frame: the DataFrame (``None`` for a file source).
        path: the file (``None`` for a DataFrame).
        checked: the last Validate / Dry run (a dry-run :class:`SendResult`).
        plan: the last dry run's :class:`~millimetric_nb.results.Plan`.
        result: the last send's :class:`SendResult`, once it ended.
        failed: the rows of the last send that did not get in (a DataFrame).
        task: the running (or last) send's ``asyncio.Task``.
        stop: its :class:`~millimetric_nb.engine.StopSignal` (Cancel requests it).
        display: the progress display of the running (or last) send.
    """

    def __init__(
        self,
        source: Any,
        *,
        client: ClientLike | None,
        journal: str | os.PathLike[str] | None,
        pii: str,
        chunksize: int | None,
        concurrency: int | None,
    ) -> None:
        super().__init__("backfill")
        w = self._w
        self.client = client
        self.pii = pii
        self.options: dict[str, Any] = {
            k: v for k, v in (("chunksize", chunksize), ("concurrency", concurrency))
            if v is not None
        }
        self.frame: pd.DataFrame | None = None
        self.path: Path | None = None
        self.columns: list[Hashable] = []
        self.checked: SendResult | None = None
        self.plan: Any = None
        self.result: SendResult | None = None
        self.failed: pd.DataFrame | None = None
        self.task: asyncio.Task[SendResult] | None = None
        self.stop: StopSignal | None = None
        self.display: Any = None
        self._dict_props: Hashable | None = None
        self._refreshing = False

        source_row = self.text("source", "source", "events.csv")
        self.fields["source"].continuous_update = False
        mapping_rows = [self.field(f, w.Dropdown(description=f, options=[(_NONE, None)]))
                        for f in _FIELDS]
        const_row = self.text("event_name", "event name", "one name for every row (optional)")
        props_row = self.field(
            "properties", w.SelectMultiple(description="properties", options=[], rows=6)
        )
        journal_row = self.text("journal", "journal", "backfill.journal.sqlite")
        self.report = self.html("report")
        self.progress_box = self.classed(w.VBox(), "progress")
        self.chart = self.html("chart")
        self.failed_view = self.html("failed")
        buttons = w.HBox([
            self.button("validate", "Validate", self.validate),
            self.button("dryrun", "Dry run", self.dry_run),
            self.button("send", "Send", self.send, button_style="primary"),
            self.button("export", "Write failed rows to CSV", self.export, disabled=True),
        ])

        if isinstance(source, pd.DataFrame):
            self.frame = source
            self.fields["source"].value = (
                f"DataFrame: {len(source):,} rows, {source.shape[1]} columns"
            )
            self.fields["source"].disabled = True
            self._set_columns(list(source.columns))
            default_journal = "backfill.journal.sqlite"
        elif isinstance(source, str | os.PathLike):
            self.fields["source"].value = os.fspath(source)
            self._load(os.fspath(source))
            default_journal = f"{Path(os.fspath(source)).stem or 'backfill'}.journal.sqlite"
        else:
            self.say("source", f"cannot backfill a {type(source).__name__}: pass a DataFrame "
                     "or the path of a .csv, .jsonl or .parquet file")
            default_journal = "backfill.journal.sqlite"
        self.fields["journal"].value = (
            os.fspath(journal) if journal is not None else default_journal
        )
        self.fields["journal"].observe(lambda _ch: self._safe(self._journal_note),
                                       names="value")
        self._journal_note()
        self.fields["source"].observe(lambda ch: self._safe(lambda: self._load(ch["new"])),
                                      names="value")
        for f in (*_FIELDS, "event_name"):
            self.fields[f].observe(lambda _ch: self._safe(self._remap), names="value")
        self.fields["properties"].observe(lambda _ch: self._safe(self.check), names="value")
        self.check()
        self.finish("Backfill", [
            source_row, *mapping_rows, const_row, props_row, journal_row, buttons,
            self.report, self.progress_box, self.chart, self.failed_view,
        ])

    # ------------------------------------------------------------------ source and mapping

    def _journal_note(self) -> None:
        """Say beside the journal field where it is and what it does to a Send: a rerun
        with the same journal skips the rows an earlier run stored."""
        text = self.fields["journal"].value.strip()
        if not text:
            self.say("journal", "no journal: a second Send sends every row again", _GREY)
            return
        where = Path(text).expanduser().resolve()
        if where.exists():
            self.say("journal", f"{where} exists: Send skips the rows an earlier run with "
                     "this journal stored (blank the field, or name another file, to send "
                     "them again)", _AMBER)
        else:
            self.say("journal", f"a new journal at {where}: a rerun with it skips the rows "
                     "this send stores", _GREY)

    @property
    def source(self) -> Any:
        """What a send reads: the DataFrame or the path."""
        return self.frame if self.frame is not None else self.path

    def _load(self, text: str) -> None:
        """Read the head of the file at ``text`` for its columns (nothing else)."""
        from ..datasources import iter_source

        self.path = None
        self._set_columns([])
        text = text.strip()
        if not text:
            self.say("source", "type the path of a .csv, .jsonl or .parquet file")
            self.check()
            return
        try:
            chunks, _ = iter_source(Path(text), _LOAD_ROWS)
            head = next(chunks, None)
        except _ERRORS as exc:
            self.say("source", _short_error(exc))
            self.check()
            return
        if head is None or not len(head.columns):
            self.say("source", "the file holds no columns")
            self.check()
            return
        self.path = Path(text)
        self.say("source", "")
        self._set_columns(list(head.columns))
        self.check()

    def _set_columns(self, columns: list[Hashable]) -> None:
        """New columns: options of every dropdown, pre-filled by the accessor's rules."""
        self.columns = columns
        event_col = "event" if "event" in columns else None
        try:
            # without a column named 'event', the others are mapped as if a name were given
            default, _ = resolve_mapping(columns, event=None if event_col else "-")
        except MillimetricError as exc:  # duplicate column labels
            self.say("source", _short_error(exc))
            self.columns = []
            return
        self._refreshing = True
        try:
            for f in _FIELDS:
                opts: list[tuple[str, Any]] = [(str(c), c) for c in columns]
                if f not in columns:  # a column named like the field is always mapped
                    opts.insert(0, (_NONE, None))
                dd = self.fields[f]
                dd.options = opts
                dd.value = event_col if f == "event" else default.columns.get(f)
            self._dict_props = (
                cast(Hashable, default.properties) if default.properties_is_dict_column else None)
            self._refresh_properties(default)
        finally:
            self._refreshing = False

    def _refresh_properties(self, resolved: Any) -> None:
        sel = self.fields["properties"]
        sel.options = [(str(c), c) for c in self.columns]
        chosen = [resolved.properties] if resolved.properties_is_dict_column else list(
            resolved.property_columns)
        sel.value = tuple(chosen)

    def _remap(self) -> None:
        """A field's column changed: properties become the columns left (the accessor's
        rule), then everything is checked again."""
        if self._refreshing:
            return
        try:
            mapping = self.mapping(properties=False)
            resolved, _ = resolve_mapping(self.columns, **mapping)
        except MillimetricError:
            self.check()
            return
        self._refreshing = True
        try:
            self._dict_props = (
                cast(Hashable, resolved.properties) if resolved.properties_is_dict_column
                else None)
            self._refresh_properties(resolved)
        finally:
            self._refreshing = False
        self.check()

    def mapping(self, *, properties: bool = True) -> dict[str, Any]:
        """The mapping keywords the inputs say (for :func:`millimetric_nb.abackfill`)."""
        f = self.fields
        out: dict[str, Any] = {}
        const = f["event_name"].value.strip()
        if const:
            out["event"] = const
        else:
            out["event_col"] = f["event"].value
        for name in COLUMN_FIELDS:
            if f[name].value is not None:
                out[f"{name}_col"] = f[name].value
        if properties:
            chosen = list(f["properties"].value)
            dict_col = self._dict_props
            out["properties"] = dict_col if dict_col is not None and chosen == [dict_col] \
                else chosen
        return out

    def check(self) -> bool:
        """Check the source and the mapping; say what is wrong; enable what may run."""
        if self._refreshing:
            return False
        for part in (*_FIELDS, "event_name", "properties"):
            self.say(part, "")
        problems = self.source is None or not self.columns
        if not problems:
            problems = not self._check_mapping()
        for part in ("validate", "dryrun", "send"):
            self.buttons[part].disabled = problems or self.running
        return not problems

    def _check_mapping(self) -> bool:
        mapping = self.mapping()
        if mapping.get("event_col") is None and "event" not in mapping:
            texty = [c for c in self.columns if self._holds_text(c)]
            self.say("event", (
                "no column is named 'event': choose the column holding the event names, "
                "or type one event name for every row below" if texty else
                "this data has no column that could be the event (none holds text): type "
                "one event name for every row below"
            ))
            return False
        try:
            _, warns = resolve_mapping(self.columns, **mapping)
        except MillimetricError as exc:
            where = {p[0].removesuffix("_col") for p in getattr(exc, "problems", [])}
            part = next((p for p in where if p in self.fields), "properties")
            self.say(part, _short_error(exc))
            return False
        if warns:
            self.say("properties", "; ".join(warns), "color:#8a5a00")
        return True

    def _holds_text(self, column: Hashable) -> bool:
        if self.frame is None:
            return True  # a file's columns are read as text
        col = self.frame[column]
        return isinstance(col, pd.Series) and (
            pd.api.types.is_string_dtype(col.dtype) or col.dtype == object)

    # ------------------------------------------------------------------ validate, dry run

    def _dry(self) -> SendResult | None:
        """A dry run of the mapping (no client, no request); ``None`` if refused."""
        if not self.check():
            self.show_answer("nothing was checked: fix the fields marked in red", "color:#b00020")
            return None
        from ..api import abackfill
        from ..sync import run_sync

        with warnings.catch_warnings():  # they are in result.warnings, shown below
            warnings.simplefilter("ignore")
            result = run_sync(abackfill(
                self.source, dry_run=True, progress=False, warn_stacklevel=0, pii=self.pii,
                **self.options, **self.mapping(),
            ))
        self.checked = result
        return result

    def validate(self) -> None:
        """Validate every row: the problems grouped by rule, with the offending rows."""
        result = self._dry()
        if result is None:
            return
        self.report.value = _errors_html(result)
        self._draw(result, "planned and invalid rows per day")
        c = result.counts
        self.show_answer(
            f"{c['total']:,} rows: {c['planned']:,} valid, {c['invalid']:,} invalid",
            "color:#1b5e20" if not c["invalid"] else "color:#8a5a00",
        )

    def dry_run(self) -> None:
        """The plan: requests, bytes and the estimated duration at the route's ceiling."""
        result = self._dry()
        if result is None:
            return
        self.plan = result.plan
        self.report.value = _plan_html(result)
        self._draw(result, "planned and invalid rows per day")
        self.show_answer(f"Plan: {result.plan}" if result.plan else "nothing to send")

    def _draw(self, result: SendResult, title: str) -> None:
        table = result.per_day()
        if table.empty:
            why = (
                "the source is a file (a DataFrame gets one)" if self.frame is None
                else "no column is mapped to timestamp" if result.timestamps is None
                else "no row has a timestamp"
            )
            self.chart.value = f"<small>no chart of rows per day: {html.escape(why)}</small>"
            return
        self.chart.value = chart_html(table, title=title) or html.escape(table.to_string())

    # ------------------------------------------------------------------ send

    @property
    def running(self) -> bool:
        """Whether a send of this panel is running."""
        return self.task is not None and not self.task.done()

    def _make_display(self, client: ClientLike | None, journal: str | None) -> Any:
        from ..engine import route_limit
        from .panel import SendPanel

        display = SendPanel(
            "batch", limit=route_limit(client, "batch"), journal=journal, title="backfill"
        )
        self.progress_box.children = (display.widget,)
        return display

    def send(self) -> None:
        """Start the send (a task on the running loop); the click returns at once."""
        if self.running:
            self.show_answer("a send is already running: wait for it or Cancel it",
                             "color:#b00020")
            return
        if not self.check():
            self.show_answer("nothing was sent: fix the fields marked in red", "color:#b00020")
            return
        from ..api import abackfill
        from ..sync import run_sync

        try:
            client = resolve_client(self.client)  # the default one, if none was given
            check_key(client, "ingest")  # a refused key: now, before anything is read
        except MillimetricError as exc:
            self.show_error(exc)
            return
        journal = self.fields["journal"].value.strip() or None
        self.display = self._make_display(client, journal)
        self.result = self.failed = None
        self.buttons["export"].disabled = True
        self.failed_view.value = ""
        self.stop = StopSignal()
        # "background": the cell has returned, so a later kernel interrupt belongs to
        # whatever cell runs then, not to this send (Cancel is how to stop it)
        coro = abackfill(
            self.source, client=client, journal=journal, progress=self.display,
            warn_stacklevel=0, pii=self.pii, stop=self.stop, _mode="background",
            **self.options, **self.mapping(),
        )
        self.show_answer("sending…", "color:#1565c0")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # a script: run to the end here (no click can come meanwhile)
            self.display.set_cancel(None)
            outcome: SendResult | BaseException
            try:
                outcome = run_sync(coro)
            except _ERRORS as exc:
                outcome = exc
            self._settled(outcome, journal)
            return
        self.task = loop.create_task(coro)  # the live panel's Cancel asks self.stop
        self.check()
        self.task.add_done_callback(lambda t: self._safe(lambda: self._task_done(t, journal)))

    def cancel(self) -> None:
        """Stop the running send gracefully, as the live panel's Cancel does: nothing new
        leaves, the requests in flight are awaited, and the account covers every row."""
        if not self.running:
            self.show_answer("no send is running", "color:#8a5a00")
            return
        self.display.cancel()  # the panel shows "stopping", then asks self.stop
        if self.stop is not None:  # in case the run had not yet given the panel its stop
            self.stop.request("cancel")
        self.show_answer("cancelling: waiting for the requests in flight…", "color:#8a5a00")

    def _task_done(self, task: asyncio.Task[SendResult], journal: str | None) -> None:
        if task.cancelled():  # cancelled from outside (the loop closing): no account
            self.show_answer("the send's task was cancelled before it gave an account; "
                             f"{resume_hint(journal)}", "color:#b00020")
            self.record("backfill", "task cancelled", ok=False)
        elif (error := task.exception()) is not None:
            self._settled(error, journal)
        else:
            self._settled(task.result(), journal)

    def _settled(self, outcome: SendResult | BaseException, journal: str | None) -> None:
        self.check()
        if isinstance(outcome, BaseException):
            self.show_error(outcome)
            self.record("backfill", f"error {getattr(outcome, 'code', type(outcome).__name__)}",
                        ok=False)
            return
        if self.display.result is None:
            self.display.set_result(outcome)  # when the engine's Done did not carry it
        self.result = outcome
        self.failed = outcome.failed
        self._journal_note()  # it exists now: a rerun skips what this send stored
        self._draw(outcome, "rows per day by outcome")
        c = outcome.counts
        ok = outcome.ok
        line = account_line(outcome, journal) + _skipped_note(c["skipped"], journal)
        if stopped_by(outcome) is not None:
            self.show_answer(line, "color:#8a5a00")
            self.record("backfill", f"cancelled: sent {c['sent']:,} of {c['total']:,}", ok=False)
        else:
            self.show_answer(
                line if ok else f"{line}. The rows that did not get in are below: fix them "
                "and send them again, or write them to a CSV.",
                "color:#1b5e20" if ok else "color:#b00020",
            )
            self.record("backfill", f"sent {c['sent']:,} of {c['total']:,}", ok=ok)
        if len(self.failed):
            self.failed_view.value = (
                f"<b>{len(self.failed):,} row(s) did not get in</b> (<code>panel.failed</code>)"
                + self.failed.head(_FAILED_ROWS_SHOWN).to_html(escape=True)
            )
            self.buttons["export"].disabled = False

    # ------------------------------------------------------------------ export

    def export(self) -> Path | None:
        """Write the failed rows to a CSV in the current directory (next to the notebook)."""
        if self.failed is None or not len(self.failed):
            self.show_answer("no failed rows to write", "color:#8a5a00")
            return None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = Path.cwd() / f"millimetric-failed-{stamp}.csv"
        try:
            self.failed.to_csv(path)
        except OSError as exc:
            self.show_error(exc)
            return None
        self.show_answer(f"wrote {len(self.failed):,} row(s) to {path}")
        return path


# --------------------------------------------------------------------------- reports


def _skipped_note(skipped: int, journal: str | None) -> str:
    """The sentence saying that the journal kept rows from this send (else "")."""
    if not skipped or journal is None:
        return ""
    rows, were = ("row", "was") if skipped == 1 else ("rows", "were")
    return (f". {skipped:,} {rows} already stored by an earlier run with this journal "
            f"({journal}) {were} skipped: to send them again, blank the journal field or "
            "name another file")


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, MillimetricError):
        return f"[{exc.code}] {exc.message}"
    return f"[{type(exc).__name__}] {exc}"


def _errors_html(result: SendResult) -> str:
    """The problems grouped by rule and field, each with its first offending rows."""
    errors = result.errors
    warns = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
    head = f"<ul>{warns}</ul>" if warns else ""
    if errors.empty:
        return head + "<p style='color:#1b5e20'>every row is valid</p>"
    parts = [head]
    for (rule, field), group in errors.groupby(["rule", "field"], sort=True):
        labels = list(dict.fromkeys(group["row"]))
        rows = result.failed[result.failed.index.isin(labels[:_ERROR_ROWS_SHOWN])]
        parts.append(
            f"<details open><summary><b>{html.escape(str(rule))}</b> in "
            f"<code>{html.escape(str(field))}</code>: {len(labels):,} row(s), e.g. "
            f"{html.escape(str(group['message'].iloc[0]))}</summary>"
            + rows.head(_ERROR_ROWS_SHOWN).to_html(escape=True) + "</details>"
        )
    return "".join(parts)


def _plan_html(result: SendResult) -> str:
    plan = result.plan
    c = result.counts
    if plan is None:
        return "<p>nothing to send</p>"
    cells = {
        "route": f"/v1/{plan.route}",
        "requests": f"{plan.requests:,}",
        "events": f"{plan.events:,}",
        "bytes": f"{plan.bytes:,}",
        "estimated duration": f"about {plan.estimated_s:,.1f} s at the ceiling",
        "invalid rows": f"{c['invalid']:,}",
    }
    body = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in cells.items())
    return f"<table class='mm-backfill-plan'>{body}</table>"

