"""millimetric-nb: send analytics events to Millimetric from pandas and Jupyter.

The public API is what ``__all__`` lists. Importing the package registers the
``df.millimetric`` pandas accessor.
"""

from __future__ import annotations

from . import contract
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
from .keys import ApiKey, mask

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "ApiKey",
    "AuthenticationError",
    "ConfigurationError",
    "InvalidRequestError",
    "KeyRefusedError",
    "MillimetricError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ServerError",
    "TransportError",
    "ValidationError",
    "__version__",
    "contract",
    "mask",
]
