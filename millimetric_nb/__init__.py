"""millimetric-nb: send analytics events to Millimetric from pandas and Jupyter.

The public API is what ``__all__`` lists. Importing the package registers the
``df.millimetric`` pandas accessor.
"""

from __future__ import annotations

from . import accessor as accessor  # registers df.millimetric
from . import contract
from .api import SendHandle, SendInterrupted, abackfill, backfill
from .client import AsyncClient
from .datasources import sql, validate  # mm.validate: this function, not the submodule
from .engine import StopSignal
from .errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    KeyRefusedError,
    MillimetricError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    SourceError,
    TransportError,
    ValidationError,
)
from .frame import DataWarning
from .journal import Journal
from .keys import ApiKey, mask
from .read import query, query_all, sources, stats
from .results import SendResult
from .sync import Client, default_client
from .ui.connect import connect  # sync.connect, or the connect form in a notebook without a key
from .validate import ValidationReport, validate_frame

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "ApiKey",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConfigurationError",
    "DataWarning",
    "InvalidRequestError",
    "Journal",
    "KeyRefusedError",
    "MillimetricError",
    "PermissionDeniedError",
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
]
