"""Progress as a stream of small typed events.

The sending engine (client and backfill) emits these to any observer: a
callable taking one event. Displays (the tqdm bar, the notebook panel, a test's
recorder) subscribe; the engine never knows which is attached. Events are
immutable and cheap; an observer must not raise (errors are swallowed and
logged so a broken display cannot break a send). Standard library only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("millimetric_nb")


@dataclass(frozen=True, slots=True)
class Planned:
    """Rows are known and planned (emitted once per chunk when streaming)."""

    rows: int
    valid: int
    invalid: int
    skipped: int = 0
    requests: int = 0
    total_rows: int | None = None  # when the whole input size is known


@dataclass(frozen=True, slots=True)
class RequestSent:
    """One HTTP request left (attempt counts from 1)."""

    route: str
    events: int
    bytes: int
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The server accepted a request: ``events`` are stored."""

    route: str
    events: int
    attempts: int = 1
    ambiguous: bool = False  # an earlier attempt may have been written too


@dataclass(frozen=True, slots=True)
class Retrying:
    """An attempt failed and will be retried after ``delay`` seconds."""

    route: str
    attempt: int
    delay: float
    code: str
    ambiguous: bool = False


@dataclass(frozen=True, slots=True)
class Waiting:
    """Waiting on the rate limit (``reason="rate_limit"``) or a Retry-After (``"retry_after"``)."""

    route: str
    seconds: float
    reason: str = "rate_limit"


@dataclass(frozen=True, slots=True)
class Failed:
    """A request (or single call) finally failed; ``events`` rows did not get in."""

    route: str
    events: int
    code: str
    message: str
    ambiguous: bool = False


@dataclass(frozen=True, slots=True)
class Stopping:
    """A stop was asked for (``reason``: ``"cancel"`` or ``"interrupt"``): nothing new
    leaves; the ``in_flight`` requests already on the wire are awaited."""

    route: str
    reason: str
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """The whole send finished (also on cancellation or error).

    ``result`` is the run's account (a ``SendResult``) when one was built; ``None``
    when the run ended by an exception (an interrupt that stopped it at once).
    """

    counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    result: Any = None


ProgressEvent = (
    Planned | RequestSent | Acknowledged | Retrying | Waiting | Failed | Stopping | Done
)
Observer = Callable[[ProgressEvent], None]


class Emitter:
    """Fans one event out to several observers; an observer's error never escapes."""

    __slots__ = ("_observers",)

    def __init__(self, observers: Iterable[Observer | None] = ()) -> None:
        self._observers: list[Observer] = [o for o in observers if o is not None]

    def add(self, observer: Observer) -> None:
        """Subscribe another observer."""
        self._observers.append(observer)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def __call__(self, event: ProgressEvent) -> None:
        for obs in self._observers:
            try:
                obs(event)
            except Exception:  # a display must never break a send
                log.exception("progress observer %r failed", obs)


__all__ = [
    "Acknowledged",
    "Done",
    "Emitter",
    "Failed",
    "Observer",
    "Planned",
    "ProgressEvent",
    "RequestSent",
    "Retrying",
    "Stopping",
    "Waiting",
]
