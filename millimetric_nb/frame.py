"""Column-wise validation and encoding of a DataFrame of events.

This is the data layer under ``df.millimetric`` and the backfill engine: it maps
columns to the contract's event fields (:func:`resolve_mapping`; its keywords are
:func:`mapping_keywords`), then checks and encodes a chunk of rows at once
(:func:`prepare_chunk`). Which fields exist, their limits and the order they are
encoded in come from the contract's table (``contract.EVENT_FIELDS``, read when
called), each field checked by its kind; the messages are :mod:`millimetric_nb.rules`'s.
Checks run per column,
vectorised with polars and numpy; only values that cannot be handled as a column
(object columns of mixed types, dicts and lists in ``properties``, strings that
need JSON escaping) are encoded one by one, through :mod:`millimetric_nb.encode`
so that the rules are the same as for a single event (:mod:`millimetric_nb.events`).

Choices (documented, and tested):

* **Missing values** (``None``, NaN, ``NaT``, ``pd.NA``) in a field column omit the
  field for that row; in a property column they omit that property for that row;
  a row whose properties are all missing has no ``properties``. Inside a dict held
  by a ``properties`` column a NaN is written as ``null`` (as ``encode.dumps`` does).
* **String fields** (``event``, ids, ``url``...): ``str`` values are taken as they
  are; **integers** (numpy, nullable ``Int64`` or Python ``int``) become their
  decimal string, because numeric ids are common in exports (``user_id`` 123 is
  sent as ``"123"``). Floats (even whole ones: an integer column with a missing
  value becomes float; use ``astype("Int64")``), booleans, bytes, datetimes and
  any other type are ``type`` errors. Lengths are counted in characters.
* **Timestamps**: ``datetime64`` columns, naive = UTC, tz-aware converted; strings
  and other objects are parsed as ISO 8601 with the same rules as
  ``encode.to_utc_iso`` (a vectorised fast path for the common shapes, the exact
  per-value parser for the rest). Output is ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``,
  nanoseconds truncated. Numbers in a timestamp column are ``invalid_timestamp``
  (epoch seconds and milliseconds cannot be told apart); so are strings of digits,
  with a hint on converting epochs. When the mapping has a timestamp column, an
  empty cell makes the row invalid (rule ``required``), unless
  ``missing_timestamp="server_time"`` (then the field is omitted and the server
  uses its own time); either way a warning names the first such rows.
* **Properties**: keys are the column labels (``str(label)`` for non-string labels),
  written in sorted key order. Integers beyond +-(2**53 - 1) are
  ``int_out_of_range`` errors (never rounded, never silently turned into strings:
  send them as strings yourself). ``inf`` is ``not_json``; bytes are ``not_json``;
  lone surrogates are ``invalid_unicode``; ``Decimal`` follows ``encode``.
* **Stable event ids**: a row without an ``event_id`` gets ``"mm_"`` + the first
  32 hex digits (128 bits) of the SHA-256 of its encoded event (without
  ``event_id``); the *n*-th repeat (n >= 1) of identical content within one input
  hashes the first digest together with *n*. The id depends neither on the index nor on chunking
  (:class:`EventIdState` carries occurrence counts across chunks), and is stable
  across processes and library versions because it hashes this module's own
  canonical encoding with SHA-256 (the ``polars-hash`` plugin, column-wise, whose
  digests are ``hashlib``'s; not Python's ``hash()`` nor polars' own hash).
"""

from __future__ import annotations

import binascii
import re
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import numpy as np
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa

from . import _bytescan as _bs
from . import contract, rules
from .defaults import PII_DEFAULT
from .encode import EncodeError, dumps, is_missing, member_sizes, to_utc_iso, too_large_message
from .errors import ConfigurationError, DataWarning, MillimetricError, ValidationError
from .rules import ERROR_COLUMNS, column_fields

__all__ = [
    "ERROR_COLUMNS",
    "PII_DEFAULT",
    "ROWS_WARNING",
    "RULE_PII",
    "RULE_UNENCODABLE",
    "DataWarning",
    "EncodeMode",
    "EventIdState",
    "FieldMapping",
    "MergedWarnings",
    "MissingTimestamp",
    "PiiMode",
    "PreparedChunk",
    "check_mapping_keywords",
    "check_missing_timestamp",
    "check_pii",
    "column_fields",
    "describe_recipe_change",
    "detect_pii",
    "id_recipe",
    "mapping_keywords",
    "pii_columns",
    "prepare_chunk",
    "resolve_mapping",
    "rows_phrase",
]

#: Rule code for a property column that looks like personal data (``pii="error"``).
RULE_PII: Final = "personal_data"
#: Rule code for a cell that defeats every check (see :func:`prepare_chunk`).
RULE_UNENCODABLE: Final = "unencodable"
#: What to do with property columns that look like personal data.
PiiMode = Literal["error", "warn", "allow", "ignore"]


def _object_field() -> str:
    """The event's object field (``properties``), fed by property columns or a dict column."""
    return rules.fields_of(contract.EVENT_FIELDS, "object")[0]


def mapping_keywords() -> tuple[str, ...]:
    """The keywords of :func:`resolve_mapping`, from the contract's field table: ``event``
    (a constant name), ``<field>_col`` for each field fed by a column, ``properties``."""
    return ("event", "event_col", *(f"{n}_col" for n in column_fields()), _object_field())


#: Field columns besides ``event`` and ``properties``, in the contract's order, as the
#: table stood at import (:func:`column_fields` reads it when called).
COLUMN_FIELDS: Final = column_fields()
_ID_PREFIX: Final = "mm_"
_ID_HEX: Final = 32  # hex digits of the digest kept in a derived id (128 bits)
_ID_REPEAT: Final = b"mm-nb-repeat\x00"  # domain tag for the n-th repeat of a content
_MAX_SAFE: Final = contract.MAX_SAFE_INTEGER


#: What a row with an empty cell in the timestamp column becomes (see :func:`prepare_chunk`).
MissingTimestamp = Literal["invalid", "server_time"]


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class FieldMapping:
    """Which columns feed which event fields.

    Attributes:
        event_col: column holding event names, or ``None`` when ``event`` is a constant.
        event: constant event name for every row (when ``event_col`` is ``None``).
        columns: contract field name -> column label, for the fields in
            :data:`COLUMN_FIELDS` that are mapped.
        properties: a list of column labels (each becomes one property, keyed by
            ``str(label)``), or one column label whose cells are dicts, or ``None``
            for no properties.
        ignored_enriched: columns named like server-enriched fields (``source``,
            ``medium``...), which are not sent.
    """

    event_col: str | None
    event: str | None
    columns: dict[str, Hashable]
    properties: list[Hashable] | Hashable | None
    ignored_enriched: list[Hashable] = field(default_factory=list)

    @property
    def properties_is_dict_column(self) -> bool:
        """``True`` when ``properties`` names one column holding dicts."""
        return self.properties is not None and not isinstance(self.properties, list)

    @property
    def dict_column(self) -> Hashable:
        """The one column of dicts (only when :attr:`properties_is_dict_column`)."""
        if isinstance(self.properties, list) or self.properties is None:
            raise ValueError("the mapping's properties are not one column of dicts")
        return self.properties

    @property
    def property_columns(self) -> list[Hashable]:
        """The property columns (list form), else an empty list."""
        return list(self.properties) if isinstance(self.properties, list) else []


def _mapping_error(message: str, column: Any, what: str = "mapping") -> ValidationError:
    return ValidationError(
        message, code="invalid_mapping", problems=[(str(what), "invalid_mapping", message)]
    )


def _property_key(label: Hashable) -> str:
    """The JSON key of a property column: the label, or ``str(label)``.

    A ``str`` subclass (``numpy.str_``) gives its plain text. :func:`resolve_mapping`
    has checked (:func:`_checked_key`) that every property column's key can be made.
    """
    if type(label) is str:
        return label
    if isinstance(label, str):
        return str.__str__(label)
    return str(label)


def _checked_key(label: Hashable) -> str:
    """:func:`_property_key`, or an ``invalid_mapping`` error naming the column when
    the label cannot be a JSON key (its ``str()`` raises, or it holds a lone surrogate,
    which UTF-8 cannot carry)."""
    try:
        key = _property_key(label)
    except Exception as exc:
        raise _mapping_error(
            f"the column label {_col_name(label)} cannot be turned into a property key "
            f"(str() raised {type(exc).__name__}): rename the column", label, "columns",
        ) from None
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise _mapping_error(
            f"the column label {_col_name(label)} contains a lone surrogate, which is not "
            "valid UTF-8, so it cannot be a property key: rename the column (or leave it out "
            "with properties=[...])", label, "columns",
        ) from None
    return key


def _refuse_multiindex(columns: Any) -> None:
    """Columns given as a MultiIndex: an ``invalid_mapping`` error saying how to flatten."""
    if isinstance(columns, pd.MultiIndex):
        raise _mapping_error(
            f"the frame's columns are a MultiIndex ({_short(list(columns[:3]), 80)}): give "
            "each column one label first, e.g. df.columns = ['_'.join(map(str, c)).strip('_') "
            "for c in df.columns]", None, "columns",
        )


def check_mapping_keywords(mapping: Mapping[str, Any]) -> None:
    """Refuse a mapping keyword :func:`resolve_mapping` does not know (a typo such as
    ``user_col=``), naming it, the closest known one and the whole list
    (:func:`mapping_keywords`)."""
    known = list(mapping_keywords())
    unknown = [k for k in mapping if k not in known]
    if not unknown:
        return
    import difflib  # only for a mistake: its import is not paid by every send

    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, known, n=1)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigurationError(
        f"unknown mapping keyword(s) {', '.join(parts)}; the mapping keywords are "
        f"{', '.join(known)}",
        code="invalid_mapping",
    )


def resolve_mapping(
    columns: Sequence[Hashable] | pd.Index,
    *,
    event: str | None = None,
    event_col: str | None = "event",
    properties: list[Hashable] | Hashable | None = None,
    **field_cols: Hashable | None,
) -> tuple[FieldMapping, list[str]]:
    """Map a frame's columns to event fields; return ``(mapping, warnings)``.

    * ``event`` (a constant name) wins over ``event_col``; else ``event_col`` must exist.
    * ``<field>_col=`` names the column of each other field of the contract's table
      (:func:`mapping_keywords`: ``event_id_col``, ``timestamp_col``,
      ``anonymous_id_col``, ``user_id_col``, ``session_id_col``, ``url_col``,
      ``path_col``, ``referrer_col``). A field whose ``*_col`` is not given is taken
      from a column named exactly like the field (``user_id``, ``timestamp``...), if
      there is one.
    * ``properties=None`` (default): a column named ``properties`` is used as a dict
      column if present, else every column not mapped to a field becomes a property.
      A list selects property columns; any other label names one column of dicts.
      ``properties=[]`` sends no properties.
    * Columns named like server-enriched fields (``source``, ``medium``...) are not
      sent unless listed explicitly in ``properties``; a warning says so.

    Raises:
        ValidationError: code ``invalid_mapping``, naming the column, for a named
            column that does not exist, duplicate column labels, a constant ``event``
            that breaks the contract, or property columns whose keys collide.
        ConfigurationError: code ``invalid_mapping`` for an unknown keyword.
    """
    check_mapping_keywords(field_cols)
    _refuse_multiindex(columns)
    cols = list(columns)
    seen: set[Hashable] = set()
    dupes: list[Hashable] = []
    for c in cols:
        try:
            if c in seen:
                dupes.append(c)
            seen.add(c)
        except Exception as exc:  # unhashable label (or a __hash__ that raises)
            raise _mapping_error(f"column label {_col_name(c)} is not hashable", c) from exc
    if dupes:
        raise _mapping_error(
            f"duplicate column label(s) {sorted(set(map(_col_name, dupes)))}: each column must "
            "have a unique name (rename them, e.g. df.columns = [...])", dupes[0], "columns",
        )
    warns: list[str] = []

    def need(label: Hashable, what: str) -> Hashable:
        if label not in seen:
            raise _mapping_error(
                f"{what}={_col_name(label)} names a column that does not exist (columns: "
                f"{', '.join(map(_col_name, cols[:20]))}{'...' if len(cols) > 20 else ''})",
                label, what,
            )
        return label

    used: set[Hashable] = set()
    if event is not None:
        _, broken = rules.string_violation("event", event, contract.EVENT_FIELDS["event"])
        if broken is not None:
            raise ValidationError(
                f"event={_short(event, 80)} {broken.message}",
                code="invalid_mapping",
                problems=[(broken.path, broken.rule,
                           f"the constant event name breaks the contract: {broken.message}")],
            )
        ev_col: str | None = None
        if "event" in seen:
            used.add("event")
            warns.append(
                "column 'event' is not sent: event= gives every row the name "
                f"{event!r} (pass event_col='event' instead to use the column)"
            )
    else:
        if event_col is None:
            raise _mapping_error(
                "give either event= (a constant name) or event_col=", None, "event"
            )
        ev_col = need(event_col, "event_col")  # type: ignore[assignment]
        used.add(ev_col)

    mapped: dict[str, Hashable] = {}
    for name in column_fields():
        label = field_cols.get(f"{name}_col")
        if label is not None:
            mapped[name] = need(label, f"{name}_col")
        elif name in seen and name not in used:
            mapped[name] = name
        elif contract.EVENT_FIELDS[name].required:
            raise _mapping_error(
                f"the field {name!r} is required: no column is named {name!r}; pass "
                f"{name}_col= to name its column", None, f"{name}_col",
            )
    used.update(mapped.values())

    enriched = [c for c in cols if isinstance(c, str) and c in contract.ENRICHED_FIELDS]
    ignored: list[Hashable] = []
    props: list[Hashable] | Hashable | None
    if properties is None:
        if "properties" in seen and "properties" not in used:
            props = "properties"
            ignored = [c for c in enriched if c not in used]
            rest = [c for c in cols if c not in used and c != "properties" and c not in ignored]
            if rest:
                warns.append(
                    f"column(s) {', '.join(map(_col_name, rest))} are not sent: the "
                    "'properties' column holds the properties (pass properties=[...] to choose "
                    "columns instead)"
                )
        else:
            ignored = [c for c in enriched if c not in used]
            props = [c for c in cols if c not in used and c not in ignored]
    elif isinstance(properties, list) or (
        isinstance(properties, tuple) and properties not in seen
    ):
        props = [need(c, "properties") for c in properties]
        ignored = [c for c in enriched if c not in used and c not in props]
    else:
        props = need(properties, "properties")
        ignored = [c for c in enriched if c not in used and c != props]
    if isinstance(props, list):
        keys: dict[str, Hashable] = {}
        for c in props:
            k = _checked_key(c)
            if k in keys:
                raise _mapping_error(
                    f"property columns {_col_name(keys[k])} and {_col_name(c)} would both be "
                    f"sent as key {_short(k, 80)}", c, "properties",
                )
            keys[k] = c
    if ignored:
        warns.append(
            f"column(s) {', '.join(map(_col_name, ignored))} are named like server-enriched "
            "fields and are not sent: the server derives source, medium, campaign, country, "
            "device and browser itself from url, referrer and the request"
        )
    mapping = FieldMapping(
        event_col=ev_col, event=event, columns=mapped, properties=props, ignored_enriched=ignored
    )
    return mapping, warns


# --------------------------------------------------------------------------- stable ids


def id_recipe(mapping: FieldMapping) -> str | None:
    """The shape of the content a derived id hashes: its fields and property keys.

    Two inputs with different recipes cannot share a derived id (a journal written
    for one recognises nothing of the other). ``None`` when ``event_id`` comes from
    a column (given ids do not depend on the content). Canonical JSON:
    ``{"fields": [...sorted], "properties": [...sorted keys] | "<dict column>"}``.
    """
    if "event_id" in mapping.columns:
        return None
    fields = sorted({"event", *mapping.columns})
    props: list[str] | str = (
        "<dict column>"
        if mapping.properties_is_dict_column
        else sorted(_property_key(c) for c in mapping.property_columns)
    )
    return orjson.dumps({"fields": fields, "properties": props}).decode()


def describe_recipe_change(old: str, new: str) -> str:
    """What differs between two :func:`id_recipe` values, for an error message."""
    a, b = orjson.loads(old), orjson.loads(new)
    parts: list[str] = []
    for what in ("fields", "properties"):
        before, after = a.get(what), b.get(what)
        if before == after:
            continue
        if isinstance(before, list) and isinstance(after, list):
            added = [k for k in after if k not in before]
            removed = [k for k in before if k not in after]
            if added:
                parts.append(f"{what} added: {', '.join(repr(k) for k in added)}")
            if removed:
                parts.append(f"{what} removed: {', '.join(repr(k) for k in removed)}")
        else:
            parts.append(f"{what} were {before!r}, now {after!r}")
    return "; ".join(parts) or "the content's shape differs"


#: Keys between two fences of a large run (see :func:`_fenced_positions`).
_FENCE: Final = 64
#: Runs this large are searched through their fences.
_FENCED: Final = 1 << 20
#: Queries searched at a time in a fenced run (absorbing a run asks for millions).
_QUERIES: Final = 1 << 17


class _Run:
    """Keys seen in some chunks: each once, except ``rep_keys`` (a sorted subset), seen
    ``rep_counts`` (>= 2) times. Never changed in place (a snapshot shares them), but
    for the base of :class:`EventIdState`, which :func:`_absorb` replaces by a new one."""

    __slots__ = ("_fences", "keys", "rep_counts", "rep_keys")

    def __init__(self, keys: np.ndarray, rep_keys: np.ndarray, rep_counts: np.ndarray) -> None:
        self.keys = keys
        self.rep_keys = rep_keys
        self.rep_counts = rep_counts
        self._fences: np.ndarray | None = None  # every _FENCE-th key, once searched

    def member(self, query: np.ndarray) -> np.ndarray:
        """Whether each of ``query`` is among :attr:`keys`."""
        keys = self.keys
        if keys.size < _FENCED:
            return _member(keys, query)
        if self._fences is None:
            self._fences = keys[::_FENCE].copy()
        out = np.empty(query.size, dtype=bool)
        for start in range(0, query.size, _QUERIES):  # a slice at a time: the search's
            part = query[start:start + _QUERIES]  # arrays are 40 bytes a query
            pos = np.minimum(_fenced_positions(keys, self._fences, part), keys.size - 1)
            out[start:start + part.size] = keys[pos] == part
        return out

    def counts_of(self, query: np.ndarray) -> np.ndarray:
        """How many times each of the sorted ``query`` keys was seen in this run."""
        out = self.member(query).astype(np.int64)
        if self.rep_keys.size:
            hit, pos = _member(self.rep_keys, query), np.searchsorted(self.rep_keys, query)
            out[hit] = self.rep_counts[pos[hit]]
        return out


def _member(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Whether each of ``query`` is in ``sorted_keys``."""
    if not sorted_keys.size:
        return np.zeros(query.size, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return sorted_keys[pos] == query


def _fenced_positions(keys: np.ndarray, fences: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``np.searchsorted(keys, query)``, in two steps that touch less memory.

    ``fences`` is every ``_FENCE``-th key. A query is first placed among the fences
    (small enough to stay in the CPU's cache), then among the ``_FENCE`` keys from its
    fence on, by a branch-free binary search run for every query at once. A plain
    search of a large array misses the cache at nearly every step (keys are hash
    prefixes: no locality); this one about once per query (2.5 times faster at 10M
    keys). Queries before the first fence or in the last, partial block are searched
    plainly.
    """
    n = keys.size
    block = np.searchsorted(fences, query, side="right") - 1  # last fence <= query
    pos = block * _FENCE
    plain = (block < 0) | (pos + _FENCE > n)
    pos[plain] = 0
    step = _FENCE >> 1
    while step:  # invariant: keys[pos - 1] < query (or pos is the block's start)
        pos += step * (keys[pos + step - 1] < query)
        step >>= 1
    pos += keys[pos] < query
    if plain.any():
        pos[plain] = np.searchsorted(keys, query[plain])
    return pos


#: What :meth:`EventIdState.snapshot` returns: the small runs as they were, the distinct
#: count, and how many times the base had absorbed runs (a snapshot is good until then).
IdSnapshot = tuple[tuple[_Run, ...], int, int]


class EventIdState:
    """Occurrence counts of event contents already seen in one input.

    Derived ids number repeats of identical content (the second identical row gets
    a different id from the first); passing the same state to every
    :func:`prepare_chunk` call of one input makes streaming produce exactly the ids
    one big frame would. Keys are the first 64 bits of each content digest.

    The keys live in one large sorted *base* and a few small sorted *runs*. Each chunk
    adds one run of its distinct keys, and two runs are merged when the newer one has
    grown as large as the one before it (a binary counter), so a chunk's cost does not
    grow with what came before it but for a logarithm. Runs are never changed in place,
    so a :meth:`snapshot` shares them. :meth:`settle` (which :func:`prepare_chunk` calls
    once a chunk is done) absorbs the runs into the base when they hold an eighth of its
    size (at least 1M keys): in place, the base grown by ``realloc`` and its keys moved
    up block by block, so that a long input never holds its keys twice (a new merged
    array beside the old ones was the largest transient memory of a 10M-row run), and
    the runs stay small (their merges make copies). A key counts once in the
    base or a run that holds it, unless that one lists it among its repeats with a
    count. About 8 bytes per distinct content, 16 more per content seen more than once.
    """

    #: The runs are absorbed into the base once they hold this many keys (8 MB), or
    #: :attr:`absorb_share`-th of the base's, whichever is more. The runs and their merged
    #: copy are the state's transient memory: at 10M rows, a quarter of the base (up to
    #: 4M keys, 32 MB, merged into another 32 MB) made a 10M-row dry run's peak about
    #: 15 MB higher than an eighth, for the same time (9 absorbs instead of 7).
    absorb_at = 1 << 20
    #: The base's share (1/n) the runs may reach before they are absorbed: each absorb
    #: moves the whole base, so over an input every key moves about this many times.
    absorb_share = 8
    #: Keys moved at a time while absorbing (the transient memory: about 24 bytes each).
    block = 1 << 18

    def __init__(self) -> None:
        self._base = _Run(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64),
                          np.zeros(0, dtype=np.int64))
        self._runs: list[_Run] = []  # larger first
        self._distinct = 0
        self._absorbed = 0  # times the base changed (it is changed in place)

    def __len__(self) -> int:
        """Distinct contents seen."""
        return self._distinct

    def snapshot(self) -> IdSnapshot:
        """The counts as they are now, for :meth:`restore`, good until the next
        :meth:`settle` that absorbs runs into the base."""
        return tuple(self._runs), self._distinct, self._absorbed

    def restore(self, saved: IdSnapshot) -> None:
        """Go back to a :meth:`snapshot` (after a chunk that failed half-way).

        Raises:
            RuntimeError: the base absorbed runs since the snapshot was taken.
        """
        if saved[2] != self._absorbed:
            raise RuntimeError("this EventIdState settled since the snapshot was taken")
        self._runs, self._distinct = list(saved[0]), saved[1]

    def occurrences(self, keys: np.ndarray) -> np.ndarray:
        """For each key (in row order), how many earlier rows had it; records them."""
        n = keys.size
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.uint64)
        order = np.argsort(keys)  # not stable (faster): equal keys are put in row order below
        sk = keys[order]
        starts = np.r_[True, sk[1:] != sk[:-1]]
        first = np.flatnonzero(starts)
        group = np.cumsum(starts) - 1  # group number of each sorted row
        uniq = sk[first]
        counts = np.diff(np.r_[first, n])
        prior = self._base.counts_of(uniq)
        for run in self._runs:
            prior += run.counts_of(uniq)
        within = np.zeros(n, dtype=np.int64)
        if first.size < n:  # repeats within the chunk: number each group's rows in row order
            rep = np.flatnonzero(counts[group] > 1)  # sorted positions, groups contiguous
            rows = np.sort(group[rep] * n + order[rep])  # per group, rows ascending
            order[rep] = rows % n
            within[rep] = rep - first[group[rep]]
        occ = np.empty(n, dtype=np.int64)
        occ[order] = within + prior[group]
        self._distinct += int(np.count_nonzero(prior == 0))
        repeated = counts > 1
        self._add_run(_Run(uniq, uniq[repeated], counts[repeated]))
        return occ

    def _add_run(self, run: _Run) -> None:
        runs = [*self._runs, run]  # a new list: a snapshot keeps the old one
        while len(runs) > 1 and runs[-2].keys.size <= runs[-1].keys.size:
            newer = runs.pop()
            runs.append(_merge_runs(runs.pop(), newer))
        self._runs = runs

    def settle(self) -> None:
        """Absorb the runs into the base when they have grown large enough (see the
        class docstring). Call it between chunks, never while a :meth:`snapshot` may
        still be restored: it changes the base in place."""
        held = sum(r.keys.size for r in self._runs)
        due = max(self.absorb_at, self._base.keys.size // self.absorb_share)
        if not held or held < due:
            return
        run = self._runs[-1]
        for older in reversed(self._runs[:-1]):
            run = _merge_runs(older, run)
        self._runs = []
        self._absorbed += 1
        self._base = _absorb(self._base, run, self.block)


def _absorb(base: _Run, run: _Run, block: int) -> _Run:
    """``run`` merged into ``base``; ``base.keys`` is grown and rearranged in place.

    The keys of ``run`` not in ``base`` are inserted: the base's array is grown by
    ``ndarray.resize`` (``realloc``: a large array is remapped, not copied), then, from
    the top, each block of old keys is merged with the new keys that fall among them
    and written to where they end up. A block's place only moves up, so it never
    overwrites keys still to be moved, and the transient memory is one block. A key in
    both becomes a repeat, its counts added.
    """
    keys = base.keys
    if not keys.size:
        return _Run(run.keys.copy(), run.rep_keys, run.rep_counts)  # owns its memory
    hit = base.member(run.keys)
    shared, new = run.keys[hit], run.keys[~hit]
    rep, counts = base.rep_keys, base.rep_counts
    if shared.size or run.rep_keys.size:
        rep = np.unique(np.concatenate([base.rep_keys, run.rep_keys, shared]))
        counts = base.counts_of(rep) + run.counts_of(rep)
    if new.size:
        top, above = keys.size, new.size  # old keys [lo, top) and new keys [below, above)
        keys.resize(top + new.size, refcheck=False)  # no views of the base are kept
        while top > 0:
            lo = max(top - block, 0)
            below = int(np.searchsorted(new, keys[lo])) if lo else 0
            part = np.concatenate([keys[lo:top], new[below:above]])
            part.sort(kind="stable")  # two sorted runs: one linear merge
            keys[lo + below:top + above] = part
            top, above = lo, below
    return _Run(keys, rep, counts)


def _merge_runs(a: _Run, b: _Run) -> _Run:
    """Two runs as one (new arrays); a key in both becomes a repeat, its counts added."""
    both = np.concatenate([a.keys, b.keys])
    both.sort(kind="stable")  # two sorted runs: timsort merges them in one linear pass
    dup = both[1:] == both[:-1]  # each run holds a key once: pairs at most
    if not dup.any() and not a.rep_keys.size and not b.rep_keys.size:
        return _Run(both, a.rep_keys, a.rep_counts)
    shared = both[1:][dup]
    keys = both[np.r_[True, ~dup]]
    del both
    rep = np.unique(np.concatenate([a.rep_keys, b.rep_keys, shared]))
    return _Run(keys, rep, a.counts_of(rep) + b.counts_of(rep))


def _within_occurrences(keys: np.ndarray) -> np.ndarray:
    """Occurrence number of each key among the earlier equal keys of ``keys``."""
    return EventIdState().occurrences(keys)


_HEX_DIGITS: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
#: A byte's two hex digits as one ``uint16`` in memory order: a digest's text is one
#: gather (``_HEX_PAIRS[digests].view(np.uint8)``), not two with shifts and masks.
_HEX_PAIRS: Final = np.ascontiguousarray(
    np.stack([_HEX_DIGITS[np.arange(256) >> 4], _HEX_DIGITS[np.arange(256) & 15]], axis=1)
).view(np.uint16).ravel()


def _hex_u64(values: np.ndarray) -> pl.Series:
    """Each value as 16 lowercase hex digits (its 8 big-endian bytes), as a String series."""
    octets = np.asarray(values).astype(">u8").view(np.uint8).reshape(-1, 8)
    text = np.ascontiguousarray(_HEX_PAIRS[octets]).view("S16").ravel()
    return pl.Series(values=text, dtype=pl.Binary).cast(pl.String)


def _sha256_hex(values: pl.Series) -> pl.Series:
    """SHA-256 of each value (String as UTF-8, or Binary) as 64 hex digits, in one pass."""
    import polars_hash as plh  # registers the ``chash`` namespace; imported on first use

    return pl.DataFrame({"v": values}).select(plh.col("v").chash.sha2_256()).to_series()


def _hex_bytes(hexes: pl.Series, width: int) -> np.ndarray:
    """The first ``width`` bytes of each of ``hexes`` (a String series of lowercase hex
    digits, all of one even length of at least ``2 * width``, no nulls: SHA-256 digests),
    as an (n, width) uint8 array: their text is one block of the Arrow buffer, decoded in
    one C call (no Python object per row).

    Raises:
        ValueError: the texts are not of one such length, or one is null.
    """
    tb = _bs.text_bytes(hexes)
    n = tb.n
    text = tb.used()
    size = int(tb.offsets[1] - tb.offsets[0]) if n else 2 * width
    if size < 2 * width or size % 2 or text.size != size * n:
        raise ValueError(f"expected hex digests of one even length >= {2 * width}")
    raw = np.frombuffer(binascii.a2b_hex(text.data), dtype=np.uint8)
    return raw.reshape(n, size // 2)[:, :width].copy()


_ID_PREFIX_BYTES: Final = np.frombuffer(_ID_PREFIX.encode(), dtype=np.uint8)
#: Characters of a derived id: the prefix and 32 hex digits (16 bytes).
ID_LEN: Final = len(_ID_PREFIX) + _ID_HEX


def _derive_ids(contents: pl.Series, state: EventIdState | None) -> np.ndarray:
    """Stable ids for encoded contents (see the module docstring), as their 16 bytes:
    an (n, 16) uint8 array (:func:`id_text` writes them as ids).

    Column-wise: one SHA-256 pass over the contents (the ``polars-hash`` plugin, the
    same digests as ``hashlib``); the n-th repeat of a content hashes the domain tag,
    the first digest and n as 8 big-endian bytes, also as one pass over those rows.
    """
    if not len(contents):
        return np.zeros((0, _ID_HEX // 2), dtype=np.uint8)
    digests = _sha256_hex(contents)
    out = _hex_bytes(digests, _ID_HEX // 2)
    keys = np.ascontiguousarray(out[:, :8]).view(">u8").ravel().astype(np.uint64)
    occ = state.occurrences(keys) if state is not None else _within_occurrences(keys)
    repeats = np.flatnonzero(occ)
    if repeats.size:
        tagged = pl.DataFrame(
            {"d": digests.gather(repeats), "n": _hex_u64(occ[repeats])}
        ).select(
            pl.concat_str([pl.lit(_ID_REPEAT.hex()), pl.col("d"), pl.col("n")]).str.decode("hex")
        ).to_series()
        out[repeats] = _hex_bytes(_sha256_hex(tagged), _ID_HEX // 2)
    return out


def id_chars(digests: np.ndarray) -> np.ndarray:
    """Derived ids' text: an (n, ``ID_LEN``) uint8 array of ASCII characters."""
    chars = np.empty((len(digests), ID_LEN), dtype=np.uint8)
    chars[:, :len(_ID_PREFIX)] = _ID_PREFIX_BYTES
    chars[:, len(_ID_PREFIX):] = _HEX_PAIRS[digests].view(np.uint8)
    return chars


#: A lowercase hex digit's value, by byte; 255: not one (:func:`id_digests`).
_NIBBLE: Final = np.full(256, 255, dtype=np.uint8)
_NIBBLE[_HEX_DIGITS] = np.arange(16, dtype=np.uint8)


def id_digests(chars: np.ndarray) -> np.ndarray | None:
    """The inverse of :func:`id_chars`: derived ids' 16 bytes from their text (an
    (n, ``ID_LEN``) uint8 array), or ``None`` when one is not a derived id (another
    prefix, a character that is not a lowercase hex digit)."""
    if not (chars[:, :len(_ID_PREFIX)] == _ID_PREFIX_BYTES).all():
        return None
    nibbles = _NIBBLE[chars[:, len(_ID_PREFIX):]]
    if (nibbles == 255).any():
        return None
    return np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2], dtype=np.uint8)


def id_arrow(digests: np.ndarray, present: np.ndarray | None = None,
             n: int | None = None) -> pa.LargeStringArray:
    """Derived ids from their 16 bytes as an Arrow ``large_string`` array built from one
    buffer of fixed-width text. ``present``: an Arrow validity bitmap of ``n`` rows, one
    per digest among the set bits (the other rows null); ``None``: a row per digest."""
    m = len(digests)
    if present is None:
        n, bitmap, nulls = m, None, 0
        offsets = np.arange(m + 1, dtype=np.int64) * ID_LEN
    else:
        assert n is not None
        has = np.unpackbits(present, count=n, bitorder="little").astype(np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(has * ID_LEN, out=offsets[1:])
        bitmap, nulls = pa.py_buffer(present), n - m
    return pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(id_chars(digests)), bitmap, nulls)


def _id_series(digests: np.ndarray) -> pl.Series:
    """Derived ids as a polars String series (see :func:`id_arrow`)."""
    return cast("pl.Series", pl.from_arrow(id_arrow(digests)))


def id_text(digests: np.ndarray) -> np.ndarray:
    """Derived ids (``"mm_"`` and 32 lowercase hex digits) from their 16 bytes: an object
    array of ``str``."""
    return id_chars(digests).view(f"S{ID_LEN}").ravel().astype(str).astype(object)


# --------------------------------------------------------------------------- problems


#: Where the offending values of a problem are: the chunk's whole column (a pandas or
#: polars Series, or an array, indexed by the rows' positions), or ``None`` (no value).
_Cells = pd.Series | pl.Series | np.ndarray | None


def _repeated(text: str, n: int) -> np.ndarray:
    """``n`` references to ``text`` in an object array. (``np.full(n, text, dtype=object)``
    goes through a numpy unicode scalar, which drops trailing NUL characters: a property
    key ending in ``\x00`` lost it from the field path.)"""
    out = np.empty(n, dtype=object)
    out.fill(text)
    return out


class _Problems:
    """Accumulates per-row problems as arrays (local positions); the frame they make has
    the columns of :class:`~millimetric_nb.rules.Violation` (``field`` is its ``path``).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.invalid = np.zeros(n, dtype=bool)
        self._pos: list[np.ndarray] = []
        self._field: list[np.ndarray] = []
        self._rule: list[np.ndarray] = []
        self._msg: list[np.ndarray] = []
        self._cells: list[_Cells] = []

    def add(self, where: np.ndarray, field: str, rule: str, message: str | Sequence[str],
            cells: _Cells = None) -> None:
        """Record a problem for rows ``where`` (bool mask or int positions); ``cells``:
        the column holding the offending values (shown, for those rows only, by
        :meth:`frame`)."""
        pos = np.flatnonzero(where) if where.dtype == bool else np.asarray(where, dtype=np.int64)
        if pos.size == 0:
            return
        self.invalid[pos] = True
        self._pos.append(pos)
        self._field.append(_repeated(field, pos.size))
        self._rule.append(_repeated(rule, pos.size))
        if isinstance(message, str):
            self._msg.append(_repeated(message, pos.size))
        else:
            m = np.empty(pos.size, dtype=object)
            m[:] = list(message)
            self._msg.append(m)
        self._cells.append(cells)

    def frame(self, index: pd.Index, offset: int) -> pd.DataFrame:
        """The errors DataFrame, sorted by row position then discovery order."""
        if not self._pos:
            return _empty_errors()
        values = np.concatenate([
            _shown(cells, pos) for pos, cells in zip(self._pos, self._cells, strict=True)
        ])
        pos = np.concatenate(self._pos)
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        return pd.DataFrame({
            "row": index.take(pos).to_numpy(dtype=object) if not isinstance(index, pd.MultiIndex)
            else _tuples(index.take(pos)),
            "position": (pos + offset).astype(np.int64),
            "field": np.concatenate(self._field)[order],
            "rule": np.concatenate(self._rule)[order],
            "message": np.concatenate(self._msg)[order],
            "value": values[order],
        })


def _shown(cells: _Cells, pos: np.ndarray) -> np.ndarray:
    """Short reprs (:func:`rules.short`) of the cells at ``pos``; ``None`` without cells
    and for an empty cell (``None``, NaN, ``pd.NA``... alike, whatever the dtype)."""
    out = np.full(pos.size, None, dtype=object)
    if cells is None:
        return out
    try:
        if isinstance(cells, pd.Series):
            taken = _object_values(_plain(cells.iloc[pos])).tolist()
        elif isinstance(cells, pl.Series):
            taken = cells.gather(pos).to_list()
        else:
            taken = np.asarray(cells, dtype=object)[pos].tolist()
    except Exception:  # showing a value must never cost the report
        return out
    out[:] = [None if is_missing(v) else _short(v) for v in taken]
    return out


def _tuples(index: pd.Index) -> np.ndarray:
    out = np.empty(len(index), dtype=object)
    out[:] = list(index)
    return out


def _empty_errors() -> pd.DataFrame:
    """A new errors frame with no rows (a copy of one built once: building it takes
    about 30 times as long, and most chunks have no errors)."""
    return _EMPTY_ERRORS.copy()


_EMPTY_ERRORS: Final = pd.DataFrame({
    c: pd.Series([], dtype=np.int64 if c == "position" else object) for c in ERROR_COLUMNS
})


#: A short, printable ``repr`` of any value; never raises (see :func:`rules.short`).
_short = rules.short


def _col_name(label: Hashable) -> str:
    """A column label as messages show it (see :func:`_short`)."""
    return _short(label, 80)


def _exc_text(exc: BaseException) -> str:
    """An exception's message, bounded and encodable (for a row's error message)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    text = text or type(exc).__name__
    if len(text) > 200:
        text = text[:199] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------- column helpers


def _missing_mask(s: pd.Series) -> np.ndarray:
    return np.asarray(pd.isna(s), dtype=bool)


def _is_str_dtype(dtype: Any) -> bool:
    return isinstance(dtype, pd.StringDtype) or (
        isinstance(dtype, pd.ArrowDtype) and pd.api.types.is_string_dtype(dtype)
    )


def _plain(s: pd.Series) -> pd.Series:
    """Sparse columns densified, categoricals as their values (object)."""
    if isinstance(s.dtype, pd.SparseDtype):
        s = s.sparse.to_dense()  # type: ignore[attr-defined]  # pandas-stubs: no .sparse
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = pd.Series(np.asarray(s.astype(object), dtype=object), index=s.index, dtype=object)
    return s


def _object_values(s: pd.Series) -> np.ndarray:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return np.asarray(s.astype(object), dtype=object)
    return s.to_numpy(dtype=object)


def _text_column_to_polars(s: pd.Series, vals: np.ndarray) -> tuple[pl.Series, list[int]]:
    """A column of text (``vals``: its values as objects) as a polars String series:
    missing cells null, str subclasses as their plain text (polars reads a str's data,
    calling none of a subclass's methods); lone-surrogate positions listed.

    Through Arrow when it takes the values (:func:`_arrow_text`), else value by value.
    """
    fast = _arrow_text(vals)
    if fast is not None:
        return fast, []
    lst = vals.tolist()
    for i in np.flatnonzero(_missing_mask(s)):
        lst[i] = None
    return _strings_to_polars(lst)


def _arrow_text(vals: np.ndarray) -> pl.Series | None:
    """Objects that are each a ``str`` or missing, as a polars String series built by
    pyarrow, or ``None`` when pyarrow refuses a value (a lone surrogate, a float32
    NaN...): the caller then converts value by value, with its own checks and messages.

    ``pa.array(..., from_pandas=True)`` is one pass in C reading each str's UTF-8 data
    (no method of a subclass called), with ``None``, NaN and ``pd.NA`` as nulls: the
    missing values ``infer_dtype`` lets through with strings, so no ``pd.isna`` pass.
    It builds a string view, which polars takes without a copy.
    """
    try:
        arr = pa.array(vals, type=pa.string_view(), from_pandas=True)
    except Exception:  # whatever it refuses, the value-by-value path decides
        return None
    out = pl.from_arrow(arr)
    return out if isinstance(out, pl.Series) else None


def _int_text(value: int | np.integer) -> str | None:
    """The decimal text of an integer; ``None`` beyond Python's digit limit for ``str()``."""
    try:
        return str(int(value))
    except (ValueError, TypeError, OverflowError):
        return None


def _strings_to_polars(values: list[str | None]) -> tuple[pl.Series, list[int]]:
    """A polars String series; positions holding lone surrogates come back as null."""
    try:
        return pl.Series(values=values, dtype=pl.String), []
    except (UnicodeEncodeError, UnicodeError):
        bad: list[int] = []
        clean: list[str | None] = []
        for i, v in enumerate(values):
            if v is not None:
                try:
                    str.encode(v, "utf-8")  # str's own: a subclass's encode is not called
                except UnicodeEncodeError:
                    bad.append(i)
                    v = None
            clean.append(v)
        return pl.Series(values=clean, dtype=pl.String), bad


#: A property or field value column ready for JSON: ``(values, wrap)``; ``wrap`` means
#: the values are plain strings needing only surrounding quotes, else they are JSON text.
_JsonCol = tuple[pl.Series, bool]


def _quote(ps: pl.Series) -> _JsonCol:
    """JSON string literals for a String series (nulls stay null).

    Strings without characters JSON must escape are only wrapped in quotes (later, in
    the one polars expression that builds each event); if any value needs escaping,
    those few are escaped by orjson and every value is quoted here. Which values need
    it is read from the series' bytes (:func:`_bytescan.escape_rows`: a control
    character, ``"`` or ``\\``), not by a polars query.
    """
    needs = _bs.escape_rows(_bs.text_bytes(ps))  # one numpy pass over the UTF-8 bytes
    if not needs.any():
        return ps, True
    quoted = pl.select(pl.concat_str([pl.lit('"'), pl.lit(ps), pl.lit('"')])).to_series()
    idx = np.flatnonzero(needs)
    vals = [orjson.dumps(v).decode() for v in ps.gather(idx).to_list()]
    return quoted.scatter(idx, pl.Series(vals, dtype=pl.String)), False


def _frag_expr(key_json: str, name: str, wrap: bool) -> pl.Expr:
    """``"key":<value>`` per row of column ``name`` (null where the value is null)."""
    return pl.concat_str(_frag_parts(key_json, name, wrap))


def _frag_parts(key_json: str, name: str, wrap: bool) -> list[pl.Expr]:
    if wrap:
        return [pl.lit(key_json + ':"'), pl.col(name), pl.lit('"')]
    return [pl.lit(key_json + ":"), pl.col(name)]


def _members(items: list[tuple[str, str, pl.Series, bool]]) -> tuple[list[pl.Expr], bool]:
    """Pieces of ``,"key":value`` for each ``(key_json, column, values, wrap)``, in order.

    Columns without nulls are spliced in flat (no intermediate strings); nullable
    ones become one nested concat that is null (and so dropped by the outer
    ``concat_str(..., ignore_nulls=True)``) where the value is missing. Returns the
    pieces and whether any member can be absent.
    """
    parts: list[pl.Expr] = []
    nullable_any = False
    for key_json, name, values, wrap in items:
        pieces = _frag_parts("," + key_json, name, wrap)
        if values.null_count():
            nullable_any = True
            parts.append(pl.concat_str(pieces))
        else:
            parts.extend(pieces)
    return parts, nullable_any


def _object_expr(items: list[tuple[str, str, pl.Series, bool]]) -> pl.Expr:
    """One JSON object per row (members in the given order); null when no member is present."""
    parts, nullable = _members(items)
    inner = pl.concat_str(parts, ignore_nulls=True)  # "" or ",m1,m2..."
    obj = pl.concat_str([pl.lit("{"), inner.str.slice(1), pl.lit("}")])
    if not nullable:
        return obj
    return pl.when(inner != "").then(obj).otherwise(None)


def _string_field(
    s: pd.Series, name: str, spec: contract.FieldSpec, label: Hashable, probs: _Problems
) -> pl.Series:
    """A string field's values as a polars String series (null = omitted or invalid)."""
    n = len(s)
    dtype = s.dtype
    where = f"column {_col_name(label)}"
    out: pl.Series
    s = _plain(s)
    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype) and not _is_str_dtype(dtype):
        probs.add(~_missing_mask(s), name, contract.RULE_TYPE,
                  rules.wrong_type("a string", "bool", where), s)
        return pl.Series(values=[None] * n, dtype=pl.String)
    if pd.api.types.is_integer_dtype(dtype) and not _is_str_dtype(dtype):
        return pl.from_pandas(s).cast(pl.String)
    if not _is_str_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        hint = ""
        if pd.api.types.is_float_dtype(dtype):
            hint = ("; an integer column with missing values becomes float: "
                    "convert it with .astype('Int64')")
        probs.add(~_missing_mask(s), name, contract.RULE_TYPE,
                  rules.wrong_type("a string", str(dtype), where, hint), s)
        return pl.Series(values=[None] * n, dtype=pl.String)
    bad_surrogate: list[int] = []
    if (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow") or (
        isinstance(dtype, pd.ArrowDtype)
    ):
        out = pl.from_pandas(s).cast(pl.String)
    else:
        vals = s.to_numpy(dtype=object)
        inferred = pd.api.types.infer_dtype(vals, skipna=True)
        if inferred in ("string", "empty"):
            out, bad_surrogate = _text_column_to_polars(s, vals)
        else:
            clean: list[str | None] = []
            bad_pos: list[int] = []
            bad_msg: list[str] = []
            for i, v in enumerate(vals.tolist()):
                if isinstance(v, str):
                    clean.append(str.__str__(v))
                elif isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_):
                    text = _int_text(v)
                    clean.append(text)
                    if text is None:
                        bad_pos.append(i)
                        bad_msg.append(rules.wrong_type(
                            "a string", "an integer too long to write as text", where))
                elif is_missing(v):
                    clean.append(None)
                else:
                    clean.append(None)
                    bad_pos.append(i)
                    bad_msg.append(rules.wrong_type("a string", rules.describe(v), where,
                                                    rules.type_hint(v)))
            probs.add(np.asarray(bad_pos, dtype=np.int64), name, contract.RULE_TYPE, bad_msg, s)
            out, bad_surrogate = _strings_to_polars(clean)
    scanned = _bs.text_bytes(out)
    lengths = _bs.char_lengths(scanned)  # 0 for a null
    present = scanned.valid
    drop = np.zeros(n, dtype=bool)
    if spec.min_length:
        short = present & (lengths < spec.min_length)
        if short.any():
            probs.add(short, name, contract.RULE_TOO_SHORT, [
                rules.too_short(spec.min_length, k, where) for k in lengths[short]
            ], s)
            drop |= short
    if spec.max_length is not None:
        long_ = present & (lengths > spec.max_length)
        if long_.any():
            probs.add(long_, name, contract.RULE_TOO_LONG, [
                rules.too_long(spec.max_length, k, where) for k in lengths[long_]
            ], s)
            drop |= long_
    if bad_surrogate:
        probs.add(np.asarray(bad_surrogate, dtype=np.int64), name, contract.RULE_UNICODE,
                  rules.lone_surrogate(where), s)
    if drop.any():
        out = out.scatter(np.flatnonzero(drop), None)
    return out


# --------------------------------------------------------------------------- timestamps

_ISO_FAST = (
    r"^\d{4}-\d{2}-\d{2}[T ](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)?$"
)


def _to_us(ps: pl.Series) -> pl.Series:
    """Datetime -> Datetime("us"), flooring nanoseconds (as ``to_pydatetime`` does)."""
    if isinstance(ps.dtype, pl.Datetime) and ps.dtype.time_unit == "ns":
        return (ps.cast(pl.Int64) // 1000).cast(pl.Datetime("us"))
    return ps.cast(pl.Datetime("us"))


def _format_ts_polars(ps: pl.Series) -> pl.Series:
    """:func:`_format_ts` as polars expressions (strftime): for what the numpy writer
    does not take (a time zone, a year outside 1-9999), and the reference it is tested
    against."""
    text = ps.cast(pl.Datetime("us")).dt.strftime("%Y-%m-%dT%H:%M:%S%.6f")
    return pl.select(
        pl.concat_str([pl.lit(text).str.strip_suffix(".000000"), pl.lit("Z")])
    ).to_series()


def _format_ts(ps: pl.Series) -> pl.Series:
    """UTC naive Datetime -> ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (as encode.to_utc_iso).

    Written with numpy digit tables (:func:`_bytescan.iso_utc_series`) for years
    1-9999; anything else goes through :func:`_format_ts_polars`.
    """
    if not isinstance(ps.dtype, pl.Datetime) or ps.dtype.time_zone is not None:
        return _format_ts_polars(ps)
    us, present = _bs.datetime_us(ps.cast(pl.Datetime("us")))
    years = _bs.civil_years(us)
    if (present & ((years < 1) | (years > 9999))).any():
        return _format_ts_polars(ps)
    return _bs.iso_utc_series(us, present)


#: A warning that starts by naming rows (:func:`rows_phrase`): the engine merges those
#: of successive chunks into one, with the first labels and the total.
ROWS_WARNING: Final = re.compile(
    r"^rows? (?P<labels>.+?)(?: \.\.\. \((?P<total>[\d,]+) in all\))? (?:has|have) "
    r"(?P<rest>.*)$", re.S,
)
_ROWS_SHOWN: Final = 5


#: A warning that starts with a row count ("12 row(s) have ...").
_COUNT_FIRST: Final = re.compile(r"^(\d[\d,]*)( .*)$", re.DOTALL)


class MergedWarnings:
    """The warnings of successive chunks (or partitions), merged into one each.

    Those naming rows (``rows 3, 17 have ...``, :data:`ROWS_WARNING`) become one
    naming the first rows and the total; those starting with a count (``12 row(s)
    have ...``) are summed; any other is kept once. :meth:`rendered` gives them in
    the order they first came. The engine and :func:`millimetric_nb.validate` share it.
    """

    def __init__(self) -> None:
        self._order: list[tuple[str, str]] = []
        self._listed: dict[str, tuple[list[str], int]] = {}
        self._counted: dict[str, int] = {}
        self._seen: set[str] = set()

    def add(self, message: str) -> None:
        """Take one more warning."""
        named = ROWS_WARNING.match(message)
        if named:
            labels = named["labels"].split(", ")
            total = int(named["total"].replace(",", "")) if named["total"] else len(labels)
            rest = named["rest"]
            if rest in self._listed:
                before, n = self._listed[rest]
                self._listed[rest] = ([*before, *labels][:_ROWS_SHOWN], n + total)
            else:
                self._listed[rest] = (labels, total)
                self._order.append(("listed", rest))
            return
        counted = _COUNT_FIRST.match(message)
        if counted:
            rest, n = counted.group(2), int(counted.group(1).replace(",", ""))
            if rest not in self._counted:
                self._counted[rest] = 0
                self._order.append(("counted", rest))
            self._counted[rest] += n
            return
        if message not in self._seen:
            self._seen.add(message)
            self._order.append(("once", message))

    def rendered(self) -> list[str]:
        """The merged warnings, as sentences."""
        out = []
        for kind, text in self._order:
            if kind == "listed":
                labels, total = self._listed[text]
                out.append(f"{rows_phrase(labels, total)} {text}")
            elif kind == "counted":
                out.append(f"{self._counted[text]:,}{text}")
            else:
                out.append(text)
        return out


def rows_phrase(labels: Sequence[str], total: int) -> str:
    """``rows 3, 17, 42, 43, 44 ... (9 in all) have`` / ``row 3 has``: the start of a
    warning naming the first rows concerned (their index labels)."""
    shown = ", ".join(labels[:_ROWS_SHOWN])
    if total == 1:
        return f"row {shown} has"
    more = f" ... ({total:,} in all)" if total > _ROWS_SHOWN else ""
    return f"rows {shown}{more} have"


def _first_rows(index: pd.Index, where: np.ndarray) -> str:
    pos = np.flatnonzero(where)
    return rows_phrase([str(x) for x in index.take(pos[:_ROWS_SHOWN])], int(pos.size))


def _missing_timestamps(
    s: pd.Series, label: Hashable, probs: _Problems, warns: list[str],
    missing_timestamp: MissingTimestamp, name: str = "timestamp",
) -> np.ndarray:
    """Rows whose timestamp cell is empty: invalid (``required``) unless
    ``missing_timestamp="server_time"``; a warning names the first of them."""
    miss = _missing_mask(s)
    if not miss.any():
        return miss
    where = f"column {_col_name(label)}"
    rows = _first_rows(s.index, miss)
    if missing_timestamp == "server_time":
        warns.append(
            f"{rows} no timestamp in {where}: stored at server time (when sent), as "
            "missing_timestamp='server_time' asks"
        )
        return miss
    probs.add(miss, name, contract.RULE_REQUIRED,
              rules.timestamp_required(f"{where} is empty in this row"), s)
    warns.append(
        f"{rows} no timestamp in {where}: invalid (rule 'required'); fill them in, "
        "or pass missing_timestamp='server_time' to store them at the time they are sent"
    )
    return miss


def _timestamp_field(
    s: pd.Series, label: Hashable, probs: _Problems, now: pd.Timestamp, warns: list[str],
    missing_timestamp: MissingTimestamp = "invalid", name: str = "timestamp",
) -> pl.Series:
    """Timestamps as UTC ISO strings (null = omitted or invalid)."""
    n = len(s)
    where = f"column {_col_name(label)}"
    miss = _missing_timestamps(s, label, probs, warns, missing_timestamp, name)
    dtype = s.dtype
    s = _plain(s)
    dtype = s.dtype
    parsed: pl.Series  # Datetime(us), UTC naive
    slow: np.ndarray = np.zeros(n, dtype=bool)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        ps = pl.from_pandas(s)
        if isinstance(ps.dtype, pl.Datetime) and ps.dtype.time_zone is not None:
            ps = ps.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        parsed = _to_us(ps)
    elif _is_str_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        vals = s.to_numpy(dtype=object)
        is_str = np.fromiter((isinstance(v, str) for v in vals), dtype=bool, count=n)
        parsed = pl.Series(values=[None] * n, dtype=pl.Datetime("us"))
        if is_str.any():
            strs, surr = _strings_to_polars([v if ok else None for v, ok in zip(vals, is_str,
                                                                             strict=True)])
            stripped = strs.str.strip_chars()
            fast = stripped.str.contains(_ISO_FAST).fill_null(False).to_numpy()
            if surr:
                is_str[surr] = True
            if fast.any():
                idx = np.flatnonzero(fast)
                sub = pd.to_datetime(
                    pd.Series(stripped.gather(idx).to_numpy()), format="ISO8601", utc=True,
                    errors="coerce",
                )
                sp = pl.from_pandas(sub).dt.convert_time_zone("UTC").dt.replace_time_zone(None)
                sp = _to_us(sp)
                parsed = parsed.scatter(idx, sp)
                ok = ~sp.is_null().to_numpy()
                fast[idx[~ok]] = False
            slow = ~miss & ~fast
        else:
            slow = ~miss
    else:
        probs.add(~miss, name, contract.RULE_TIMESTAMP, rules.not_a_timestamp(str(dtype), where),
                  s)
        return pl.Series(values=[None] * n, dtype=pl.String)
    us, has = _bs.datetime_us(parsed)
    years = _bs.civil_years(us)
    out_of_range = has & ((years < 1) | (years > 9999))
    if out_of_range.any():
        probs.add(out_of_range, name, contract.RULE_TIMESTAMP, rules.year_out_of_range(where),
                  s)
        has &= ~out_of_range
    text = _bs.iso_utc_series(us, has)
    good_i: list[int] = []  # rows parsed one by one, and their text
    good_v: list[str] = []
    if slow.any():
        vals_obj = _object_values(s)
        idx = np.flatnonzero(slow)
        bad_i: list[int] = []
        bad_m: list[str] = []
        for i in idx.tolist():
            v = vals_obj[i]
            if isinstance(v, bool | int | float | np.number):
                bad_i.append(i)
                bad_m.append(rules.not_a_timestamp(f"a number ({_short(v)})", where))
                continue
            try:
                good_v.append(to_utc_iso(v))
                good_i.append(i)
            except Exception as exc:  # whatever a strange cell raises, it is that row's
                bad_i.append(i)
                bad_m.append(f"{_exc_text(exc)} ({where})")
        if good_i:
            text = text.scatter(good_i, pl.Series(good_v, dtype=pl.String))
        probs.add(np.asarray(bad_i, dtype=np.int64), name, contract.RULE_TIMESTAMP, bad_m, s)
    now_us = pl.Series([now.tz_convert("UTC").tz_localize(None)]).cast(pl.Datetime("us"))
    now_s = _format_ts(now_us)[0]
    # same format, so comparing the seconds part as text compares instants: as whole
    # seconds for the timestamps written above, as text for those parsed one by one
    now_sec = _bs.datetime_us(now_us)[0][0] // 1_000_000
    future = has & (us // 1_000_000 > now_sec)
    for i, v in zip(good_i, good_v, strict=True):
        future[i] = v[:19] > now_s[:19]
    if future.any():
        warns.append(
            f"{int(future.sum())} row(s) have a timestamp in the future (after {now_s}) in {where}"
        )
    return text


# --------------------------------------------------------------------------- properties


def _fallback_values(
    vals: np.ndarray, rows: np.ndarray, path: str, label: Hashable, probs: _Problems
) -> list[str | None]:
    """Encode values one by one through ``encode.dumps`` (missing -> None)."""
    out: list[str | None] = []
    bad_i: list[int] = []
    bad_m: list[str] = []
    bad_r: list[str] = []
    bad_f: list[str] = []
    for i in rows.tolist():
        v = vals[i]
        if is_missing(v):
            out.append(None)
            continue
        try:
            out.append(dumps(v, nan_as_null=True, path=path).decode("utf-8"))
        except EncodeError as exc:
            out.append(None)
            bad_i.append(i)
            bad_f.append(exc.path or path)
            bad_r.append(exc.rule)
            bad_m.append(f"{exc.reason} (column {_col_name(label)})")
    for i, f, r, m in zip(bad_i, bad_f, bad_r, bad_m, strict=True):
        probs.add(np.asarray([i], dtype=np.int64), f, r, m, vals)
    return out


def _property_values(
    s: pd.Series, key: str, label: Hashable, probs: _Problems
) -> tuple[_JsonCol, pl.Series | None]:
    """``(JSON values, plain strings or None)`` of one property column (null = omitted)."""
    n = len(s)
    path = f"properties.{key}"
    where = f"column {_col_name(label)}"
    dtype = s.dtype
    s = _plain(s)
    dtype = s.dtype
    if _is_str_dtype(dtype) and not (isinstance(dtype, pd.StringDtype)
                                     and dtype.storage != "pyarrow"):
        ps = pl.from_pandas(s).cast(pl.String)
        return _quote(ps), ps
    if pd.api.types.is_bool_dtype(dtype):
        return (pl.from_pandas(s).cast(pl.String), False), None
    if pd.api.types.is_integer_dtype(dtype):
        ps = pl.from_pandas(s)
        if ps.dtype.is_unsigned_integer():
            big = (ps.cast(pl.UInt64) > _MAX_SAFE).fill_null(False)
        else:
            wide = ps.cast(pl.Int64)
            big = ((wide > _MAX_SAFE) | (wide < -_MAX_SAFE)).fill_null(False)
        out = ps.cast(pl.String)
        if big.any():
            idx = big.arg_true()
            probs.add(idx.to_numpy(), path, contract.RULE_INT_RANGE, [
                rules.int_beyond(str(v), where) for v in ps.gather(idx).to_list()
            ], ps)
            out = out.scatter(idx, None)
        return (out, False), None
    if pd.api.types.is_float_dtype(dtype):
        ps = pl.from_pandas(s).cast(pl.Float64)
        inf = ps.is_infinite().fill_null(False)
        if inf.any():
            idx = inf.arg_true()
            probs.add(idx.to_numpy(), path, contract.RULE_NOT_JSON,
                      rules.not_a_json_number("infinity", where), s)
            ps = ps.scatter(idx, None)
        return (ps.cast(pl.String), False), None
    dts = pl.from_pandas(s) if pd.api.types.is_datetime64_any_dtype(dtype) else None
    if dts is not None and isinstance(dts.dtype, pl.Datetime):  # (Arrow dates go below)
        if dts.dtype.time_zone is not None:
            dts = dts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        us, has = _bs.datetime_us(_to_us(dts))
        years = _bs.civil_years(us)
        oor = has & ((years < 1) | (years > 9999))
        if oor.any():
            probs.add(oor, path, contract.RULE_NOT_JSON,
                      rules.year_out_of_range(where, what="datetime"), s)
            has &= ~oor
        return _quote(_bs.iso_utc_series(us, has)), None
    vals = _object_values(s)
    if pd.api.types.is_object_dtype(dtype) or _is_str_dtype(dtype):
        inferred = pd.api.types.infer_dtype(vals, skipna=True)
        if inferred in ("string", "empty"):
            ps, bad = _text_column_to_polars(s, vals)
            if bad:
                probs.add(np.asarray(bad, dtype=np.int64), path, contract.RULE_UNICODE,
                          rules.lone_surrogate(where), vals)
            return _quote(ps), ps
    return (pl.Series(values=_fallback_values(vals, np.arange(n), path, label, probs),
                      dtype=pl.String), False), None


def _plain_strings(s: pd.Series) -> pl.Series | None:
    """The plain strings :func:`_property_values` gives for a column (what the PII
    patterns read), without encoding the column: a column of text as a String series,
    ``None`` for any other (booleans, numbers, datetimes, mixed objects)."""
    s = _plain(s)
    dtype = s.dtype
    if _is_str_dtype(dtype) and not (isinstance(dtype, pd.StringDtype)
                                     and dtype.storage != "pyarrow"):
        return pl.from_pandas(s).cast(pl.String)
    if (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)
            or pd.api.types.is_float_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)):
        return None
    if pd.api.types.is_object_dtype(dtype) or _is_str_dtype(dtype):
        vals = _object_values(s)
        if pd.api.types.infer_dtype(vals, skipna=True) in ("string", "empty"):
            return _text_column_to_polars(s, vals)[0]
    return None


def _dict_properties(
    s: pd.Series, label: Hashable, probs: _Problems
) -> tuple[pl.Series, set[str]]:
    """A column of dicts -> JSON objects (null = no properties); also the keys seen."""
    vals = _object_values(s)
    out: list[str | None] = []
    keys: set[str] = set()
    where = f"column {_col_name(label)}"
    for i, v in enumerate(vals.tolist()):
        if not isinstance(v, Mapping):
            if not isinstance(v, list | tuple | set | np.ndarray) and is_missing(v):
                out.append(None)
            else:
                out.append(None)
                hint = ""
                if isinstance(v, str) and v.lstrip().startswith("{"):
                    # JSON text, as read_csv leaves a column of objects
                    hint = (f"; it looks like JSON text: parse the column first, "
                            f"e.g. df[{_col_name(label)}] = df[{_col_name(label)}]"
                            ".map(json.loads, na_action='ignore')")
                probs.add(np.asarray([i]), "properties", contract.RULE_TYPE,
                          rules.wrong_type("an object (dict)", rules.describe(v), where, hint),
                          vals)
            continue
        try:
            raw = dumps(v, nan_as_null=True, path="properties")
        except EncodeError as exc:
            out.append(None)
            probs.add(np.asarray([i]), exc.path or "properties", exc.rule,
                      f"{exc.reason} ({where})", vals)
            continue
        keys.update(k for k in v if isinstance(k, str))
        out.append(raw.decode("utf-8"))
    return pl.Series(values=out, dtype=pl.String), keys


def _too_large_messages(
    rows: np.ndarray, size: np.ndarray, objects: pl.Series,
    columns: Mapping[str, tuple[pl.Series, bool]],
) -> list[str]:
    """For each too-large row: its size and its largest members (``notes (8,900)``), from
    the property columns' JSON values or, for a column of dicts, the row's object."""
    out: list[str] = []
    for i in rows.tolist():
        if columns:
            sizes = {}
            for key, (values, wrap) in columns.items():
                v = values[i]
                if v is not None:
                    sizes[key] = len(orjson.dumps(key)) + 1 + len(v.encode()) + (2 if wrap else 0)
        else:
            sizes = member_sizes(orjson.loads(objects[i]))
        out.append(too_large_message(int(size[i]), sizes))
    return out


# --------------------------------------------------------------------------- PII

_PII_TOKENS: Final = frozenset({
    "email", "emails", "mail", "phone", "phonenumber", "mobile", "telephone", "tel", "address",
    "street", "ip", "ipaddress", "ipv4", "ipv6", "ssn", "dob", "birthday", "birthdate",
    "passport", "surname", "firstname", "lastname", "fullname", "iban", "postcode", "zipcode",
})
_PII_KEYS: Final = frozenset({
    "name", "firstname", "lastname", "fullname", "givenname", "familyname", "surname",
    "customername", "username", "contactname",
})
_EMAIL_RE: Final = r"^\s*[^@\s]+@[^@\s]+\.[A-Za-z]{2,}\s*$"
_PHONE_RE: Final = r"^\s*(?:\+\d[\d\s().-]{6,}\d|\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4})\s*$"
_EMAIL_IN_JSON: Final = r'"[^"@\s]+@[^"@\s]+\.[A-Za-z]{2,}"'


def _name_looks_personal(key: str) -> bool:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    tokens = [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]
    joined = "".join(tokens)
    return joined in _PII_KEYS or any(t in _PII_TOKENS for t in tokens) or joined in _PII_TOKENS


def detect_pii(
    names: dict[str, pl.Series | None], *, json_texts: pl.Series | None = None
) -> dict[str, str]:
    """Which property keys look like personal data, and why.

    Args:
        names: property key -> its plain string values (or ``None`` for non-string columns).
        json_texts: encoded JSON objects to scan for email-looking strings (dict columns).

    Returns:
        ``{key: reason}``; the reason says whether the name or the values (and how many)
        look personal.
    """
    found: dict[str, str] = {}
    for key, values in names.items():
        if _name_looks_personal(key):
            found[key] = "its name looks like personal data"
            continue
        if values is None:
            continue
        text = _bs.text_bytes(values) if values.dtype == pl.String else None
        emails = _count_matching(values, _EMAIL_RE, text, _email_candidates)
        if emails:
            found[key] = f"{emails} value(s) look like email addresses"
            continue
        phones = _count_matching(values, _PHONE_RE, text, _phone_candidates)
        if phones:
            found[key] = f"{phones} value(s) look like phone numbers"
    if json_texts is not None:
        text = _bs.text_bytes(json_texts) if json_texts.dtype == pl.String else None
        emails = _count_matching(json_texts, _EMAIL_IN_JSON, text, _email_candidates)
        if emails:
            found["properties"] = f"{emails} row(s) hold email-looking values"
    return found


def _count_matching(
    values: pl.Series, pattern: str, text: _bs.TextBytes | None,
    candidates: Callable[[_bs.TextBytes], np.ndarray],
) -> int:
    """How many of ``values`` match ``pattern`` (polars' regex, as ``str.contains``):
    only the rows ``candidates`` keeps (a test on the bytes that every match passes)
    are searched; all of them when the bytes are not at hand (``text`` is ``None``)."""
    if text is not None:
        rows = np.flatnonzero(candidates(text))
        if not rows.size:
            return 0
        if rows.size < len(values):
            values = values.gather(rows)
    return int(values.str.contains(pattern).fill_null(False).sum())


def _email_candidates(text: _bs.TextBytes) -> np.ndarray:
    """Rows that can match an email pattern (:data:`_EMAIL_RE`, :data:`_EMAIL_IN_JSON`):
    those holding an ``@``."""
    return _bs.rows_with_byte(text, ord("@"))


def _byte_set(chars: bytes) -> np.ndarray:
    """A 256-entry bool table of the bytes in ``chars``, the bytes below 0x21 (ASCII
    whitespace and the controls, whatever the regex engine counts as ``\\s``) and
    every byte of a multi-byte character (Unicode whitespace and digits, which ``\\s``
    and ``\\d`` match in polars' Unicode regexes)."""
    table = np.zeros(256, dtype=bool)
    table[list(chars)] = True
    table[:0x21] = True
    table[0x80:] = True
    return table


#: What a phone number (:data:`_PHONE_RE`) can start with (``\s``, ``+``, ``(``, ``\d``)
#: and end with (``\s``, ``\d``), as bytes, generously.
_PHONE_FIRST: Final = _byte_set(b"+(0123456789")
_PHONE_LAST: Final = _byte_set(b"0123456789")


def _phone_candidates(text: _bs.TextBytes) -> np.ndarray:
    """Rows that can match :data:`_PHONE_RE` (anchored at both ends): a first byte that
    can start one and a last byte that can end one."""
    first, last, full = _bs.first_last_bytes(text)
    return full & _PHONE_FIRST[first] & _PHONE_LAST[last]


def check_missing_timestamp(missing_timestamp: str) -> None:
    """Refuse a ``missing_timestamp`` option other than ``"invalid"`` or ``"server_time"``."""
    if missing_timestamp not in ("invalid", "server_time"):
        raise ConfigurationError(
            f"missing_timestamp must be 'invalid' or 'server_time', not {missing_timestamp!r}",
            code="invalid_missing_timestamp",
        )


def check_pii(pii: str) -> None:
    """Refuse a ``pii`` option other than ``"error"``, ``"warn"``, ``"allow"`` or ``"ignore"``."""
    if pii not in ("error", "warn", "allow", "ignore"):
        raise ConfigurationError(
            f"pii must be 'error', 'warn', 'allow' or 'ignore', not {_short(pii, 60)}",
            code="invalid_pii",
        )


def personal_data_error(found: Mapping[str, str], what: str = "property") -> ValidationError:
    """The refusal of ``pii="error"``: names each column and why, and the two ways on."""
    lines = "; ".join(f"{_short(k, 80)} ({why})" for k, why in sorted(found.items()))
    prefix = "" if what == "property" else "traits."
    return ValidationError(
        f"nothing was sent: {what} column(s) look like personal data, which Millimetric says "
        f"not to send: {lines}. Either drop them (e.g. df.drop(columns=[...]), or choose the "
        "columns with properties=[...]), or, after deciding they may be sent, pass "
        "pii='allow'",
        code=RULE_PII,
        problems=[(k if k == "properties" else f"{prefix or 'properties.'}{k}", RULE_PII, why)
                  for k, why in sorted(found.items())],
    )


def pii_columns(df: pd.DataFrame, columns: Sequence[Hashable]) -> dict[str, str]:
    """Which of ``columns`` (e.g. identify traits) look like personal data, and why.

    The same rules as for property columns: the name (``email``, ``phone``, ``first_name``,
    ``ip``...) or string values shaped like email addresses or phone numbers.
    Returns ``{str(label): reason}``.
    """
    plain: dict[str, pl.Series | None] = {}
    for label in columns:
        key = _property_key(label)
        # a name that looks personal is reason enough: its values are not read
        plain[key] = None if _name_looks_personal(key) else _plain_strings(df[label])
    return detect_pii(plain)


def refuse_personal_data(df: pd.DataFrame, mapping: Mapping[str, Any]) -> None:
    """``pii="error"`` over a whole frame before anything is sent.

    The engine checks each chunk as it prepares it, so a column whose *name* looks
    personal stops a send before its first request; values that look personal only
    further down (row 5,000 of a frame whose first requests already left) would stop
    it half-way. For a frame in memory this looks at every row first.

    Raises:
        ValidationError: code ``personal_data``, naming each column and the two ways on.
    """
    try:
        fm, _ = resolve_mapping(df.columns, **mapping)
    except MillimetricError:
        return  # a mapping error: the engine reports it with the rows
    if not len(df):
        return
    found: dict[str, str]
    if fm.properties_is_dict_column:
        if fm.dict_column not in df.columns:
            return
        texts, keys = _dict_properties(df[fm.dict_column], fm.dict_column, _Problems(len(df)))
        found = detect_pii({k: None for k in keys}, json_texts=texts)
    else:
        cols = [c for c in fm.property_columns if c in df.columns]
        found = pii_columns(df, cols) if df.columns.is_unique else {}
    if found:
        raise personal_data_error(found)


# --------------------------------------------------------------------------- the chunk


@dataclass
class PreparedChunk:
    """One validated (and encoded) chunk of rows.

    Attributes:
        index: the chunk's index labels, as in the input.
        offset: global position of the chunk's first row.
        valid: bool per row.
        event_ids: object per row: the given ``event_id``, or the derived stable id;
            ``None`` for invalid rows (and for every row when ``encode=False`` without
            an ``event_id`` column). When every id is derived, written from
            :attr:`id_digests` on first access.
        id_digests: when every valid row's id is derived, their 16 bytes (an
            (valid rows, 16) uint8 array, in row order; :func:`id_text` writes them as
            ids); else ``None``.
        errors: one row per problem: ``row`` (index label), ``position`` (global),
            ``field``, ``rule``, ``message``.
        warnings: chunk-level warnings, as sentences.
        lengths: int64 byte length of each valid row's payload (compact JSON of its
            event, with its ``event_id``), in row order; empty when ``encode=False``.
        blob: the valid rows' payloads joined by ``b","`` (``b""`` for none); ``None``
            when ``encode`` was ``False`` or ``"lengths"``.
        starts: int64 offset of each payload in ``blob``: payload ``j`` is
            ``blob[starts[j]:starts[j] + lengths[j]]``, and valid rows ``a..b-1`` joined
            by commas are ``blob[starts[a]:starts[b - 1] + lengths[b - 1]]``.
    """

    index: pd.Index
    offset: int
    valid: np.ndarray
    _ids: np.ndarray | None  # event_ids, or None: written from id_digests when asked for
    errors: pd.DataFrame
    warnings: list[str]
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    blob: bytes | None = None
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    id_digests: np.ndarray | None = None
    _payloads: list[bytes] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def event_ids(self) -> np.ndarray:
        """Each row's event id (see the class docstring)."""
        if self._ids is None:
            ids = np.full(len(self.index), None, dtype=object)
            if self.id_digests is not None and len(self.id_digests):
                ids[np.asarray(self.valid, dtype=bool)] = id_text(self.id_digests)
            self._ids = ids
        return self._ids

    @property
    def n_rows(self) -> int:
        """Rows in the chunk."""
        return len(self.index)

    @property
    def n_valid(self) -> int:
        """Valid rows (one payload each)."""
        return int(self.valid.sum())

    @property
    def payload_bytes(self) -> int:
        """Total size of the payloads (also known after ``encode="lengths"``)."""
        return int(self.lengths.sum())

    @property
    def payloads(self) -> list[bytes]:
        """Each valid row's payload, in row order (cut from :attr:`blob` when first asked).

        ``[]`` after ``encode=False``. Raises ``ValueError`` after ``encode="lengths"``,
        which computes only their sizes.
        """
        if self._payloads is None:
            if self.blob is None:
                if self.lengths.size:
                    raise ValueError("this chunk was prepared with encode='lengths': it has "
                                     "the payloads' sizes, not the payloads")
                return []
            blob = self.blob
            self._payloads = [
                blob[s : s + n]
                for s, n in zip(self.starts.tolist(), self.lengths.tolist(), strict=True)
            ]
        return self._payloads


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Where each of ``lengths`` payloads begins in their comma-joined blob."""
    starts = np.zeros(lengths.size, dtype=np.int64)
    if lengths.size > 1:
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
    return starts


#: What ``prepare_chunk(encode=...)`` takes.
EncodeMode = bool | Literal["lengths"]


def _check_encode(encode: object) -> EncodeMode:
    """``encode`` as ``True``, ``False`` or ``"lengths"``; any other value is refused."""
    if isinstance(encode, bool | np.bool_):
        return bool(encode)
    if isinstance(encode, str) and encode == "lengths":
        return "lengths"
    raise ConfigurationError(
        f"encode must be True, False or 'lengths', not {_short(encode, 60)}",
        code="invalid_encode",
    )


def prepare_chunk(
    df: pd.DataFrame,
    mapping: FieldMapping,
    *,
    offset: int = 0,
    pii: PiiMode = PII_DEFAULT,
    now: pd.Timestamp | None = None,
    ids: EventIdState | None = None,
    encode: EncodeMode = True,
    missing_timestamp: MissingTimestamp = "invalid",
) -> PreparedChunk:
    """Validate (and encode) a chunk of rows column-wise.

    Args:
        df: the rows; its columns must include those ``mapping`` names.
        mapping: from :func:`resolve_mapping`.
        offset: global position of the first row (for ``errors.position``).
        pii: property columns that look personal: ``"error"`` (default: raise),
            ``"warn"`` (a warning), ``"allow"`` or ``"ignore"`` (send them, say nothing).
        now: the time future timestamps are measured against (default: now, UTC).
        ids: the :class:`EventIdState` of the whole input, so derived ids do not
            depend on chunking (a fresh state is used when ``None``).
        encode: ``True`` (the default) builds the payloads (:attr:`PreparedChunk.blob`,
            ``starts``, ``lengths``); ``"lengths"`` derives the ids and computes only
            the payloads' byte lengths (a dry run: ``blob`` is ``None``); ``False``
            validates only (no payloads, no derived ids).
        missing_timestamp: when the mapping has a timestamp column, a row whose cell
            is empty is invalid (rule ``required``) with ``"invalid"`` (the default),
            or sent without a timestamp (stored at server time) with ``"server_time"``.

    A cell that breaks the column-wise code in a way no rule foresaw (a bug, or a
    value stranger than any the rules know) never takes its chunk down: the chunk
    is then checked row by row, and only the rows that still fail are invalid
    (rule ``unencodable``, naming the field when it can be told).

    Raises:
        ValidationError: ``invalid_mapping`` when a mapped column is missing or labels
            are duplicated or unusable; code ``personal_data`` for ``pii="error"`` and
            a property column that looks personal.
    """
    check_pii(pii)
    check_missing_timestamp(missing_timestamp)
    encode = _check_encode(encode)
    saved = ids.snapshot() if ids is not None else None
    try:
        prepared = _prepare_chunk(df, mapping, offset=offset, pii=pii, now=now, ids=ids,
                                  encode=encode, missing_timestamp=missing_timestamp)
    except MillimetricError:
        raise
    except Exception as exc:  # not bad input we know: find the rows, keep the others
        if ids is not None and saved is not None:
            ids.restore(saved)
        prepared = _prepare_rows_alone(df, mapping, exc, {
            "offset": offset, "pii": pii, "now": now,
            "ids": EventIdState() if ids is None else ids,  # an empty state is falsy
            "encode": encode, "missing_timestamp": missing_timestamp,
        })
    if ids is not None:
        ids.settle()  # the chunk is done: its snapshot is no longer needed
    return prepared


def _prepare_rows_alone(
    df: pd.DataFrame, mapping: FieldMapping, first: Exception, opts: dict[str, Any]
) -> PreparedChunk:
    """:func:`prepare_chunk` one row at a time, after the chunk as a whole raised ``first``.

    Rows that raise alone are invalid (rule ``unencodable``); the field named is the
    first mapped column whose cell alone raises too, else ``event``. Slow, but only
    reached when a cell defeats the column-wise code.
    """
    n = len(df)
    offset = opts["offset"]
    valid = np.zeros(n, dtype=bool)
    event_ids = np.full(n, None, dtype=object)
    lengths: list[np.ndarray] = []
    blobs: list[bytes] = []
    errors: list[pd.DataFrame] = []
    warns: list[str] = []
    probs = _Problems(n)
    why = f"{type(first).__name__}"
    for i in range(n):
        row = df.iloc[i : i + 1]
        try:
            one = _prepare_chunk(row, mapping, **{**opts, "offset": offset + i})
        except MillimetricError:
            raise
        except Exception as exc:
            field_name = _culprit(row, mapping, opts["now"])
            probs.add(np.asarray([i]), field_name, RULE_UNENCODABLE,
                      f"this value cannot be checked or encoded ({type(exc).__name__}); "
                      "convert it to a plain str, number, bool, datetime or dict first")
            continue
        valid[i] = bool(one.valid[0])
        event_ids[i] = one.event_ids[0]
        if one.lengths.size:
            lengths.append(one.lengths)
            if one.blob is not None:
                blobs.append(one.blob)
        if len(one.errors):
            errors.append(one.errors)
        warns.extend(one.warnings)
    errors.append(probs.frame(df.index, offset))
    warns = _sum_counted(warns)
    warns.append(f"{int(probs.invalid.sum())} row(s) hold values that cannot be checked or "
                 f"encoded ({why}); they are invalid, the other rows are not held back")
    errs = pd.concat([e for e in errors if len(e)] or [_empty_errors()], ignore_index=True)
    errs = errs.sort_values("position", kind="stable", ignore_index=True)
    sizes = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return PreparedChunk(index=df.index, offset=offset, valid=valid, _ids=event_ids,
                         errors=errs, warnings=warns, lengths=sizes,
                         blob=b",".join(blobs) if opts["encode"] is True else None,
                         starts=_starts(sizes))


_COUNTED: Final = re.compile(r"^(\d+)( row\(s\) .*)$", re.DOTALL)


def _sum_counted(messages: list[str]) -> list[str]:
    """Row-counted warnings (``"3 row(s) have ..."``) summed into one each; others once."""
    counts: dict[str, int] = {}
    out: list[str] = []
    for m in messages:
        hit = _COUNTED.match(m)
        key = hit.group(2) if hit else m
        if key not in counts:
            counts[key] = 0
            out.append(key)
        counts[key] += int(hit.group(1)) if hit else 0
    return [f"{counts[k]}{k}" if k.startswith(" row(s)") else k for k in out]


def _culprit(row: pd.DataFrame, mapping: FieldMapping, now: pd.Timestamp | None) -> str:
    """The field of the first mapped cell of ``row`` that raises when checked alone."""
    fields: list[tuple[str, Hashable]] = []
    if mapping.event_col is not None:
        fields.append(("event", mapping.event_col))
    fields += list(mapping.columns.items())
    if mapping.properties_is_dict_column:
        fields.append(("properties", mapping.dict_column))
    else:
        fields += [(f"properties.{_property_key(c)}", c) for c in mapping.property_columns]
    for name, label in fields:
        only = FieldMapping(
            event_col=None, event="e",
            columns={name: label} if name in column_fields() else {},
            properties=(label if name == "properties" else [label]
                        if name.startswith("properties.") else []),
        )
        try:
            _prepare_chunk(row, only, offset=0, pii="ignore", now=now, ids=EventIdState(),
                           encode=True)
        except Exception:
            return name
    return "event"


def _encoded_fields() -> tuple[str, ...]:
    """The fields of an encoded event, in the contract table's order, ``event_id`` aside
    (it leads each payload: it is given or derived from the rest)."""
    return tuple(n for n in contract.EVENT_FIELDS if n != "event_id")


def _field_labels(mapping: FieldMapping) -> list[tuple[str, Hashable]]:
    """``(field, column label)`` of each field fed by a column, in the table's order."""
    out: list[tuple[str, Hashable]] = []
    for name in rules.fields_of(contract.EVENT_FIELDS, "string", "timestamp"):
        label = mapping.event_col if name == "event" else mapping.columns.get(name)
        if label is not None:
            out.append((name, label))
    return out


@dataclass(frozen=True)
class _ColumnContext:
    """What a field's column check needs besides the column."""

    probs: _Problems
    now: pd.Timestamp
    warns: list[str]
    missing_timestamp: MissingTimestamp


def _string_column(
    s: pd.Series, name: str, spec: contract.FieldSpec, label: Hashable, ctx: _ColumnContext
) -> pl.Series:
    return _string_field(s, name, spec, label, ctx.probs)


def _timestamp_column(
    s: pd.Series, name: str, spec: contract.FieldSpec, label: Hashable, ctx: _ColumnContext
) -> pl.Series:
    return _timestamp_field(s, label, ctx.probs, ctx.now, ctx.warns, ctx.missing_timestamp,
                            name)


#: The column-wise check of a field, by its kind in the contract's table (object fields
#: come from property columns or a dict column, not from one column).
_COLUMN_CHECKS: Final[dict[str, Callable[
    [pd.Series, str, contract.FieldSpec, Hashable, _ColumnContext], pl.Series
]]] = {"string": _string_column, "timestamp": _timestamp_column}


def _column_field(s: pd.Series, name: str, label: Hashable, ctx: _ColumnContext) -> pl.Series:
    """One field's column checked by its kind (null = omitted or invalid); an empty cell
    of a required field is a ``required`` problem."""
    spec = contract.EVENT_FIELDS[name]
    out = _COLUMN_CHECKS[spec.kind](s, name, spec, label, ctx)
    if spec.required:
        absent = out.is_null().to_numpy() & _missing_mask(s)
        ctx.probs.add(absent, name, contract.RULE_REQUIRED,
                      rules.required(f"column {_col_name(label)} is empty in this row"), s)
    return out


def _prepare_chunk(
    df: pd.DataFrame,
    mapping: FieldMapping,
    *,
    offset: int,
    pii: PiiMode,
    now: pd.Timestamp | None,
    ids: EventIdState | None,
    encode: EncodeMode,
    missing_timestamp: MissingTimestamp = "invalid",
) -> PreparedChunk:
    """The column-wise work of :func:`prepare_chunk`."""
    _refuse_multiindex(df.columns)
    if not df.columns.is_unique:
        dupes = df.columns[df.columns.duplicated()].unique().tolist()
        raise _mapping_error(f"duplicate column label(s) {_short(dupes, 200)}: each column "
                             "must have a unique name", dupes[0], "columns")
    needed: list[Hashable] = [*mapping.columns.values(), *mapping.property_columns]
    if mapping.event_col is not None:
        needed.append(mapping.event_col)
    if mapping.properties_is_dict_column:
        needed.append(mapping.dict_column)
    missing_cols = [c for c in needed if c not in df.columns]
    if missing_cols:
        raise _mapping_error(f"column(s) {_short(missing_cols, 200)} named by the mapping are "
                             "not in the "
                             "frame", missing_cols[0], "columns")
    now_ts = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    if now_ts.tzinfo is None:
        now_ts = now_ts.tz_localize("UTC")
    n = len(df)
    probs = _Problems(n)
    warns: list[str] = []
    fields: dict[str, pl.Series] = {}

    # the fields fed by a column, checked by their kind in the contract's table
    if mapping.event_col is None:
        fields["event"] = pl.Series(values=[mapping.event] * n, dtype=pl.String)
    ctx = _ColumnContext(probs, now_ts, warns, missing_timestamp)
    for name, label in _field_labels(mapping):
        fields[name] = _column_field(df[label], name, label, ctx)
    if "timestamp" not in mapping.columns and n:
        warns.append(
            "no timestamp column: every event will be stored at server time (when it is "
            "sent); pass timestamp_col= to keep when the events happened"
        )
    # properties
    pii_found: dict[str, str] = {}
    props_obj: pl.Series | None = None  # one JSON object per row, null = no properties
    items_by_key: dict[str, tuple[pl.Series, bool]] = {}  # property columns' JSON values
    if mapping.properties_is_dict_column:
        label = mapping.dict_column
        props_obj, keys = _dict_properties(df[label], label, probs)
        if pii in ("warn", "error") and n:
            pii_found = detect_pii({k: None for k in keys}, json_texts=props_obj)
    elif mapping.property_columns:
        cols: dict[str, pl.Series] = {}
        items: list[tuple[str, str, pl.Series, bool]] = []
        plain: dict[str, pl.Series | None] = {}
        for i, label in enumerate(sorted(mapping.property_columns, key=_property_key)):
            key = _property_key(label)
            (values, wrap), strings = _property_values(df[label], key, label, probs)
            cols[f"p{i}"] = values
            items.append((orjson.dumps(key).decode(), f"p{i}", values, wrap))
            items_by_key[key] = (values, wrap)
            plain[key] = strings
        if pii in ("warn", "error") and n:
            pii_found = detect_pii(plain)
        props_obj = pl.DataFrame(cols, height=n).select(_object_expr(items)).to_series()
    if props_obj is not None and n:
        size = props_obj.str.len_bytes().fill_null(0).to_numpy()
        big = size > contract.PROPERTIES_MAX_BYTES
        if big.any():
            probs.add(big, "properties", contract.RULE_TOO_LARGE,
                      _too_large_messages(np.flatnonzero(big), size, props_obj, items_by_key),
                      props_obj)
    if pii_found:
        if pii == "error":
            raise personal_data_error(pii_found)
        lines = [f"{_short(k, 80)} ({why})" for k, why in sorted(pii_found.items())]
        warns.append("property column(s) that look like personal data, which Millimetric says "
                     "not to send: " + "; ".join(lines))

    if n:
        who = np.zeros(n, dtype=bool)
        for name in ("anonymous_id", "user_id"):
            if name in fields:
                who |= ~fields[name].is_null().to_numpy()
        no_who = ~who & ~probs.invalid  # among the rows that will be sent
        if no_who.any():
            warns.append(
                f"{int(no_who.sum())} row(s) have neither user_id nor anonymous_id: the server "
                "will give each such event a new anonymous visitor"
            )

    valid = ~probs.invalid
    event_ids = np.full(n, None, dtype=object)
    given: pl.Series | None = fields.get("event_id")
    if given is not None:
        event_ids[:] = given.to_list()
        event_ids[~valid] = None
        dup = given.filter(pl.Series(valid)).drop_nulls()
        n_dup = len(dup) - dup.n_unique()
        if n_dup:
            warns.append(
                f"{n_dup} row(s) repeat an event_id of an earlier row in column "
                f"{_col_name(mapping.columns['event_id'])}; the server does not deduplicate"
            )
    lengths = np.zeros(0, dtype=np.int64)
    blob: bytes | None = b"" if encode is True else None
    id_digests: np.ndarray | None = None
    if encode is not False and valid.any():
        mask = pl.Series(valid)
        cols = {}
        items = []
        for name in _encoded_fields():  # the table's order ("event" first, required)
            if name in fields:
                values, wrap = _quote(fields[name].filter(mask))
            elif name == _object_field() and props_obj is not None:
                values, wrap = props_obj.filter(mask), False
            else:
                continue
            cols[name] = values
            items.append((orjson.dumps(name).decode(), name, values, wrap))
        # "event" is present in every valid row, so it leads without a comma
        first = _frag_parts(items[0][0], items[0][1], items[0][3])
        rest, _ = _members(items[1:])
        content = pl.DataFrame(cols).select(
            pl.concat_str([pl.lit("{"), *first, *rest, pl.lit("}")], ignore_nulls=True)
        ).to_series()
        if given is None:  # every id derived: kept as bytes, written out only when asked
            id_digests = _derive_ids(content, ids)
            # derived ids are of one length and need no JSON escaping, only quotes
            lengths = _payload_lengths(content, ID_LEN + 2)
            if encode is True:
                blob = _joined((_id_series(id_digests), True), content)
        else:
            id_s = given.filter(mask)
            need = id_s.is_null()
            if need.any():
                need_idx = need.arg_true()
                made = pl.Series(id_text(_derive_ids(content.gather(need_idx), ids)))
                id_s = id_s.scatter(need_idx, made)
            event_ids[np.flatnonzero(valid)] = id_s.to_numpy()
            quoted = _quote(id_s)
            lengths = _payload_lengths(content, _quoted_lengths(quoted))
            if encode is True:
                blob = _joined(quoted, content)
    return PreparedChunk(
        index=df.index, offset=offset, valid=valid,
        _ids=None if id_digests is not None else event_ids,
        errors=probs.frame(df.index, offset), warnings=warns,
        lengths=lengths, blob=blob, starts=_starts(lengths), id_digests=id_digests,
    )


_ID_MEMBER: Final = '{"event_id"'


def _joined(ids: _JsonCol, content: pl.Series) -> bytes:
    """The payloads joined by commas, built column-wise as one string: each row's
    ``content`` (a JSON object) with ``"event_id"`` put first. ``ids`` are the rows' ids
    as JSON (see :func:`_quote`)."""
    id_vals, wrap = ids
    return cast(bytes, pl.DataFrame({"i": id_vals, "c": content}).select(
        pl.concat_str([
            _frag_expr(_ID_MEMBER, "i", wrap), pl.lit(","), pl.col("c").str.slice(1)
        ]).str.join(",").cast(pl.Binary)
    ).item())


def _quoted_lengths(ids: _JsonCol) -> np.ndarray:
    """Each id's byte length as JSON (see :func:`_quote`)."""
    id_vals, wrap = ids
    return id_vals.str.len_bytes().to_numpy().astype(np.int64) + (2 if wrap else 0)


def _payload_lengths(content: pl.Series, quoted: np.ndarray | int) -> np.ndarray:
    """Each payload's byte length: its content's, its id's as JSON (``quoted``), and the
    member's fixed text (no payload needs building for them)."""
    fixed = len(_ID_MEMBER) + len(":") + len(",") - len("{")
    return content.str.len_bytes().to_numpy().astype(np.int64) + quoted + fixed


def emit_warnings(messages: Sequence[str], *, stacklevel: int = 2) -> None:
    """Issue each message once as a :class:`DataWarning`."""
    for m in dict.fromkeys(messages):
        warnings.warn(m, DataWarning, stacklevel=stacklevel + 1)
