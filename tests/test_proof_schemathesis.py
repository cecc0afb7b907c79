"""Proof: schemathesis against the local server's own ``/openapi.json``, every default
check on (no 5xx, status codes, content types and bodies as documented, data the
document allows accepted and data it refuses refused), bounded in examples.

Each operation gets ``MAX_EXAMPLES`` generated requests in each mode (positive and
negative) with an ``sk_`` key. What it found and this branch fixed: stats buckets
before the year 1000 written "956-11-20T..." (not ISO 8601), hence also buckets
before 1970 one hour/day/week late (SQLite's truncating division). The server is
stopped at the end of the module; its answer counters give the figures
(``artifacts/reliability/schemathesis.json``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from reliability import record

from millimetric_nb.server import ServerHandle, run_in_thread

schemathesis = pytest.importorskip("schemathesis")

#: Generated requests per operation and mode; ``make stress`` raises it.
MAX_EXAMPLES = int(os.environ.get("MM_SCHEMATHESIS_EXAMPLES", "60"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with run_in_thread(limits="off") as srv:
        yield srv
        answers = srv.status_counts()
        total = sum(sum(c.values()) for c in answers.values())
        five_xx = sum(n for c in answers.values() for status, n in c.items() if status >= 500)
        record("schemathesis", requests=total, server_errors_5xx=five_xx,
               max_examples_per_operation=MAX_EXAMPLES,
               answers_by_route={route: dict(sorted(c.items())) for route, c in answers.items()})
        assert five_xx == 0


@pytest.fixture(scope="module")
def api_schema(server: ServerHandle) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


OPERATIONS = [("POST", "/v1/track"), ("POST", "/v1/batch"), ("POST", "/v1/identify"),
              ("POST", "/v1/forget"), ("GET", "/v1/query"), ("GET", "/v1/stats"),
              ("GET", "/v1/sources")]


def test_the_document_lists_every_route(api_schema: Any) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)  # (schemathesis leaves out the document's own path)


# (schemathesis's own pytest plugin does not run under pytest 9; its strategies do)
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[p for _, p in OPERATIONS])
def test_server_agrees_with_its_openapi_document(api_schema: Any, server: ServerHandle,
                                                 method: str, path: str, mode: str) -> None:
    from schemathesis.generation.modes import GenerationMode

    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode))
    headers = {"Authorization": f"Bearer {server.keys['sk']}"}
    calls: list[int] = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call_and_validate(headers=headers)
        calls.append(response.status_code)

    check()
    assert calls  # requests were made, and every one passed every check
