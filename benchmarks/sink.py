"""A loopback HTTP sink for client benchmarks: answers every request ``202`` at once and
stores nothing, so a client's own CPU can be measured without a server's work.

Runs as its own process (``python benchmarks/sink.py``; it prints ``listening on URL``):
its CPU is not the measured process's. :func:`start_sink` starts one and returns
``(process, url)``; :func:`stop_sink` ends it.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

_BODY = b'{"ok":true}'
_REPLY = (b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: "
          + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            writer.write(_REPLY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _main() -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def start_sink() -> tuple[subprocess.Popen[str], str]:
    """Start the sink in a subprocess; ``(process, base URL)``."""
    proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://\S+)", proc.stdout.readline())
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("the sink did not start")


def stop_sink(proc: subprocess.Popen[str]) -> None:
    """End a sink started by :func:`start_sink`."""
    proc.terminate()
    proc.wait(10)


if __name__ == "__main__":
    asyncio.run(_main())
