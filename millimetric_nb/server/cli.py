"""``millimetric-nb serve``: run the local server until SIGINT/SIGTERM.

``--key KEY`` (repeatable) gives the accepted keys, each belonging to project
``dev`` unless written ``KEY=project``. Without ``--key`` one key of each kind is
minted for project ``dev`` and printed once at start. Once ready the command
prints ``listening on http://HOST:PORT`` (the real port when ``--port 0``).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from .config import MAX_LATENCY_MS, MAX_PORT, ServerConfig, parse_key_spec, parse_limits

DEFAULT_DB = str(Path(".millimetric") / "server.sqlite3")


DESCRIPTION = """\
Run the local Millimetric server (the Worker stand-in) until Ctrl-C or SIGTERM.
Once ready it prints 'listening on http://HOST:PORT'. Without --key it mints one
key of each kind (pk, sk, rk, ak) for project 'dev' and prints them once."""

EPILOG = """\
examples:
  millimetric-nb serve                          # http://127.0.0.1:8787, production limits
  millimetric-nb serve --key "$MILLIMETRIC_KEY" --db :memory:
  millimetric-nb serve --port 0 --limits off --fail-rate 0.1 --reset-rate 0.05 --seed 1
"""


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = float("nan")
    if not 0.0 <= rate <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"a rate is a number between 0 and 1, not {value!r}")
    return rate


def _whole(value: str, most: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= most:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to {most}, not {value[:32]!r}")
    return number


def _port(value: str) -> int:
    return _whole(value, MAX_PORT)


def _latency(value: str) -> int:
    return _whole(value, MAX_LATENCY_MS)


def _key(value: str) -> str:
    try:
        parse_key_spec(value)
    except ValueError as exc:  # its message never quotes the secret
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _limits(value: str) -> str:
    try:
        parse_limits(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected production, off, or xN with a number N > 0 (e.g. x10, x0.5), "
            f"not {value!r}"
        ) from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options (and its description and examples) to ``parser``."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8787, metavar="N",
                        help="port (default 8787; 0 picks a free one and prints it)")
    parser.add_argument("--db", default=DEFAULT_DB, metavar="PATH",
                        help=f"SQLite file (default {DEFAULT_DB}; ':memory:' allowed)")
    parser.add_argument("--key", type=_key, action="append", default=None, metavar="KEY[=PROJECT]",
                        help="an accepted key, any kind (repeatable); project 'dev' unless "
                             "KEY=project; one key for two projects is refused. Without "
                             "--key, one key of each kind is minted and printed")
    parser.add_argument("--limits", type=_limits, default="production",
                        metavar="production|off|xN",
                        help="rate limits: the contract's token buckets (default), none, or "
                             "every refill rate and burst multiplied by N")
    parser.add_argument("--fail-rate", type=_rate, default=0.0, metavar="F",
                        help="fraction of write requests answered 500/502 before writing")
    parser.add_argument("--ambiguous-rate", type=_rate, default=0.0, metavar="F",
                        help="fraction of write requests written, then failed (500, or the "
                             "connection dropped)")
    parser.add_argument("--reset-rate", type=_rate, default=0.0, metavar="F",
                        help="fraction of write requests whose connection is dropped "
                             "without writing or answering")
    parser.add_argument("--latency-ms", type=_latency, default=0, metavar="N",
                        help="milliseconds added before every answer")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed of fault injection (the same seed, the same faults)")
    parser.add_argument("--dedup", action="store_true",
                        help="store an event_id once per project: a resend is accepted "
                             "(counted in the answer) but never stored twice")
    parser.add_argument("--allow-origin", action="append", default=None, metavar="ORIGIN",
                        help="an origin pk_ keys may be used from (repeatable; default "
                             "http://localhost:3000)")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` described by parsed ``serve`` options."""
    config = ServerConfig(
        host=args.host, port=args.port, db=args.db, keys=args.key, limits=args.limits,
        fail_rate=args.fail_rate, ambiguous_rate=args.ambiguous_rate,
        reset_rate=args.reset_rate, latency_ms=args.latency_ms, seed=args.seed,
        dedup=args.dedup,
    )
    if args.allow_origin:
        config = dataclasses.replace(config, allowed_origins=tuple(args.allow_origin))
    return config


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad options."""
    import uvicorn

    from .app import create_app
    from .runner import bind_socket, uvicorn_config

    try:
        config = config_from_args(args)
        app = create_app(config)
    except (ValueError, OSError, sqlite3.Error) as exc:
        print(f"millimetric-nb serve: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind_socket(config.host, config.port)
    except OSError as exc:
        print(f"millimetric-nb serve: cannot listen on {config.host}:{config.port}: {exc}",
              file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if config.keys is None:
        print("minted keys for project 'dev' (shown once):")
        for kind, key in app.state.millimetric.keys.items():
            print(f"  {kind}: {key}")
    sys.stdout.flush()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                print(f"listening on http://{shown}:{port}", flush=True)

    # uvicorn handles SIGINT/SIGTERM itself (a graceful shutdown), then re-raises the
    # signal to the handlers that were installed before it: make those quiet, so that
    # a requested stop ends with status 0 rather than death by signal.
    stopped_by: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: stopped_by.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    server = _Server(uvicorn_config(app, config))
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        app.state.millimetric.storage.close()
    return 0
