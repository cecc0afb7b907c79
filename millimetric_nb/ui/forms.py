"""Notebook forms: send one event, identify a user, forget a user (ipywidgets).

Each form is a :class:`Form`: display it (the last expression of a cell, or
``display(form)``); its inputs are in ``form.fields``, its buttons in
``form.buttons``, the server's answer in ``form.answer``. The forms send only
through the public faces (:class:`~millimetric_nb.sync.Client` ``track`` /
``identify`` / ``forget``, with the default client when none is given); they check
everything the package checks before a request, say what is wrong next to the
field, keep Send disabled while anything is wrong, and never raise into the
notebook: an error is shown with its code and what to do. ``ipywidgets`` is
imported when a form is built.

CSS classes (stable; the browser tests and any custom stylesheet rely on them):
every form's box has ``mm-<form>``, every input and button ``mm-<form>-<field>``,
and the note beside an input ``mm-<form>-<field>-msg``. ipywidgets puts the class
on the widget's outer element: a button is the ``<button>`` itself; a text field's
``<input>`` (a JSON editor's ``<textarea>``, a dropdown's ``<select>``) is inside
it, e.g. ``.mm-track-event input``, ``.mm-track-properties textarea``.

``track_form()`` -> ``mm-track``
    inputs ``mm-track-event``, ``mm-track-anonymous_id``, ``mm-track-user_id``,
    ``mm-track-url``, ``mm-track-referrer``, ``mm-track-timestamp``,
    ``mm-track-properties``; button ``mm-track-send``; ``mm-track-answer``;
    ``mm-track-history`` (the sends made from this form).
``identify_form()`` -> ``mm-identify``
    ``mm-identify-anonymous_id``, ``mm-identify-user_id``, ``mm-identify-traits``,
    ``mm-identify-send``, ``mm-identify-answer``, ``mm-identify-history``; the
    personal-data warning is ``mm-identify-traits-msg``.
``forget_form()`` -> ``mm-forget``
    ``mm-forget-user_id``, ``mm-forget-confirm`` (the user id typed again),
    ``mm-forget-statement`` (what is deleted), ``mm-forget-send``,
    ``mm-forget-answer``, ``mm-forget-history``.

The connect form (:mod:`millimetric_nb.ui.connect`) and the backfill panel
(:mod:`millimetric_nb.ui.backfill_form`) follow the same scheme.
"""

from __future__ import annotations

import datetime as dt
import html
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import orjson

from .. import contract
from ..errors import ConfigurationError, MillimetricError
from ..events import check_event, prepare_identify

if TYPE_CHECKING:  # the client (httpx) is imported when a form sends
    from ..client import AsyncClient
    from ..keys import Use
    from ..sync import ClientLike

__all__ = [
    "Form",
    "error_text",
    "forget_form",
    "identify_form",
    "import_widgets",
    "resolve_client",
    "track_form",
]

#: What to do after an error, by code (the codes of errors.py and the contract).
_ADVICE: dict[str, str] = {
    "validation_failed": "fix the fields named above; nothing was sent",
    "invalid_payload": "the server refused the body: fix the fields it names",
    "missing_api_key": "connect first: millimetric_nb.ui.connect_form() or mm.connect(key=...)",
    "malformed_api_key": "check the key you pasted (connect again)",
    "invalid_api_key": "the key is unknown or revoked: connect with a current key",
    "key_kind_mismatch": "the key is not of the kind its prefix says: connect with another key",
    "browser_key_refused": "connect with a server key (sk_…)",
    "insufficient_scope": "connect with a key that may do this (sk_…)",
    "forget_requires_secret_key": "connect with a server key (sk_…)",
    "rate_limited": "wait a moment and send again",
    "transport_error": "check the host and the network",
    "configuration_error": "check the connection settings (connect again)",
    "not_confirmed": "type the same user id in both fields",
}
_HISTORY_ROWS = 10


def import_widgets() -> Any:
    """``ipywidgets``, imported on first use, or a :class:`ConfigurationError` saying how
    to install it."""
    try:
        import ipywidgets
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ConfigurationError(
            "the notebook forms need ipywidgets: pip install ipywidgets",
            code="missing_dependency",
        ) from exc
    return ipywidgets


def error_text(exc: BaseException) -> str:
    """One error as a person should read it: ``[code] message``, then what to do."""
    if isinstance(exc, MillimetricError):
        text = str(exc)
        advice = _ADVICE.get(exc.code)
        if advice is None and exc.status is not None and exc.status >= 500:
            advice = "the server failed: try again later"
        if exc.ambiguous:
            advice = (advice + "; " if advice else "") + (
                "the request may have been stored although no answer came: check before "
                "sending it again"
            )
        return f"{text}\n→ {advice}" if advice else text
    if isinstance(exc, OSError):
        return f"[{type(exc).__name__}] {exc}"
    return f"[{type(exc).__name__}] {exc}"


def _html_lines(text: str, css: str = "") -> str:
    style = f" style='{css}'" if css else ""
    body = "<br>".join(html.escape(line) for line in text.splitlines())
    return f"<span{style}>{body}</span>"


_RED = "color:#b00020"
_GREEN = "color:#1b5e20"
_AMBER = "color:#8a5a00"
_GREY = "color:#616161"
#: The width of an input row's input (the notes go beside it); long texts wrap to it.
_INPUT_WIDTH = "420px"
_TEXT_WIDTH = "560px"
#: The answer to a click that got through while the form has problems.
NOT_SENT = "nothing was sent: fill in or fix the fields noted above"


class Form:
    """A displayable form: a box of inputs, buttons, notes and an answer.

    Attributes:
        name: the form's name (its CSS class is ``mm-<name>``).
        fields: input name -> widget (``.value`` to read or set).
        messages: input name -> the HTML note shown beside it.
        buttons: button name -> ``ipywidgets.Button``.
        answer: the HTML widget holding the last answer or error.
        history: one dict per send made from this form (time, what, outcome).
        widget: the ``ipywidgets.VBox`` to display.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.buttons: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._w = import_widgets()
        self.answer = self.html("answer")
        self.history_view = self.html("history")
        self.widget: Any = None
        #: The client the form sends with (``None``: the default one, at send time).
        self.client: ClientLike | None = None
        self._checker: Callable[[], bool] | None = None

    # ------------------------------------------------------------------ building

    def classed(self, widget: Any, part: str) -> Any:
        """Give ``widget`` the class ``mm-<form>-<part>``; return it."""
        widget.add_class(f"mm-{self.name}-{part}")
        return widget

    def html(self, part: str, value: str = "") -> Any:
        """An HTML widget with class ``mm-<form>-<part>``."""
        return self.classed(self._w.HTML(value=value), part)

    def paragraph(self, part: str, text: str, css: str = "") -> Any:
        """An HTML widget with class ``mm-<form>-<part>`` holding ``text`` wrapped to the
        width of the inputs (ipywidgets' HTML does not wrap by itself)."""
        style = f"white-space:normal;overflow-wrap:anywhere;line-height:1.4;{css}"
        body = "<br>".join(html.escape(line) for line in text.splitlines())
        widget = self.html(part, f"<div style='{style}'>{body}</div>")
        widget.layout.max_width = _TEXT_WIDTH
        return widget

    def field(self, part: str, widget: Any) -> Any:
        """Register an input: its class, its note, and a row holding both."""
        self.classed(widget, part)
        widget.style.description_width = "110px"
        widget.layout.flex = "0 0 auto"  # a long note beside it wraps, never squeezes it
        self.fields[part] = widget
        self.messages[part] = self.html(f"{part}-msg")
        return self._w.HBox([widget, self.messages[part]])

    def text(self, part: str, label: str, placeholder: str = "") -> Any:
        """A one-line text input row."""
        widget = self._w.Text(description=label, placeholder=placeholder)
        widget.layout.width = _INPUT_WIDTH
        return self.field(part, widget)

    def json_editor(self, part: str, label: str, placeholder: str = "{}") -> Any:
        """A JSON object editor row (a textarea checked as you type)."""
        widget = self._w.Textarea(description=label, placeholder=placeholder, rows=5)
        widget.layout.width = _INPUT_WIDTH
        return self.field(part, widget)

    def button(self, part: str, label: str, on_click: Callable[[], object], **kw: Any) -> Any:
        """A button with class ``mm-<form>-<part>``; its handler never raises into the
        notebook (an unexpected error is shown in the answer)."""
        widget = self.classed(self._w.Button(description=label, **kw), part)
        # as wide as its label (the default fixed width cuts a longer label off), and
        # not stretched across a VBox
        widget.layout.width = "auto"
        widget.layout.min_width = "90px"
        widget.layout.align_self = "flex-start"

        def handler(_: Any) -> None:
            try:
                on_click()
            except Exception as exc:  # a click must never leave a traceback behind
                self.show_error(exc)

        widget.on_click(handler)
        self.buttons[part] = widget
        return widget

    def finish(self, title: str, rows: list[Any]) -> Form:
        """Lay the form out: a title, the rows, the answer and the history."""
        head = self._w.HTML(value=f"<b>{html.escape(title)}</b>")
        self.widget = self._w.VBox([head, *rows, self.answer, self.history_view])
        self.widget.add_class(f"mm-{self.name}")
        return self

    def check(self) -> bool:
        """Check every input and say what is wrong beside it; ``True`` when all is well."""
        return self._checker() if self._checker is not None else True

    def watch(self, check: Callable[[], bool]) -> None:
        """Make ``check`` the form's :meth:`check`; run it now and on every change of any
        input."""
        self._checker = check
        for widget in self.fields.values():
            widget.observe(lambda _change: self._safe(check), names="value")
        self._safe(check)

    def watch_problems(
        self,
        problems_of: Callable[[], dict[str, list[str]]],
        button: Any,
        after: Callable[[], None] | None = None,
    ) -> None:
        """:meth:`watch` with a check made of ``problems_of()`` (input name -> what is
        wrong): each input's note is rewritten, then ``after()`` runs, and ``button`` is
        disabled while anything is wrong. The note of a blank input (a required field
        not typed yet) is a grey hint; a mistake in what was typed is red."""

        def check() -> bool:
            problems = problems_of()
            for part, widget in self.fields.items():
                value = widget.value
                blank = isinstance(value, str) and not value.strip()
                self.say(part, "; ".join(problems.get(part, [])), _GREY if blank else _RED)
            if after is not None:
                after()
            button.disabled = bool(problems)
            return not problems

        self.watch(check)

    def _safe(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:
            self.show_error(exc)

    # ------------------------------------------------------------------ showing

    def say(self, part: str, text: str, css: str = _RED) -> None:
        """Write ``text`` beside the input ``part`` (empty clears it)."""
        self.messages[part].value = _html_lines(text, css) if text else ""

    def show_answer(self, text: str, css: str = _GREEN) -> None:
        """Put ``text`` in the answer area."""
        self.answer.value = _html_lines(text, css)

    def show_error(self, exc: BaseException) -> None:
        """Put an error in the answer area, with its code and what to do."""
        self.show_answer(error_text(exc), _RED)

    def record(self, what: str, outcome: str, ok: bool) -> None:
        """Add a send to the history table (the last few are shown)."""
        self.history.append({
            "time": dt.datetime.now(dt.UTC).strftime("%H:%M:%S"),
            "what": what,
            "outcome": outcome,
            "ok": ok,
        })
        rows = "".join(
            f"<tr><td>{html.escape(h['time'])}</td><td>{html.escape(h['what'])}</td>"
            f"<td style='{_GREEN if h['ok'] else _RED}'>{html.escape(h['outcome'])}</td></tr>"
            for h in reversed(self.history[-_HISTORY_ROWS:])
        )
        self.history_view.value = (
            "<table><caption>sent from this form</caption>"
            "<tr><th>time (UTC)</th><th>what</th><th>outcome</th></tr>"
            f"{rows}</table>"
        )

    def all_widgets(self) -> Iterator[Any]:
        """Every widget of the form (the box and everything inside it)."""
        stack = [self.widget]
        while stack:
            w = stack.pop()
            yield w
            stack.extend(getattr(w, "children", ()))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"<millimetric {self.name} form>"


# --------------------------------------------------------------------------- shared checks


def parse_object(text: str, what: str) -> tuple[dict[str, Any] | None, str]:
    """A JSON object typed in an editor: ``(object or None when blank, problem or "")``."""
    if not text.strip():
        return None, ""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, f"{what} is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"{what} must be a JSON object ({{...}}), not a {type(value).__name__}"
    return value, ""


def resolve_client(client: ClientLike | None) -> ClientLike:
    """The client a form sends with: the one given, else the default one (at send time)."""
    if client is not None:
        return client
    from ..sync import default_client

    return default_client()


def call(client: ClientLike | None, method: str, *args: Any, **kwargs: Any) -> Any:
    """``client.<method>(...)`` on a Client, or run through the package's one bridge for
    an AsyncClient (whose methods are coroutines)."""
    result = getattr(resolve_client(client), method)(*args, **kwargs)
    if inspect.iscoroutine(result):
        from ..sync import run_sync

        return run_sync(result)
    return result


def check_key(client: ClientLike | None, use: Use) -> None:
    """Refuse, before any request, a client whose key may not ``use`` (keys.py's rules)."""
    c = resolve_client(client)
    cast("AsyncClient", getattr(c, "async_client", c)).check_key(use)


def _limits(spec: contract.FieldSpec | None) -> str:
    """A string field's length rule in words, e.g. ``" (1 to 256 characters)"``."""
    if spec is None or spec.max_length is None:
        return ""
    return f" ({max(spec.min_length, 1)} to {spec.max_length} characters)"


def required_note(field: str, specs: Mapping[str, contract.FieldSpec]) -> str:
    """The note for a required input left blank: ``"user_id is required (1 to 256
    characters)"``."""
    return f"{field} is required{_limits(specs.get(field))}"


def field_note(path: str, rule: str, message: str,
               specs: Mapping[str, contract.FieldSpec]) -> str:
    """One problem ``(path, rule, message)`` of events.py as a plain sentence naming the
    field and the rule once: ``"user_id must be at most 256 characters, got 300"``.

    A required field left out or typed empty reads ``"<field> is required (limits)"``
    (a blank input is how a person leaves a field out).
    """
    field = path.split(".", 1)[0].split("[", 1)[0]
    if rule == contract.RULE_REQUIRED or (
        rule == contract.RULE_TOO_SHORT and message.endswith("got 0")
        and (spec := specs.get(field)) is not None and spec.required
    ):
        return required_note(field, specs) if path == field else f"{path} is required"
    return message if message.startswith(path) else f"{path} {message}"


def _problems_by_field(
    problems: list[tuple[str, str, str]], specs: Mapping[str, contract.FieldSpec]
) -> dict[str, list[str]]:
    """Problems grouped by the input they belong to, each as a :func:`field_note`."""
    out: dict[str, list[str]] = {}
    for path, rule, message in problems:
        head = path.split(".", 1)[0].split("[", 1)[0]
        out.setdefault(head, []).append(field_note(path, rule, message, specs))
    return out


def _clean(values: Mapping[str, str]) -> dict[str, str]:
    """The typed text fields, blanks left out (an empty optional field is not sent)."""
    return {k: v for k, v in values.items() if v.strip()}


# --------------------------------------------------------------------------- track


def track_form(client: ClientLike | None = None, *, event: str = "") -> Form:
    """A form sending one event through ``/v1/track`` (``Client.track``).

    Args:
        client: a :class:`~millimetric_nb.sync.Client`; default: the one
            :func:`millimetric_nb.connect` set, looked up when Send is clicked.
        event: a pre-filled event name.

    The properties editor takes a JSON object and is checked as you type: invalid
    JSON, more than 8 KB once encoded, or a key named like a server-enriched field
    (``source``, ``country``...) is said beside it and disables Send.
    """
    form = Form("track")
    rows = [
        form.text("event", "event", "signup_completed"),
        form.text("anonymous_id", "anonymous_id"),
        form.text("user_id", "user_id"),
        form.text("url", "url", "https://example.com/pricing?utm_source=newsletter"),
        form.text("referrer", "referrer"),
        form.text("timestamp", "timestamp", "2026-12-01T09:30:00Z (blank: server time)"),
        form.json_editor("properties", "properties", '{"plan": "pro"}'),
    ]
    f = form.fields
    f["event"].value = event
    send = form.button("send", "Send", lambda: _send_track(form, client), button_style="primary")

    form.watch_problems(lambda: _track_fields(form)[1], send)
    return form.finish("Send one event (/v1/track)", [*rows, send])


def _track_fields(form: Form) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The event typed in the form and the problems of each input (nothing sent)."""
    f = form.fields
    texts = _clean({k: f[k].value for k in ("event", "anonymous_id", "user_id", "url",
                                             "referrer", "timestamp")})
    fields: dict[str, Any] = dict(texts)
    problems: dict[str, list[str]] = {}
    props, bad_json = parse_object(f["properties"].value, "properties")
    if bad_json:
        problems["properties"] = [bad_json]
    elif props is not None:
        enriched = sorted(k for k in props if k in contract.ENRICHED_FIELDS)
        if enriched:
            names = ", ".join(repr(k) for k in enriched)
            problems["properties"] = [
                f"properties key {names} is named like a field the server derives itself "
                "(from url, referrer and the request): rename it (e.g. 'my_source') or leave "
                "it out"
            ]
        fields["properties"] = props
    _, found, _ = check_event(fields)
    for part, msgs in _problems_by_field(found, contract.EVENT_FIELDS).items():
        problems.setdefault(part, []).extend(msgs)
    if "event" not in fields:
        problems["event"] = [required_note("event", contract.EVENT_FIELDS)]
    return fields, problems


def _send_track(form: Form, client: ClientLike | None) -> None:
    fields, problems = _track_fields(form)
    if problems or "event" not in fields:
        form.check()
        form.show_answer(NOT_SENT, _RED)
        return
    event = fields.pop("event")
    try:
        outcome = call(client, "track", event, **fields)
    except MillimetricError as exc:
        form.show_error(exc)
        form.record(event, f"error {exc.code}", ok=False)
        return
    event_id = str(outcome.body.get("event_id", "?"))
    note = " (possible duplicate: an earlier attempt may also be stored)" if outcome.ambiguous \
        else ""
    form.show_answer(f"stored: event_id {event_id}{note}")
    form.record(event, f"event_id {event_id}", ok=True)


# --------------------------------------------------------------------------- identify


def _traits_warning(traits: Mapping[str, Any]) -> str:
    """The accessor's personal-data warning for these traits (the frame layer's rules)."""
    import pandas as pd

    from ..frame import pii_columns

    if not traits:
        return ""
    keys = [k for k in traits if isinstance(k, str)]
    frame = pd.DataFrame({k: [traits[k]] for k in keys})
    found = pii_columns(frame, keys)
    if not found:
        return ""
    why = "; ".join(f"{c!r} ({reason})" for c, reason in found.items())
    return (
        f"trait(s) look like personal data, which the contract says not to send: {why}. "
        "Send them only if your privacy policy allows it."
    )


def identify_form(client: ClientLike | None = None) -> Form:
    """A form linking an anonymous visitor to a user (``Client.identify``).

    Traits are a JSON object; traits that look like personal data (``email``,
    ``phone``, values shaped like them) get the accessor's warning beside the
    editor (a warning: Send stays enabled).
    """
    form = Form("identify")
    rows = [
        form.text("anonymous_id", "anonymous_id"),
        form.text("user_id", "user_id"),
        form.json_editor("traits", "traits", '{"plan": "pro"}'),
    ]
    send = form.button(
        "send", "Identify", lambda: _send_identify(form, client), button_style="primary"
    )

    def warn_traits() -> None:  # the personal-data warning: beside the editor, in amber
        _, found, warning = _identify_body(form)
        if warning and "traits" not in found:
            form.say("traits", warning, _AMBER)

    form.watch_problems(lambda: _identify_body(form)[1], send, after=warn_traits)
    return form.finish("Identify a user (/v1/identify)", [*rows, send])


def _identify_body(form: Form) -> tuple[dict[str, Any] | None, dict[str, list[str]], str]:
    f = form.fields
    problems: dict[str, list[str]] = {}
    traits, bad_json = parse_object(f["traits"].value, "traits")
    if bad_json:
        problems["traits"] = [bad_json]
    anon, user = f["anonymous_id"].value.strip(), f["user_id"].value.strip()
    body = None
    try:
        body = prepare_identify(anon or None, user or None, traits)
    except MillimetricError as exc:
        found = _problems_by_field(getattr(exc, "problems", []), contract.IDENTIFY_FIELDS)
        for part, msgs in found.items():
            problems.setdefault(part, []).extend(msgs)
    warning = _traits_warning(traits) if traits else ""
    return (None if problems else body), problems, warning


def _send_identify(form: Form, client: ClientLike | None) -> None:
    body, _, _ = _identify_body(form)
    if body is None:
        form.check()
        form.show_answer(NOT_SENT, _RED)
        return
    what = f"{body['anonymous_id']} → {body['user_id']}"
    try:
        outcome = call(client, "identify", body["anonymous_id"], body["user_id"],
                       body.get("traits"))
    except MillimetricError as exc:
        form.show_error(exc)
        form.record(what, f"error {exc.code}", ok=False)
        return
    form.show_answer(f"identified: {what} (server answered {outcome.status})")
    form.record(what, f"ok {outcome.status}", ok=True)


# --------------------------------------------------------------------------- forget

_FORGET_STATEMENT = (
    "Deletes permanently every event stored for this user_id in the project the key "
    "belongs to: tracked events, batch events and identify links, whatever their date. "
    "Events sent for this user after the delete are kept. It cannot be undone. "
    "It needs a server key (sk_…)."
)


def forget_form(client: ClientLike | None = None) -> Form:
    """A form deleting every event of one user (``Client.forget``, GDPR / CCPA).

    The user id must be typed twice; a key that is not ``sk_`` is refused before
    any request; the server's answer is shown.
    """
    form = Form("forget")
    rows = [
        form.text("user_id", "user_id"),
        form.text("confirm", "type it again"),
        form.paragraph("statement", _FORGET_STATEMENT, _AMBER),
    ]
    send = form.button(
        "send", "Delete this user's events", lambda: _send_forget(form, client),
        button_style="danger",
    )

    form.watch_problems(lambda: _forget_target(form)[1], send)
    return form.finish("Forget a user (/v1/forget)", [*rows, send])


def _forget_target(form: Form) -> tuple[str | None, dict[str, list[str]]]:
    from ..events import prepare_forget

    f = form.fields
    user, again = f["user_id"].value, f["confirm"].value
    problems: dict[str, list[str]] = {}
    try:
        prepare_forget(user or None)
    except MillimetricError as exc:
        problems = _problems_by_field(getattr(exc, "problems", []), contract.FORGET_FIELDS)
    if user and again != user:
        problems["confirm"] = ["the confirmation does not match user_id: type the same id "
                               "again"]
    elif not again:
        problems["confirm"] = ["the confirmation is required: type user_id again"]
    return (None if problems else user), problems


def _send_forget(form: Form, client: ClientLike | None) -> None:
    user, problems = _forget_target(form)
    if user is None:
        form.check()
        form.show_answer("nothing was sent: " + "; ".join(
            m for msgs in problems.values() for m in msgs
        ), _RED)
        return
    try:
        check_key(client, "forget")  # sk_ only, refused before any request
        outcome = call(client, "forget", user)
    except MillimetricError as exc:
        form.show_error(exc)
        form.record(user, f"error {exc.code}", ok=False)
        return
    answer = orjson.dumps(outcome.body).decode()
    form.show_answer(f"deleted: every event of {user!r} (server answered {outcome.status} "
                     f"{answer})")
    form.record(user, f"deleted ({outcome.status})", ok=True)
    # a fresh form for the next delete (both ids typed again), the answer kept: the
    # user_id first, so the confirmation is never compared with a stale id
    form.fields["user_id"].value = ""
    form.fields["confirm"].value = ""
