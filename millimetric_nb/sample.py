"""A realistic, reproducible sample of web analytics events, for the demo and tests.

:func:`generate_sample` builds what an analyst would export from a shop's
event log: page views, add-to-carts, signups and purchases (with amounts) from
a population of visitors over a span of days. Visitors arrive through
campaign landing URLs (``utm_*``), ad click ids (``gclid``, ``fbclid``),
search and social referrers, referral links, or directly. Visitors are
anonymous until they sign up; from the signup on, their events carry a
``user_id``, and :attr:`Sample.identifies` lists the ``(anonymous_id,
user_id)`` pairs to send to ``/v1/identify``.

A few rows are broken on purpose, each breaking exactly one rule of the
contract, and :attr:`Sample.invalid` says which row breaks which rule, so a
validator can be checked against it.

The output depends only on the arguments: the same seed gives the same frame,
byte for byte (timestamps are laid out from ``end``, never from the clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from . import contract

DEFAULT_SEED = 20261101
DEFAULT_EVENTS = 50_000
DEFAULT_VISITORS = 5_000
DEFAULT_DAYS = 30
#: The sample's window ends here (exclusive) unless told otherwise: a fixed instant,
#: so that a seed always gives the same rows.
DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)

SITE = "https://shop.example.com"

#: Event names in the sample.
PAGEVIEW = "$pageview"
ADD_TO_CART = "add_to_cart"
SIGNUP = "signup"
PURCHASE = "purchase"
EVENT_NAMES = (PAGEVIEW, ADD_TO_CART, SIGNUP, PURCHASE)

#: The columns of :attr:`Sample.events`, in order. ``title``, ``plan``,
#: ``amount`` and ``currency`` are properties (not contract fields).
COLUMNS = (
    "event_id", "event", "timestamp", "anonymous_id", "user_id",
    "url", "path", "referrer", "title", "plan", "amount", "currency",
)


@dataclass(frozen=True, slots=True)
class Channel:
    """How a session arrives: the landing URL's query string and the referrer."""

    name: str
    weight: float
    query: str = ""  # may contain {id}, filled with a click id
    referrer: str | None = None


#: Arrival channels and their share of sessions.
CHANNELS: tuple[Channel, ...] = (
    Channel("direct", 0.24),
    Channel("google_search", 0.18, referrer="https://www.google.com/"),
    Channel("bing_search", 0.04, referrer="https://www.bing.com/"),
    Channel("duckduckgo_search", 0.02, referrer="https://duckduckgo.com/"),
    Channel("google_ads", 0.10, query="gclid={id}", referrer="https://www.google.com/"),
    Channel("facebook_ads", 0.08, query="fbclid={id}", referrer="https://l.facebook.com/"),
    Channel("newsletter", 0.08,
            query="utm_source=newsletter&utm_medium=email&utm_campaign=autumn_sale"),
    Channel("linkedin_paid", 0.04,
            query="utm_source=linkedin&utm_medium=paid_social&utm_campaign=q4_launch"),
    Channel("twitter", 0.05, referrer="https://t.co/"),
    Channel("linkedin", 0.04, referrer="https://www.linkedin.com/"),
    Channel("reddit", 0.03, referrer="https://www.reddit.com/r/analytics/"),
    Channel("referral", 0.10, referrer="https://blog.example.org/best-analytics-tools"),
)

_PAGES: tuple[tuple[str, str], ...] = (
    ("/", "Home"),
    ("/pricing", "Pricing"),
    ("/features", "Features"),
    ("/products/starter-kit", "Starter kit"),
    ("/products/pro-kit", "Pro kit"),
    ("/products/team-kit", "Team kit"),
    ("/blog/backfilling-events", "Backfilling events"),
    ("/blog/utm-done-right", "UTM done right"),
    ("/docs/getting-started", "Getting started"),
    ("/about", "About"),
)
_PLANS = ("free", "pro", "team")
_CURRENCIES = ("EUR", "USD", "GBP")

#: The deliberately invalid rows, one kind per contract rule they break:
#: ``kind -> (field, rule)``.
INVALID_KINDS: dict[str, tuple[str, str]] = {
    "empty_event": ("event", contract.RULE_TOO_SHORT),
    "bad_timestamp": ("timestamp", contract.RULE_TIMESTAMP),
    "oversize_property": ("properties", contract.RULE_TOO_LARGE),
    "long_user_id": ("user_id", contract.RULE_TOO_LONG),
}
_BAD_TIMESTAMP = "2026-10-32T25:61:00Z"


@dataclass(frozen=True, slots=True)
class Sample:
    """A generated sample.

    Attributes:
        events: one row per event, columns :data:`COLUMNS`, a ``RangeIndex``,
            sorted by time. ``timestamp`` holds ISO 8601 strings (as in a CSV export),
            so that a malformed one can sit among them.
        identifies: one row per visitor who signed up: ``anonymous_id``, ``user_id``,
            ``plan``.
        invalid: one row per deliberately broken row of ``events``: ``row`` (its index
            label), ``kind``, ``field``, ``rule``.
        start: the window's first instant (inclusive).
        end: the window's end (exclusive); every valid timestamp is in ``[start, end)``.
        seed: the seed it was generated from.
    """

    events: pd.DataFrame
    identifies: pd.DataFrame
    invalid: pd.DataFrame
    start: pd.Timestamp
    end: pd.Timestamp
    seed: int

    @property
    def valid_events(self) -> pd.DataFrame:
        """The rows of :attr:`events` that are not deliberately broken."""
        return self.events.drop(index=self.invalid["row"].to_list())


def _iso(ms: np.ndarray) -> np.ndarray:
    """Epoch milliseconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` strings."""
    stamps = pd.to_datetime(ms, unit="ms", utc=True)
    return np.asarray(stamps.strftime("%Y-%m-%dT%H:%M:%S.%f").str.slice(0, 23) + "Z")


def generate_sample(
    events: int = DEFAULT_EVENTS,
    visitors: int = DEFAULT_VISITORS,
    days: int = DEFAULT_DAYS,
    *,
    seed: int = DEFAULT_SEED,
    end: datetime | pd.Timestamp | str = DEFAULT_END,
    invalid_per_kind: int = 1,
) -> Sample:
    """Generate a reproducible sample of ``events`` events from ``visitors`` visitors.

    Args:
        events: number of rows (including the deliberately invalid ones).
        visitors: number of distinct visitors (``anonymous_id``); at most ``events``.
        days: length of the window, ending at ``end``.
        seed: the random seed; the same arguments always give the same sample.
        end: the window's end (exclusive), UTC; naive values are taken as UTC.
        invalid_per_kind: how many rows to break for each kind of :data:`INVALID_KINDS`.

    Raises:
        ValueError: if a count is out of range (naming the argument).
    """
    n_kinds = len(INVALID_KINDS)
    if visitors < 1:
        raise ValueError(f"visitors must be at least 1, got {visitors}")
    if events < visitors:
        raise ValueError(f"events ({events}) must be at least visitors ({visitors})")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if invalid_per_kind < 0 or invalid_per_kind * n_kinds > events // 2:
        raise ValueError(
            f"events ({events}) must be at least {2 * invalid_per_kind * n_kinds} to break "
            f"{invalid_per_kind * n_kinds} rows on purpose (invalid_per_kind={invalid_per_kind})"
        )

    end_ts = pd.Timestamp(end)
    end_ts = end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts.tz_convert("UTC")
    start_ts = end_ts - timedelta(days=days)
    start_ms, end_ms = int(start_ts.value // 1_000_000), int(end_ts.value // 1_000_000)
    span_ms = end_ms - start_ms

    rng = np.random.default_rng(seed)

    # Events per visitor: at least one each, the rest spread over a heavy tail.
    weights = rng.pareto(1.6, visitors) + 0.2
    counts = 1 + rng.multinomial(events - visitors, weights / weights.sum())

    anon_ids = [f"anon-{v:016x}" for v in rng.integers(0, 2**63, visitors, dtype=np.int64)]
    channel_p = np.array([c.weight for c in CHANNELS])
    channel_p = channel_p / channel_p.sum()

    cols: dict[str, list[object]] = {c: [] for c in COLUMNS if c != "event_id"}
    ts_ms: list[int] = []
    identifies: list[tuple[str, str, str]] = []
    page_paths = [p for p, _ in _PAGES]
    page_titles = [t for _, t in _PAGES]

    for v in range(visitors):
        n = int(counts[v])
        # Sessions: a new one starts at an event with probability 0.3.
        new_session = np.concatenate(([True], rng.random(n - 1) < 0.3))
        gaps = np.where(
            new_session,
            rng.exponential(2 * 86_400_000, n),  # days between sessions
            rng.exponential(45_000, n) + 3_000,  # seconds between pages
        ).astype(np.int64)
        gaps[0] = 0
        offsets = np.cumsum(gaps)
        room = int(span_ms * rng.uniform(0.3, 0.95))
        if offsets[-1] >= room:  # squeeze a long life into part of the window
            offsets = (offsets * (room / (offsets[-1] + 1))).astype(np.int64)
        first = start_ms + int(rng.integers(0, span_ms - int(offsets[-1])))
        times = first + offsets

        signs_up = n >= 3 and rng.random() < 0.35
        signup_at = int(rng.integers(1, n)) if signs_up else n
        user_id = f"user-{v:06d}"
        plan = _PLANS[int(rng.integers(0, len(_PLANS)))]
        if signs_up:
            identifies.append((anon_ids[v], user_id, plan))

        channel = CHANNELS[0]
        click_id = ""
        prev_path: str | None = None
        page_pick = rng.integers(0, len(_PAGES), n)
        after = rng.random(n)
        for i in range(n):
            if new_session[i]:
                channel = CHANNELS[int(rng.choice(len(CHANNELS), p=channel_p))]
                click_id = f"{int(rng.integers(0, 2**48)):012x}"
                prev_path = None
            path, title = page_paths[page_pick[i]], page_titles[page_pick[i]]
            name, amount, currency, p_plan = PAGEVIEW, np.nan, None, None
            if i == signup_at:
                name, path, title, p_plan = SIGNUP, "/signup", None, plan
            elif i > signup_at and after[i] < 0.25:
                name, path, title = PURCHASE, "/checkout", None
                amount = round(float(rng.lognormal(3.6, 0.6)), 2)
                currency = _CURRENCIES[int(rng.integers(0, len(_CURRENCIES)))]
            elif after[i] > 0.93:
                name, title = ADD_TO_CART, None
            url = SITE + path
            if prev_path is None:  # landing page of the session
                referrer = channel.referrer
                if channel.query:
                    url += "?" + channel.query.format(id=click_id)
            else:
                referrer = SITE + prev_path
            prev_path = path
            cols["event"].append(name)
            cols["anonymous_id"].append(anon_ids[v])
            cols["user_id"].append(user_id if i >= signup_at else None)
            cols["url"].append(url)
            cols["path"].append(path)
            cols["referrer"].append(referrer)
            cols["title"].append(title)
            cols["plan"].append(p_plan)
            cols["amount"].append(amount)
            cols["currency"].append(currency)
        ts_ms.extend(int(t) for t in times)

    order = np.argsort(np.asarray(ts_ms, dtype=np.int64), kind="stable")
    ms_sorted = np.asarray(ts_ms, dtype=np.int64)[order]
    frame: dict[str, object] = {
        "event_id": [f"evt-{seed:x}-{i:07d}" for i in range(events)],
        "event": np.asarray(cols["event"], dtype=object)[order],
        "timestamp": _iso(ms_sorted),
    }
    for c in COLUMNS[3:]:
        frame[c] = np.asarray(cols[c], dtype=object)[order]
    df = pd.DataFrame(frame, columns=list(COLUMNS))
    df["amount"] = df["amount"].astype("float64")
    for c in ("event_id", "event", "timestamp", "anonymous_id", "user_id", "url", "path",
              "referrer", "title", "plan", "currency"):
        df[c] = df[c].astype("str")

    # Break a few page views on purpose, one rule each.
    candidates = np.flatnonzero(df["event"].to_numpy() == PAGEVIEW)
    chosen = rng.choice(candidates, size=invalid_per_kind * n_kinds, replace=False)
    invalid_rows: list[tuple[int, str, str, str]] = []
    for k, (kind, (field, rule)) in enumerate(INVALID_KINDS.items()):
        for row in sorted(int(r) for r in chosen[k * invalid_per_kind:(k + 1) * invalid_per_kind]):
            if kind == "empty_event":
                df.loc[row, "event"] = ""
            elif kind == "bad_timestamp":
                df.loc[row, "timestamp"] = _BAD_TIMESTAMP
            elif kind == "oversize_property":
                df.loc[row, "title"] = "x" * (contract.PROPERTIES_MAX_BYTES + 100)
            elif kind == "long_user_id":
                too_long = (contract.EVENT_FIELDS["user_id"].max_length or 0) + 44
                df.loc[row, "user_id"] = "u" * too_long
            invalid_rows.append((row, kind, field, rule))
    invalid = pd.DataFrame(invalid_rows, columns=["row", "kind", "field", "rule"])
    invalid = invalid.sort_values("row", ignore_index=True)

    ident = pd.DataFrame(identifies, columns=["anonymous_id", "user_id", "plan"]).astype("str")
    return Sample(df, ident, invalid, start_ts, end_ts, seed)


__all__ = [
    "CHANNELS",
    "COLUMNS",
    "DEFAULT_SEED",
    "EVENT_NAMES",
    "INVALID_KINDS",
    "Sample",
    "generate_sample",
]
