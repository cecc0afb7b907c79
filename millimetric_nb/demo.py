"""``millimetric-nb demo``: the whole flow, end to end, against a local server.

It starts the local Millimetric server on a free port (in this process),
generates a seeded sample of web analytics events (:mod:`millimetric_nb.sample`),
validates it and prints what is wrong, backfills the valid rows through
``/v1/batch`` with a progress bar, identifies the visitors who signed up, reads
the stored figures back through the read API, and prints a summary.

The demo checks its own account and exits non-zero, naming the check, if any
figure disagrees:

* validation reports exactly the rows the sample broke on purpose;
* every valid row was sent (none failed, none ambiguous), every identify too;
* the server stored exactly ``sent + identified`` events;
* the server's per-event-name counts equal the sample's valid rows, per name;
* the server's traffic breakdown by source and medium sums to the events sent;
* reading every stored event back gives exactly the sample's valid event ids.

No key secret is ever printed: keys show as ``sk_dev_1a2b3c4d_…``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import pandas as pd

from . import contract, read
from .errors import MillimetricError
from .keys import mask
from .sample import (
    DEFAULT_DAYS,
    DEFAULT_END,
    DEFAULT_EVENTS,
    DEFAULT_SEED,
    DEFAULT_VISITORS,
    Sample,
    generate_sample,
)

if TYPE_CHECKING:  # the client (httpx) is imported when the demo runs
    from .sync import ClientLike


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser``."""
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"random seed of the sample (default {DEFAULT_SEED})")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS,
                        help=f"number of events in the sample (default {DEFAULT_EVENTS})")
    parser.add_argument("--visitors", type=int, default=DEFAULT_VISITORS,
                        help=f"number of visitors (default {DEFAULT_VISITORS})")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS,
                        help=f"days the sample spans (default {DEFAULT_DAYS})")
    parser.add_argument("--limits", default="production",
                        help="the local server's rate limits: production (default), off, or xN")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar")
    parser.add_argument("--port", type=int, default=0,
                        help="port of the local server (default 0: a free port)")


def build_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the demo's options alone (as ``millimetric-nb demo`` would)."""
    parser = argparse.ArgumentParser(prog="millimetric-nb demo")
    add_arguments(parser)
    return parser.parse_args(argv)


def client_rate_limits(limits: str) -> Any:
    """The client's rate limits matching a server started with ``--limits limits``.

    ``production`` -> ``None`` (the contract's buckets), ``off`` -> ``"off"``,
    ``xN`` -> every route's limit scaled by N.
    """
    mode = limits.strip().lower()
    if mode == "production":
        return None
    if mode == "off":
        return "off"
    m = re.fullmatch(r"x(\d+(?:\.\d+)?)", mode)
    if not m:
        raise ValueError(f"--limits must be production, off or xN (e.g. x10), not {limits!r}")
    factor = float(m.group(1))
    return {name: rl.scaled(factor) for name, rl in contract.RATE_LIMITS.items()}


def sample_end() -> pd.Timestamp:
    """Where the demo's sample window ends (exclusive).

    A fixed instant (:data:`~millimetric_nb.sample.DEFAULT_END`), so the same seed
    gives the same rows, or today's midnight if the clock is earlier: identify
    events are stamped "now" by the server and must fall after the window.
    """
    return min(pd.Timestamp(DEFAULT_END), pd.Timestamp.now(tz="UTC").floor("D"))


@dataclass
class Check:
    """One figure the demo checks: what was expected, what was found."""

    name: str
    expected: Any
    found: Any

    @property
    def ok(self) -> bool:
        """Whether the figure matches."""
        return bool(self.expected == self.found)


@dataclass
class DemoOutcome:
    """What the demo did, in numbers (the summary line prints these)."""

    rows: int = 0
    invalid: int = 0
    sent: int = 0
    failed: int = 0
    ambiguous: int = 0
    identified: int = 0
    stored: int = 0
    source_total: int = 0
    read_back: int = 0
    checks: list[Check] = field(default_factory=list)

    def summary_line(self) -> str:
        """``summary: rows=... invalid=... sent=...``: one line, easy to parse."""
        keys = ("rows", "invalid", "sent", "failed", "ambiguous", "identified", "stored",
                "source_total", "read_back")
        return "summary: " + " ".join(f"{k}={getattr(self, k)}" for k in keys)


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str) -> None:
        self(f"\n== {title}")


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed ``args``; return the exit status (0: every check passed)."""
    try:
        outcome = run_demo(
            seed=args.seed, events=args.events, visitors=args.visitors, days=args.days,
            limits=args.limits, progress=not args.no_progress, port=args.port,
        )
    except (MillimetricError, ValueError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    failed = [c for c in outcome.checks if not c.ok]
    for c in failed:
        print(f"CHECK FAILED: {c.name}: expected {_short(c.expected)}, found {_short(c.found)}",
              file=sys.stderr, flush=True)
    return 1 if failed else 0


def run_demo(
    *,
    seed: int = DEFAULT_SEED,
    events: int = DEFAULT_EVENTS,
    visitors: int = DEFAULT_VISITORS,
    days: int = DEFAULT_DAYS,
    limits: str = "production",
    progress: bool = True,
    port: int = 0,
    stream: TextIO | None = None,
) -> DemoOutcome:
    """The demo's flow; returns its figures and checks (``run`` turns them into an exit code).

    Progress bars go to stderr; everything else to ``stream`` (default stdout).
    """
    from .server import run_in_thread
    from .sync import Client

    p = _Printer(stream or sys.stdout)
    rate_limits = client_rate_limits(limits)
    t0 = time.perf_counter()
    p.step(f"Sample: {events:,} events from {visitors:,} visitors over {days} days (seed {seed})")
    sample = generate_sample(events, visitors, days, seed=seed, end=sample_end())
    df = sample.events
    p(f"event names: {_counts(df['event'])}")
    p(f"window: {sample.start:%Y-%m-%d} to {sample.end:%Y-%m-%d} (UTC), "
      f"{len(sample.identifies):,} visitors sign up")

    out = DemoOutcome(rows=len(df))
    with run_in_thread(limits=limits, db=":memory:", port=port) as srv:
        key = srv.keys["sk"]
        p.step(f"Local server at {srv.url} (limits: {limits}), key {mask(key)}")
        with Client(key, host=srv.url, rate_limits=rate_limits) as client:
            _validate(sample, out, p)
            _send(sample, client, progress, out, p)
            _identify(sample, client, progress, out, p)
            _read_back(sample, client, srv, out, p)
        p.step("Summary")
        _print_summary(out, p, time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- steps


def _counts(series: pd.Series) -> str:
    vc = series.value_counts()
    return ", ".join(f"{name or '(empty)'} {n:,}" for name, n in vc.items())


def _validate(sample: Sample, out: DemoOutcome, p: _Printer) -> None:
    p.step("Validate")
    report = sample.events.millimetric.validate()
    p(repr(report))  # one line per field and rule, with an example row
    bad_rows = _error_rows(report.errors)
    out.invalid = len(bad_rows)
    out.checks.append(Check("rows reported invalid are the rows broken on purpose",
                            sorted(sample.invalid["row"]), sorted(bad_rows)))
    if len(report.errors):
        cols = [c for c in ("row", "field", "rule") if c in report.errors.columns]
        p("invalid rows (they will be reported, not sent):")
        p(report.errors[cols or list(report.errors.columns)].to_string(index=False))


def _error_rows(errors: pd.DataFrame) -> list[Any]:
    """Distinct input row labels in a validation report's ``errors`` frame."""
    for col in ("row", "index", "label"):
        if col in errors.columns:
            return list(pd.unique(errors[col]))
    return list(pd.unique(errors.index))


def _send(
    sample: Sample, client: ClientLike, progress: bool, out: DemoOutcome, p: _Printer
) -> None:
    p.step("Backfill the valid rows through /v1/batch")
    result = sample.events.millimetric.send_batch(
        event_col="event", client=client, progress=progress
    )
    counts = dict(result.counts)
    out.sent = int(counts.get("sent", 0))
    out.failed = int(counts.get("failed", 0))
    out.ambiguous = int(counts.get("ambiguous", 0))
    p(f"sent {out.sent:,}, failed {out.failed:,}, invalid {counts.get('invalid', 0):,}, "
      f"skipped {counts.get('skipped', 0):,}, ambiguous {out.ambiguous:,}")
    valid = len(sample.events) - len(sample.invalid)
    out.checks += [
        Check("every valid row sent", valid, out.sent),
        Check("no row failed", 0, out.failed),
        Check("no row ambiguous", 0, out.ambiguous),
        Check("the send reports the same invalid rows", len(sample.invalid),
              int(counts.get("invalid", 0))),
    ]


def _identify(
    sample: Sample, client: ClientLike, progress: bool, out: DemoOutcome, p: _Printer
) -> None:
    p.step(f"Identify the {len(sample.identifies):,} visitors who signed up")
    result = sample.identifies.millimetric.identify(
        anonymous_id_col="anonymous_id", user_id_col="user_id", client=client,
        progress=progress,
    )
    counts = dict(result.counts)
    out.identified = int(counts.get("sent", 0))
    p(f"identified {out.identified:,}, failed {counts.get('failed', 0):,}")
    out.checks.append(Check("every sign-up identified", len(sample.identifies), out.identified))


def _read_back(sample: Sample, client: ClientLike, srv: Any, out: DemoOutcome, p: _Printer) -> None:
    p.step("Read back through the read API (/v1/sources, /v1/stats, /v1/query)")
    # identify events are stamped with the server's clock: widen the window to now
    now = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=5)
    wide_end = max(sample.end, now)

    src = read.sources(sample.start, sample.end, client=client)
    out.source_total = int(src["events"].sum())
    shown = src.sort_values("events", ascending=False)
    p(shown.to_string(index=False, formatters={"paid_share": "{:.0%}".format}))
    out.checks.append(Check("the server's source/medium breakdown sums to the events sent",
                            out.sent, out.source_total))

    by_name = read.stats("count", sample.start, wide_end, group_by="event_name", client=client)
    stored_by_name = dict(zip(by_name["event_name"], by_name["value"], strict=True))
    out.stored = int(by_name["value"].sum())
    valid = sample.valid_events
    expected_by_name = {str(k): int(v) for k, v in valid["event"].value_counts().items()}
    if out.identified:
        expected_by_name["$identify"] = out.identified
    out.checks += [
        Check("events stored (read API) = sent + identified", out.sent + out.identified,
              out.stored),
        Check("events stored (server's table) = sent + identified", out.sent + out.identified,
              int(srv.count())),
        Check("stored counts per event name", dict(sorted(expected_by_name.items())),
              {str(k): int(v) for k, v in sorted(stored_by_name.items())}),
    ]
    p(f"stored per event name: {_counts_dict(stored_by_name)}")

    check = read.verify(valid["event_id"], sample.start, sample.end, client=client)
    out.read_back = check.stored
    p(f"read every stored event of the window back with query_all: {check}")
    out.checks += [
        Check("no valid event missing on the server", [], check.missing),
        Check("no stored event outside the valid sample rows", [], check.unexpected),
        Check("no event stored twice", {}, check.duplicated),
        Check("every stored event could be read back", True, check.complete),
    ]


def _counts_dict(counts: dict[Any, Any]) -> str:
    return ", ".join(f"{k} {int(v):,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _print_summary(out: DemoOutcome, p: _Printer, elapsed: float) -> None:
    p(f"rows in the sample       {out.rows:>9,}")
    p(f"invalid, reported        {out.invalid:>9,}")
    p(f"sent (/v1/batch)         {out.sent:>9,}")
    p(f"failed / ambiguous       {out.failed:>9,} / {out.ambiguous:,}")
    p(f"identified               {out.identified:>9,}")
    p(f"stored on the server     {out.stored:>9,}   (sent + identified)")
    p(f"by source/medium, total  {out.source_total:>9,}")
    p(f"read back (query_all)    {out.read_back:>9,}")
    for c in out.checks:
        detail = "" if c.ok else f": expected {_short(c.expected)}, found {_short(c.found)}"
        p(f"[{'ok' if c.ok else 'FAILED'}] {c.name}{detail}")
    passed = sum(c.ok for c in out.checks)
    p(f"{passed} of {len(out.checks)} checks passed in {elapsed:.1f} s")
    p(out.summary_line())


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = [
    "Check",
    "DemoOutcome",
    "add_arguments",
    "build_args",
    "client_rate_limits",
    "run",
    "run_demo",
    "sample_end",
]
