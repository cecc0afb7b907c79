"""The OpenAPI 3.1 document the server serves at ``/openapi.json``, built from the contract.

It says what the server refuses: parameter patterns are the ones ``reads`` checks
with, and write routes list this server's ``415 unsupported_media_type``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from millimetric_nb import contract

from .reads import GROUP_BY_PATTERN, WINDOW_PATTERN

#: Codes this server answers besides the contract's table.
EXTRA_ERROR_CODES: tuple[str, ...] = (
    "not_found", "method_not_allowed", "payload_too_large", "unsupported_media_type",
)

_KIND = {"string": "string", "object": "object"}


def _field_schema(spec: contract.FieldSpec) -> dict[str, Any]:
    if spec.kind == "timestamp":
        return {"type": "string", "format": "date-time"}
    schema: dict[str, Any] = {"type": _KIND[spec.kind]}
    if spec.kind == "string":
        if spec.min_length:
            schema["minLength"] = spec.min_length
        if spec.max_length is not None:
            schema["maxLength"] = spec.max_length
    if spec.max_bytes is not None:
        schema["description"] = f"at most {spec.max_bytes} bytes once JSON-encoded"
    return schema


def _object(fields: dict[str, contract.FieldSpec]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: _field_schema(f) for name, f in fields.items()},
        "required": [name for name, f in fields.items() if f.required],
        "additionalProperties": True,
        "description": "Fields not listed are ignored.",
    }


def _error_ref(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_WRITE_ERRORS = {
    "400": "invalid_payload",
    "401": "missing_bearer_token, malformed_api_key, invalid_api_key, key_kind_mismatch",
    "403": "origin_not_allowed, insufficient_scope",
    "413": "payload_too_large",
    "415": "unsupported_media_type (this server's choice): the Content-Type is not "
           "application/json (nor application/*+json)",
    "500": "internal_error",
    "502": "upstream_failed",
}


def _param(name: str, required: bool, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _window() -> list[dict[str, Any]]:
    ts = {"type": "string", "minLength": 1, "pattern": WINDOW_PATTERN,
          "description": "ISO 8601 date or date-time (a real calendar day, years 0001-9999); "
                         "UTC when no offset. `from` inclusive, `to` exclusive; a `to` before "
                         "`from` is an empty window."}
    return [_param("from", True, ts), _param("to", True, ts)]


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole document (cached: it depends on the contract only)."""
    routes = contract.ROUTES
    ok = {"type": "object", "properties": {"ok": {"type": "boolean"}}}

    def write(name: str, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        r = routes[name]
        responses: dict[str, Any] = {
            str(r.success_status): _json(answer, "accepted" if r.success_status == 202 else "ok"),
            **{status: _error_ref(codes) for status, codes in _WRITE_ERRORS.items()},
        }
        if r.rate_limit is not None:
            responses["429"] = _error_ref(
                f"rate_limited: {r.rate_limit.refill:g}/s refill, burst {r.rate_limit.burst}; "
                "Retry-After header and details.retry_after_s")
        if name == "forget":
            responses["403"] = _error_ref(
                "forget_requires_secret_key (pk_), insufficient_scope (rk_, ak_)")
            responses["500"] = _error_ref("internal_error, forget_failed")
        return {"post": {
            "operationId": name,
            "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": responses,
        }}

    def read(name: str, params: list[dict[str, Any]], answer: dict[str, Any]) -> dict[str, Any]:
        return {"get": {
            "operationId": name,
            "security": [{"bearer": []}],
            "parameters": params,
            "responses": {
                "200": _json(answer, "ok"),
                "400": _error_ref("invalid_params, invalid_group_by"),
                "401": _error_ref(_WRITE_ERRORS["401"]),
                "403": _error_ref("insufficient_scope (pk_)"),
            },
        }}

    event = {"$ref": "#/components/schemas/Event"}
    string = {"type": "string"}
    nullable = {"type": ["string", "null"]}

    def rows(item: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"type": "object", "properties": {
            **extra, "rows": {"type": "array", "items": {"type": "object",
                                                          "properties": item}}}}

    query_rows = rows({
        **{column: nullable for column in contract.QUERY_COLUMNS},
        "timestamp": {"type": "string", "format": "date-time"},
        "event_name": string, "event_id": string, "session_id": string,
        "anonymous_id": string,
        "source_confidence": {"enum": list(contract.SOURCE_CONFIDENCE)},
        "properties": {"type": "string", "description": "a JSON object, encoded"},
    })
    stats_rows = rows({
        **{column: nullable for column in contract.STATS_GROUP_BY},
        "bucket": {"type": "string", "format": "date-time",
                   "description": "with interval: the start of the hour, day or week"},
        "value": {"type": "integer"},
    }, metric={"enum": list(contract.STATS_METRICS)})
    sources_rows = rows({
        "source": string, "medium": nullable, "events": {"type": "integer"},
        "uniques": {"type": "integer"}, "paid_share": {"type": "number"},
    }, breakdown={"enum": list(contract.SOURCES_BREAKDOWNS)})
    paths: dict[str, Any] = {
        routes["track"].path: write("track", event, {
            "type": "object", "properties": {"ok": {"type": "boolean"}, "event_id": string}}),
        routes["batch"].path: write("batch", {
            "type": "object", "required": ["events"],
            "properties": {"events": {"type": "array", "items": event,
                                      "minItems": contract.BATCH_MIN_EVENTS,
                                      "maxItems": contract.BATCH_MAX_EVENTS}}},
            {"type": "object", "properties": {"ok": {"type": "boolean"},
                                              "count": {"type": "integer"}}}),
        routes["identify"].path: write("identify", _object(contract.IDENTIFY_FIELDS), ok),
        routes["forget"].path: write("forget", _object(contract.FORGET_FIELDS), {
            "type": "object", "properties": {"ok": {"type": "boolean"},
                                             "queued": {"type": "boolean"}}}),
        routes["query"].path: read("query", [
            *_window(), _param("event", False, string), _param("source", False, string),
            _param("medium", False, string), _param("user_id", False, string),
            _param("limit", False, {"type": "integer", "minimum": 1,
                                    "maximum": contract.QUERY_LIMIT_MAX,
                                    "default": contract.QUERY_LIMIT_DEFAULT}),
        ], query_rows),
        routes["stats"].path: read("stats", [
            *_window(),
            _param("metric", False, {"enum": list(contract.STATS_METRICS), "default": "count"}),
            _param("event", False, string),
            _param("group_by", False, {"type": "string", "pattern": GROUP_BY_PATTERN,
                                       "description": "comma list (no spaces) of "
                                       + ", ".join(contract.STATS_GROUP_BY)}),
            _param("interval", False, {"enum": list(contract.STATS_INTERVALS)}),
            _param("limit", False, {"type": "integer", "minimum": 1,
                                    "maximum": contract.QUERY_LIMIT_MAX,
                                    "default": contract.QUERY_LIMIT_DEFAULT}),
        ], stats_rows),
        routes["sources"].path: read("sources", [
            *_window(),
            _param("breakdown", False, {"enum": list(contract.SOURCES_BREAKDOWNS),
                                        "default": "source_medium"}),
            _param("limit", False, {"type": "integer", "minimum": 1,
                                    "maximum": contract.SOURCES_LIMIT_MAX, "default": 100}),
        ], sources_rows),
        "/openapi.json": {"get": {"operationId": "openapi", "responses": {
            "200": _json({"type": "object"}, "this document")}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Millimetric (local server of millimetric-nb)", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": contract.KEY_SHAPE}},
            "schemas": {
                "Event": _object(contract.EVENT_FIELDS),
                "Error": {"type": "object", "required": ["error", "details"], "properties": {
                    "error": {"enum": sorted([*contract.ERRORS, *EXTRA_ERROR_CODES])},
                    "details": {"type": "object"}}},
            },
        },
    }
