"""The live send panel: driven by real sends over loopback, its widgets checked; the ETA
from the token bucket; the dry run's plan; which display ``progress=`` picks; and, in a
real kernel, Cancel clicked while an awaited send runs and an interrupt reduced to its
one-line account.
"""

from __future__ import annotations

import io
import queue
import re
import time

import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb.contract import RATE_LIMITS, RateLimit
from millimetric_nb.errors import ConfigurationError
from millimetric_nb.progress import (
    Acknowledged,
    Failed,
    Planned,
    RequestSent,
    Stopping,
    Waiting,
)
from millimetric_nb.ratelimit import ROUND_TRIP_S, estimate_seconds
from millimetric_nb.ui import PROGRESS_ENV, TqdmProgress, choose_display, display_kind

pytest.importorskip("ipywidgets")
from millimetric_nb.ui.panel import SendPanel

BATCH = RATE_LIMITS["batch"]


def _frame(n: int, bad: int = 0) -> pd.DataFrame:
    events = ["page_view"] * n
    for i in range(bad):
        events[i * 7] = ""  # an empty event name: invalid
    return pd.DataFrame({
        "event": events,
        "user_id": [f"u{i}" for i in range(n)],
        "timestamp": ["2026-01-01T00:00:00Z"] * n,
    })


# --------------------------------------------------------------------------- the ETA


def test_estimate_seconds_follows_the_bucket_not_the_rate_so_far():
    assert estimate_seconds(0, BATCH) == 0.0
    # the burst: one round trip, never 0 s
    assert estimate_seconds(20, BATCH) == pytest.approx(ROUND_TRIP_S)
    assert estimate_seconds(1, BATCH, round_trip_s=0.2) == pytest.approx(0.2)
    # 100 requests from a full bucket: 80 at 5/s after the burst
    assert estimate_seconds(100, BATCH) == pytest.approx(16.0 + ROUND_TRIP_S)
    # an empty bucket: every request waits for its token
    assert estimate_seconds(75, BATCH, tokens_available=0) == pytest.approx(15.0 + ROUND_TRIP_S)
    assert estimate_seconds(5, BATCH, tokens_available=2.5, round_trip_s=0) == pytest.approx(0.5)
    # more tokens than the burst cannot be held
    assert estimate_seconds(30, BATCH, tokens_available=99, round_trip_s=0) == pytest.approx(2.0)
    # unlimited: only the round trips, in waves of `concurrency`
    assert estimate_seconds(40, None, round_trip_s=1.0, concurrency=20) == pytest.approx(2.0)
    assert estimate_seconds(200, RateLimit(50.0, 200), round_trip_s=0.1) == pytest.approx(0.1)


def test_panel_eta_at_a_quarter_of_100_000_rows_is_the_buckets_not_the_bursts():
    # the case a new user met: at 25% of 100,000 rows the rate so far promised 6 s
    # where 15 remained; the panel's ETA is the bucket's: 75 requests at 5/s
    panel = SendPanel("batch")
    panel(Planned(25_000, 25_000, 0, requests=25, total_rows=100_000))
    for _ in range(25):
        panel(RequestSent("batch", 1000, 125_000))
        panel(Acknowledged("batch", 1000))
    eta = panel.eta_seconds()
    assert eta is not None and 14.5 < eta < 16.5
    assert panel.requests_left() == 75
    naive = 75_000 / (25_000 / 1.0)  # the rate so far, had the burst taken a second
    assert eta > 4 * naive


def test_panel_shows_the_waiting_state_and_throttles_redraws():
    panel = SendPanel("batch")
    panel(Planned(1000, 1000, 0, requests=1, total_rows=1000))
    panel(Waiting("batch", 1.0, "rate_limit"))
    panel._draw()
    assert panel.state_html.value == "waiting 1.0 s: rate limit"
    panel(Waiting("batch", 30.0, "retry_after"))
    panel._draw()
    assert panel.state_html.value == "waiting 30.0 s: Retry-After"
    panel(RequestSent("batch", 1000, 10))  # it left: no longer waiting
    panel._draw()
    assert panel.state_html.value == "sending"
    # a thousand events in a burst redraw the widgets at most a few times
    draws = 0
    real = panel._draw

    def counting(now=None):
        nonlocal draws
        draws += 1
        real(now)

    panel._draw = counting  # type: ignore[method-assign]
    for _ in range(1000):
        panel(Acknowledged("batch", 1))
    assert draws <= 3 and panel.counts["sent"] == 1000


def test_stopping_state_counts_the_requests_still_on_the_wire():
    panel = SendPanel("batch")
    panel.set_cancel(lambda: None)
    panel(Planned(10_000, 10_000, 0, requests=10, total_rows=10_000))
    for _ in range(5):
        panel(RequestSent("batch", 1000, 10))
    panel(Acknowledged("batch", 1000))
    panel(Stopping("batch", "interrupt", in_flight=4))
    assert panel.cancel_button.disabled
    panel(Failed("batch", 5000, "interrupted", "not sent"))  # kept back: not answers
    panel._draw()
    assert panel.counts["not_sent"] == 5000 and panel.counts["failed"] == 0
    assert panel.bar.value == 1000 and panel.bar.max == 10_000  # 10%, not 60%
    assert "not sent 5,000" in panel.counts_html.value
    assert "failed 0" in panel.counts_html.value
    assert panel.state_html.value == (
        "stopping (interrupt): nothing new is sent; waiting for 4 request(s) in flight; "
        "interrupt again to stop at once")
    assert panel.requests_left() == 0 and panel.eta_seconds() == pytest.approx(
        panel._round_trip)
    panel(Acknowledged("batch", 1000))
    panel._draw()
    assert "waiting for 3 request(s)" in panel.state_html.value


# --------------------------------------------------------------------------- real sends


def test_panel_follows_a_real_send_to_its_account(mm_server_factory):
    srv = mm_server_factory(limits="x10")
    n = 30_000
    panel = SendPanel("batch", limit=BATCH.scaled(10))
    widths: list[int] = []

    def watch(event: object) -> None:
        if isinstance(event, Acknowledged):
            widths.append(panel.bar.value)

    with mm.Client(key=srv.keys["sk"], host=srv.url,
                   rate_limits={"batch": BATCH.scaled(10)}) as client:
        res = _frame(n, bad=10).millimetric.send_batch(client=client, progress=panel,
                                                       observer=watch)
    assert res.sent == n - 10 and res.invalid == 10 and srv.count() == res.sent
    assert panel.result is res
    assert panel.bar.value == panel.bar.max == n
    assert len(set(widths)) > 3  # the bar moved on the way
    text = panel.counts_html.value
    assert f"{n:,} / {n:,} rows" in text and f"sent {n - 10:,}" in text
    assert "invalid 10" in text and "failed 0" in text and "ambiguous 0" in text
    assert "of 50,000 events/s ceiling" in panel.rate_html.value
    assert "mm-panel-summary-ok" in panel.summary_html._dom_classes
    assert "mm-panel-summary-bad" not in panel.summary_html._dom_classes
    assert "sent 29,990" in panel.summary_html.value
    assert panel.failed is res.failed and len(panel.failed) == 10
    assert "10 row(s) did not get in" in panel.failed_html.value
    classes = {c for w in _walk(panel.widget) for c in w._dom_classes}
    assert {"mm-panel", "mm-panel-bar", "mm-panel-counts", "mm-panel-rate", "mm-panel-eta",
            "mm-panel-state", "mm-panel-summary", "mm-panel-cancel"} <= classes
    # a blocking send: no dead Cancel button, but how to stop it
    assert panel.cancel_button.layout.display == "none"


def test_summary_is_red_when_rows_failed(mm_server):
    mm_server.inject("batch", "internal_error", 3)  # answered before writing
    panel = SendPanel("batch")
    with mm.Client(key=mm_server.keys["sk"], host=mm_server.url, max_attempts=1,
                   rate_limits="off") as client:
        res = _frame(3000).millimetric.send_batch(client=client, progress=panel,
                                                  concurrency=1)
    assert res.counts["sent"] == 0 and mm_server.count() == 0
    assert res.counts["ambiguous"] + res.counts["failed"] == 3000
    assert "mm-panel-summary-bad" in panel.summary_html._dom_classes
    assert "color:#b00020" in panel.summary_html.value
    assert panel.bar.bar_style == "danger"
    assert len(panel.failed) == 3000


def test_a_dry_run_shows_its_plan_not_a_stalled_bar(mm_server):
    n = 20_000
    panel = SendPanel("batch")  # an embedded panel learns the dry run from the send
    res = mm.backfill(_frame(n), dry_run=True, progress=panel)
    assert panel.dry_run
    assert res.plan.requests == 20
    assert panel.bar.value == panel.bar.max == n  # planning is the progress
    assert "ETA" not in panel.eta_html.value and "dry run" in panel.rate_html.value
    summary = panel.summary_html.value
    assert "Plan: 20 request(s) to /v1/batch" in summary and "about 0.5 s" in summary
    assert "about 0.0 s" not in summary
    # the text bar of a dry run also reaches its end
    out = io.StringIO()
    bar = TqdmProgress("/v1/batch", file=out, dry_run=True)
    mm.backfill(_frame(n), dry_run=True, progress=bar)
    assert bar.done == bar.total == n and f"{n}/{n}" in out.getvalue()


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


# --------------------------------------------------------------------------- choosing


def test_one_function_picks_the_display(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert choose_display(False) is None
    assert isinstance(choose_display("text"), TqdmProgress)
    assert isinstance(choose_display("widget"), SendPanel)
    assert isinstance(choose_display(True), TqdmProgress)  # not in a kernel here
    seen = []
    assert choose_display(seen.append) == seen.append
    monkeypatch.setenv(PROGRESS_ENV, "widget")
    assert isinstance(choose_display(True), SendPanel)
    assert isinstance(choose_display("text"), TqdmProgress)  # the argument wins
    monkeypatch.setenv(PROGRESS_ENV, "none")
    assert choose_display(True) is None
    monkeypatch.setenv(PROGRESS_ENV, "fancy")
    with pytest.raises(ConfigurationError, match="MILLIMETRIC_PROGRESS must be one of"):
        display_kind(True)
    with pytest.raises(ConfigurationError, match="progress must be True, False, a callable"):
        display_kind("bars")


# --------------------------------------------------------------------------- in a kernel

jupyter_client = pytest.importorskip("jupyter_client")


def _kernel():
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    return km, kc


def _run(kc, code: str, on_msg=None, timeout: float = 120.0) -> list[dict]:
    """Execute ``code``; every iopub message of it until idle (``on_msg`` sees each)."""
    msg_id = kc.execute(code)
    msgs: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            if on_msg is not None:
                on_msg(None)
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        if on_msg is not None:
            on_msg(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return msgs
    raise AssertionError(f"the cell did not end: {msgs[-5:]}")


def _stdout(msgs: list[dict]) -> str:
    return "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")


class _CancelClicker:
    """Finds the panel's Cancel button in the kernel's widget messages and clicks it, as
    the browser does (a comm message), once the server holds ``threshold`` rows."""

    def __init__(self, kc, srv, threshold: int) -> None:
        self.kc, self.srv, self.threshold = kc, srv, threshold
        self.button: str | None = None
        self.clicked = False

    def see(self, msg) -> None:
        if msg is not None and msg["msg_type"] in ("comm_open", "comm_msg"):
            state = msg["content"]["data"].get("state", {})  # the class is an update
            if "mm-panel-cancel" in state.get("_dom_classes", []):
                self.button = msg["content"]["comm_id"]
        if self.button and not self.clicked and self.srv.count() >= self.threshold:
            self.clicked = True
            self.kc.shell_channel.send(self.kc.session.msg("comm_msg", {
                "comm_id": self.button,
                "data": {"method": "custom", "content": {"event": "click"}},
            }))


_SETUP = """
import pandas as pd, millimetric_nb as mm
n = {n}
df = pd.DataFrame({{"event": ["page_view"] * n, "user_id": [f"u{{i}}" for i in range(n)],
                   "timestamp": ["2026-01-01T00:00:00Z"] * n}})
client = mm.Client(key={key!r}, host={url!r})
"""


def test_in_a_kernel_cancel_works_while_the_cell_awaits_and_an_interrupt_is_one_line(
    mm_server_factory,
):
    srv = mm_server_factory(limits="production")
    n = 100_000
    km, kc = _kernel()
    try:
        _run(kc, _SETUP.format(n=n, key=srv.keys["sk"], url=srv.url))

        # 1. the panel's Cancel, clicked (as the browser sends it) while the cell awaits
        cancel = _CancelClicker(kc, srv, srv.count() + 22_000)
        msgs = _run(kc, "res = await df.millimetric.asend_batch(client=client)\n"
                        "print('ACCOUNT', res.error.code, res.counts['sent'], "
                        "res.counts['failed'], res.counts['ambiguous'])",
                    on_msg=cancel.see)
        m = re.search(r"ACCOUNT cancelled (\d+) (\d+) (\d+)", _stdout(msgs))
        assert cancel.clicked and m, _stdout(msgs)
        sent, failed, ambiguous = map(int, m.groups())
        assert sent + failed == n and ambiguous == 0 and 20_000 <= sent < n
        time.sleep(1.0)
        assert srv.count() == sent  # nothing after the cancel settled

        # 2. background=True: the cell returns a handle at once; Cancel, clicked while the
        # kernel is idle, stops the task; .result() gives the account
        before = srv.count()
        cancel = _CancelClicker(kc, srv, before + 22_000)
        msgs = _run(kc, "h = df.millimetric.send_batch(client=client, background=True)\n"
                        "print('HANDLE', h.done())", on_msg=cancel.see)
        assert "HANDLE False" in _stdout(msgs)
        deadline = time.monotonic() + 60
        while not cancel.clicked and time.monotonic() < deadline:
            cancel.see(None)
            time.sleep(0.02)
        assert cancel.clicked
        msgs = _run(kc, "r = h.result()\nprint('HANDLED', r.error.code, r.counts['sent'], "
                        "r.counts['ambiguous'])")
        m = re.search(r"HANDLED cancelled (\d+) (\d+)", _stdout(msgs))
        assert m, _stdout(msgs)
        time.sleep(1.0)
        assert int(m.group(2)) == 0 and srv.count() == before + int(m.group(1)) < before + n

        # 3. a blocking send, interrupted once: the account in one line, no traceback
        before = srv.count()
        interrupted = False

        def interrupt_past_the_burst(msg) -> None:
            nonlocal interrupted
            if not interrupted and srv.count() >= before + 22_000:
                interrupted = True
                km.interrupt_kernel()

        msgs = _run(kc, "df.millimetric.send_batch(client=client)",
                    on_msg=interrupt_past_the_burst)
        errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
        assert interrupted and len(errors) == 1, msgs[-3:]
        err = errors[0]
        assert err["ename"] == "SendInterrupted"
        assert len(err["traceback"]) <= 2, err["traceback"]  # not ~96 lines
        line = err["traceback"][0]
        assert re.search(r"Interrupted after [\d.]+ s: [\d,]+ rows stored, 0 cut off in "
                         r"flight \(may be stored\), [\d,]+ never sent(, [\d,]+ not yet checked or "
                         r"sent)?; to resume", line), line
        # the kernel lives on, and the account is on the exception
        msgs = _run(kc, "import sys; r = sys.last_value.result\n"
                        "print('AFTER', r.counts['sent'], r.counts['ambiguous'])")
        m = re.search(r"AFTER (\d+) (\d+)", _stdout(msgs))
        assert m, _stdout(msgs)
        time.sleep(1.0)
        assert int(m.group(2)) == 0 and srv.count() == before + int(m.group(1))

        # 4. an awaited send, interrupted once: drained too, the result returned (an
        # exception raised inside the kernel's loop would escape it)
        before = srv.count()
        interrupted = False
        msgs = _run(kc, "res = await df.millimetric.asend_batch(client=client)\n"
                        "print('AWAITED', res.error.code, res.counts['sent'], "
                        "res.counts['ambiguous'])", on_msg=interrupt_past_the_burst)
        m = re.search(r"AWAITED interrupted (\d+) (\d+)", _stdout(msgs))
        assert interrupted and m, msgs[-3:]
        time.sleep(1.0)
        assert int(m.group(2)) == 0 and srv.count() == before + int(m.group(1)) < before + n
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
