"""The notebook and terminal displays, and the notebook forms.

:class:`TqdmProgress` renders the engine's progress events with tqdm (a text bar
in a terminal): rows done, the sent / failed / invalid / skipped counts, retries,
the rate, and a note while waiting on the rate limit or a Retry-After.
:class:`~millimetric_nb.ui.panel.SendPanel` is the live ipywidgets panel used
inside Jupyter (with Cancel). :func:`choose_display` picks one for ``progress=``.
``tqdm`` and ``ipywidgets`` are imported lazily.

The forms (:func:`track_form`, :func:`identify_form`, :func:`forget_form`,
:func:`connect_form`, :func:`backfill_panel`) live in their own modules, which send
through the package's faces; they are loaded on first use (this module's
``__getattr__``), so importing the displays never imports ipywidgets or the faces.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from ..contract import RateLimit
from ..errors import ConfigurationError
from ..progress import (
    Acknowledged,
    Done,
    Failed,
    Observer,
    Planned,
    ProgressEvent,
    Retrying,
    Stopping,
    Waiting,
)

#: Overrides what ``progress=True`` picks: ``widget``, ``text``, ``none`` or ``auto``.
PROGRESS_ENV = "MILLIMETRIC_PROGRESS"
_KINDS = ("auto", "widget", "text", "none")


class TqdmProgress:
    """A progress observer drawing one tqdm bar for one send.

    Pass it as ``observer=`` (or use ``progress=True``). ``file`` and ``disable``
    go to tqdm; ``auto=False`` forces the text bar.
    """

    def __init__(
        self,
        desc: str = "millimetric",
        *,
        file: IO[str] | None = None,
        auto: bool = True,
        disable: bool = False,
        unit: str = "row",
        dry_run: bool = False,
    ) -> None:
        self.desc = desc
        self.dry_run = dry_run
        self._file = file
        self._auto = auto
        self._disable = disable
        self._unit = unit
        self._bar: Any = None
        self.counts: dict[str, int] = {"sent": 0, "failed": 0, "invalid": 0, "skipped": 0}
        self.total: int | None = None
        self.done = 0
        self.retries = 0
        self._planned = 0
        self._waiting = False

    def _ensure_bar(self) -> Any:
        if self._bar is None:
            import tqdm
            import tqdm.auto

            bar = tqdm.auto.tqdm if self._auto and self._file is None else tqdm.tqdm
            self._bar = bar(
                total=self.total,
                desc=self.desc,
                unit=self._unit,
                file=self._file,
                disable=self._disable,
                dynamic_ncols=True,
            )
        return self._bar

    def _postfix(self) -> dict[str, str]:
        # Strings, formatted here: tqdm shows large numbers as "1e+4" otherwise.
        shown = {k: f"{v:,}" for k, v in self.counts.items() if v}
        if self.retries:
            shown["retries"] = f"{self.retries:,}"
        return shown

    def _advance(self, n: int) -> None:
        self.done += n
        bar = self._ensure_bar()
        if self.total is not None and bar.total != self.total:
            bar.total = self.total
        if self._waiting:  # rows moved again: the wait is over
            self._waiting = False
            bar.set_description_str(self.desc, refresh=False)
        bar.update(n)
        bar.set_postfix(self._postfix(), refresh=False)

    def __call__(self, event: ProgressEvent) -> None:
        """Update the bar from one progress event."""
        if isinstance(event, Planned):
            self._planned += event.rows
            self.total = event.total_rows if event.total_rows is not None else self._planned
            self.counts["invalid"] += event.invalid
            self.counts["skipped"] += event.skipped
            # a dry run plans rows and sends none: planned rows are its progress
            self._advance(event.rows if self.dry_run else event.invalid + event.skipped)
        elif isinstance(event, Acknowledged):
            self.counts["sent"] += event.events
            self._advance(event.events)
        elif isinstance(event, Failed):
            self.counts["failed"] += event.events
            self._advance(event.events)
        elif isinstance(event, Retrying):
            self.retries += 1
            if self._bar is not None:
                self._bar.set_postfix(self._postfix(), refresh=False)
        elif isinstance(event, Waiting):
            if event.seconds >= 1.0 and self._bar is not None:
                self._waiting = True
                self._bar.set_description_str(
                    f"{self.desc} (waiting {event.seconds:.0f}s: {event.reason})", refresh=False
                )
        elif isinstance(event, Stopping):
            if self._bar is not None:
                self._bar.set_description_str(
                    f"{self.desc} (stopping: {event.in_flight} request(s) in flight)",
                    refresh=True,
                )
        elif isinstance(event, Done):
            bar = self._ensure_bar()
            bar.set_description_str(self.desc, refresh=False)
            bar.set_postfix(self._postfix(), refresh=False)
            bar.close()


def progress_observer(enabled: bool, desc: str = "millimetric") -> TqdmProgress | None:
    """The tqdm display for ``progress=True`` (None for ``False``)."""
    return TqdmProgress(desc) if enabled else None


def in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (a running ipykernel) that can show widgets."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # pragma: no cover - a broken IPython is not a notebook
        return False
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def display_kind(progress: bool | str | None) -> str:
    """What ``progress`` asks for: ``"widget"``, ``"text"`` or ``"none"``.

    ``"widget"`` / ``"text"`` / ``False`` say it directly; ``True`` (or ``"auto"``)
    follows ``$MILLIMETRIC_PROGRESS`` when set, else picks the panel inside Jupyter
    and the text bar elsewhere.
    """
    if progress is None or progress is False:
        return "none"
    kind = "auto" if progress is True else str(progress).lower()
    if kind == "auto":
        kind = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
        if kind not in _KINDS:
            raise ConfigurationError(
                f"${PROGRESS_ENV} must be one of {', '.join(_KINDS)}, not {kind!r}",
                code="invalid_progress",
            )
    if kind not in _KINDS:
        raise ConfigurationError(
            f"progress must be True, False, a callable or one of {', '.join(_KINDS)}, "
            f"not {progress!r}",
            code="invalid_progress",
        )
    if kind == "auto":
        kind = "widget" if in_jupyter() else "text"
    return kind


def choose_display(
    progress: bool | str | Observer | None,
    *,
    route: str = "batch",
    limit: RateLimit | None = None,
    dry_run: bool = False,
    journal: Any = None,
) -> Observer | None:
    """The display ``progress=`` asks for, not yet shown (see :func:`display_kind`).

    A callable is returned as is; ``"widget"`` gives a
    :class:`~millimetric_nb.ui.panel.SendPanel`, ``"text"`` a :class:`TqdmProgress`
    text bar, ``False`` nothing.
    """
    if callable(progress):
        return progress
    kind = display_kind(progress)
    if kind == "none":
        return None
    if kind == "text":
        return TqdmProgress(f"/v1/{route}", auto=False, dry_run=dry_run)
    try:
        from .panel import SendPanel

        return SendPanel(route, limit=limit, dry_run=dry_run, journal=journal)
    except ImportError as exc:
        raise ConfigurationError(
            f"progress='widget' needs ipywidgets ({exc}); install it, or use progress='text'",
            code="invalid_progress",
        ) from exc


def __getattr__(name: str) -> Any:
    """``ui.SendPanel``, ``ui.track_form`` and the other forms, imported on first use
    (ipywidgets only loads with a panel or a form)."""
    if name == "SendPanel":
        from .panel import SendPanel

        return SendPanel
    if name in ("Form", "forget_form", "identify_form", "track_form"):
        from .forms import Form, forget_form, identify_form, track_form

        found: dict[str, Any] = {
            "Form": Form, "forget_form": forget_form, "identify_form": identify_form,
            "track_form": track_form,
        }
        return found[name]
    if name == "connect_form":
        from .connect import connect_form

        return connect_form
    if name == "backfill_panel":
        from .backfill_form import backfill_panel

        return backfill_panel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROGRESS_ENV",
    "Form",
    "SendPanel",
    "TqdmProgress",
    "backfill_panel",
    "choose_display",
    "connect_form",
    "display_kind",
    "forget_form",
    "identify_form",
    "in_jupyter",
    "progress_observer",
    "track_form",
]
