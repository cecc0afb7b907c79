"""millimetric-nb: send analytics events to Millimetric from pandas and Jupyter.

The public API is what ``__all__`` lists. Importing the package registers the
``df.millimetric`` pandas accessor.

Importing it stays light: the engine and the frame layer (polars) are imported the
first time a frame is prepared, the HTTP client (httpx, tenacity) the first time a
client is made or named (``mm.Client``, ``mm.AsyncClient``, ``mm.StopSignal``... are
resolved on first use by the module ``__getattr__`` below).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from . import accessor as accessor  # registers df.millimetric
from . import contract
from .api import SendHandle, SendInterrupted, abackfill, backfill
from .datasources import sql, validate  # mm.validate: this function, not the submodule
from .errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    DataWarning,
    EnrichedFieldWarning,
    IncompleteReadWarning,
    InvalidRequestError,
    KeyRefusedError,
    MillimetricError,
    MillimetricWarning,
    PermissionDeniedError,
    PossiblyTruncatedWarning,
    RateLimitedError,
    ServerError,
    SourceError,
    TransportError,
    ValidationError,
)
from .journal import Journal, JournalBusy
from .keys import ApiKey, mask
from .read import (
    aquery,
    aquery_all,
    asources,
    astats,
    averify,
    query,
    query_all,
    sources,
    stats,
    verify,
)
from .results import SendResult
from .ui.connect import connect  # sync.connect, or the connect form in a notebook without a key

if TYPE_CHECKING:  # resolved lazily at run time, by __getattr__
    from .client import AsyncClient, BatchFailedError
    from .engine import StopSignal
    from .sync import Client, ClientLike, default_client
    from .validate import ValidationReport, validate_frame

__version__ = "0.1.0"

#: Public names imported on first use: name -> the module defining it.
_LAZY: dict[str, str] = {
    "AsyncClient": "client",
    "BatchFailedError": "client",
    "Client": "sync",
    "ClientLike": "sync",
    "default_client": "sync",
    "StopSignal": "engine",
    "ValidationReport": "validate",
    "validate_frame": "validate",
}
#: Faces that share their name with a submodule: the function stays the attribute.
_FACES = frozenset({"validate"})


def __getattr__(name: str) -> Any:
    """Import a lazily exported name (see ``_LAZY``) on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The package's module object: keeps a face (``mm.validate``) when
    the submodule of the same name is first imported, lazily, after the package (the
    import system binds a new submodule as an attribute of its package)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FACES and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable as sys.modules["millimetric_nb.<name>"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "APIError",
    "ApiKey",
    "AsyncClient",
    "AuthenticationError",
    "BatchFailedError",
    "Client",
    "ClientLike",
    "ConfigurationError",
    "DataWarning",
    "EnrichedFieldWarning",
    "IncompleteReadWarning",
    "InvalidRequestError",
    "Journal",
    "JournalBusy",
    "KeyRefusedError",
    "MillimetricError",
    "MillimetricWarning",
    "PermissionDeniedError",
    "PossiblyTruncatedWarning",
    "RateLimitedError",
    "SendHandle",
    "SendInterrupted",
    "SendResult",
    "ServerError",
    "SourceError",
    "StopSignal",
    "TransportError",
    "ValidationError",
    "ValidationReport",
    "__version__",
    "abackfill",
    "aquery",
    "aquery_all",
    "asources",
    "astats",
    "averify",
    "backfill",
    "connect",
    "contract",
    "default_client",
    "mask",
    "query",
    "query_all",
    "sources",
    "sql",
    "stats",
    "validate",
    "validate_frame",
    "verify",
]
