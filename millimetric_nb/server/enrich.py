"""Server-side enrichment: timestamps, the traffic classifier, User-Agent parsing.

The classifier (what ``source_rule_id`` names)
----------------------------------------------
Rules are tried in this order; the first that fires decides ``source``,
``medium``, ``campaign`` and ``source_confidence``:

1. ``utm``: the url carries ``utm_source``. source = ``utm_source``, medium =
   ``utm_medium`` (or ``none``), campaign = ``utm_campaign``; confidence ``high``.
2. ``click_id.gclid`` / ``click_id.msclkid`` / ``click_id.fbclid`` /
   ``click_id.ttclid``: the url carries that click id (checked in this order).
   google/cpc, bing/cpc, facebook/paid_social, tiktok/paid_social; campaign =
   ``utm_campaign`` if present; confidence ``high`` (``medium`` for fbclid, which
   Facebook also appends to organic links).
3. ``referrer.internal``: the referrer's host is the url's host (navigation inside
   the site): source ``direct``, medium ``none``, confidence ``low``.
4. ``referrer.search``: the referrer's domain is a known search engine
   (google, bing, duckduckgo, yahoo, baidu, yandex, ecosia, ...): source = engine,
   medium ``organic``; confidence ``medium``.
5. ``referrer.social``: a known social network (facebook, instagram, x/twitter,
   t.co, linkedin, reddit, youtube, tiktok, pinterest, ...): source = network,
   medium ``social``; confidence ``medium``.
6. ``referrer.other``: any other referrer: source = its host without ``www.``,
   medium ``referral``; confidence ``medium``.
7. ``direct``: no url parameter and no referrer fired: source ``direct``,
   medium ``none``; confidence ``low``.

Sources and mediums are lower-cased. Results are cached per (url, referrer).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

# --------------------------------------------------------------------------- timestamps

_ISO_DT = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}(:?\d{2})?)?$"
)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FRACTION = re.compile(r"\.(\d{7,9})")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timestamp(value: str, *, allow_date: bool = False) -> datetime | None:
    """An ISO 8601 date-time as an aware UTC datetime, or ``None`` if it is not one.

    A date-time without an offset is taken as UTC. Fractions beyond microseconds
    are truncated. ``allow_date`` also accepts a bare ``YYYY-MM-DD`` (midnight UTC),
    which read endpoints take for ``from``/``to``.
    """
    if not _ISO_DT.match(value):
        if not (allow_date and _ISO_DATE.match(value)):
            return None
    text = value
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    if "." in text:
        text = FRACTION.sub(lambda m: "." + m.group(1)[:6], text)
    try:
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            return dt.replace(tzinfo=UTC)
        return dt.astimezone(UTC)
    except (ValueError, OverflowError):  # no such day, or outside years 1 to 9999 in UTC
        return None


def to_epoch_us(dt: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_us(us: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always 6 fraction digits, UTC) from epoch µs."""
    seconds, micro = divmod(us, 1_000_000)
    dt = datetime.fromtimestamp(seconds, UTC)
    # isoformat, not strftime: "%Y" gives "956" for the year 956 (not ISO 8601)
    return f"{dt.replace(tzinfo=None).isoformat(timespec='seconds')}.{micro:06d}Z"


def format_dt(dt: datetime) -> str:
    """:func:`format_us` of an aware UTC datetime."""
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


SESSION_BUCKET_S = 1800


def session_bucket(us: int) -> int:
    """The 30-minute bucket of a timestamp: ``floor(epoch_seconds / 1800)``."""
    return (us // 1_000_000) // SESSION_BUCKET_S


# --------------------------------------------------------------------------- classifier


class Classification(NamedTuple):
    """The classifier's answer for one event."""

    source: str
    medium: str
    campaign: str | None
    confidence: str
    rule_id: str


#: Sites known by their name under any top-level domain (``google.de``, ``l.facebook.com``)
#: and, for names that are too short or too common for that, by their exact domain.
SEARCH_ENGINES: dict[str, str] = {
    "google": "google", "bing": "bing", "duckduckgo": "duckduckgo", "yahoo": "yahoo",
    "baidu": "baidu", "yandex": "yandex", "ecosia": "ecosia", "qwant": "qwant",
    "startpage": "startpage", "naver": "naver", "seznam": "seznam",
}
SEARCH_DOMAINS: dict[str, str] = {"search.brave.com": "brave", "ya.ru": "yandex"}
SOCIAL_NETWORKS: dict[str, str] = {
    "facebook": "facebook", "instagram": "instagram", "twitter": "twitter",
    "linkedin": "linkedin", "reddit": "reddit", "youtube": "youtube", "tiktok": "tiktok",
    "pinterest": "pinterest",
}
SOCIAL_DOMAINS: dict[str, str] = {
    "x.com": "twitter", "t.co": "twitter", "fb.com": "facebook", "fb.me": "facebook",
    "lnkd.in": "linkedin", "youtu.be": "youtube", "threads.net": "threads",
    "bsky.app": "bluesky", "mastodon.social": "mastodon", "news.ycombinator.com": "hackernews",
}
CLICK_IDS: tuple[tuple[str, str, str, str], ...] = (
    # (parameter, source, medium, confidence)
    ("gclid", "google", "cpc", "high"),
    ("msclkid", "bing", "cpc", "high"),
    ("fbclid", "facebook", "paid_social", "medium"),
    ("ttclid", "tiktok", "paid_social", "high"),
)
#: Mediums counted as paid in ``/v1/sources``' ``paid_share``.
PAID_MEDIUMS: frozenset[str] = frozenset(
    {"cpc", "ppc", "paid", "paidsearch", "paid_search", "paid_social", "paidsocial", "cpm",
     "display", "cpv", "cpa", "affiliate", "retargeting"}
)
# Second-level suffixes after which the registrable name is one label further left.
_MULTI_SUFFIX = re.compile(r"\.(co|com|org|net|ac|gov|edu)\.[a-z]{2}$")

DIRECT = Classification("direct", "none", None, "low", "direct")
INTERNAL = Classification("direct", "none", None, "low", "referrer.internal")


def _host(url: str) -> str:
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    except ValueError:
        return ""
    return host.lower().removeprefix("www.")


def _site_name(host: str) -> str:
    """The registrable name of a host: ``google.co.uk`` -> ``google``,
    ``l.facebook.com`` -> ``facebook``."""
    stripped = _MULTI_SUFFIX.sub("", host)
    if stripped == host:
        stripped = host.rpartition(".")[0] or host
    return stripped.rpartition(".")[2]


def _lookup(host: str, by_name: dict[str, str], by_domain: dict[str, str]) -> str | None:
    """The site a host belongs to: by exact domain (or a parent domain), else by name."""
    parts = host.split(".")
    for i in range(len(parts) - 1):
        hit = by_domain.get(".".join(parts[i:]))
        if hit:
            return hit
    return by_name.get(_site_name(host))


@lru_cache(maxsize=65_536)
def classify(url: str | None, referrer: str | None) -> Classification:
    """Classify one event's traffic source from its url and referrer (rules above)."""
    params: dict[str, list[str]] = {}
    if url and "?" in url:
        query = url.split("?", 1)[1].split("#", 1)[0]
        params = parse_qs(query, keep_blank_values=False)
    if params:
        campaign = params.get("utm_campaign", [None])[0]
        campaign = campaign.lower() if campaign else None
        utm_source = params.get("utm_source", [""])[0].strip().lower()
        if utm_source:
            medium = params.get("utm_medium", [""])[0].strip().lower() or "none"
            return Classification(utm_source, medium, campaign, "high", "utm")
        for param, source, medium, confidence in CLICK_IDS:
            if params.get(param):
                return Classification(source, medium, campaign, confidence, f"click_id.{param}")
    if referrer:
        ref_host = _host(referrer)
        if ref_host:
            if url and _host(url) == ref_host:
                return INTERNAL
            engine = _lookup(ref_host, SEARCH_ENGINES, SEARCH_DOMAINS)
            if engine:
                return Classification(engine, "organic", None, "medium", "referrer.search")
            network = _lookup(ref_host, SOCIAL_NETWORKS, SOCIAL_DOMAINS)
            if network:
                return Classification(network, "social", None, "medium", "referrer.social")
            return Classification(ref_host, "referral", None, "medium", "referrer.other")
    return DIRECT


# --------------------------------------------------------------------------- user agents


class Device(NamedTuple):
    """``device_type``, ``browser`` and ``os`` parsed from a User-Agent."""

    device_type: str | None
    browser: str | None
    os: str | None


_BOT = re.compile(r"bot|crawl|spider|slurp|headless|curl/|wget/|python-|httpx|okhttp|go-http"
                  r"|java/|libwww|node-fetch|axios", re.I)
_BROWSERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.I), name)
    for p, name in (
        (r"Edg(e|A|iOS)?/", "Edge"),
        (r"OPR/|Opera", "Opera"),
        (r"SamsungBrowser/", "Samsung Internet"),
        (r"Firefox/|FxiOS/", "Firefox"),
        (r"Chrome/|CriOS/|Chromium/", "Chrome"),
        (r"Safari/", "Safari"),
        (r"MSIE |Trident/", "Internet Explorer"),
        (r"curl/", "curl"),
        (r"python-httpx/|python-requests/|Python-urllib/", "Python"),
    )
)
_OSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.I), name)
    for p, name in (
        (r"iPhone|iPad|iPod", "iOS"),
        (r"Android", "Android"),
        (r"CrOS", "ChromeOS"),
        (r"Windows", "Windows"),
        (r"Mac OS X|Macintosh", "macOS"),
        (r"Linux", "Linux"),
    )
)
_TABLET = re.compile(r"iPad|Tablet|Android(?!.*Mobile)", re.I)
_MOBILE = re.compile(r"Mobi|iPhone|iPod|Android.*Mobile|Windows Phone", re.I)


@lru_cache(maxsize=4096)
def parse_user_agent(ua: str | None) -> Device:
    """Device type (``desktop``/``mobile``/``tablet``/``bot``), browser and OS of a UA.

    Unknown parts are ``None``; an absent User-Agent gives all ``None``.
    """
    if not ua:
        return Device(None, None, None)
    browser = next((name for rx, name in _BROWSERS if rx.search(ua)), None)
    os_name = next((name for rx, name in _OSES if rx.search(ua)), None)
    if _BOT.search(ua):
        device = "bot"
    elif _TABLET.search(ua):
        device = "tablet"
    elif _MOBILE.search(ua):
        device = "mobile"
    elif os_name is not None or browser is not None:
        device = "desktop"
    else:
        device = None
    return Device(device, browser, os_name)


# --------------------------------------------------------------------------- network


_COUNTRY = re.compile(r"^[A-Za-z]{2}$")


def country_from_header(value: str | None) -> str | None:
    """The two-letter country of a ``CF-IPCountry`` header, upper-cased; else ``None``."""
    if value and _COUNTRY.match(value.strip()):
        return value.strip().upper()
    return None


def hash_ip(ip: str | None, salt: str) -> str | None:
    """A salted SHA-256 of the client IP (first 32 hex digits); the raw IP is never kept."""
    if not ip:
        return None
    return hashlib.sha256(f"{salt}|{ip}".encode()).hexdigest()[:32]
