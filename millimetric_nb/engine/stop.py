"""Stopping a run gracefully: :class:`StopSignal` (asked from anywhere), and how each
request in flight learns of it (:class:`Flight`, :class:`CalledOff`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import MillimetricError
from ..progress import ProgressEvent, RequestSent, Retrying, Waiting


class StopSignal:
    """Asks a running send to stop gracefully: nothing new leaves, the requests already
    on the wire are awaited (bounded by the client's timeouts) and journaled, and the
    run returns its full account (``result.error.code``: ``"cancelled"`` or
    ``"interrupted"``; the rows never sent are ``failed`` with that code).

    Pass one as ``stop=`` to :func:`~millimetric_nb.engine.run_rows` (or
    ``millimetric_nb.abackfill``) and call :meth:`request` from anywhere: the loop's
    thread (a Cancel button), another thread, or a signal handler. A request made
    before the run starts stops it at once.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._target: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.reason is not None

    def request(self, reason: str = "cancel") -> None:
        """Ask for the stop (``reason``: ``"cancel"`` or ``"interrupt"``; the first wins)."""
        if self.reason is None:
            self.reason = reason
        self._wake()

    def _wake(self) -> None:
        target = self._target
        if target is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                target[0].call_soon_threadsafe(target[1])

    def bind(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """Attach a running send (done by ``run_rows``)."""
        self._target = (loop, callback)
        if self.reason is not None:
            self._wake()

    def unbind(self) -> None:
        """Detach the send (it ended)."""
        self._target = None


def stop_error(reason: str) -> MillimetricError:
    """The error a graceful stop ends a run with (``reason``: ``"cancel"``/``"interrupt"``)."""
    if reason == "interrupt":
        what, code = "interrupted (Ctrl-C or a kernel interrupt)", "interrupted"
    else:
        what, code = "cancelled", "cancelled"
    return MillimetricError(f"the send was {what}: nothing new was sent after it, the "
                            "requests in flight were awaited", code=code)


class CalledOff(Exception):
    """A request kept from leaving (again): a stop was asked for, or the journal could
    not mark its ids pending. Raised by the request's ``before_send`` hook (the client
    then does not send it) or when its task is cancelled by a stop."""


@dataclass(slots=True)
class Flight:
    """One request being sent, as its own task, so that a stop can call it off."""

    on_wire: bool  # an attempt left and has not been answered yet
    left: bool = False  # some attempt left (its ids were journaled pending)
    maybe_written: bool = False  # an earlier attempt may have been written
    called_off: bool = False  # cancelled by a stop before (again) leaving
    attempts: int = 0
    task: asyncio.Future[Any] | None = None

    def call_off(self, *, on_wire: bool) -> None:
        """Cancel the request's task (unless an attempt is on the wire and ``on_wire`` is
        ``False``): it will not leave (again)."""
        if (on_wire or not self.on_wire) and self.task is not None:
            self.called_off = True
            self.task.cancel()

    def observe(self, event: ProgressEvent, *, stopping: bool) -> bool:
        """Follow the client's events of this request; whether the run passes ``event``
        on (the client's Acknowledged / Failed are the run's to emit, knowing the rows)."""
        if isinstance(event, RequestSent):
            self.left = self.on_wire = True
            self.attempts += 1
        elif isinstance(event, Retrying):
            self.on_wire = False
            self.maybe_written = self.maybe_written or event.ambiguous
            if stopping:
                self.call_off(on_wire=True)  # no retry after a stop: ends the backoff sleep
        return isinstance(event, (RequestSent, Retrying, Waiting))
