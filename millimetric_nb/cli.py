"""The ``millimetric-nb`` command: ``serve`` (the local server) and ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="millimetric-nb",
        description="Send analytics events to Millimetric from pandas and Jupyter.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the local Millimetric server (the Worker stand-in)")
    from .server.cli import add_arguments as add_serve_arguments

    add_serve_arguments(serve)

    demo = sub.add_parser("demo", help="run the end-to-end demo against a local server")
    from .demo import add_arguments as add_demo_arguments

    add_demo_arguments(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``millimetric-nb`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from .server.cli import run as run_serve

        return run_serve(args)
    if args.command == "demo":
        from .demo import run as run_demo

        return run_demo(args)
    return 2  # pragma: no cover - argparse already refuses unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
