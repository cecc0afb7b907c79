"""A Dask DataFrame on a real ``dask.distributed`` cluster of two worker processes
(loopback only): ``mm.validate`` runs the checks on the workers and merges one report
equal to the pandas one; ``mm.backfill`` computes partitions on the cluster and sends
them in order through the local server, with the pandas frame's ids."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

import millimetric_nb as mm
from millimetric_nb.client import AsyncClient

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

NOW = pd.Timestamp("2027-01-01T00:00:00Z")
N = 20_000


@pytest.fixture(scope="module")
def cluster_client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
        dashboard_address=None,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def messy(n: int = N) -> pd.DataFrame:
    """Events with problems of several rules, and warnings that count rows."""
    rng = np.random.default_rng(11)
    df = pd.DataFrame({
        "event": rng.choice(["view", "buy"], n).astype(object),
        "user_id": [f"u{i % 301}" for i in range(n)],
        "timestamp": (pd.Timestamp("2026-10-01", tz="UTC")
                      + pd.to_timedelta(rng.integers(0, 86400 * 20, n), unit="s")
                      ).strftime("%Y-%m-%dT%H:%M:%SZ").astype(object),
        "amount": rng.integers(0, 1000, n),
        "note": rng.choice(["a", "b"], n).astype(object),
    })
    df.loc[df.index % 997 == 3, "event"] = None                          # required
    df.loc[df.index % 1499 == 7, "event"] = "x" * 200                    # too_long
    df.loc[df.index % 1301 == 11, "timestamp"] = "not a date"            # invalid_timestamp
    df.loc[df.index % 887 == 5, "timestamp"] = None                      # a warning (counted)
    df.loc[df.index % 1999 == 13, "timestamp"] = "2031-01-01T00:00:00Z"  # in the future
    return df


def test_validate_on_the_cluster_equals_pandas(cluster_client):
    df = messy()
    expected = mm.validate_frame(df, now=NOW, warn=False)
    assert expected.summary["rule"].nunique() >= 3 and expected.warnings
    ddf = dd.from_pandas(df, npartitions=6)
    with distributed.get_task_stream(client=cluster_client) as ts:
        got = mm.validate(ddf, now=NOW, warn=False)
    assert got.n_rows == N
    pd.testing.assert_frame_equal(
        got.errors.reset_index(drop=True).astype(object),
        expected.errors.reset_index(drop=True).astype(object),
    )
    assert got.warnings == expected.warnings  # counted warnings summed over partitions
    pd.testing.assert_frame_equal(got.summary.astype(object), expected.summary.astype(object))
    # the checks ran as tasks on the cluster's worker processes
    checks = [t for t in ts.data if "check_partition" in str(t["key"])]
    assert len(checks) == 6
    assert {t["worker"] for t in checks} <= set(cluster_client.scheduler_info()["workers"])


def test_backfill_from_the_cluster_in_order(cluster_client, mm_server, tmp_path):
    df = messy()
    expected = mm.backfill(df, dry_run=True, progress=False, now=NOW)
    ddf = dd.from_pandas(df, npartitions=6)
    journal = tmp_path / "j.sqlite"

    async def main() -> mm.SendResult:
        async with AsyncClient(key=mm_server.keys["sk"], host=mm_server.url,
                               rate_limits="off") as c:
            return await mm.abackfill(ddf, client=c, progress=False, now=NOW,
                                      journal=journal, chunksize=1500)

    with distributed.get_task_stream(client=cluster_client) as ts:
        res = asyncio.run(main())
    assert len({str(t["key"]) for t in ts.data}) >= 6  # the partitions came off the cluster
    assert res.error is None
    assert res.rows.index.equals(pd.RangeIndex(N))
    assert res.rows["status"].astype(str).tolist() == [
        "sent" if s == "planned" else s for s in expected.rows["status"].astype(str)
    ]
    assert res.rows["event_id"].fillna("").tolist() == (
        expected.rows["event_id"].fillna("").tolist())
    stored = {e["event_id"] for e in mm_server.stored_events()}
    assert stored == set(expected.rows["event_id"].dropna())
    assert mm_server.count() == expected.counts["planned"]
    again = asyncio.run(main())  # resumed from the journal: nothing sent twice
    assert again.counts["skipped"] == expected.counts["planned"] and again.counts["sent"] == 0
