"""Helpers of the reliability proofs (issue 10): events frames, stored-row accounting,
and the figures each proof records for RELIABILITY.md.

Figures are printed (``pytest -s`` shows them) and written to
``artifacts/reliability/<name>.json`` under the repository root (not committed).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "reliability"


def events_frame(n: int, *, seed: int = 0) -> pd.DataFrame:
    """``n`` valid events with no event_id column (ids are derived), over 30 days."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "event": rng.choice(["page_view", "signup", "purchase"], n),
            "user_id": [f"u{i % 997}" for i in range(n)],
            "anonymous_id": [f"a{i % 131}" for i in range(n)],
            "timestamp": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86400 * 30, n), unit="s"),
            "amount": rng.integers(1, 500, n),
            "row": np.arange(n),  # every row distinct, so every row has its own id
        }
    )


def copies_by_id(srv: Any, project: str = "dev") -> collections.Counter[str]:
    """``{event_id: stored copies}`` of ``project`` on the server."""
    rows = srv.state.storage.fetch(
        "SELECT event_id, COUNT(*) AS n FROM events WHERE project = ? GROUP BY event_id",
        (project,),
    )
    return collections.Counter({r["event_id"]: int(r["n"]) for r in rows})


def record(name: str, **figures: Any) -> dict[str, Any]:
    """Print the figures of a proof and write them to ``artifacts/reliability/NAME.json``."""
    figures = {"proof": name, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime()), **figures}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"\nRELIABILITY {name}: {json.dumps(figures, default=str)}")
    return figures
