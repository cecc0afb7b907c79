"""Run the server in a thread of the current process: :func:`run_in_thread`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from .app import MillimetricApp, ServerState, create_app
from .config import ServerConfig


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(
    app: MillimetricApp, config: ServerConfig, *, own_logging: bool = True
) -> uvicorn.Config:
    """A quiet uvicorn configuration for ``app`` (no access log, no lifespan).

    ``own_logging=False`` leaves the process's logging configuration alone (in-process
    servers must not reconfigure the host's logging each time one starts).
    """
    return uvicorn.Config(
        app, host=config.host, port=config.port, lifespan="off", access_log=False,
        log_level="warning", timeout_graceful_shutdown=2, timeout_keep_alive=30,
        log_config=LOGGING_CONFIG if own_logging else None,
    )


class ThreadedServer(uvicorn.Server):
    """uvicorn's server, made quick to stop from another thread.

    uvicorn polls ``should_exit`` every 0.1 s and sleeps 0.1 s while shutting
    down; tests start and stop hundreds of servers, so :meth:`stop` wakes the loop
    at once and :meth:`shutdown` polls its connections at a finer grain.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not self.should_exit:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            if await self.on_tick(0):  # counter 0: refresh the Date header
                break

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        state = self.server_state
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        for task in list(state.tasks):
            task.cancel()

    def stop(self) -> None:
        """Ask the server to stop (safe from any thread)."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)


class ServerHandle:
    """A running server: its URL, keys, stored rows and answer counters."""

    def __init__(self, app: MillimetricApp, url: str) -> None:
        self.app = app
        self.url = url
        self.state: ServerState = app.state.millimetric

    @property
    def config(self) -> ServerConfig:
        """The server's configuration."""
        return self.state.config

    @property
    def keys(self) -> dict[str, str]:
        """``{kind: raw key}``: the first accepted key of each kind (minted ones by default)."""
        return dict(self.state.keys)

    def stored_events(self, project: str = "dev") -> list[dict[str, Any]]:
        """Every stored row of ``project`` (all columns, properties decoded), insertion order."""
        return self.state.storage.stored_events(project)

    def count(self, project: str = "dev") -> int:
        """How many events ``project`` holds."""
        return self.state.storage.count(project)

    def status_counts(self) -> dict[str, dict[int, int]]:
        """``{route name: {status: n}}`` of every answer given (``other`` for unknown paths)."""
        return self.state.status_counts()

    def fault_counts(self) -> dict[str, int]:
        """``{"fail": n, "ambiguous": n, "reset": n}``: faults injected so far."""
        return self.state.fault_counts()

    def disconnects(self) -> int:
        """How many clients went away before their request was read to the end."""
        return self.state.disconnects()

    def inject(self, route: str, kind: str, count: int = 1) -> None:
        """Fail the next ``count`` valid requests to write ``route`` with ``kind``.

        Kinds: ``internal_error``, ``upstream_failed``, ``forget_failed`` (answered
        before writing), ``reset`` (connection dropped, nothing written),
        ``ambiguous_500`` / ``ambiguous_drop`` (written, then 500 / dropped).
        """
        self.state.inject(route, kind, count)

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r})"


@contextlib.contextmanager
def run_in_thread(config: ServerConfig | None = None, **kwargs: Any) -> Iterator[ServerHandle]:
    """Run a server in a background thread for the ``with`` block; yield its handle.

    Accepts a :class:`ServerConfig` or its fields as keywords. The socket is bound
    before the thread starts, so ``handle.url`` carries the real port at once.
    """
    if config is None:
        config = ServerConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass either a ServerConfig or keyword options, not both")
    app = create_app(config)
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    server = ThreadedServer(uvicorn_config(app, config, own_logging=False))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    thread = threading.Thread(target=serve, name=f"millimetric-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:
        if errors or not thread.is_alive():
            sock.close()
            raise RuntimeError(f"the server did not start: {errors[:1]!r}")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("the server did not start within 10 s")
        time.sleep(0.002)
    shown = f"[{host}]" if ":" in host else host
    try:
        yield ServerHandle(app, f"http://{shown}:{port}")
    finally:
        server.stop()
        thread.join(timeout=10.0)
        sock.close()
        # the storage stays open: a test may still inspect rows after the block
