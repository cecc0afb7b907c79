"""Shared fixtures: a fresh local Millimetric server (in-process, real loopback HTTP)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from millimetric_nb.server import ServerHandle, run_in_thread


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
