"""``validate``, ``backfill`` and ``verify``: the sub-commands that take a file.

All three read the input through the package's own source reading
(:func:`millimetric_nb.engine.iter_source`, via :func:`millimetric_nb.abackfill`),
so any format the package reads, they read; ``validate`` is a dry run of the
backfill, so it reports exactly what a send would refuse.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..api import abackfill, run_sync_call
from ..errors import ConfigurationError, KeyRefusedError
from ..results import SendResult, stopped_by
from .common import (
    EXIT_DATA,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_connection_options,
    add_mapping_options,
    check_source,
    default_beside,
    make_client,
    mapping_of,
    note,
    one_line,
    printed_warnings,
    say,
)

if TYPE_CHECKING:  # the client (httpx) is imported when one is made
    from ..sync import ClientLike

JOURNAL_SUFFIX = ".journal.sqlite"
FAILED_SUFFIX = ".failed.csv"
#: Row numbers listed per rule in the validation report.
_ROWS_SHOWN = 20


def _add_source_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", metavar="FILE_OR_DIR",
        help="the events: a .csv, .jsonl (JSON Lines) or .parquet file, or a directory of them",
    )


def _add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="draw a progress bar on stderr (default: when stderr is a terminal)",
    )


def _progress(args: argparse.Namespace) -> bool:
    return bool(args.progress) if args.progress is not None else sys.stderr.isatty()


def _run(
    path: Path, args: argparse.Namespace, client: ClientLike | None = None, **options: Any
) -> SendResult:
    """One run of the engine over ``path`` (a dry run unless a client is given)."""
    coro = abackfill(
        path, client=client, dry_run=client is None, progress=_progress(args),
        pii=args.pii, warn_stacklevel=0, **options, **mapping_of(args),
    )
    return run_sync_call(client, coro)


# --------------------------------------------------------------------------- validate


def add_validate(sub: Any) -> None:
    """The ``validate`` sub-command."""
    p = sub.add_parser(
        "validate", help="check every row of a file against the API's rules; send nothing",
        description="Check every row of FILE_OR_DIR against the API's field rules, as a "
        "backfill would, without sending anything. Prints the problems grouped by rule, "
        "with their row numbers (data rows counted from 0, the header not counted: the "
        "index of result.failed in Python).",
        epilog="exit status: 0 every row is valid; 1 some rows are invalid; 2 the file could "
        "not be read (the message says why and what to do)",
    )
    _add_source_argument(p)
    add_mapping_options(p)
    p.add_argument("--errors", metavar="PATH",
                   help="also write every problem (row, field, rule, message) to PATH (.csv)")
    _add_progress_option(p)
    p.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    """``millimetric-nb validate FILE_OR_DIR``."""
    path = check_source(args.path, mapping_of(args))
    result = _run(path, args)
    c = result.counts
    valid = c["planned"] + c["skipped"]
    say(f"{path}: {c['total']:,} rows, {valid:,} valid, {c['invalid']:,} invalid")
    errors = result.errors
    if len(errors):
        say("invalid rows by rule (rows numbered from 0 after the header):")
        for (field, rule), group in errors.groupby(["field", "rule"], sort=False):
            rows = list(dict.fromkeys(group["position"].tolist()))
            shown = ", ".join(str(r) for r in rows[:_ROWS_SHOWN])
            more = f" and {len(rows) - _ROWS_SHOWN:,} more" if len(rows) > _ROWS_SHOWN else ""
            say(f"  {field}: {rule}: {len(rows):,} row(s): {shown}{more}")
            first = group.iloc[0]
            say(f"      e.g. row {first['position']}: {first['message']}")
    for w in result.warnings:
        note(f"warning: {w}")
    if args.errors:
        out = Path(args.errors)
        errors.to_csv(out, index=False)
        say(f"wrote {len(errors):,} problem(s) to {out}")
    if result.error is not None:
        raise CliError(f"{path}: {one_line(result.error)}")
    if c["invalid"]:
        return EXIT_DATA
    say("all rows valid")
    return EXIT_OK


# --------------------------------------------------------------------------- backfill


def add_backfill(sub: Any) -> None:
    """The ``backfill`` sub-command."""
    p = sub.add_parser(
        "backfill", help="send every valid row of a file through /v1/batch, resumably",
        description="Send every valid row of FILE_OR_DIR as an event through /v1/batch at the "
        "rate limit's ceiling. A journal (by default FILE.journal.sqlite, next to the file) "
        "records what the server acknowledged: run the same command again after an "
        "interruption or a failure and it sends only what is not in yet. Rows that did not "
        "get in are written to FILE.failed.csv with their reasons (status, error_code, "
        "field, message): fix them there and send that file.",
        epilog="exit status: 0 every row was sent (now or in an earlier run); 1 some rows did "
        "not get in (invalid, failed or of unknown outcome: see FILE.failed.csv); 2 the "
        "command could not run (bad input, no key, key refused...)",
    )
    _add_source_argument(p)
    add_mapping_options(p)
    g = p.add_argument_group("the run")
    g.add_argument("--journal", metavar="PATH",
                   help=f"the journal (default: FILE{JOURNAL_SUFFIX} next to the file)")
    g.add_argument("--no-journal", action="store_true",
                   help="keep no journal (a rerun would send everything again)")
    g.add_argument("--failed", metavar="PATH",
                   help=f"where the rows that did not get in go (default: FILE{FAILED_SUFFIX})")
    g.add_argument("--dry-run", action="store_true",
                   help="validate and plan only: nothing is sent, no key needed")
    g.add_argument("--on-ambiguous", choices=("resend", "skip"), default="resend",
                   help="rows whose outcome an earlier run could not know: resend them "
                   "(default; flagged as possible duplicates) or skip them")
    g.add_argument("--concurrency", type=int, default=None,
                   help="requests in flight at once (default 20; the rate limit sets the pace)")
    _add_progress_option(p)
    add_connection_options(p)
    p.set_defaults(handler=run_backfill)


def journal_path(args: argparse.Namespace, path: Path) -> Path | None:
    """The journal the flags name (``None`` for ``--no-journal``)."""
    if getattr(args, "no_journal", False):
        return None
    return Path(args.journal) if args.journal else default_beside(path, JOURNAL_SUFFIX)


def run_backfill(args: argparse.Namespace) -> int:
    """``millimetric-nb backfill FILE_OR_DIR``."""
    if args.no_journal and args.journal:
        raise CliError("give --journal PATH or --no-journal, not both")
    path = check_source(args.path, mapping_of(args))
    journal = journal_path(args, path)
    if args.dry_run and journal is not None and not journal.exists():
        journal = None  # a dry run creates no file; with a journal it shows what it skips
    options: dict[str, Any] = {"journal": journal, "on_ambiguous": args.on_ambiguous}
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    client = None
    if not args.dry_run:
        client = make_client(args)
        client.async_client.check_key("ingest")  # an rk_/ak_ key: refused before reading
        say(f"sending {path} to {client.host} with key {client.key_masked}"
            + (f" (journal {journal})" if journal else " (no journal)"))
    where = f"the journal {journal} holds" if journal else "no journal was kept of"
    resume = (f"interrupted: {where} what the server acknowledged; run the same command "
              "again to resume")
    try:
        result = _run(path, args, client, **options)
    except KeyboardInterrupt as exc:
        drained: SendResult | None = getattr(exc, "result", None)  # a drained stop's account
        if drained is None:  # a second Ctrl-C: stopped at once
            note(resume)
            return 130
        result = drained
    finally:
        if client is not None:
            client.close()
    _summary(result, path, journal)
    failed_path = Path(args.failed) if args.failed else default_beside(path, FAILED_SUFFIX)
    if len(result.failed) and not args.dry_run:
        result.failed.to_csv(failed_path, index=False)
        say(f"{len(result.failed):,} row(s) did not get in: written with their reasons to "
            f"{failed_path} (fix them there, then send that file the same way)")
    elif failed_path.exists() and not args.dry_run:
        note(f"note: {failed_path} is from an earlier run (every row of this run got in)")
    if stopped_by(result) is not None:  # the first Ctrl-C: the send drained, then stopped
        note(resume)
        return 130
    if result.error is not None:
        note(f"stopped: {one_line(result.error)}")
        if result.error.status in (401, 403) or isinstance(
            result.error, KeyRefusedError | ConfigurationError
        ):
            return EXIT_USAGE  # the key or the journal, not the data: fix and rerun
    c = result.counts
    return EXIT_OK if result.ok and c["invalid"] == 0 else EXIT_DATA


def _summary(result: SendResult, path: Path, journal: Path | None) -> None:
    c = result.counts
    if result.dry_run:
        say(f"dry run of {path}: {c['total']:,} rows: {c['planned']:,} would be sent, "
            f"{c['skipped']:,} already sent (journal), {c['invalid']:,} invalid")
        if result.plan is not None:
            say(f"plan: {result.plan}")
    else:
        parts = [f"sent {c['sent']:,}", f"already sent {c['skipped']:,}",
                 f"invalid {c['invalid']:,}", f"failed {c['failed']:,}",
                 f"outcome unknown {c['ambiguous']:,}"]
        if c["possible_duplicates"]:
            parts.append(f"possible duplicates {c['possible_duplicates']:,}")
        say(f"{path}: {c['total']:,} rows: " + ", ".join(parts)
            + f" ({result.elapsed_s:.1f} s)")
        if journal is not None:
            say(f"journal: {journal} (run the same command again to resume or retry: rows "
                "already acknowledged are skipped)")
    for w in result.warnings:
        note(f"warning: {w}")


# --------------------------------------------------------------------------- verify


def add_verify(sub: Any) -> None:
    """The ``verify`` sub-command."""
    p = sub.add_parser(
        "verify", help="check that the rows a backfill sent are stored, each exactly once",
        description="Compare what the journal says was sent from FILE with what the server "
        "stores: every acknowledged row must be stored exactly once. Give the same column "
        "mapping as the backfill (the rows' ids depend on it). The time window is taken "
        "from the rows' timestamps unless --from/--to are given.",
        epilog="exit status: 0 every sent row is stored once; 1 some are missing or stored "
        "twice; 2 the command could not run",
    )
    p.add_argument("path", metavar="FILE", help="the file that was backfilled")
    p.add_argument("--journal", metavar="PATH",
                   help=f"the backfill's journal (default: FILE{JOURNAL_SUFFIX})")
    p.add_argument("--from", dest="from_", metavar="TIME",
                   help="start of the window (ISO 8601, inclusive)")
    p.add_argument("--to", metavar="TIME", help="end of the window (ISO 8601, exclusive)")
    add_mapping_options(p)
    add_connection_options(p)
    p.set_defaults(handler=run_verify, progress=False)


def _window(result: SendResult, path: Path, args: argparse.Namespace,
            sent: pd.Series) -> tuple[str, str]:
    """The window holding the sent rows: from the flags, else the rows' timestamps."""
    if args.from_ and args.to:
        return args.from_, args.to
    mapping = mapping_of(args)
    column = mapping.get("timestamp_col", "timestamp")
    from ..datasources import iter_source

    chunks, _ = iter_source(path, 100_000, {column})
    stamps: list[pd.Series] = []
    for chunk in chunks:
        if column not in chunk.columns:
            break
        rows = chunk.index.intersection(sent.index)
        stamps.append(pd.to_datetime(chunk.loc[rows, column], utc=True, errors="coerce",
                                     format="ISO8601"))
    found = pd.concat(stamps) if stamps else pd.Series(dtype="datetime64[ns, UTC]")
    if found.empty or found.isna().any():
        raise CliError(
            f"some rows of {path} were sent without a timestamp (stored at the time they were "
            "sent): give the window with --from and --to"
        )
    start = args.from_ or found.min().isoformat()
    end = args.to or (found.max() + pd.Timedelta(seconds=1)).isoformat()
    return start, end


def run_verify(args: argparse.Namespace) -> int:
    """``millimetric-nb verify FILE --journal J``."""
    from ..read import verify

    path = check_source(args.path, mapping_of(args))
    journal = journal_path(args, path)
    assert journal is not None
    if not journal.exists():
        raise CliError(
            f"no journal {journal}: give the journal of the backfill with --journal PATH"
        )
    args.pii = "ignore"  # only the ids matter here
    with printed_warnings():
        result = _run(path, args, journal=journal)
    rows = result.rows
    sent = rows.loc[rows["status"] == "skipped", "event_id"]
    if sent.empty:
        raise CliError(f"the journal {journal} records no row of {path} as sent: nothing to "
                       "verify (was it sent with other columns, or another file?)")
    start, end = _window(result, path, args, sent)
    client = make_client(args)
    try:
        with printed_warnings():
            v = verify(sent.tolist(), start, end, client=client)
    finally:
        client.close()
    expected = set(sent)
    missing = v.missing
    twice = {k: n for k, n in v.duplicated.items() if k in expected}
    say(f"{path}: {len(expected):,} row(s) sent according to {journal}; window "
        f"[{start}, {end})")
    say(f"stored once: {len(expected) - len(missing) - len(twice):,}, missing: "
        f"{len(missing):,}, stored more than once: {len(twice):,}; other events in the "
        f"window: {len(v.unexpected):,}")
    for eid in missing[:10]:
        say(f"  missing: {eid}")
    for eid, n in list(twice.items())[:10]:
        say(f"  stored {n} times: {eid}")
    unsent = int((rows["status"] == "planned").sum())
    if unsent:
        note(f"note: {unsent:,} valid row(s) of {path} are not acknowledged in the journal: "
             "run the backfill again to send them")
    if not v.complete:
        note("warning: the window could not be read completely; counts may be short")
    ok = not missing and not twice and v.complete
    say("verified: every sent row is stored exactly once" if ok else "MISMATCH")
    return EXIT_OK if ok else EXIT_DATA


__all__ = ["add_backfill", "add_validate", "add_verify", "journal_path"]
