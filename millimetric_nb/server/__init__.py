"""The local Millimetric server: the Worker stand-in every test, demo and notebook uses.

``run_in_thread(ServerConfig(...))`` runs it inside this process; ``millimetric-nb
serve`` runs it as a command. It imports nothing from the package but the contract.
"""

from __future__ import annotations

from .app import FAULT_KINDS, ServerState, create_app
from .config import ServerConfig
from .ratelimit import ManualClock
from .runner import ServerHandle, run_in_thread

__all__ = [
    "FAULT_KINDS",
    "ManualClock",
    "ServerConfig",
    "ServerHandle",
    "ServerState",
    "create_app",
    "run_in_thread",
]
