"""millimetric-nb: send analytics events to Millimetric from pandas and Jupyter.

The public API is what ``__all__`` lists. Importing the package registers the
``df.millimetric`` pandas accessor.
"""

from __future__ import annotations

from . import accessor as accessor  # registers df.millimetric
from . import contract
from .backfill import abackfill, backfill
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
    TransportError,
    ValidationError,
)
from .journal import Journal
from .keys import ApiKey, mask
from .read import query, query_all, sources, stats
from .results import SendResult

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "ApiKey",
    "AuthenticationError",
    "ConfigurationError",
    "InvalidRequestError",
    "Journal",
    "KeyRefusedError",
    "MillimetricError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SendResult",
    "ServerError",
    "TransportError",
    "ValidationError",
    "__version__",
    "abackfill",
    "backfill",
    "contract",
    "mask",
    "query",
    "query_all",
    "sources",
    "stats",
]
