"""Configuration of the local server: :class:`ServerConfig`, keys and rate-limit modes.

Keys given to the server (``--key KEY`` or ``ServerConfig.keys``) belong to the
project ``dev`` unless written ``KEY=project``. With no keys at all the server
mints one key of each kind (``pk``, ``sk``, ``rk``, ``ak``) for project ``dev``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from millimetric_nb import contract

DEFAULT_PROJECT = "dev"
DEFAULT_ENV = "dev"
#: Bodies above this many bytes get ``413 payload_too_large``; the client's
#: 5 MB batches (contract.BATCH_MAX_BYTES) always fit.
MAX_BODY_BYTES = 6 * 1024 * 1024

MAX_PORT = 65535
#: The largest injected latency (one minute): more would only hang clients.
MAX_LATENCY_MS = 60_000

_KEY_RE = re.compile(contract.KEY_PATTERN)
_LIMITS_RE = re.compile(r"^x(\d+(?:\.\d+)?)$")
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key the server accepts. Only a digest of the secret is kept."""

    kind: str
    env: str
    prefix: str
    secret_digest: bytes = field(repr=False)
    project: str

    @property
    def masked(self) -> str:
        """``sk_dev_1a2b3c4d_…``: safe to print."""
        return f"{self.kind}_{self.env}_{self.prefix}_…"


def secret_digest(secret: str) -> bytes:
    """The digest the server keeps instead of a key's secret."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def parse_key_spec(spec: str) -> tuple[StoredKey, str]:
    """Parse ``KEY`` or ``KEY=project`` into a :class:`StoredKey` and the raw key.

    Raises ``ValueError`` (never quoting the secret) when the key is misshapen.
    """
    raw, sep, project = spec.partition("=")
    raw = raw.strip()
    project = project.strip() if sep else DEFAULT_PROJECT
    m = _KEY_RE.match(raw)
    if not m:
        head = raw[:3] if re.fullmatch(r"[a-z]{2}_", raw[:3]) else ""
        raise ValueError(f"key {head}… is not of the shape {contract.KEY_SHAPE}")
    if not project:
        raise ValueError("empty project name after '=' in a key")
    kind, env, prefix, secret = m.groups()
    return StoredKey(kind, env, prefix, secret_digest(secret), project), raw


def mint_key(kind: str, env: str = DEFAULT_ENV) -> str:
    """A fresh random key of ``kind``: ``{kind}_{env}_{8 chars}_{32 chars}``."""
    prefix = "".join(secrets.choice(_ALNUM) for _ in range(contract.KEY_PREFIX_LENGTH))
    secret = "".join(secrets.choice(_ALNUM) for _ in range(32))
    return f"{kind}_{env}_{prefix}_{secret}"


def parse_limits(limits: str) -> float | None:
    """``production`` -> 1.0, ``off`` -> None, ``xN`` -> N (scale of refill and burst)."""
    value = limits.strip().lower()
    if value == "production":
        return 1.0
    if value == "off":
        return None
    m = _LIMITS_RE.match(value)
    if m and float(m.group(1)) > 0:
        return float(m.group(1))
    raise ValueError(
        f"limits must be production, off, or xN with a number N > 0 (e.g. x10), not {limits!r}"
    )


@dataclass(slots=True)
class ServerConfig:
    """Everything the local server can be told.

    Attributes:
        host, port: where to listen (port 0 picks a free port).
        db: SQLite path, or ``":memory:"``.
        keys: accepted keys, each ``KEY`` or ``KEY=project``; ``None`` mints one of each kind.
        limits: ``"production"`` (the contract's token buckets), ``"off"``, or ``"xN"``.
        fail_rate: fraction of write requests answered 500/502 before writing.
        ambiguous_rate: fraction written, then failed (500, or connection dropped).
        reset_rate: fraction whose connection is dropped without writing or answering.
        latency_ms: delay added before every answer.
        seed: seed of the fault-injection random generator (deterministic faults).
        allowed_origins: origins a ``pk_`` key may be used from.
        clock: monotonic clock (seconds) of the rate limiter; tests inject a manual one.
        ip_salt: salt of ``ip_hash``; random per server when ``None``.
        max_body_bytes: request bodies above this get ``413 payload_too_large``.
        dedup: store an ``event_id`` once per project (a resend is accepted, not stored
            again); off by default, as the published server does not deduplicate.
    """

    host: str = "127.0.0.1"
    port: int = 0
    db: str = ":memory:"
    keys: Sequence[str] | None = field(default=None, repr=False)  # secrets stay out of repr
    limits: str = "off"
    fail_rate: float = 0.0
    ambiguous_rate: float = 0.0
    reset_rate: float = 0.0
    latency_ms: int = 0
    seed: int | None = None
    allowed_origins: tuple[str, ...] = ("http://localhost:3000",)
    clock: Callable[[], float] | None = None
    ip_salt: str | None = field(default=None, repr=False)
    max_body_bytes: int = MAX_BODY_BYTES
    dedup: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= MAX_PORT:
            raise ValueError(f"port must be between 0 and {MAX_PORT}, not {self.port!r}")
        parse_limits(self.limits)  # refuse a bad mode early
        for name in ("fail_rate", "ambiguous_rate", "reset_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        if self.fail_rate + self.ambiguous_rate + self.reset_rate > 1.0:
            raise ValueError("fail_rate + ambiguous_rate + reset_rate must not exceed 1")
        if not 0 <= self.latency_ms <= MAX_LATENCY_MS:
            raise ValueError(f"latency_ms must be between 0 and {MAX_LATENCY_MS}")
        self.allowed_origins = tuple(self.allowed_origins)


def resolve_keys(keys: Sequence[str] | None) -> tuple[list[StoredKey], dict[str, str]]:
    """The stored keys, and ``{kind: raw key}`` (first key of each kind; minted when none).

    Raises ``ValueError`` (naming the key by its masked form only) when one key is
    given for two projects: which project would its events belong to?
    """
    if keys is None:
        raws = [mint_key(kind) for kind in contract.KEY_KINDS]
        specs = raws
    else:
        specs = list(keys)
    stored: list[StoredKey] = []
    by_kind: dict[str, str] = {}
    owner: dict[tuple[str, str, str, bytes], str] = {}
    for spec in specs:
        key, raw = parse_key_spec(spec)
        identity = (key.kind, key.env, key.prefix, key.secret_digest)
        if identity in owner:
            if owner[identity] != key.project:
                raise ValueError(
                    f"key {key.masked} is given for two projects ({owner[identity]!r} and "
                    f"{key.project!r}); give each key once"
                )
            continue  # the same key for the same project, twice: one key
        owner[identity] = key.project
        stored.append(key)
        by_kind.setdefault(key.kind, raw)
    return stored, by_kind
