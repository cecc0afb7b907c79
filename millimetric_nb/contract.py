"""The Millimetric ingest API's facts, as data.

Everything the rest of the package knows about the service (field rules, key
kinds, routes, rate limits, error codes, client-side choices) lives here, in
one place. Both the client side (validation, encoding, rate limiting) and the
local server read these tables; neither restates them.

Source: ``shared/millimetric-api.md``. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

DEFAULT_HOST: Final = "https://api.millimetric.ai"
LOCAL_HOST: Final = "http://localhost:8787"
ENV_KEY: Final = "MILLIMETRIC_KEY"
ENV_HOST: Final = "MILLIMETRIC_HOST"
API_PREFIX: Final = "/v1"

# --------------------------------------------------------------------------- fields

FieldKind = Literal["string", "timestamp", "object"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of an event body: its JSON kind and limits."""

    name: str
    kind: FieldKind
    required: bool = False
    min_length: int = 0
    max_length: int | None = None
    max_bytes: int | None = None  # for objects: size once compactly JSON-encoded


PROPERTIES_MAX_BYTES: Final = 8 * 1024

#: The fields of one event (``/v1/track`` body, and each element of a batch).
EVENT_FIELDS: Final[dict[str, FieldSpec]] = {
    f.name: f
    for f in (
        FieldSpec("event", "string", required=True, min_length=1, max_length=128),
        FieldSpec("event_id", "string", min_length=1, max_length=128),
        FieldSpec("timestamp", "timestamp"),
        FieldSpec("anonymous_id", "string", min_length=1, max_length=128),
        FieldSpec("user_id", "string", min_length=1, max_length=256),
        FieldSpec("session_id", "string", min_length=1, max_length=128),
        FieldSpec("url", "string", max_length=2048),
        FieldSpec("path", "string", max_length=2048),
        FieldSpec("referrer", "string", max_length=2048),
        FieldSpec("properties", "object", max_bytes=PROPERTIES_MAX_BYTES),
    )
}

#: ``/v1/identify`` body.
IDENTIFY_FIELDS: Final[dict[str, FieldSpec]] = {
    f.name: f
    for f in (
        FieldSpec("anonymous_id", "string", required=True, min_length=1, max_length=128),
        FieldSpec("user_id", "string", required=True, min_length=1, max_length=256),
        FieldSpec("traits", "object"),
    )
}

#: ``/v1/forget`` body.
FORGET_FIELDS: Final[dict[str, FieldSpec]] = {
    "user_id": FieldSpec("user_id", "string", required=True, min_length=1, max_length=256),
}

#: Fields the server derives for every stored event; a client must not send them
#: (the server ignores them if it does).
ENRICHED_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "source",
        "medium",
        "campaign",
        "source_confidence",
        "source_rule_id",
        "country",
        "device_type",
        "browser",
        "os",
        "ip_hash",
    }
)

SYSTEM_EVENT_PREFIX: Final = "$"
IDENTIFY_EVENT: Final = "$identify"

# Stable rule codes used in validation reports, on both sides of the wire.
RULE_REQUIRED: Final = "required"  # a required field is missing or null
RULE_TYPE: Final = "type"  # wrong JSON type (e.g. a number where a string is needed)
RULE_TOO_SHORT: Final = "too_short"  # shorter than min_length (e.g. empty string)
RULE_TOO_LONG: Final = "too_long"  # longer than max_length characters
RULE_TOO_LARGE: Final = "too_large"  # object larger than max_bytes once encoded
RULE_TIMESTAMP: Final = "invalid_timestamp"  # not an ISO 8601 date-time
RULE_NOT_JSON: Final = "not_json"  # a value JSON cannot represent (bytes, NaN, custom object)
RULE_UNICODE: Final = "invalid_unicode"  # lone surrogates, not encodable as UTF-8
RULE_UNKNOWN_FIELD: Final = "unknown_field"  # a field the contract does not define
RULE_INT_RANGE: Final = "int_out_of_range"  # integer beyond +-(2**53 - 1): JSON readers lose it

#: Integers beyond this lose precision in JavaScript readers (the Worker).
MAX_SAFE_INTEGER: Final = 2**53 - 1

# --------------------------------------------------------------------------- batches

BATCH_MAX_EVENTS: Final = 1000
BATCH_MIN_EVENTS: Final = 1
#: *(choice)* the client caps one batch request body at 5 MB.
BATCH_MAX_BYTES: Final = 5 * 1000 * 1000

# --------------------------------------------------------------------------- keys

KeyKind = Literal["pk", "sk", "rk", "ak"]


@dataclass(frozen=True, slots=True)
class KeyKindSpec:
    """What one kind of key may do."""

    kind: KeyKind
    can_ingest: bool
    can_read: bool
    can_forget: bool
    where: str


KEY_KINDS: Final[dict[str, KeyKindSpec]] = {
    "pk": KeyKindSpec("pk", can_ingest=True, can_read=False, can_forget=False,
                      where="browser snippet only (origin-allowlisted)"),
    "sk": KeyKindSpec("sk", can_ingest=True, can_read=True, can_forget=True,
                      where="servers, jobs, notebooks"),
    "rk": KeyKindSpec("rk", can_ingest=False, can_read=True, can_forget=False,
                      where="dashboards, query tools"),
    "ak": KeyKindSpec("ak", can_ingest=False, can_read=True, can_forget=False,
                      where="account-level tools"),
}
KEY_PREFIX_LENGTH: Final = 8
#: ``{kind}_{env}_{prefix}_{secret}``
KEY_PATTERN: Final = r"^(pk|sk|rk|ak)_([a-z0-9]+)_([A-Za-z0-9]{8})_([A-Za-z0-9_\-]+)$"
KEY_SHAPE: Final = "{kind}_{env}_{prefix}_{secret}, e.g. sk_live_1a2b3c4d_<secret>"

# --------------------------------------------------------------------------- routes

RouteName = Literal["track", "batch", "identify", "forget", "query", "stats", "sources"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``refill`` tokens per second, at most ``burst`` held."""

    refill: float
    burst: int

    def scaled(self, factor: float) -> RateLimit:
        """This limit with refill and burst multiplied by ``factor``."""
        return RateLimit(self.refill * factor, max(1, round(self.burst * factor)))


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of the API."""

    name: RouteName
    method: Literal["GET", "POST"]
    path: str
    success_status: int
    write: bool
    rate_limit: RateLimit | None = None


ROUTES: Final[dict[str, Route]] = {
    r.name: r
    for r in (
        Route("track", "POST", "/v1/track", 202, True, RateLimit(50.0, 200)),
        Route("batch", "POST", "/v1/batch", 202, True, RateLimit(5.0, 20)),
        Route("identify", "POST", "/v1/identify", 200, True),
        Route("forget", "POST", "/v1/forget", 200, True),
        Route("query", "GET", "/v1/query", 200, False),
        Route("stats", "GET", "/v1/stats", 200, False),
        Route("sources", "GET", "/v1/sources", 200, False),
    )
}

#: Production rate limits by route name (routes without one are unlimited).
RATE_LIMITS: Final[dict[str, RateLimit]] = {
    name: r.rate_limit for name, r in ROUTES.items() if r.rate_limit is not None
}

# --------------------------------------------------------------------------- reads

QUERY_LIMIT_MAX: Final = 1000
QUERY_LIMIT_DEFAULT: Final = 100
SOURCES_LIMIT_MAX: Final = 200
STATS_METRICS: Final = ("count", "uniques")
STATS_GROUP_BY: Final = (
    "event_name", "source", "medium", "country", "device_type", "browser", "os", "path",
)
STATS_INTERVALS: Final = ("hour", "day", "week")
SOURCES_BREAKDOWNS: Final = ("source_medium", "source")
SOURCE_CONFIDENCE: Final = ("low", "medium", "high")
QUERY_COLUMNS: Final = (
    "timestamp", "event_name", "anonymous_id", "user_id", "source", "medium", "campaign",
    "source_confidence", "referrer", "url", "path", "country", "device_type", "properties",
    # additive fields served by this project's local server
    "event_id", "session_id",
)

# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One stable error code of the contract."""

    code: str
    status: int
    retryable: bool
    meaning: str


ERRORS: Final[dict[str, ErrorSpec]] = {
    e.code: e
    for e in (
        ErrorSpec("invalid_payload", 400, False, "body failed validation"),
        ErrorSpec("invalid_params", 400, False, "read query string invalid"),
        ErrorSpec("invalid_group_by", 400, False, "unknown group_by column"),
        ErrorSpec("missing_bearer_token", 401, False, "no Authorization header"),
        ErrorSpec("malformed_api_key", 401, False, "key is not of the documented shape"),
        ErrorSpec("invalid_api_key", 401, False, "key unknown or revoked"),
        ErrorSpec("key_kind_mismatch", 401, False, "stored key kind differs from its prefix"),
        ErrorSpec("origin_not_allowed", 403, False, "pk_ key from an origin not allow-listed"),
        ErrorSpec("insufficient_scope", 403, False, "key kind cannot use this endpoint"),
        ErrorSpec("forget_requires_secret_key", 403, False, "/v1/forget needs an sk_ key"),
        ErrorSpec("rate_limited", 429, True, "token bucket empty; retry after Retry-After"),
        ErrorSpec("internal_error", 500, True, "unhandled server error"),
        ErrorSpec("forget_failed", 500, True, "the delete was rejected by storage"),
        ErrorSpec("upstream_failed", 502, True, "storage unreachable"),
    )
}

#: Statuses a client retries (with backoff); 429 is retried after Retry-After.
RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
#: Millimetric's own Node SDK backs off 100, 200, 400, 800 ms.
BACKOFF_INITIAL_S: Final = 0.1
