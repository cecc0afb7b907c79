"""The client used the way real scripts and notebooks use it, over loopback HTTP.

Each test here reproduces a failure found by using the public API like a user:
moving one client between event loops, queueing more requests than the
connection pool holds, and reads that time out.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

import millimetric_nb as mm
from millimetric_nb.contract import RateLimit
from millimetric_nb.errors import TransportError
from millimetric_nb.ratelimit import RateLimiter, TokenBucket

WINDOW = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "limit": 1000}


pytestmark = pytest.mark.usefixtures("fast_retries")


def stored_names(srv) -> list[str]:
    """Event names stored by ``srv`` (read back with a fresh client)."""
    with mm.Client(srv.keys["sk"], srv.url) as reader:
        rows = reader.read("query", WINDOW)["rows"]
    return sorted(r["event_name"] for r in rows)


def test_sync_calls_after_asyncio_run_of_the_same_client(mm_server):
    """A script awaits the client under ``asyncio.run`` (whose loop then closes), then
    calls it synchronously: the second call must not die on the dead loop's pool."""
    client = mm.Client(mm_server.keys["sk"], mm_server.url)
    asyncio.run(client.async_client.track("from_asyncio_run"))
    outcome = client.track("from_sync_after")
    assert outcome.status == 202
    client.close()
    assert stored_names(mm_server) == ["from_asyncio_run", "from_sync_after"]


def test_asyncio_run_after_sync_calls_of_the_same_client(mm_server):
    """Sync calls first (the Client's private loop), then ``asyncio.run`` of its
    ``async_client``, then sync again: every call is stored exactly once."""
    client = mm.Client(mm_server.keys["sk"], mm_server.url)
    client.track("sync_1")

    async def main() -> int:
        result = await client.async_client.batch([{"event": "async_1"}, {"event": "async_2"}])
        return result.stored

    assert asyncio.run(main()) == 2
    assert client.track("sync_2").status == 202
    client.close()
    assert client.closed
    assert stored_names(mm_server) == ["async_1", "async_2", "sync_1", "sync_2"]


def test_two_asyncio_runs_with_rate_limited_contention(mm_server):
    """The same AsyncClient under two successive ``asyncio.run`` calls, each with enough
    concurrent calls to queue on the route's bucket lock (bound to the first loop)."""
    limiter = RateLimiter({"track": RateLimit(refill=1000.0, burst=2)})
    client = mm.AsyncClient(mm_server.keys["sk"], mm_server.url, rate_limits=limiter)

    async def burst(tag: str) -> int:
        outcomes = await asyncio.gather(*(client.track(f"{tag}") for _ in range(6)))
        return len(outcomes)

    assert asyncio.run(burst("first")) == 6
    assert asyncio.run(burst("second")) == 6
    asyncio.run(client.aclose())
    assert stored_names(mm_server) == ["first"] * 6 + ["second"] * 6


def test_bucket_lock_follows_the_running_loop() -> None:
    """A token bucket whose lock was bound to a closed loop still serves a new loop."""
    bucket = TokenBucket(RateLimit(refill=1000.0, burst=1))

    async def contend() -> list[float]:
        return await asyncio.gather(*(bucket.acquire() for _ in range(3)))

    # burst 1: of three acquisitions at least two wait for a refill, queued on the lock
    for waits in (asyncio.run(contend()), asyncio.run(contend())):  # the second run raised
        # RuntimeError "bound to a different event loop" before the fix
        assert len(waits) == 3
        assert all(w >= 0.0 for w in waits)
        assert sum(w > 0.0 for w in waits) >= 2, waits


def test_more_concurrent_calls_than_pool_connections_all_get_in(mm_server_factory):
    """Many concurrent tracks on one client queue for a connection instead of failing
    with a pool timeout reported as 'could not connect' (the wait is the client's own
    queue, not the server's fault)."""
    import httpx

    # 15 calls, a pool of 5 connections (a real HTTP transport, only smaller than httpx's
    # 100), 2.5 s per answer: the third wave waits ~5 s for a connection, longer than
    # the 4 s timeout that each request itself respects. (With httpx's 100 connections,
    # 300 calls, 0.8 s answers and a 1.5 s timeout, the 100 simultaneous connects
    # starved of CPU on a loaded machine timed out: connect_failed. Few connections and
    # wide margins keep the case and lose the flake.)
    timeout, latency, pool, calls = 4.0, 2.5, 5, 15
    srv = mm_server_factory(limits="off", latency_ms=int(latency * 1000))
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=pool))
    client = mm.AsyncClient(srv.keys["sk"], srv.url, rate_limits="off", timeout=timeout,
                            max_attempts=1, transport=transport)

    async def main() -> list[object]:
        try:
            return await asyncio.gather(*(client.track("many") for _ in range(calls)),
                                        return_exceptions=True)
        finally:
            await client.aclose()

    started = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - started
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], [str(f) for f in failures[:3]]
    assert stored_names(srv).count("many") == calls
    # the case is really exercised: three waves, so the last one queued > timeout
    assert calls // pool == 3 and elapsed > (calls // pool) * latency > timeout + latency


def test_read_timeout_is_not_reported_as_a_possible_write(mm_server_factory):
    """A read (GET /v1/query) that times out writes nothing: it is not ambiguous and its
    message does not claim the server may have written something."""
    srv = mm_server_factory(limits="off", latency_ms=800)
    with mm.Client(srv.keys["sk"], srv.url, timeout=0.2, max_attempts=2) as client:
        with pytest.raises(TransportError) as info:
            client.read("query", WINDOW)
    err = info.value
    assert err.code == "timeout"
    assert err.attempts == 2
    assert err.ambiguous is False
    assert "written" not in str(err)
    assert "/v1/query" in str(err)


INTERRUPT_SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, threading, time
    from millimetric_nb.sync import Client

    def interrupt_soon():
        time.sleep(float(os.environ["T_AFTER"]))
        os.kill(os.getpid(), signal.SIGINT)  # what a kernel interrupt delivers

    def body():
        c = Client(os.environ["T_KEY"], os.environ["T_URL"])
        threading.Thread(target=interrupt_soon, daemon=True).start()
        try:
            c.batch([{"event": "big", "properties": {"i": i}} for i in range(30_000)])
        except KeyboardInterrupt as exc:
            r = exc.result
            print("ACCOUNT", r.events, r.stored, r.failed, r.not_sent,
                  sum(q.events for q in r.requests if q.ambiguous), flush=True)
            print("NOTE", " ".join(getattr(exc, "__notes__", [])), flush=True)
        time.sleep(1.0)  # nothing may keep sending in the background
        print("AFTER", c.track("after").status, flush=True)
        c.close()

    if os.environ["T_MODE"] == "loop":
        async def main():
            # asyncio.run cancels its main task on SIGINT; a Jupyter kernel raises
            # KeyboardInterrupt where the loop waits instead, as restored here.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            body()
        asyncio.run(main())
    else:
        body()
""")


@pytest.mark.parametrize("mode", ["script", "loop"])
def test_interrupted_sync_batch_stops_and_gives_its_account(mm_server_factory, mode):
    """Ctrl-C / a kernel interrupt during a sync ``batch``: the batch stops (nothing is
    sent afterwards behind the user's back), the KeyboardInterrupt carries the account
    of every event (stored, in flight and possibly written, never sent), and the client
    still works afterwards."""
    srv = mm_server_factory(limits="production", latency_ms=200)
    env = {**os.environ, "T_KEY": srv.keys["sk"], "T_URL": srv.url, "T_AFTER": "1.0",
           "T_MODE": mode}
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    events, stored, failed, not_sent, in_flight = map(int, lines["ACCOUNT"].split())
    assert events == 30_000 and stored + failed + not_sent == events
    assert 0 < not_sent  # the batch did stop
    assert failed == in_flight  # every failed request was cut off mid-flight: ambiguous
    assert "interrupted" in lines["NOTE"] and f"{stored:,}" in lines["NOTE"]
    assert lines["AFTER"] == "202"
    big = [e for e in srv.stored_events() if e["event_name"] == "big"]
    assert stored <= len(big) <= stored + in_flight


@pytest.mark.parametrize("header", ["inf", "nan", "Wed, 21 Oct 2015 07:28:00 GMT", "soon"])
def test_odd_retry_after_headers_neither_hang_nor_crash(header):
    """A proxy in front of the API may send ``Retry-After: inf`` or an HTTP date (both
    legal to parse, the date is RFC 9110's other form): the client must not pause the
    route forever, and uses the body's ``retry_after_s`` (here 0) when the header is
    unusable. Faults shaped with MockTransport: the local server always sends seconds."""
    import httpx

    answers = iter([
        httpx.Response(429, headers={"Retry-After": header},
                       json={"error": "rate_limited", "details": {"retry_after_s": 0}}),
        httpx.Response(202, json={"ok": True, "event_id": "e1"}),
    ])
    transport = httpx.MockTransport(lambda request: next(answers))
    client = mm.AsyncClient("sk_live_1a2b3c4d_" + "s" * 24, "http://127.0.0.1:9",
                            transport=transport)

    async def main() -> object:
        try:
            return await asyncio.wait_for(client.track("x"), timeout=10)
        finally:
            await client.aclose()

    outcome = asyncio.run(main())
    assert outcome.attempts == 2 and outcome.status == 202
    assert client.limiter.bucket("track").paused_for < 2.0


def test_retry_after_as_an_http_date_is_honoured():
    """``Retry-After: <HTTP-date>`` in the past means retry now (it used to be ignored,
    and the default 1 s pause applied)."""
    import httpx

    from millimetric_nb.progress import Waiting

    answers = iter([
        httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
                       json={"error": "rate_limited"}),
        httpx.Response(202, json={"ok": True, "event_id": "e1"}),
    ])
    seen: list[object] = []
    client = mm.AsyncClient("sk_live_1a2b3c4d_" + "s" * 24, "http://127.0.0.1:9",
                            transport=httpx.MockTransport(lambda request: next(answers)),
                            observer=seen.append)

    async def main() -> object:
        try:
            return await client.track("x")
        finally:
            await client.aclose()

    assert asyncio.run(main()).attempts == 2
    assert [e for e in seen if isinstance(e, Waiting) and e.reason == "retry_after"] == []


def test_cancelled_async_batch_stops_and_gives_its_account(mm_server_factory):
    """A cancelled ``await client.batch(...)`` (what a notebook interrupt does to a
    top-level await) stops every request and carries the account on the
    CancelledError (``.result`` and a traceback note)."""
    srv = mm_server_factory(limits="production", latency_ms=200)
    client = mm.AsyncClient(srv.keys["sk"], srv.url)
    events = [{"event": "big"} for _ in range(30_000)]

    async def main() -> asyncio.CancelledError:
        task = asyncio.ensure_future(client.batch(events))
        await asyncio.sleep(0.8)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("the batch was not cancelled")

    cancelled = asyncio.run(main())
    result = cancelled.result
    assert result.events == 30_000
    assert result.stored + result.failed + result.not_sent == 30_000 and result.not_sent > 0
    assert all(r.error.code == "interrupted" and r.ambiguous
               for r in result.requests if r.state == "failed")
    assert any("interrupted" in note for note in cancelled.__notes__)
    assert result.stored <= srv.count() <= result.stored + result.failed
    # Requests cut off in flight may still be written by the server after the
    # cancel (they are the ones flagged ambiguous); no request may leave after it.
    asyncio.run(asyncio.sleep(0.8))
    left = [r for r in result.requests if r.state in ("stored", "failed")]
    assert srv.status_counts()["batch"].get(202, 0) <= len(left)
    assert result.stored <= srv.count() <= result.stored + result.failed


def test_batch_given_a_dataframe_says_how_to_send_one(mm_server):
    """Iterating a DataFrame yields its column names: ``batch(df)`` used to answer
    'events[0]: must be a mapping'. It now names the way to send a frame."""
    import pandas as pd

    from millimetric_nb.errors import ValidationError

    with mm.Client(mm_server.keys["sk"], mm_server.url) as client:
        with pytest.raises(ValidationError) as info:
            client.batch(pd.DataFrame({"event": ["a", "b"]}))
    text = str(info.value)
    assert "DataFrame" in text and "send_batch" in text and "to_dict" in text
    assert info.value.problems[0][:2] == ("events", "type")
    assert mm_server.count() == 0


@pytest.mark.parametrize("params", [None, "from=x", 5])
def test_read_with_params_that_are_not_a_mapping_is_typed(mm_server, params):
    from millimetric_nb.errors import ValidationError

    with mm.Client(mm_server.keys["sk"], mm_server.url) as client:
        with pytest.raises(ValidationError) as info:
            client.read("query", params)
    assert info.value.problems[0][:2] == ("params", "type")
    assert mm_server.status_counts() == {}


def test_errors_survive_pickle_and_deepcopy(mm_server):
    """A failed batch's error crosses process boundaries (concurrent.futures, joblib)
    and ``copy.deepcopy`` intact: BatchFailedError used to fail to rebuild
    ('missing ... argument: result')."""
    import copy
    import pickle

    from millimetric_nb.client import BatchFailedError
    from millimetric_nb.errors import ValidationError

    unknown = "sk_live_1a2b3c4d_" + "u" * 24  # well-formed, not one of the server's
    with mm.Client(unknown, mm_server.url) as client:
        with pytest.raises(BatchFailedError) as info:
            client.batch([{"event": "x"}] * 1500)
        with pytest.raises(ValidationError) as invalid:
            client.track("")
    for err in (info.value, invalid.value):
        for clone in (pickle.loads(pickle.dumps(err)), copy.deepcopy(err)):
            assert type(clone) is type(err)
            assert str(clone) == str(err)
            assert (clone.code, clone.status, clone.attempts) == (
                err.code, err.status, err.attempts)
    clone = pickle.loads(pickle.dumps(info.value))
    assert clone.result.counts == info.value.result.counts
    assert clone.result.stored == 0 and clone.result.events == 1500
    assert clone.result.requests[0].error.code == "invalid_api_key"
    assert copy.deepcopy(invalid.value).problems == invalid.value.problems


def test_interrupt_inside_a_request_still_gives_the_whole_account(mm_server_factory):
    """Ctrl-C may land while one of batch()'s requests is running its own code (not
    where the loop waits): gather then hands the KeyboardInterrupt on instead of a
    cancellation. The batch must still stop, and the interrupt carry every event's
    account, the interrupted request counted as cut off in flight (ambiguous)."""
    from millimetric_nb.progress import RequestSent

    srv = mm_server_factory(limits="production", latency_ms=100)
    left = 0

    def ctrl_c_in_the_fifth_request(event: object) -> None:
        nonlocal left
        if isinstance(event, RequestSent):
            left += 1
            if left == 5:
                raise KeyboardInterrupt

    events = [{"event": "big", "properties": {"i": i}} for i in range(40_000)]
    with mm.Client(srv.keys["sk"], srv.url) as client:
        with pytest.raises(KeyboardInterrupt) as info:
            client.batch(events, observer=ctrl_c_in_the_fifth_request)
        result = info.value.result
        assert result.events == 40_000
        assert result.stored + result.failed + result.not_sent == 40_000
        assert result.not_sent > 0  # it stopped
        cut = [r for r in result.requests if r.state == "failed"]
        assert cut and all(r.error.code == "interrupted" and r.ambiguous for r in cut)
        assert any("interrupted" in note for note in info.value.__notes__)
        time.sleep(0.5)  # anything still in flight lands; nothing new may leave
        assert result.stored <= srv.count() <= result.stored + result.failed
        assert client.track("after").status == 202  # the client still works
