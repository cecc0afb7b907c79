"""The connect form: an API key and a host, checked, with the key never kept.

``connect_form()`` -> CSS class ``mm-connect``; inputs ``mm-connect-key`` (a
password field), ``mm-connect-host``, ``mm-connect-use`` (what the key is for:
sending or reading only); button ``mm-connect-connect``; ``mm-connect-answer``.
The note beside an input is ``mm-connect-<field>-msg``.

The key is read once, when Connect is clicked, and the password field is
cleared at that moment, before the key is even parsed: a notebook saved with its
widget state holds no key, whatever happens next. The key's kind is checked
against its use before the client is built (``keys.ApiKey.check_use``): a
``pk_`` key is refused with the reason, an ``rk_``/``ak_`` key is refused for
sending. Only the masked key (``sk_live_1a2b3c4d_…``) is ever shown.

:func:`connect` is ``millimetric_nb.connect``: :func:`millimetric_nb.sync.connect`,
except that in a notebook, called without a key while ``$MILLIMETRIC_KEY`` is
unset, it shows this form instead of raising.
"""

from __future__ import annotations

import os
from typing import Any

from .. import contract
from ..errors import MillimetricError
from ..keys import ApiKey
from . import in_jupyter
from .forms import Form

__all__ = ["connect", "connect_form"]

_USES = (("send events (sk_ key)", "ingest"), ("read only (sk_ or rk_ key)", "read"))


def connect_form(host: str | None = None, **client_options: Any) -> Form:
    """A form connecting the default client (:func:`millimetric_nb.sync.connect`).

    Args:
        host: pre-fills the host field (default ``$MILLIMETRIC_HOST`` or the
            production host).
        **client_options: passed to the client (``rate_limits``, ``timeout``...).

    After a successful Connect, ``form.client`` is the new default
    :class:`~millimetric_nb.sync.Client`.
    """
    w = Form("connect")
    rows = [
        w.field("key", w._w.Password(description="API key", placeholder="sk_live_…")),
        w.text("host", "host", contract.DEFAULT_HOST),
        w.field("use", w._w.Dropdown(description="for", options=_USES, value="ingest")),
    ]
    w.fields["key"].layout.width = "420px"
    w.fields["host"].value = host or os.environ.get(contract.ENV_HOST) or contract.DEFAULT_HOST
    button = w.button(
        "connect", "Connect", lambda: _connect(w, client_options), button_style="primary"
    )
    return w.finish("Connect to Millimetric", [*rows, button])


def _connect(form: Form, options: dict[str, Any]) -> None:
    f = form.fields
    raw = f["key"].value
    f["key"].value = ""  # first of all: the key must not stay in the widget's state
    host = f["host"].value.strip() or None
    use = f["use"].value
    form.say("key", "")
    if not raw.strip():
        form.say("key", "paste a key (sk_live_…); it is cleared from this field once read")
        form.show_answer("not connected: no key", "color:#b00020")
        return
    try:
        key = ApiKey.parse(raw)
        key.check_use(use)
        from ..sync import connect as sync_connect

        client = sync_connect(raw, host, **options)
    except MillimetricError as exc:
        form.say("key", f"[{exc.code}] {exc.message}")
        form.show_error(exc)
        return
    finally:
        del raw
    form.client = client
    what = "send events and read" if key.kind == "sk" else "read"
    form.show_answer(
        f"connected as {key.masked} to {client.host} (this key may {what}); "
        "the key field was cleared"
    )


def connect(key: str | None = None, host: str | None = None, **kwargs: Any) -> Any:
    """Build a :class:`~millimetric_nb.sync.Client` and make it the default client.

    Same as :func:`millimetric_nb.sync.connect`; but in a notebook, without a key
    and without ``$MILLIMETRIC_KEY``, it displays :func:`connect_form` (so the key
    is typed into a password field rather than into the notebook's code) and
    returns ``None``.
    """
    from ..sync import connect as sync_connect

    if key is None and not os.environ.get(contract.ENV_KEY) and in_jupyter():
        from IPython.display import display

        display(connect_form(host, **kwargs))
        return None
    return sync_connect(key, host, **kwargs)

