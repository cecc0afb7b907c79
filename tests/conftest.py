"""Shared fixtures: a fresh local Millimetric server (in-process, real loopback HTTP)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings

from millimetric_nb.server import ServerHandle, run_in_thread

# `make stress` sets HYPOTHESIS_PROFILE=stress: 10,000 examples for every Hypothesis test
# that does not fix its own number (CI runs the default profile).
settings.register_profile("stress", max_examples=10_000, deadline=None)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


@pytest.fixture(scope="session", autouse=True)
def _shut_the_current_loop_down_at_the_end() -> Iterator[None]:
    """Once a test has used a sync ``Client`` inside a running loop, ``nest_asyncio2``
    has patched ``asyncio.run`` in this process to reuse one current loop and never
    close it; the connection pools clients made on it would stay open past the end.
    The loop is shut down as ``asyncio.run`` would have done (its generators, so its
    pools, then the loop)."""
    yield
    import asyncio
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:  # none is current (asyncio.run unpatched left none)
            return
    if not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture
def fast_retries() -> Iterator[None]:
    """Retries happen at once within the test (``client.no_backoff``; attempt limits kept).
    Modules that want it everywhere say ``pytestmark = pytest.mark.usefixtures(...)``."""
    from millimetric_nb.client import no_backoff

    with no_backoff():
        yield


@pytest.fixture
def mm_server() -> Iterator[ServerHandle]:
    """A running server (limits off, fresh ``:memory:`` database); ``.url``, ``.keys``..."""
    with run_in_thread(limits="off") as srv:
        yield srv


@pytest.fixture
def mm_server_factory() -> Iterator[Callable[..., ServerHandle]]:
    """``factory(**ServerConfig fields) -> ServerHandle``; every server is stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> ServerHandle:
            return stack.enter_context(run_in_thread(**kwargs))

        yield start


@pytest.fixture
def mm_client() -> Iterator[Callable[..., Any]]:
    """``mm_client(srv, kind="sk", **headers) -> httpx.Client`` bound to ``srv.url`` with
    ``Authorization: Bearer <srv.keys[kind]>`` (``kind=None``: no header); closed at teardown."""
    import httpx

    clients: list[httpx.Client] = []

    def make(srv: ServerHandle, kind: str | None = "sk", **headers: str) -> httpx.Client:
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        if kind is not None:
            hdrs["Authorization"] = f"Bearer {srv.keys[kind]}"
        client = httpx.Client(base_url=srv.url, headers=hdrs, timeout=30.0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
