"""The live send panel: one send's progress events drawn with ipywidgets.

:class:`SendPanel` is the display of ``progress=True`` inside Jupyter (see
:func:`millimetric_nb.ui.choose_display`). It is also meant to be embedded, e.g. by
``ui.backfill_panel``. Its API, which stays stable:

.. code-block:: python

    panel = SendPanel(route="batch", limit=None, dry_run=False, journal=None, title=None)
    panel.widget              # the ipywidgets.VBox (class "mm-panel"): display or embed it
    panel(event)              # an observer: pass ``panel`` as ``observer=`` / ``progress=``
    panel.set_cancel(fn)      # show Cancel ("mm-panel-cancel"); a click calls fn() once,
                              # e.g. ``handle.cancel`` of a background send, or
                              # ``stop.request`` of a :class:`~millimetric_nb.engine.StopSignal`
                              # passed to ``abackfill(..., stop=stop)``
    panel.set_cancel(None)    # no button: says how to stop (the kernel's interrupt)
    panel.set_result(result)  # the final account (done for you: the engine's Done event
                              # carries the SendResult)
    panel.result, panel.failed  # the SendResult, and its rows that did not get in
    panel.show()              # display(panel.widget)

One panel shows one send: make a new one for each. Passed as ``progress=`` to a
send, it learns the send's ``dry_run`` and ``journal`` and gets its Cancel wired
(for an awaited or ``background=True`` send), or the interrupt line (a blocking one).

Every part has a CSS class (``add_class``), for people and tests: ``mm-panel`` (the
box), ``mm-panel-title``, ``mm-panel-bar`` (rows done of rows total),
``mm-panel-counts`` (sent, failed, invalid, skipped, retried, ambiguous, and after
a Cancel or an interrupt ``not sent``: the rows the stop kept back, which the bar
does not count as done, so it stops where the send stopped),
``mm-panel-rate`` (events/s against the route's ceiling), ``mm-panel-eta``
(elapsed and ETA), ``mm-panel-state`` (sending / waiting on the rate limit or a
Retry-After / stopping), ``mm-panel-hint`` (how to stop), ``mm-panel-cancel`` (the
Cancel button), ``mm-panel-summary`` (one line at the end; also
``mm-panel-summary-bad`` in red when anything failed or is ambiguous, else
``mm-panel-summary-ok``) and ``mm-panel-failed`` (the first rows that did not get in).

The ETA comes from the plan and the route's token bucket (burst, then refill;
:func:`~millimetric_nb.ratelimit.estimate_seconds`), never from the rate so far,
which a burst inflates. The widgets are redrawn at most ten times a second (the
counting itself is a few additions per event), so a million-row send is not slowed.
``ipywidgets`` is imported when a panel is made.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import contract
from ..contract import RateLimit
from ..progress import (
    Acknowledged,
    Done,
    Failed,
    Planned,
    ProgressEvent,
    RequestSent,
    Retrying,
    Stopping,
    Waiting,
)
from ..ratelimit import ROUND_TRIP_S, estimate_seconds
from ..results import STOP_CODES, SendResult, account_line, kept_back, stopped_by

#: The fastest the widgets are redrawn (seconds between two draws).
REDRAW_S = 0.1
#: The window of the "current rate" (seconds).
RATE_WINDOW_S = 2.0
#: How to stop a send that blocks its cell (no widget click gets through then).
INTERRUPT_HINT = (
    "To stop: interrupt the kernel (the ■ button, or I, I). The requests in flight are "
    "awaited and the account is kept; a second interrupt stops at once."
)
_REASONS = {"rate_limit": "rate limit", "retry_after": "Retry-After"}
#: Failed codes of rows whose request never left (or was answered already): a stop's,
#: a chunk that could not be prepared.
_NEVER_LEFT = (*STOP_CODES, "prepare_failed")
_COUNTS = ("sent", "failed", "invalid", "skipped", "retried", "ambiguous")
#: The rows that got an answer (or need none): what the bar counts. Rows a stop kept
#: back (``not_sent``) and retries are not among them.
_ANSWERED = ("sent", "failed", "ambiguous", "invalid", "skipped")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class SendPanel:
    """A live ipywidgets panel for one send; an observer of its progress events.

    Args:
        route: the route the send uses (``"batch"``, ``"track"``...): its rate
            limit sets the ceiling shown and the ETA.
        limit: the rate limit the client applies to the route (default: the
            contract's production limit for it; pass the client's own, e.g.
            ``millimetric_nb.engine.route_limit(client, "batch")``).
        dry_run: a dry run: the bar counts planned rows, and the end shows the plan.
        journal: the run's journal path (for the resume line of a stopped send).
        title: the heading (default ``"/v1/<route>"``).
    """

    def __init__(
        self,
        route: str = "batch",
        *,
        limit: RateLimit | None = None,
        dry_run: bool = False,
        journal: Any = None,
        title: str | None = None,
    ) -> None:
        import ipywidgets as w

        self.route = route
        self.limit = limit if limit is not None else contract.RATE_LIMITS.get(route)
        self.dry_run = dry_run
        self.journal = journal
        self.result: SendResult | None = None
        self.counts: dict[str, int] = dict.fromkeys(_COUNTS, 0)
        self.counts["possible_duplicates"] = 0
        self.counts["not_sent"] = 0  # rows a stop on request kept back (never left)
        self.total: int | None = None
        self.planned_rows = 0
        self.requests_planned = 0
        self.requests_started = 0
        self.in_flight = 0
        self.stopping: str | None = None
        self.finished = False
        self._started: float | None = None
        self._tokens = float(self.limit.burst) if self.limit is not None else 0.0
        self._tokens_at = time.monotonic()
        self._sent_at: deque[float] = deque()
        self._round_trip = ROUND_TRIP_S
        self._acks: deque[tuple[float, int]] = deque()
        self._wait_until = 0.0
        self._wait_text = ""
        self._last_draw = 0.0
        self._trailing: Any = None
        self._cancel: Callable[[], Any] | None = None

        def part(widget: Any, cls: str) -> Any:
            widget.add_class(cls)
            return widget

        self.title = part(w.HTML(f"<b>{html.escape(title or f'/v1/{route}')}</b>"),
                          "mm-panel-title")
        self.bar = part(
            w.IntProgress(value=0, min=0, max=1, description="0%", bar_style="info",
                          layout=w.Layout(width="100%")),
            "mm-panel-bar",
        )
        self.counts_html = part(w.HTML(), "mm-panel-counts")
        self.rate_html = part(w.HTML(), "mm-panel-rate")
        self.eta_html = part(w.HTML(), "mm-panel-eta")
        self.state_html = part(w.HTML("starting"), "mm-panel-state")
        self.hint_html = part(w.HTML(), "mm-panel-hint")
        self.cancel_button = part(
            w.Button(description="Cancel", icon="stop", button_style="warning",
                     tooltip="Stop after the requests in flight; the account is kept",
                     layout=w.Layout(display="none")),
            "mm-panel-cancel",
        )
        self.cancel_button.on_click(self._on_cancel)
        self.summary_html = part(w.HTML(), "mm-panel-summary")
        self.failed_html = part(w.HTML(), "mm-panel-failed")
        self.widget = part(
            w.VBox([
                self.title,
                self.bar,
                self.counts_html,
                w.HBox([self.rate_html, self.eta_html]),
                w.HBox([self.state_html, self.cancel_button]),
                self.hint_html,
                self.summary_html,
                self.failed_html,
            ]),
            "mm-panel",
        )
        self._draw()
        self._last_draw = 0.0  # the first event is drawn at once

    # ------------------------------------------------------------------ public API

    def show(self) -> SendPanel:
        """Display the panel in the notebook (``IPython.display.display``)."""
        from IPython.display import display

        display(self.widget)
        return self

    def set_cancel(self, cancel: Callable[[], Any] | None) -> None:
        """Show a Cancel button calling ``cancel()`` once when clicked (``None``: no
        button, and a line saying how to stop with the kernel's interrupt instead).

        The click is handled only while the cell awaits or the kernel is idle: give a
        callback only for a send that runs as a task or is awaited.
        """
        self._cancel = cancel
        if cancel is not None and not self.finished:
            self.cancel_button.layout.display = None
            self.cancel_button.disabled = False
            self.hint_html.value = ""
        else:
            self.cancel_button.layout.display = "none"
            self.hint_html.value = "" if self.finished else f"<small>{INTERRUPT_HINT}</small>"

    def cancel(self) -> None:
        """What a click on Cancel does: ask the send to stop (once)."""
        self._on_cancel(None)

    @property
    def failed(self) -> Any:
        """The rows that did not get in (``result.failed``), once the send ended."""
        return self.result.failed if self.result is not None else None

    def set_result(self, result: SendResult) -> None:
        """Show the final account: the bar at its end, one summary line (red when any
        row failed or is ambiguous), and the first rows that did not get in."""
        self.result = result
        self.finished = True
        c = result.counts
        for k in ("sent", "failed", "invalid", "skipped", "ambiguous", "possible_duplicates"):
            self.counts[k] = c[k]
        never, unchecked = kept_back(result)
        self.counts["not_sent"] = never + unchecked
        self.counts["failed"] -= never + unchecked  # "failed" is for real errors
        self.total = c["total"]
        self.stopping = self.stopping or stopped_by(result)
        self._draw()
        line = account_line(result, self.journal)
        if result.dry_run and result.plan is not None:
            line += f". Plan: {result.plan}"
        elif result.error is not None and stopped_by(result) is None:
            line += f". STOPPED: {result.error}"
        bad = c["failed"] + c["ambiguous"] > 0 or (
            result.error is not None and stopped_by(result) is None
        )
        self.summary_html.remove_class("mm-panel-summary-bad" if not bad else "mm-panel-summary-ok")
        self.summary_html.add_class("mm-panel-summary-bad" if bad else "mm-panel-summary-ok")
        colour = "#b00020" if bad else "#1b5e20"
        self.summary_html.value = (
            f"<span style='color:{colour};font-weight:bold'>{html.escape(line)}</span>"
        )
        how = stopped_by(result)
        real = self.counts["failed"] + c["ambiguous"] > 0
        self.bar.bar_style = (
            "danger" if real or (bad and how is None) else "warning" if how else "success"
        )
        if how is not None:
            self.state_html.value = html.escape(
                f"{how.capitalize()}: {self.counts['not_sent']:,} row(s) not sent "
                f"(stopped at {self.bar.description}); see the account below"
            )
        else:
            self.state_html.value = "stopped" if self.stopping else "done"
        self.set_cancel(None)
        self.failed_html.value = _failed_table(result)

    # ------------------------------------------------------------------ the observer

    def __call__(self, event: ProgressEvent) -> None:
        """Count one progress event; redraw at most every ``REDRAW_S`` seconds."""
        now = time.monotonic()
        if self._started is None:
            self._started = now
        force = False
        if isinstance(event, Planned):
            self.planned_rows += event.rows
            self.requests_planned += event.requests
            self.total = event.total_rows if event.total_rows is not None else self.planned_rows
            self.counts["invalid"] += event.invalid
            self.counts["skipped"] += event.skipped
        elif isinstance(event, RequestSent):
            self._take_token(now)
            self._sent_at.append(now)
            self.in_flight += 1
            if event.attempt == 1:
                self.requests_started += 1
            elif event.attempt == 2:
                self.counts["retried"] += event.events
            self._wait_until = 0.0
        elif isinstance(event, Acknowledged):
            self._answered(now)
            self.counts["sent"] += event.events
            if event.ambiguous:
                self.counts["possible_duplicates"] += event.events
            self._acks.append((now, event.events))
        elif isinstance(event, Failed):
            if event.code not in _NEVER_LEFT:  # else rows a stop or a bug kept back
                self._answered(now)
            if event.code in STOP_CODES and not event.ambiguous:
                self.counts["not_sent"] += event.events  # kept back by the stop
            else:
                self.counts["ambiguous" if event.ambiguous else "failed"] += event.events
        elif isinstance(event, Retrying):
            self._answered(now)
        elif isinstance(event, Waiting):
            self._wait_until = now + event.seconds
            reason = _REASONS.get(event.reason, event.reason)
            self._wait_text = f"waiting {event.seconds:.1f} s: {reason}"
        elif isinstance(event, Stopping):
            self.stopping = event.reason
            self.in_flight = event.in_flight
            self.cancel_button.disabled = True
            self.cancel_button.description = "Stopping…"
            force = True
        elif isinstance(event, Done):
            self.finished = True
            if event.result is not None:
                self.set_result(event.result)
                return
            self.summary_html.value = html.escape(
                "Stopped at once: the rows acknowledged so far are stored (and in the "
                "journal, if the run had one); the others have no account"
            )
            self.summary_html.add_class("mm-panel-summary-bad")
            self.set_cancel(None)
            force = True
        if force or now - self._last_draw >= REDRAW_S:
            self._draw(now)
        else:
            self._later()

    # ------------------------------------------------------------------ internals

    def _on_cancel(self, _button: Any) -> None:
        fn, self._cancel = self._cancel, None
        self.cancel_button.disabled = True
        self.cancel_button.description = "Stopping…"
        if fn is not None:
            fn()

    def _take_token(self, now: float) -> None:
        if self.limit is None:
            return
        self._tokens = min(float(self.limit.burst),
                           self._tokens + (now - self._tokens_at) * self.limit.refill)
        self._tokens = max(0.0, self._tokens - 1.0)
        self._tokens_at = now

    def _answered(self, now: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self._sent_at:
            sample = now - self._sent_at.popleft()
            self._round_trip = 0.8 * self._round_trip + 0.2 * sample

    def _later(self) -> None:
        """Make sure the last events get drawn even if no other event follows."""
        if self._trailing is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._trailing = loop.call_later(REDRAW_S, self._draw_trailing)

    def _draw_trailing(self) -> None:
        self._trailing = None
        if not self.finished:
            self._draw()

    def requests_left(self) -> int:
        """Requests not yet started (the plan's, and an estimate for rows not planned yet)."""
        if self.stopping or self.dry_run:
            return 0
        planned = self.requests_planned
        if self.total is not None and self.planned_rows and self.total > self.planned_rows:
            per_row = self.requests_planned / self.planned_rows
            planned += round((self.total - self.planned_rows) * per_row)
        return max(0, planned - self.requests_started)

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left at the route's bucket pace (None before anything is planned)."""
        if not self.requests_planned and not self.requests_started:
            return None
        now = time.monotonic() if now is None else now
        tokens = None
        if self.limit is not None:
            tokens = min(float(self.limit.burst),
                         self._tokens + (now - self._tokens_at) * self.limit.refill)
        left = self.requests_left()
        if left:
            return estimate_seconds(left, self.limit, tokens_available=tokens,
                                    round_trip_s=self._round_trip)
        return self._round_trip if self.in_flight else 0.0

    def _draw(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._last_draw = now
        c = self.counts
        done = sum(c[k] for k in _ANSWERED)  # not the rows a stop kept back
        if self.dry_run:
            done = self.planned_rows
        total = self.total if self.total is not None else max(done, self.planned_rows)
        self.bar.max = max(1, total)
        self.bar.value = min(done, self.bar.max)
        self.bar.description = f"{100 * done / total:.0f}%" if total else "0%"
        shown = [f"{k} {c[k]:,}" for k in _COUNTS]
        if c["not_sent"]:
            shown.append(f"not sent {c['not_sent']:,}")
        if c["possible_duplicates"]:
            shown.append(f"possible duplicates {c['possible_duplicates']:,}")
        self.counts_html.value = (
            f"{done:,} / {total:,} rows &nbsp;·&nbsp; " + " &nbsp;·&nbsp; ".join(shown)
        )
        elapsed = now - self._started if self._started is not None else 0.0
        if self.dry_run:
            self.rate_html.value = "dry run: nothing is sent"
            self.eta_html.value = f"elapsed {_duration(elapsed)}"
        else:
            self.rate_html.value = self._rate_text(now)
            eta = None if self.finished else self.eta_seconds(now)
            tail = f" &nbsp;·&nbsp; ETA {_duration(eta)}" if eta is not None else ""
            self.eta_html.value = f"elapsed {_duration(elapsed)}{tail}"
        if not self.finished:
            self.state_html.value = html.escape(self._state_text(now))

    def _rate_text(self, now: float) -> str:
        while self._acks and self._acks[0][0] < now - RATE_WINDOW_S:
            self._acks.popleft()
        span = min(RATE_WINDOW_S, now - self._started) if self._started is not None else 0.0
        rate = sum(n for _, n in self._acks) / span if span > 0.05 else 0.0
        text = f"{rate:,.0f} events/s"
        if self.limit is not None:
            per_request = contract.BATCH_MAX_EVENTS if self.route == "batch" else 1
            text += f" of {self.limit.refill * per_request:,.0f} events/s ceiling"
        return text

    def _state_text(self, now: float) -> str:
        if self.stopping:
            how = "Cancel" if self.stopping == "cancel" else "interrupt"
            text = (f"stopping ({how}): nothing new is sent; waiting for "
                    f"{self.in_flight} request(s) in flight")
            if self.stopping == "interrupt":
                text += "; interrupt again to stop at once"
            return text
        if self.dry_run:
            return "planning (dry run)"
        if now < self._wait_until:
            return self._wait_text
        return "sending" if self.requests_started else "preparing"


def _failed_table(result: SendResult, head: int = 10) -> str:
    """The first rows that did not get in, and where all of them are."""
    rows = result.rows
    bad = rows[rows["status"].isin(["failed", "ambiguous", "invalid"])]
    if not len(bad):
        return ""
    table = bad.head(head)[["status", "error", "message"]].to_html(escape=True, border=0)
    return (
        f"<details><summary>{len(bad):,} row(s) did not get in: <code>panel.failed</code> "
        f"(= <code>result.failed</code>) holds them with their columns, ready to fix and "
        f"resend</summary>{table}</details>"
    )


__all__ = ["INTERRUPT_HINT", "REDRAW_S", "SendPanel"]
