"""Client (sync face) and the run_sync bridge, against the local server over loopback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from millimetric_nb import contract, sync
from millimetric_nb.client import AsyncClient, no_backoff
from millimetric_nb.errors import ConfigurationError, KeyRefusedError, ValidationError
from millimetric_nb.sync import Client, connect, default_client, run_sync

WIDE = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "limit": 1000}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    monkeypatch.delenv(contract.ENV_KEY, raising=False)
    monkeypatch.delenv(contract.ENV_HOST, raising=False)
    monkeypatch.setattr(sync, "_default", None)
    with no_backoff():
        yield


def test_sync_client_round_trip(mm_server):
    with Client(mm_server.keys["sk"], mm_server.url) as c:
        assert repr(c) == f"Client(key={c.key_masked!r}, host={mm_server.url!r})"
        assert mm_server.keys["sk"].split("_", 3)[3] not in repr(c)
        assert isinstance(c.async_client, AsyncClient)
        out = c.track("signup", user_id="u1", properties={"plan": "pro"})
        assert out.status == 202 and out.body["event_id"]
        result = c.batch([{"event": "row", "properties": {"i": i}} for i in range(1200)])
        assert result.stored == 1200 and len(result.requests) == 2
        assert c.identify("anon", "u2").status == 200
        assert c.forget("u1").status == 200
        rows = c.read("query", {**WIDE, "event": "row"})["rows"]
        assert len(rows) == 1000  # the read limit
        with pytest.raises(ValidationError):
            c.track("")
    assert c.closed
    events = mm_server.stored_events()
    assert len(events) == 1201  # 1200 rows + $identify; u1's signup forgotten
    assert not any(e["user_id"] == "u1" for e in events)


def test_calls_share_one_private_loop(mm_server):
    async def loop_id() -> int:
        return id(asyncio.get_running_loop())

    with Client(mm_server.keys["sk"], mm_server.url) as c:
        first = c.run(loop_id())
        c.track("a")
        c.track("b")
        assert c.run(loop_id()) == first
        loop = c._loop
        assert loop is not None and not loop.is_closed()
    assert loop.is_closed()  # close() closes it
    assert mm_server.count() == 2


def test_pk_key_refused_by_sync_client(mm_server):
    with pytest.raises(KeyRefusedError):
        Client(mm_server.keys["pk"], mm_server.url)
    assert mm_server.status_counts() == {}


def test_default_client_needs_a_key():
    with pytest.raises(ConfigurationError) as info:
        default_client()
    assert "connect(" in str(info.value) and contract.ENV_KEY in str(info.value)


def test_default_client_from_environment(monkeypatch, mm_server):
    monkeypatch.setenv(contract.ENV_KEY, mm_server.keys["sk"])
    monkeypatch.setenv(contract.ENV_HOST, mm_server.url)
    c = default_client()
    try:
        assert default_client() is c
        c.track("env")
    finally:
        c.close()
    assert mm_server.count() == 1


def test_connect_sets_the_default(mm_server):
    c = connect(mm_server.keys["sk"], mm_server.url, max_attempts=2)
    try:
        assert default_client() is c
        assert c.async_client.max_attempts == 2
        c2 = connect(mm_server.keys["sk"], mm_server.url)
        assert default_client() is c2
        c2.close()
    finally:
        c.close()


def test_run_sync_without_a_client(mm_server):
    async def go() -> int:
        async with AsyncClient(mm_server.keys["sk"], mm_server.url) as ac:
            await ac.track("bridged")
        return 7

    assert run_sync(go()) == 7
    assert mm_server.count() == 1


RUNNING_LOOP_SCRIPT = textwrap.dedent("""
    import asyncio, os
    from millimetric_nb.sync import Client

    async def main():
        loop = asyncio.get_running_loop()
        c = Client(os.environ["T_KEY"], os.environ["T_URL"])
        c.track("sync-in-loop")                      # a plain call inside a running loop
        await c.async_client.track("awaited")        # and the same client awaited
        c.batch([{"event": "batched"}] * 3)
        assert asyncio.get_running_loop() is loop
        await c.async_client.aclose()
        print("OK")

    asyncio.run(main())
""")


def test_sync_api_inside_a_running_event_loop(mm_server):
    """In a subprocess: nest_asyncio2 patches asyncio, which must not leak into this one."""
    env = {**os.environ, "T_KEY": mm_server.keys["sk"], "T_URL": mm_server.url}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNING_LOOP_SCRIPT],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "OK"
    assert sorted(e["event_name"] for e in mm_server.stored_events()) == [
        "awaited", "batched", "batched", "batched", "sync-in-loop",
    ]


def test_notebook_sync_and_await(mm_server, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv(contract.ENV_KEY, mm_server.keys["sk"])
    monkeypatch.setenv(contract.ENV_HOST, mm_server.url)
    cells = [
        "import millimetric_nb as mm\nfrom millimetric_nb.sync import connect\n"
        "client = connect()\nclient",
        "out = client.track('nb-sync', properties={'cell': 2})\nout.status",
        "res = await client.async_client.track('nb-await')\nres.status",
        "b = client.batch([{'event': 'nb-batch', 'properties': {'i': i}} for i in range(5)])\n"
        "b.stored",
        "async with mm.AsyncClient() as ac:\n"
        "    r = await ac.track('nb-own-async')\n"
        "r.attempts",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [c.outputs[0]["data"]["text/plain"] for c in nb.cells if c.outputs]
    assert outputs[0].startswith("Client(key='sk_dev_") and "…" in outputs[0]
    assert mm_server.keys["sk"].split("_", 3)[3] not in "".join(outputs)
    assert outputs[1:] == ["202", "202", "5", "1"]
    names = sorted(e["event_name"] for e in mm_server.stored_events())
    assert names == ["nb-await"] + ["nb-batch"] * 5 + ["nb-own-async", "nb-sync"]
