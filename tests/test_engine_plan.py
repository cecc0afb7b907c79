"""The engine's planning without per-row Python: a dry run builds no body yet plans the
same requests and bytes as a real send, and bodies cut from the joined payloads are the
ones a send gives the server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from millimetric_nb.engine import EventPreparer, event_preparer, iter_source, run_rows

NOW = pd.Timestamp("2026-06-01", tz="UTC")


@dataclass
class Outcome:
    attempts: int = 1
    ambiguous: bool = False


def events(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    return pd.DataFrame({
        "event": rng.choice(["view", "buy"], n),
        "user_id": [f"u{i % 97}" for i in range(n)],
        "timestamp": pd.Timestamp("2026-01-01", tz="UTC")
        + pd.to_timedelta(rng.integers(0, 86400, n), unit="s"),
        "note": ["x" * int(k) for k in rng.integers(3000, 8000, n)],  # the byte cap binds
    })


def test_a_dry_run_plans_what_a_send_sends_without_building_bodies():
    df = events(2_600)
    bodies: list[bytes] = []

    async def sender(req, observer):
        bodies.append(req.body)
        return Outcome()

    def run(dry_run: bool, seen: list):
        prepare = event_preparer({}, now=NOW)
        original = prepare.lengths_only

        def spy() -> EventPreparer:
            lengths_only = original()
            seen.append(lengths_only)
            return lengths_only

        prepare.lengths_only = spy  # type: ignore[method-assign]
        chunks, total = iter_source(df, 1_000)
        return asyncio.run(run_rows(chunks, route="batch", prepare=prepare, total_rows=total,
                                    dry_run=dry_run, send=None if dry_run else sender))

    asked: list = []
    plan = run(True, asked)
    assert len(asked) == 1 and asked[0].encode == "lengths"  # the dry run built no body
    sent = run(False, [])
    assert plan.planned == sent.sent == 2_600
    assert plan.plan.requests == sent.plan.requests == len(bodies) > 3
    assert plan.plan.bytes == sent.plan.bytes == sum(map(len, bodies))
    stored = [e for b in bodies for e in orjson.loads(b)["events"]]
    assert [e["event_id"] for e in stored] == list(sent.rows["event_id"])
    assert list(plan.rows["event_id"]) == list(sent.rows["event_id"])
