"""``Client``, the synchronous face of :class:`~millimetric_nb.client.AsyncClient`, and
:func:`run_sync`, the one bridge from synchronous code to the event loop.

There is one implementation (the async one); ``Client`` runs its coroutines:

* **inside a thread whose event loop is running** (Jupyter/ipykernel runs every
  cell inside one), through ``nest_asyncio2``: the running loop is made re-entrant
  and the coroutine runs on it. The same ``AsyncClient`` can then also be awaited
  at the top level of a cell: both paths use the kernel's loop, so httpx's
  connection pool and the rate-limit buckets live on one loop.
* **anywhere else**, on a private event loop owned by the ``Client`` (created on
  first use, closed by :meth:`Client.close`), so consecutive calls share one loop,
  one connection pool and one set of buckets. ``nest_asyncio2`` is never applied
  in that case: a plain script's ``asyncio`` stays unpatched.

This module is the only user of ``nest_asyncio2``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import signal
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from .errors import ConfigurationError
from .progress import Observer

if TYPE_CHECKING:  # the client (and the HTTP stack) is loaded by the first Client
    from .client import AsyncClient, BatchResult, ReadRoute, SendOutcome

__all__ = ["Client", "ClientLike", "connect", "default_client", "run_sync"]

T = TypeVar("T")

_module_loop: asyncio.AbstractEventLoop | None = None
_module_lock = threading.RLock()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _run_nested(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    import nest_asyncio2

    nest_asyncio2.apply(loop)
    return _run_to_end(loop, coro)


@contextlib.contextmanager
def _interrupt_cancels(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]
) -> Iterator[dict[str, bool]]:
    """While ``task`` runs, a first Ctrl-C cancels it instead of raising inside it.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be; under
    load that is often inside the task's own code, which then dies with the interrupt
    before it can give its account. So, where Ctrl-C would raise (the main thread,
    Python's default handler), the first one is turned into ``task.cancel()`` and
    noted in the yielded state; a second one raises at once, as before. Elsewhere
    (another thread, a handler someone else installed) nothing changes.
    """
    state = {"interrupted": False}
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield state
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if state["interrupted"] or task.done():
            raise KeyboardInterrupt
        state["interrupted"] = True
        loop.call_soon_threadsafe(task.cancel)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_to_end(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """``loop.run_until_complete(coro)``, except that an interrupt stops the work too.

    A ``KeyboardInterrupt`` (Ctrl-C, a Jupyter kernel interrupt) raised while the loop
    waits would otherwise leave the call's task pending on the loop, to carry on
    sending the next time the loop runs, behind the user's back. Here the task is
    cancelled and allowed to settle, and the interrupt is re-raised carrying the
    account a cancelled ``batch`` gives (``.result``, and a note in the traceback).
    """
    task = loop.create_task(coro)
    with _interrupt_cancels(loop, task) as state:
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError as cancelled:
            if not state["interrupted"]:
                raise
            interrupt = KeyboardInterrupt()
            _annotate(interrupt, getattr(cancelled, "result", None))
            raise interrupt from None
        except KeyboardInterrupt as interrupt:
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException as settled:  # the interrupt is re-raised below
                    # CancelledError, an error, or the interrupt itself passed back up by
                    # the task it landed in: whichever carries the account gives it.
                    _annotate(interrupt, getattr(settled, "result", None))
            raise


def _annotate(interrupt: BaseException, account: Any) -> None:
    """Put a cancelled batch's account on the interrupt (``.result`` and a note)."""
    from .client import BatchResult, interrupted_note

    if not isinstance(account, BatchResult) or getattr(interrupt, "result", None) is account:
        return  # nothing to give, or given already (the same exception came back)
    interrupt.result = account  # type: ignore[attr-defined]
    interrupt.add_note(interrupted_note(account))


def _shared_loop() -> asyncio.AbstractEventLoop:
    global _module_loop
    if _module_loop is None or _module_loop.is_closed():
        _module_loop = asyncio.new_event_loop()
    return _module_loop


def run_sync(
    coro: Coroutine[Any, Any, T], *, loop: asyncio.AbstractEventLoop | None = None
) -> T:
    """Run ``coro`` to completion from synchronous code and return its result.

    In a thread with a running loop (a notebook cell) it runs on that loop via
    ``nest_asyncio2``; otherwise on ``loop`` (a ``Client``'s private loop) or, when
    none is given, on this module's own persistent loop.
    """
    running = _running_loop()
    if running is not None:
        return _run_nested(running, coro)
    with _module_lock:
        target = loop if loop is not None else _shared_loop()
        return _run_to_end(target, coro)


class Client:
    """The synchronous Millimetric client: the same :class:`AsyncClient`, run through
    :func:`run_sync`.

    Takes exactly the arguments of :class:`AsyncClient` (``key``, ``host``,
    ``rate_limits``, ``max_attempts``, ``timeout``, ``allow_insecure_http``,
    ``observer``, ``transport``...). Use it as a context manager or call
    :meth:`close`.
    """

    def __init__(self, key: str | None = None, host: str | None = None, **kwargs: Any) -> None:
        from .client import AsyncClient

        self._async = AsyncClient(key, host, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ bridge

    @property
    def async_client(self) -> AsyncClient:
        """The :class:`AsyncClient` behind this client (``await`` it in async code)."""
        return self._async

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of :attr:`async_client` to completion and return its result."""
        if _running_loop() is not None:
            return run_sync(coro)
        with self._lock:  # one private loop: one caller at a time
            return run_sync(coro, loop=self._private_loop())

    # ------------------------------------------------------------------ identity

    @property
    def key_masked(self) -> str:
        """The key as it may be shown: ``sk_live_1a2b3c4d_…``."""
        return self._async.key_masked

    @property
    def host(self) -> str:
        """The base URL requests go to."""
        return self._async.host

    def __repr__(self) -> str:
        return f"Client(key={self.key_masked!r}, host={self.host!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("Client cannot be pickled (it holds an API key)")

    # ------------------------------------------------------------------ calls

    def track(self, event: str, *, observer: Observer | None = None, **fields: Any) -> SendOutcome:
        """Send one event; see :meth:`AsyncClient.track`."""
        return self.run(self._async.track(event, observer=observer, **fields))

    def identify(
        self,
        anonymous_id: str,
        user_id: str,
        traits: Mapping[str, Any] | None = None,
        *,
        observer: Observer | None = None,
    ) -> SendOutcome:
        """Link an anonymous visitor to a user; see :meth:`AsyncClient.identify`."""
        return self.run(self._async.identify(anonymous_id, user_id, traits, observer=observer))

    def forget(self, user_id: str, *, observer: Observer | None = None) -> SendOutcome:
        """Delete every event of a user; see :meth:`AsyncClient.forget`."""
        return self.run(self._async.forget(user_id, observer=observer))

    def batch(
        self,
        events: Iterable[Mapping[str, Any]],
        *,
        observer: Observer | None = None,
        raise_on_error: bool = True,
    ) -> BatchResult:
        """Send any number of events; see :meth:`AsyncClient.batch`."""
        return self.run(
            self._async.batch(events, observer=observer, raise_on_error=raise_on_error)
        )

    def send_batch_body(
        self, body: bytes, count: int, *, observer: Observer | None = None
    ) -> SendOutcome:
        """Send one ready batch body; see :meth:`AsyncClient.send_batch_body`."""
        return self.run(self._async.send_batch_body(body, count, observer=observer))

    def read(self, route: ReadRoute, params: Mapping[str, Any]) -> dict[str, Any]:
        """GET a read route; see :meth:`AsyncClient.read`."""
        return self.run(self._async.read(route, params))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connection pool and the private loop. Idempotent."""
        if not self._async.closed or self._loop is not None or _running_loop() is not None:
            # Closes the pool of the loop it runs on, even after an ``await aclose()``
            # elsewhere (e.g. under ``asyncio.run``) closed only that loop's pool.
            self.run(self._async.aclose())
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._async.closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the default client

_default: Client | None = None
_default_lock = threading.Lock()


#: What every ``client=`` parameter takes: the synchronous face or the async client
#: itself (``None``, where a parameter allows it, means :func:`default_client`). A real
#: union at run time too: ``isinstance(x, ClientLike)`` works. Built on first use (see
#: :func:`__getattr__`), so that a dry run or a validation never loads the HTTP stack.
if TYPE_CHECKING:
    ClientLike: TypeAlias = Client | AsyncClient


def __getattr__(name: str) -> Any:
    """``ClientLike``, made when first asked for (it needs :mod:`.client`)."""
    if name == "ClientLike":
        from .client import AsyncClient

        union = Client | AsyncClient
        globals()["ClientLike"] = union
        return union
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def connect(key: str | None = None, host: str | None = None, **kwargs: Any) -> Client:
    """Build a :class:`Client` and make it the default the rest of the toolkit uses.

    Same arguments as :class:`AsyncClient`; ``key``/``host`` fall back to
    ``$MILLIMETRIC_KEY``/``$MILLIMETRIC_HOST``. A previous default is left open
    (someone may still hold it).
    """
    global _default
    client = Client(key, host, **kwargs)
    with _default_lock:
        _default = client
    return client


def default_client() -> Client:
    """The default client: the last :func:`connect`, else one built from the environment.

    Raises:
        ConfigurationError: when no client was connected and ``$MILLIMETRIC_KEY`` is unset.
    """
    global _default
    with _default_lock:
        if _default is not None and not _default.closed:
            return _default
        try:
            _default = Client()
        except ConfigurationError as exc:
            if exc.code != "missing_api_key":
                raise
            raise ConfigurationError(
                "no Millimetric client: call millimetric_nb.connect(key='sk_live_…') first, "
                "or set the MILLIMETRIC_KEY environment variable (and MILLIMETRIC_HOST for a "
                "local server)",
                code="missing_api_key",
            ) from None
        return _default


@atexit.register
def _close_default() -> None:  # pragma: no cover - interpreter exit
    client = _default
    if client is not None and _running_loop() is None:
        try:
            client.close()
        except Exception:
            pass
