"""The ``millimetric-nb`` command: one entry point, a sub-command per job.

* ``serve`` - the local Millimetric server; ``demo`` - the end-to-end demo;
* ``validate FILE_OR_DIR`` - check every row, send nothing;
* ``backfill FILE_OR_DIR`` - send every valid row, resumably (a journal next to the file);
* ``verify FILE`` - what the journal says was sent, against what the server stores;
* ``forget`` - delete every event of some users;
* ``query`` / ``stats`` / ``sources`` - read back, as a table, CSV or Parquet.

Exit status: 0 all good; 1 the data (rows invalid, not sent, missing); 2 the command
could not do its job, with one line on stderr saying what is wrong and what to do
(never a traceback for bad input). Keys come from ``$MILLIMETRIC_KEY`` or a prompt
that does not echo, and never appear in any output.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import MillimetricError
from .account import add_forget, add_reads
from .common import EXIT_DATA, EXIT_USAGE, CliError, note, one_line
from .files import add_backfill, add_validate, add_verify


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="millimetric-nb",
        description="Send analytics events to Millimetric from files, pandas and Jupyter.",
        epilog="run 'millimetric-nb COMMAND --help' for a command's options. The key comes "
        "from MILLIMETRIC_KEY (or a prompt that does not echo), the host from "
        "MILLIMETRIC_HOST (or --host).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the local Millimetric server (the Worker stand-in)")
    from ..server.cli import add_arguments as add_serve_arguments

    add_serve_arguments(serve)

    demo = sub.add_parser("demo", help="run the end-to-end demo against a local server")
    from ..demo import add_arguments as add_demo_arguments

    add_demo_arguments(demo)
    add_validate(sub)
    add_backfill(sub)
    add_verify(sub)
    add_forget(sub)
    add_reads(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``millimetric-nb`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from ..server.cli import run as run_serve

        return run_serve(args)
    if args.command == "demo":
        from ..demo import run as run_demo

        return run_demo(args)
    prefix = f"millimetric-nb {args.command}: error:"
    try:
        return int(args.handler(args))
    except CliError as exc:
        note(f"{prefix} {exc}")
        return exc.exit_code
    except MillimetricError as exc:
        note(f"{prefix} {one_line(exc)}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        note(f"millimetric-nb {args.command}: interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush cannot fail again
        return EXIT_DATA


__all__ = ["build_parser", "main"]
