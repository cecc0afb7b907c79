"""The notebook and terminal displays, and the notebook forms.

Displays of progress events are observers, never senders. :class:`TqdmProgress`
renders the engine's progress events with ``tqdm.auto`` (a widget bar in a
notebook, a text bar in a terminal): rows done, the sent / failed / invalid /
skipped counts, retries, the rate, and a note while waiting on the rate limit or
a Retry-After. ``tqdm`` is imported lazily.

The forms (:func:`track_form`, :func:`identify_form`, :func:`forget_form`,
:func:`connect_form`, :func:`backfill_panel`) live in their own modules, which send
through the package's faces; they are loaded on first use (this module's
``__getattr__``), so importing the displays never imports ipywidgets or the faces.
"""

from __future__ import annotations

from typing import IO, Any

from ..progress import Acknowledged, Done, Failed, Planned, ProgressEvent, Retrying, Waiting


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
    ) -> None:
        self.desc = desc
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
            if self._auto and self._file is None:
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            self._bar = tqdm(
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
            self._advance(event.invalid + event.skipped)
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
        elif isinstance(event, Done):
            bar = self._ensure_bar()
            bar.set_description_str(self.desc, refresh=False)
            bar.set_postfix(self._postfix(), refresh=False)
            bar.close()


def progress_observer(enabled: bool, desc: str = "millimetric") -> TqdmProgress | None:
    """The default display for ``progress=True`` (None for ``False``)."""
    return TqdmProgress(desc) if enabled else None


def __getattr__(name: str) -> Any:
    """``ui.track_form`` and the other forms, imported on first use."""
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
    "Form",
    "TqdmProgress",
    "backfill_panel",
    "connect_form",
    "forget_form",
    "identify_form",
    "progress_observer",
    "track_form",
]
