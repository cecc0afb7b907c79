"""The client's connection pools: one pool of one connection per request in flight
(``_Shards``), each with the cheaper idle-connection check (``_Stream``), which gives
httpcore the same answers, so a connection the server closed is never reused."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import textwrap

import httpx

import millimetric_nb as mm
from millimetric_nb.client import AsyncClient, _Backend, _Shards
from millimetric_nb.errors import MillimetricError

KEY = "sk_live_pool0001_" + "p" * 32
_BODY = b'{"ok":true}'
_REPLY = (b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: "
          + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


async def _closing_server(connections: list[int]) -> asyncio.Server:
    """Answers one request per connection (advertising keep-alive), then closes it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        head = await reader.readuntil(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")]
        if length:
            await reader.readexactly(length[0])
        writer.write(_REPLY)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_pool_uses_the_cheap_check_and_drops_closed_connections():
    async def go() -> tuple[list[int], list[int], object, list[int]]:
        connections: list[int] = []
        server = await _closing_server(connections)
        port = server.sockets[0].getsockname()[1]
        client = AsyncClient(KEY, f"http://127.0.0.1:{port}", rate_limits="off",
                             allow_insecure_http=True)
        try:
            statuses = []
            attempts = []
            for _ in range(3):
                out = await client.send_batch_body(b'{"events":[{"event":"a"}]}', 1)
                statuses.append(out.status)
                attempts.append(out.attempts)
                await asyncio.sleep(0.05)  # the server's close reaches our socket
            shards = client._pool()._transport  # type: ignore[attr-defined]
            assert isinstance(shards, _Shards) and len(shards._shards) == 1  # one at a time
            backend = shards._shards[0]._pool._network_backend
        finally:
            await client.aclose()
            await asyncio.sleep(0.05)  # the server's handlers see the end of stream
            server.close()
            await server.wait_closed()
        return statuses, connections, backend, attempts

    statuses, connections, backend, attempts = asyncio.run(go())
    assert isinstance(backend, _Backend)
    assert statuses == [202, 202, 202]
    # each request found its connection closed by the server (readable: the pending
    # end of stream) and opened a new one at once, instead of failing on the dead one
    # and succeeding only on a retry
    assert len(connections) == 3
    assert attempts == [1, 1, 1]


def test_open_idle_connection_is_not_readable():
    async def go() -> bool:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(_REPLY)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncClient(KEY, f"http://127.0.0.1:{port}", rate_limits="off",
                             allow_insecure_http=True)
        try:
            await client.send_batch_body(b'{"events":[{"event":"a"}]}', 1)
            pool = client._pool()._transport._shards[0]._pool  # type: ignore[attr-defined]
            (conn,) = pool.connections
            return conn._connection._network_stream.get_extra_info("is_readable")
        finally:
            await client.aclose()
            await asyncio.sleep(0.05)  # the server's handlers see the end of stream
            server.close()
            await server.wait_closed()

    assert asyncio.run(go()) is False


def test_a_given_transport_is_left_alone():
    transport = httpx.MockTransport(lambda request: httpx.Response(202, json={"ok": True}))
    client = AsyncClient(KEY, "http://127.0.0.1:9", transport=transport,
                         allow_insecure_http=True)

    async def go() -> object:
        try:
            return client._pool()._transport
        finally:
            await client.aclose()

    assert asyncio.run(go()) is transport


async def _counting_server(connections: list[int], requests: list[int],
                           delay: float = 0.0) -> asyncio.Server:
    """Keeps each connection open and answers every request on it (after ``delay``)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length:
                    await reader.readexactly(length[0])
                requests.append(1)
                await asyncio.sleep(delay)
                writer.write(_REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_requests_in_flight_each_get_a_pool_and_reuse_its_connection():
    async def go() -> tuple[list[int], list[int], list[int], int, int]:
        connections: list[int] = []
        requests: list[int] = []
        server = await _counting_server(connections, requests, delay=0.05)
        port = server.sockets[0].getsockname()[1]
        client = AsyncClient(KEY, f"http://127.0.0.1:{port}", rate_limits="off",
                             allow_insecure_http=True)
        statuses: list[int] = []
        try:
            for _ in range(3):  # three rounds of 6 at once: the same 6 connections
                outs = await asyncio.gather(*[
                    client.send_batch_body(b'{"events":[{"event":"a"}]}', 1)
                    for _ in range(6)])
                statuses += [o.status for o in outs]
            shards = client._pool()._transport  # type: ignore[attr-defined]
            pools, left = len(shards._shards), shards.in_flight
        finally:
            await client.aclose()
            await asyncio.sleep(0.05)
            server.close()
            await server.wait_closed()
        return statuses, connections, requests, pools, left

    statuses, connections, requests, pools, left = asyncio.run(go())
    assert statuses == [202] * 18 and len(requests) == 18
    assert pools == 6  # one pool per request in flight
    assert len(connections) == 6  # each pool's keep-alive connection served 3 requests
    assert left == 0  # every response's close freed its pool


def test_past_the_most_pools_requests_wait_in_the_least_busy():
    async def go() -> tuple[list[int], int, list[int], int]:
        connections: list[int] = []
        requests: list[int] = []
        server = await _counting_server(connections, requests, delay=0.05)
        port = server.sockets[0].getsockname()[1]
        client = AsyncClient(KEY, f"http://127.0.0.1:{port}", rate_limits="off",
                             allow_insecure_http=True)
        try:
            http = client._pool()
            http._transport._most = 2  # type: ignore[attr-defined]
            outs = await asyncio.gather(*[
                client.send_batch_body(b'{"events":[{"event":"a"}]}', 1) for _ in range(5)])
            shards = http._transport  # type: ignore[attr-defined]
            pools, left = len(shards._shards), shards.in_flight
        finally:
            await client.aclose()
            await asyncio.sleep(0.05)
            server.close()
            await server.wait_closed()
        return [o.status for o in outs], pools, connections, left

    statuses, pools, connections, left = asyncio.run(go())
    assert statuses == [202] * 5
    assert pools == 2 and len(connections) == 2
    assert left == 0


def test_a_request_that_fails_frees_its_pool():
    async def go() -> tuple[str, int]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()  # no answer at all

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncClient(KEY, f"http://127.0.0.1:{port}", rate_limits="off",
                             allow_insecure_http=True, max_attempts=1)
        try:
            try:
                await client.send_batch_body(b'{"events":[{"event":"a"}]}', 1)
                failure = ""
            except MillimetricError as exc:
                failure = exc.code
            left = client._pool()._transport.in_flight  # type: ignore[attr-defined]
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()
        return failure, left

    code, left = asyncio.run(go())
    assert code  # the request failed (the server hung up without an answer)...
    assert left == 0  # ...and its pool is free for the next one


ASYNCIO_RUN_SCRIPT = textwrap.dedent("""
    import asyncio, json, os
    import httpx, psutil
    import millimetric_nb as mm

    port = httpx.URL(os.environ["T_URL"]).port

    def open_connections():
        return sum(1 for c in psutil.Process().net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)

    with mm.Client(os.environ["T_KEY"], os.environ["T_URL"], rate_limits="off") as c:
        async def inside():
            await c.async_client.track("inside_run", anonymous_id="a1")
            return c.async_client._pools[asyncio.get_running_loop()].http, open_connections()

        http, during = asyncio.run(inside())
        after = open_connections()
        c.track("after_run", anonymous_id="a1")  # the client goes on, on its own loop
        own = c.async_client._pools[c._loop].http
    print(json.dumps({"during": during, "closed": http.is_closed, "after": after,
                      "own_closed": own.is_closed, "at_end": open_connections()}))
""")


def test_a_pool_used_under_asyncio_run_is_closed_when_that_loop_ends(mm_server):
    """In a fresh process: this one may have had asyncio patched by nest_asyncio2, whose
    ``asyncio.run`` keeps its loop open."""
    env = {**os.environ, "T_KEY": mm_server.keys["sk"], "T_URL": mm_server.url}
    proc = subprocess.run([sys.executable, "-c", ASYNCIO_RUN_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout)
    assert seen["during"] == 1
    # closed by the loop's shutdown, its connection with it: not left to the GC
    assert seen["closed"] and seen["after"] == 0
    assert seen["own_closed"] and seen["at_end"] == 0  # Client.close closed its own
    assert [r["event_name"] for r in mm_server.stored_events()] == ["inside_run", "after_run"]


def test_a_loop_closed_without_its_shutdown_leaves_no_error_behind(mm_server):
    caught: list[object] = []
    hook, sys.unraisablehook = sys.unraisablehook, caught.append
    try:
        with mm.Client(mm_server.keys["sk"], mm_server.url, rate_limits="off") as c:
            loop = asyncio.new_event_loop()
            loop.run_until_complete(c.async_client.track("on_a_bare_loop"))
            loop.close()  # without shutdown_asyncgens: the pool cannot be closed now
            c.track("next")  # drops that pool
            assert loop not in c.async_client._pools
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert caught == []
    assert mm_server.count() == 2
