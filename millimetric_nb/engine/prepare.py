"""What a preparer gives the engine for one chunk (:class:`PreparedRows`), and the
preparer of event sends (:func:`event_preparer`, over the frame layer)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd

from ..frame import PII_DEFAULT, check_pii
from ..results import reason_columns
from .ledger import PackedIds


@dataclass(slots=True)
class PreparedRows:
    """What a preparer returns for one chunk (see :func:`~millimetric_nb.engine.run_rows`).

    The valid rows' payloads come either as ``payloads`` (a list, one per valid row)
    or, without a Python object per row, as ``blob`` (the payloads joined by ``b","``)
    with ``starts`` and ``lengths`` (int64 per valid row); in a dry run ``lengths``
    alone is enough (``blob`` may be ``None``).
    """

    valid: np.ndarray  # bool per row
    keys: Any  # per row: the journal key / event id (None when none); an array
    errors: pd.DataFrame  # row, position (global: offset + local), field, rule, message
    warnings: list[str]
    payloads: list[bytes] | None = None  # batch / track: one per valid row, in order
    calls: list[tuple[np.ndarray, dict[str, Any]]] | None = None  # per-call routes
    # the column of ``result.failed`` that carries each row's id, so that resending
    # ``.failed`` reuses the ids (a derived id numbers repeats of identical content,
    # which a subset alone would number differently); None: ids are not carried
    id_column: Any = None
    # the shape of the content derived ids hash (frame.id_recipe); checked against
    # the journal's, so a journal is not reused for ids that cannot match
    id_recipe: str | None = None
    blob: bytes | None = None
    starts: np.ndarray | None = None
    lengths: np.ndarray | None = None

    def layout(self) -> tuple[np.ndarray, np.ndarray, bytes | None]:
        """``(lengths, starts, blob)`` of the valid rows' payloads (built from
        ``payloads`` when the preparer gave a list)."""
        if self.lengths is None:
            payloads = self.payloads or []
            self.lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
            self.blob = b",".join(payloads)
        if self.starts is None:
            starts = np.zeros(len(self.lengths), dtype=np.int64)
            np.cumsum(self.lengths[:-1] + 1, out=starts[1:])
            self.starts = starts
        return self.lengths, self.starts, self.blob

    def payload_list(self) -> list[bytes]:
        """One payload per valid row (for the routes that send one request per row)."""
        if self.payloads is not None:
            return self.payloads
        lengths, starts, blob = self.layout()
        if blob is None:
            return [b""] * len(lengths)
        view = memoryview(blob)
        return [bytes(view[a:a + n]) for a, n in zip(starts.tolist(), lengths.tolist(),
                                                      strict=True)]


Preparer = Callable[[pd.DataFrame, int], PreparedRows]


class EventPreparer:
    """The preparer of event sends: see :func:`event_preparer`."""

    def __init__(self, mapping: dict[str, Any], pii: str, now: dt.datetime | None,
                 missing_timestamp: str, encode: bool | str = True) -> None:
        from ..frame import EventIdState

        self.options: tuple[dict[str, Any], Any, Any, Any] = (
            mapping, pii, now, missing_timestamp)
        self.encode = encode
        self.mapping: Any = None
        self.columns: list[Hashable] = []
        self.ids = EventIdState()
        self.widened: dict[tuple[Hashable, ...], tuple[Any, list[str]]] = {}

    def lengths_only(self) -> EventPreparer:
        """The same preparer computing only the payloads' byte lengths (a dry run)."""
        return EventPreparer(*self.options, encode="lengths")

    def __call__(self, frame: pd.DataFrame, offset: int) -> PreparedRows:
        from ..frame import id_recipe, prepare_chunk, resolve_mapping

        mapping, pii, now, missing_timestamp = self.options
        warns: list[str] = []
        if self.mapping is None:
            self.mapping, warns = resolve_mapping(_mappable(frame.columns), **mapping)
            self.columns = list(frame.columns)
        chunk_mapping = self.mapping
        known = self.columns
        extra = tuple(c for c in frame.columns if c not in known)
        if extra:
            # a column that appears in a later chunk (e.g. a newer export) is mapped
            # as it would be in the concatenated frame, where earlier rows lack it
            if extra not in self.widened:
                self.widened[extra] = resolve_mapping(_mappable([*known, *extra]), **mapping)
            chunk_mapping, more = self.widened[extra]
            warns = [*warns, *more]
        p = prepare_chunk(
            frame, chunk_mapping, offset=offset, pii=pii, now=now, ids=self.ids,
            missing_timestamp=missing_timestamp,
            encode=self.encode,  # type: ignore[arg-type]
        )
        valid = np.asarray(p.valid, dtype=bool)
        # derived ids stay bytes (PackedIds) until a journal or a failed row needs them
        keys: Any = (PackedIds.of_digests(p.id_digests, valid) if p.id_digests is not None
                     else np.asarray(p.event_ids, dtype=object))
        return PreparedRows(
            valid=valid,
            keys=keys,
            errors=p.errors,
            warnings=[*warns, *p.warnings],
            id_column=self.mapping.columns.get("event_id", "event_id"),
            id_recipe=id_recipe(self.mapping),
            blob=p.blob,
            starts=np.asarray(p.starts, dtype=np.int64),
            lengths=np.asarray(p.lengths, dtype=np.int64),
        )


def _mappable(columns: Sequence[Hashable] | pd.Index) -> Sequence[Hashable]:
    # a resent ``result.failed`` (or its CSV): its reason columns are no properties
    # (the frame's own Index is passed on as it is, so a MultiIndex is still seen)
    reasons = reason_columns(list(columns))
    return [c for c in columns if c not in reasons] if reasons else cast(
        "Sequence[Hashable]", columns)


def event_preparer(
    mapping: dict[str, Any], pii: str = PII_DEFAULT, now: dt.datetime | None = None,
    missing_timestamp: str = "invalid",
) -> EventPreparer:
    """The preparer of event sends (``/v1/batch``, ``/v1/track``) for ``run_rows``.

    ``mapping``: the column mapping keywords (``event_col``, ``timestamp_col``...,
    see :func:`millimetric_nb.abackfill`), resolved against the first chunk's columns.
    Each chunk is validated and encoded column-wise by the frame layer; ids stay
    stable across chunks. ``missing_timestamp``: see
    :func:`~millimetric_nb.frame.prepare_chunk`. A dry run asks it for byte lengths
    only (:meth:`EventPreparer.lengths_only`).
    """
    check_pii(pii)
    from ..frame import check_mapping_keywords, check_missing_timestamp

    check_mapping_keywords(mapping)
    check_missing_timestamp(missing_timestamp)
    return EventPreparer(mapping, pii, now, missing_timestamp)
