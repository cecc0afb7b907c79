"""``forget``, ``query``, ``stats`` and ``sources``: the sub-commands that act on what
the project already stores."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .. import contract
from ..engine import iter_source
from .common import (
    EXIT_DATA,
    EXIT_OK,
    CliError,
    add_connection_options,
    add_output_option,
    make_client,
    note,
    printed_warnings,
    say,
    write_frame,
)

#: The window of the reads when no --from is given: this many days before --to.
DEFAULT_DAYS = 30


# --------------------------------------------------------------------------- forget


def add_forget(sub: Any) -> None:
    """The ``forget`` sub-command."""
    p = sub.add_parser(
        "forget", help="permanently delete every event of some users (GDPR / CCPA)",
        description="Permanently delete every event of each user id (POST /v1/forget, one "
        "request per user; an sk_ key is needed). Asks before deleting unless --yes is "
        "given; without a terminal to ask on, it refuses.",
        epilog="exit status: 0 every user was forgotten; 1 some deletes failed; 2 the "
        "command could not run (no confirmation, no key, key refused...)",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", action="append", metavar="ID",
                     help="a user id to forget (repeat for several)")
    who.add_argument("--from-file", metavar="FILE",
                     help="a file of user ids: a .csv, .jsonl or .parquet file with a "
                     "user_id column, or a text file with one id per line")
    p.add_argument("--user-id-col", default="user_id", metavar="COL",
                   help="the column of user ids in --from-file (default: user_id)")
    p.add_argument("--yes", action="store_true",
                   help="delete without asking (needed when there is no terminal)")
    add_connection_options(p)
    p.set_defaults(handler=run_forget)


def _ids_from_file(path_text: str, column: str) -> list[str]:
    path = Path(path_text)
    if not path.is_file():
        raise CliError(f"--from-file {path}: no such file; check the path")
    if path.suffix.lower() in ("", ".txt", ".ids"):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise CliError(f"{path} is not UTF-8: convert it first (e.g. with iconv)") from None
        return [line.strip() for line in lines if line.strip()]
    chunks, _ = iter_source(path, 100_000, {column})
    ids: list[str] = []
    for chunk in chunks:
        if column not in chunk.columns:
            raise CliError(
                f"{path} has no column {column!r} (columns: "
                f"{', '.join(map(str, chunk.columns[:12]))}): name it with --user-id-col COL"
            )
        ids.extend(str(v) for v in chunk[column].dropna())
    return ids


def _confirm(ids: list[str], host: str) -> None:
    what = f"every event of {len(ids):,} user(s) on {host}"
    if not sys.stdin.isatty():
        raise CliError(f"forget permanently deletes {what}: add --yes to confirm (not "
                       "asking: there is no terminal)")
    answer = input(f"This permanently deletes {what}. Type 'yes' to go on: ")
    if answer.strip().lower() != "yes":
        raise CliError("nothing deleted (not confirmed)")


def run_forget(args: argparse.Namespace) -> int:
    """``millimetric-nb forget --user-id ID ... | --from-file FILE``."""
    ids = list(args.user_id or []) or _ids_from_file(args.from_file, args.user_id_col)
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise CliError(f"{args.from_file} holds no user id: nothing to forget")
    client = make_client(args)
    try:
        client.async_client.check_key("forget")  # sk_ only, before asking
        if not args.yes:
            _confirm(ids, client.host)
        frame = pd.DataFrame({"user_id": ids})
        result = frame.millimetric.forget(confirm=True, client=client, progress=False)
    finally:
        client.close()
    c = result.counts
    say(f"forgot {c['sent']:,} of {len(ids):,} user(s) on {client.host}")
    bad = result.rows[result.rows["status"] != "sent"]
    for pos, row in zip(bad.index, bad.itertuples(index=False), strict=True):
        say(f"  not forgotten: {ids[pos]}: {row.status} ({row.error}): {row.message}")
    if result.error is not None:
        note(f"stopped: {result.error}")
    return EXIT_OK if c["sent"] == len(ids) else EXIT_DATA


# --------------------------------------------------------------------------- reads


def _add_window(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("time window")
    g.add_argument("--from", dest="from_", metavar="TIME",
                   help=f"start, inclusive (ISO 8601 date or time, UTC unless it says; "
                   f"default: {DEFAULT_DAYS} days before --to)")
    g.add_argument("--to", metavar="TIME", help="end, exclusive (default: now)")


def _window(args: argparse.Namespace) -> tuple[Any, Any]:
    end = args.to if args.to is not None else dt.datetime.now(dt.UTC)
    if args.from_ is not None:
        return args.from_, end
    try:
        start = pd.Timestamp(end) - pd.Timedelta(days=DEFAULT_DAYS)
    except (ValueError, TypeError):
        return None, end  # the read names the bad --to
    return start, end


_READ_EPILOG = ("exit status: 0 the rows were read; 2 the command could not run (bad "
                "parameter, no key, key refused...)")


def _read_parser(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A read sub-command's parser, with its window options."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description, epilog=_READ_EPILOG
    )
    _add_window(p)
    return p


def _finish_read(p: argparse.ArgumentParser, handler: Any) -> None:
    """The options every read ends with: --output and the connection."""
    add_output_option(p)
    add_connection_options(p)
    p.set_defaults(handler=handler)


def add_reads(sub: Any) -> None:
    """The ``query``, ``stats`` and ``sources`` sub-commands."""
    q = _read_parser(
        sub, "query", "stored events of a time window (GET /v1/query)",
        "Stored events of a time window. Prints a table, or writes CSV / Parquet with --output.",
    )
    q.add_argument("--event", help="only this event name")
    q.add_argument("--source", help="only this source (google, newsletter...)")
    q.add_argument("--medium", help="only this medium (organic, cpc, email...)")
    q.add_argument("--user-id", help="only this user")
    q.add_argument("--limit", type=int, default=contract.QUERY_LIMIT_DEFAULT,
                   help=f"at most this many rows, 1 to {contract.QUERY_LIMIT_MAX} "
                   f"(default {contract.QUERY_LIMIT_DEFAULT})")
    q.add_argument("--all", action="store_true",
                   help="every event of the window, however many (several requests)")
    _finish_read(q, run_query)

    s = _read_parser(
        sub, "stats", "counts or unique visitors of a window (GET /v1/stats)",
        "Counts (--metric count) or distinct visitors (--metric uniques) of a time window, "
        "optionally by group and time bucket.",
    )
    s.add_argument("--metric", choices=contract.STATS_METRICS, default="count",
                   help="count (default) or uniques")
    s.add_argument("--event", help="only this event name")
    s.add_argument("--group-by", metavar="COL[,COL...]",
                   help=f"break down by these columns: {', '.join(contract.STATS_GROUP_BY)}")
    s.add_argument("--interval", choices=contract.STATS_INTERVALS,
                   help="a time series by hour, day or week")
    s.add_argument("--limit", type=int, default=None,
                   help=f"at most this many rows, 1 to {contract.QUERY_LIMIT_MAX}")
    _finish_read(s, run_stats)

    so = _read_parser(
        sub, "sources", "where the traffic came from (GET /v1/sources)",
        "Events and visitors of a window by source (and medium), as the server's "
        "classifier saw them.",
    )
    so.add_argument("--breakdown", choices=contract.SOURCES_BREAKDOWNS, default="source_medium",
                    help="source_medium (default) or source")
    so.add_argument("--limit", type=int, default=contract.SOURCES_LIMIT_MAX,
                    help=f"at most this many rows, 1 to {contract.SOURCES_LIMIT_MAX} "
                    f"(default {contract.SOURCES_LIMIT_MAX})")
    _finish_read(so, run_sources)


def _read(args: argparse.Namespace, what: str, call: Any) -> int:
    client = make_client(args)
    try:
        with printed_warnings():
            frame = call(client)
    finally:
        client.close()
    write_frame(frame, args.output, what)
    return EXIT_OK


def run_query(args: argparse.Namespace) -> int:
    """``millimetric-nb query``."""
    from ..read import query, query_all

    start, end = _window(args)
    filters = {"event": args.event, "source": args.source, "medium": args.medium,
               "user_id": args.user_id}
    if args.all:
        return _read(args, "events", lambda c: query_all(start, end, client=c, **filters))
    return _read(args, "events",
                 lambda c: query(start, end, limit=args.limit, client=c, **filters))


def run_stats(args: argparse.Namespace) -> int:
    """``millimetric-nb stats``."""
    from ..read import stats

    start, end = _window(args)
    return _read(args, "rows", lambda c: stats(
        args.metric, start, end, event=args.event, group_by=args.group_by,
        interval=args.interval, limit=args.limit, client=c,
    ))


def run_sources(args: argparse.Namespace) -> int:
    """``millimetric-nb sources``."""
    from ..read import sources

    start, end = _window(args)
    return _read(args, "rows", lambda c: sources(
        start, end, breakdown=args.breakdown, limit=args.limit, client=c,
    ))


__all__ = ["add_forget", "add_reads"]
