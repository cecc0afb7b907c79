"""One exception hierarchy, rooted at :class:`MillimetricError`, and one warning
hierarchy, rooted at :class:`MillimetricWarning`.

Every error carries a stable ``code``: the contract's code for answers from the
server (``invalid_payload``, ``rate_limited``, ...) and this package's own codes
for refusals made before a request leaves the machine (``browser_key_refused``,
``validation_failed``, ...). Messages are for people; codes are the contract.

No error ever holds a whole API key: callers pass masked keys only.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class MillimetricError(Exception):
    """Base of every error this package raises.

    Attributes:
        code: stable machine-readable code.
        status: HTTP status of the server's answer, or ``None`` for client-side refusals.
        field_errors: ``{field path: [message, ...]}`` where the error is about fields.
        retry_after: seconds the server asked us to wait (429 only).
        ambiguous: ``True`` when the request may have been written by the server
            although no success was seen (a retry could make a duplicate).
        attempts: how many HTTP attempts were made for this request.
        details: the server's ``details`` object, if any.
    """

    code: str = "millimetric_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field_errors: Mapping[str, list[str]] | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
        attempts: int = 0,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.status = status
        self.field_errors: dict[str, list[str]] = dict(field_errors or {})
        self.retry_after = retry_after
        self.ambiguous = ambiguous
        self.attempts = attempts
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        head = f"[{self.code}] {self.message}"
        if self.field_errors:
            lines = [
                f"  {path}: {msg}"
                for path, msgs in sorted(self.field_errors.items())
                for msg in msgs
            ]
            head += "\n" + "\n".join(lines)
        return head

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its state, not by calling __init__ again: subclasses take extra
        # required arguments (BatchFailedError's result), which pickle and deepcopy
        # (a process pool, joblib) would otherwise not pass.
        return (_rebuild, (type(self), self.args), self.__dict__)


def _rebuild(cls: type[MillimetricError], args: tuple[Any, ...]) -> MillimetricError:
    """Unpickling helper of :meth:`MillimetricError.__reduce__`."""
    return cls.__new__(cls, *args)


# --------------------------------------------------------------------------- client side


class ConfigurationError(MillimetricError):
    """The client is not set up right (no key, bad host, insecure http)."""

    code = "configuration_error"


class KeyRefusedError(MillimetricError):
    """A key refused before any request: wrong kind for the use, or malformed."""

    code = "key_refused"


class ValidationError(MillimetricError):
    """An event (or identify/forget body) breaks the contract's field rules.

    Raised before anything is sent. ``field_errors`` names each field and rule;
    ``problems`` holds ``(path, rule, message)`` triples.
    """

    code = "validation_failed"

    def __init__(
        self,
        message: str,
        *,
        problems: list[tuple[str, str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.problems: list[tuple[str, str, str]] = list(problems or [])
        if "field_errors" not in kwargs and self.problems:
            fe: dict[str, list[str]] = {}
            for path, rule, msg in self.problems:
                fe.setdefault(path, []).append(f"{rule}: {msg}")
            kwargs["field_errors"] = fe
        super().__init__(message, **kwargs)


class SourceError(MillimetricError):
    """A source cannot be read: a missing path, an empty folder or glob, parts whose
    schemas clash, a failing query, a Dask partition that raises.

    ``code`` says which (``source_not_found``, ``source_empty``,
    ``source_schema_mismatch``, ``source_part_failed``, ``source_query_failed``);
    ``details["source"]`` names the source and ``details["part"]`` the part (a file,
    ``"partition 3"``, ``"query"``) when one part is at fault.
    """

    code = "source_error"


# --------------------------------------------------------------------------- server answers


class APIError(MillimetricError):
    """The server answered with an error status."""

    code = "api_error"


class InvalidRequestError(APIError):
    """400: ``invalid_payload``, ``invalid_params``, ``invalid_group_by``."""

    code = "invalid_payload"


class AuthenticationError(APIError):
    """401: missing, malformed, unknown or mismatched key."""

    code = "invalid_api_key"


class PermissionDeniedError(APIError):
    """403: ``origin_not_allowed``, ``insufficient_scope``, ``forget_requires_secret_key``."""

    code = "insufficient_scope"


class RateLimitedError(APIError):
    """429 ``rate_limited``; ``retry_after`` holds the wait in seconds."""

    code = "rate_limited"


class ServerError(APIError):
    """5xx: ``internal_error``, ``forget_failed``, ``upstream_failed``."""

    code = "internal_error"


class TransportError(MillimetricError):
    """The request did not complete: connection refused, reset, timeout.

    ``ambiguous`` says whether the server may have received it.
    """

    code = "transport_error"


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    429: RateLimitedError,
}


def error_for_status(status: int) -> type[APIError]:
    """The exception class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return APIError


# --------------------------------------------------------------------------- warnings


class MillimetricWarning(UserWarning):
    """Base of every warning this package issues.

    ``warnings.filterwarnings("ignore", category=mm.MillimetricWarning)`` silences them
    all; each subclass can be filtered on its own.
    """


class DataWarning(MillimetricWarning):
    """Something in the data an analyst should know before sending it."""


class EnrichedFieldWarning(MillimetricWarning):
    """Server-enriched fields were given and dropped (the server derives them)."""


class PossiblyTruncatedWarning(MillimetricWarning):
    """A read returned exactly ``limit`` rows: there may be more in the window."""


class IncompleteReadWarning(MillimetricWarning):
    """:func:`~millimetric_nb.read.query_all` could not read every row of its window
    (more than 1000 rows at one instant; see :mod:`millimetric_nb.read`)."""


__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigurationError",
    "DataWarning",
    "EnrichedFieldWarning",
    "IncompleteReadWarning",
    "InvalidRequestError",
    "KeyRefusedError",
    "MillimetricError",
    "MillimetricWarning",
    "PermissionDeniedError",
    "PossiblyTruncatedWarning",
    "RateLimitedError",
    "ServerError",
    "SourceError",
    "TransportError",
    "ValidationError",
    "error_for_status",
]
