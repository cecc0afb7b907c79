"""``notebooks/03-forms.ipynb`` in JupyterLab, driven in Chromium like a person would.

Opens the notebook, runs every cell, types into the track form and clicks Send until
the answer shows the event_id the server stored; then starts a backfill of the
60,000-row sample from the backfill panel against the notebook's own server under
the production limits (the batch route's burst, then 5,000 events/s: the send takes
several seconds), watches the live bar move, clicks Cancel while it runs and reads
the panel's final account. Screenshots of each step go to ``artifacts/browser/``.

Every wait is on something the page shows (a sentinel), never a fixed sleep.
"""

from __future__ import annotations

import json
import re

NOTEBOOK = "03-forms.ipynb"
ROWS = 60_000  # the notebook's backfill sample: generate_sample(events=60_000, ...)
EVENT_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")

# Records every width the live panel's bar takes (a MutationObserver misses none,
# where polling could), so the test can wait until it has seen the bar move.
WATCH_BAR = """() => {
    window.__mmWidths = [];
    const seen = (el) => {
        if (el.matches && el.matches('.mm-backfill .mm-panel-bar .progress-bar')) {
            window.__mmWidths.push(parseFloat(el.style.width));
        }
    };
    new MutationObserver((records) => {
        for (const r of records) {
            if (r.type === 'attributes') seen(r.target);
            for (const n of r.addedNodes || []) {
                if (n.querySelectorAll) n.querySelectorAll('.progress-bar').forEach(seen);
            }
        }
    }).observe(document.body, {subtree: true, childList: true, attributes: true,
                               attributeFilter: ['style']});
}"""
ACCOUNT = re.compile(
    r"([\d,]+) (rows stored|cut off in flight \(may be stored\)|never sent"
    r"|not yet checked or sent|failed|invalid|skipped)"
)
MOVING = """(n) => new Set(window.__mmWidths.filter(w => w > 0 && w < 100)).size >= n"""


def test_forms_and_a_cancelled_backfill_in_jupyterlab(lab, page, shot):
    panel = lab.open_notebook(page, NOTEBOOK)
    lab.run_all(page)
    # the last cell's output: every cell above it ran, the background send included
    line = panel.get_by_text(re.compile(r"background send: sent=\d+ of \d+ rows"))
    line.wait_for(timeout=120_000)
    lab.wait_idle(page)
    assert lab.cell_errors(page) == []
    shot(page, "1-after-run-all")
    # the background send's panel (the only one so far) was drawn live to its end
    rows = int(re.search(r"of (\d+) rows", line.inner_text()).group(1))
    (background,) = panel.locator(".mm-panel").all()
    assert background.locator(".mm-panel-bar .progress-bar").evaluate(
        "el => el.style.width"
    ) == "100%"
    assert f"{rows:,}" in background.locator(".mm-panel-summary").inner_text()
    shot(background, "background-send")
    shot(panel.locator(".mm-connect"), "form-connect")

    # --- track one event, typed like a person would
    track = panel.locator(".mm-track")
    track.locator(".mm-track-event input").fill("browser_signup")
    track.locator(".mm-track-anonymous_id input").fill("anon-browser-1")
    track.locator(".mm-track-url input").fill("https://shop.example.com/?utm_source=lab")
    track.locator(".mm-track-properties textarea").fill('{"plan": "team"}')
    send = track.locator("button.mm-track-send")
    send.click()
    answer = track.locator(".mm-track-answer")
    answer.filter(has_text=EVENT_ID).wait_for()
    (event_id,) = EVENT_ID.findall(answer.inner_text())
    shot(track, "2-track-answer")  # also the README's picture of the track form
    stored = json.loads(lab.kernel_run(page, (
        "import json; print(json.dumps([[r['event_id'], r['event_name'], r['source']] "
        "for r in server.stored_events() if r['event_name'] == 'browser_signup']))"
    )))
    assert stored == [[event_id, "browser_signup", "lab"]]

    # --- identify that visitor, then forget another user (typed twice)
    identify = panel.locator(".mm-identify")
    identify.locator(".mm-identify-anonymous_id input").fill("anon-browser-1")
    identify.locator(".mm-identify-user_id input").fill("user-browser-1")
    identify.locator(".mm-identify-traits textarea").fill('{"plan": "team"}')
    identify.locator("button.mm-identify-send").click()
    identify.locator(".mm-identify-answer", has_text="identified").wait_for()
    shot(identify, "form-identify")
    forget = panel.locator(".mm-forget")
    forget.locator(".mm-forget-user_id input").fill("user-gone-1")
    forget.locator(".mm-forget-confirm input").fill("user-gone-1")
    forget.locator("button.mm-forget-send").click()
    forget.locator(".mm-forget-answer", has_text="deleted").wait_for()
    shot(forget, "form-forget")

    # --- a backfill from the panel, under the production limits, cancelled mid-way
    limits = lab.kernel_run(page, "print(server.config.limits)").strip()
    assert limits == "production"
    backfill = panel.locator(".mm-backfill")
    shot(backfill, "form-backfill")
    page.evaluate(WATCH_BAR)
    backfill.locator("button.mm-backfill-send").click()
    bar = backfill.locator(".mm-panel-bar .progress-bar")
    bar.wait_for()
    page.wait_for_function(MOVING, arg=3, timeout=60_000)
    shot(backfill.locator(".mm-panel"), "3-mid-backfill")
    backfill.locator("button.mm-panel-cancel").click()
    summary = backfill.locator(".mm-panel-summary")
    summary.filter(has_text="Cancelled").wait_for(timeout=60_000)
    shot(backfill.locator(".mm-panel"), "4-after-cancel")

    widths = page.evaluate("() => window.__mmWidths")
    moving = sorted({w for w in widths if 0 < w < 100})
    assert len(moving) >= 3, widths
    # "Cancelled after 3.1 s: 27,000 rows stored, 0 cut off in flight (may be stored),
    # 32,996 never sent, 4 invalid; ...": every row of the frame in exactly one count
    text = summary.inner_text()
    counts = {
        what: int(n.replace(",", ""))
        for n, what in re.findall(ACCOUNT, text)
    }
    assert counts.get("never sent", 0) > 0, text  # the cancel came before the end
    assert counts.get("rows stored", 0) > 0, text
    assert sum(counts.values()) == ROWS, (counts, text)
    # the panel agrees with the account: the rows kept back are "not sent" (not
    # "failed"), and the bar stops where the send stopped, short of 100%
    live = backfill.locator(".mm-panel")
    shown = live.locator(".mm-panel-counts").inner_text()
    kept = counts["never sent"] + counts.get("not yet checked or sent", 0)
    assert f"not sent {kept:,}" in shown, shown
    assert f"failed {counts.get('failed', 0):,}" in shown, shown
    answered = ROWS - kept
    assert f"{answered:,} / {ROWS:,} rows" in shown, shown
    width = float(bar.evaluate("el => el.style.width").rstrip("%"))
    assert 0 < width < 100 and abs(width - 100 * answered / ROWS) < 0.5, width
    assert "progress-bar-danger" not in (bar.get_attribute("class") or "")  # not red
    state = live.locator(".mm-panel-state").inner_text()
    assert state.startswith(f"Cancelled: {kept:,} row(s) not sent"), state
    # the server holds what the panel says was stored of this frame, give or take
    # the requests cut off in flight
    stored_now = int(lab.kernel_run(page, (
        "ids = set(df['event_id']); "
        "print(sum(r['event_id'] in ids for r in server.stored_events()))"
    )))
    stored = counts["rows stored"]
    assert stored <= stored_now <= stored + counts.get("cut off in flight (may be stored)", 0)
