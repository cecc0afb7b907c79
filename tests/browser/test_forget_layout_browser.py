"""The forget form as drawn by JupyterLab in Chromium: nothing cut off, nothing past its box.

A small notebook written here starts the local server in its kernel and shows
``ui.forget_form()``. In the page: the Delete button's label fits it (its
``scrollWidth`` is not over its ``clientWidth``), the statement of what is deleted
wraps inside the form's box, a mismatched confirmation is said in red; then a delete
typed twice is sent, and the form comes back blank and neutral (no "does not match"
note) with the server's answer kept. The last screenshot is the README's picture of
the form (``docs/img/forget-form.png``, cropped to ``.mm-forget``).
"""

from __future__ import annotations

NOTEBOOK = "forget-layout.ipynb"
CODE = """\
import contextlib

import millimetric_nb as mm
from millimetric_nb import ui
from millimetric_nb.server import run_in_thread

stack = contextlib.ExitStack()  # holds the server (kept running until the kernel ends)
server = stack.enter_context(run_in_thread(limits='off', db=':memory:'))
client = mm.Client(server.keys['sk'], server.url)
client.track('visit', user_id='user-gone-1')
forget = ui.forget_form(client)
forget
"""

# the element's box, and whether its content is wider than it (a cut-off label)
BOX = """el => {
    const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom,
            scrollWidth: el.scrollWidth, clientWidth: el.clientWidth};
}"""


def _inside(inner: dict, outer: dict) -> bool:
    return outer["left"] <= inner["left"] and inner["right"] <= outer["right"] + 0.5


def _check_layout(form) -> None:
    box = form.evaluate(BOX)
    button = form.locator("button.mm-forget-send")
    b = button.evaluate(BOX)
    assert b["scrollWidth"] <= b["clientWidth"], b  # the whole label shows
    assert "Delete this user" in button.inner_text()
    assert _inside(b, box), (b, box)
    assert b["right"] - b["left"] < 400, b  # as wide as its label, not stretched
    statement = form.locator(".mm-forget-statement")
    s = statement.evaluate(BOX)
    text = statement.locator(".widget-html-content").evaluate(BOX)
    assert _inside(s, box) and _inside(text, box), (s, text, box)
    assert text["scrollWidth"] <= text["clientWidth"] + 1, text  # wrapped, not overflowing
    assert s["bottom"] - s["top"] > 30  # it wraps over several lines


def test_forget_form_fits_its_box_and_resets_after_a_delete(lab, page, shot):
    lab.write_notebook(NOTEBOOK, CODE, "print('ready')")

    panel = lab.open_notebook(page, NOTEBOOK)
    lab.run_all(page)
    panel.get_by_text("ready", exact=True).wait_for(timeout=60_000)
    assert lab.cell_errors(page) == []
    form = panel.locator(".mm-forget")
    _check_layout(form)

    user_id = form.locator(".mm-forget-user_id input")
    confirm = form.locator(".mm-forget-confirm input")
    user_id.fill("user-gone-1")
    confirm.fill("user-gone-")
    note = form.locator(".mm-forget-confirm-msg")
    note.filter(has_text="the confirmation does not match user_id").wait_for()
    shot(form, "mismatch")
    confirm.fill("user-gone-1")
    note.filter(has_text="does not match").wait_for(state="detached")
    form.locator("button.mm-forget-send").click()
    form.locator(".mm-forget-answer", has_text="deleted: every event of 'user-gone-1'").wait_for()
    form.locator(".mm-forget-user_id-msg", has_text="user_id is required").wait_for()

    # a fresh, neutral form: both fields blank, no mismatch note, the answer kept
    assert user_id.input_value() == "" and confirm.input_value() == ""
    assert "does not match" not in form.inner_text()
    assert form.locator("[style*='#b00020']").count() == 0  # nothing in red
    _check_layout(form)
    shot(form, "forget-form")  # the README's picture: docs/img/forget-form.png
    left = lab.kernel_run(page, "print(len(server.stored_events()))").strip()
    assert left == "0"  # the server deleted the user's event
