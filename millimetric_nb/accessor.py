"""``df.millimetric``: the pandas accessor, a thin face over validate and backfill.

Registered when :mod:`millimetric_nb` is imported::

    report = df.millimetric.validate()
    result = df.millimetric.send_batch(event_col="event", journal="backfill.sqlite")
    result.rows.status.value_counts(); result.failed  # what did not get in

Every sending method takes ``client=None`` (the default client set by
``millimetric_nb.connect()``), ``dry_run=False``, ``progress=True``,
``journal=None``, ``concurrency`` and ``pii``, and returns a
:class:`~millimetric_nb.results.SendResult` accounting for every row.
"""

from __future__ import annotations

import hashlib
import os
import warnings as _warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import contract
from .api import (
    SendHandle,
    abackfill,
    observer_for,
    run_blocking,
    send_sync,
    start_background,
    sync_client,
)
from .datasources import iter_source
from .defaults import DEFAULT_CHUNKSIZE, DEFAULT_CONCURRENCY, PII_DEFAULT
from .encode import EncodeError, dumps, is_missing
from .errors import ConfigurationError, DataWarning, ValidationError
from .events import prepare_forget, prepare_identify
from .journal import Journal
from .progress import Observer
from .results import SendResult

if TYPE_CHECKING:  # the engine and the frame layer (polars) load when a frame is prepared
    from .engine import OnAmbiguous, PreparedRows, Preparer
    from .frame import MissingTimestamp
    from .sync import ClientLike
    from .validate import ValidationReport

JournalArg = Journal | str | os.PathLike[str] | None
_SEP = "\x1f"


def _column(df: pd.DataFrame, name: str, what: str) -> np.ndarray:
    """One column's values as an object array; a clear error if absent or duplicated."""
    if name not in df.columns:
        raise ValidationError(
            f"{what}: no column {name!r} (columns: {', '.join(map(str, df.columns[:20]))})",
            problems=[(what, contract.RULE_REQUIRED, f"column {name!r} not found")],
        )
    col = df[name]
    if isinstance(col, pd.DataFrame):
        raise ValidationError(
            f"{what}: the column name {name!r} appears {col.shape[1]} times; rename the duplicates",
            problems=[(what, "duplicate_column", f"column {name!r} is not unique")],
        )
    # pandas-stubs reject na_value=None, which pandas takes (missing cells become None)
    return col.to_numpy(dtype=object, na_value=None)  # type: ignore[call-overload]


def _per_row_errors(
    frame: pd.DataFrame, problems: list[tuple[int, tuple[str, str, str]]], offset: int
) -> pd.DataFrame:
    from .frame import ERROR_COLUMNS

    if not problems:
        return pd.DataFrame(columns=list(ERROR_COLUMNS))
    pos = [p for p, _ in problems]
    return pd.DataFrame(
        {
            "row": list(frame.index[pos]),
            "position": [p + offset for p in pos],
            "field": [pr[0] for _, pr in problems],
            "rule": [pr[1] for _, pr in problems],
            "message": [pr[2] for _, pr in problems],
        }
    )


def _traits_of(
    frame: pd.DataFrame, traits: str | Sequence[str] | None
) -> list[dict[str, Any] | None]:
    n = len(frame)
    if traits is None:
        return [None] * n
    if isinstance(traits, str):  # a column holding dicts
        values = _column(frame, traits, "traits")
        return [None if is_missing(v) else v for v in values]
    cols = {c: _column(frame, c, f"traits.{c}") for c in traits}
    out: list[dict[str, Any] | None] = []
    for i in range(n):
        d = {str(c): v[i] for c, v in cols.items() if not is_missing(v[i])}
        out.append(d or None)
    return out


def _identify_key(body: dict[str, Any]) -> str:
    """The journal key of an identify: the pair, and a digest of its traits if any,
    so that changed traits are sent again rather than skipped as already sent."""
    key = f"$identify{_SEP}{body['anonymous_id']}{_SEP}{body['user_id']}"
    traits = body.get("traits")
    if traits:
        try:
            raw = dumps(traits, nan_as_null=True, path="traits")
        except EncodeError:  # validated already; never lose the row over a digest
            raw = repr(traits).encode("utf-8", "surrogatepass")
        key += _SEP + hashlib.sha256(raw).hexdigest()[:32]
    return key


def _identify_preparer(anonymous_id_col: str, user_id_col: str, traits: Any) -> Preparer:
    def prepare(frame: pd.DataFrame, offset: int) -> PreparedRows:
        from .engine import PreparedRows

        anon = _column(frame, anonymous_id_col, "anonymous_id")
        user = _column(frame, user_id_col, "user_id")
        tr = _traits_of(frame, traits)
        n = len(frame)
        valid = np.zeros(n, dtype=bool)
        keys = np.full(n, None, dtype=object)
        problems: list[tuple[int, tuple[str, str, str]]] = []
        calls: list[tuple[np.ndarray, dict[str, Any]]] = []
        for i in range(n):
            try:
                body = prepare_identify(anon[i], user[i], tr[i])
            except ValidationError as exc:
                problems.extend((i, p) for p in exc.problems)
                continue
            valid[i] = True
            keys[i] = _identify_key(body)
            calls.append((np.array([i]), body))
        return PreparedRows(valid, keys, _per_row_errors(frame, problems, offset), [], calls=calls)

    return prepare


def _forget_preparer(user_id_col: str) -> Preparer:
    def prepare(frame: pd.DataFrame, offset: int) -> PreparedRows:
        from .engine import PreparedRows

        user = _column(frame, user_id_col, "user_id")
        n = len(frame)
        valid = np.zeros(n, dtype=bool)
        keys = np.full(n, None, dtype=object)
        problems: list[tuple[int, tuple[str, str, str]]] = []
        groups: dict[str, list[int]] = {}
        bodies: dict[str, dict[str, Any]] = {}
        for i in range(n):
            try:
                body = prepare_forget(user[i])
            except ValidationError as exc:
                problems.extend((i, p) for p in exc.problems)
                continue
            uid = body["user_id"]
            valid[i] = True
            keys[i] = f"$forget{_SEP}{uid}"
            groups.setdefault(uid, []).append(i)
            bodies[uid] = body
        calls = [(np.array(pos), bodies[uid]) for uid, pos in groups.items()]
        return PreparedRows(valid, keys, _per_row_errors(frame, problems, offset), [], calls=calls)

    return prepare


@pd.api.extensions.register_dataframe_accessor("millimetric")
class MillimetricAccessor:
    """``df.millimetric``: validate a frame and send its rows to Millimetric."""

    def __init__(self, df: pd.DataFrame) -> None:
        self._df = df

    # ------------------------------------------------------------------ validate

    def validate(
        self, *, pii: str = PII_DEFAULT, now: Any = None,
        missing_timestamp: MissingTimestamp = "invalid", **mapping: Any,
    ) -> ValidationReport:
        """Check every row against the contract, column-wise; nothing is sent.

        ``pii`` as for :meth:`send_batch`: by default, property columns that look like
        personal data raise (code ``personal_data``), as the send would refuse them.

        Returns a validation report: ``.ok``, ``.errors`` (one row per problem:
        row label, field, rule code, message), ``.summary`` and an HTML repr.
        ``missing_timestamp``: an empty timestamp cell is ``invalid`` (default) or
        ``"server_time"`` (sent without one); the warnings point at the caller's line.
        """
        from .frame import check_pii
        from .validate import validate_frame

        check_pii(pii)
        return validate_frame(
            self._df, pii=pii, now=now, missing_timestamp=missing_timestamp,  # type: ignore[arg-type]
            warn_stacklevel=3, **mapping,
        )

    # ------------------------------------------------------------------ sends

    def send_batch(
        self,
        event_col: str = "event",
        *,
        client: ClientLike | None = None,
        dry_run: bool = False,
        progress: bool | Observer = True,
        journal: JournalArg = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        pii: str = PII_DEFAULT,
        observer: Observer | None = None,
        chunksize: int = DEFAULT_CHUNKSIZE,
        on_ambiguous: OnAmbiguous = "verify",
        missing_timestamp: MissingTimestamp = "invalid",
        background: bool = False,
        **mapping: Any,
    ) -> SendResult | SendHandle:
        """Send every valid row as one event through ``/v1/batch`` (the backfill path).

        Mapping keywords: ``event`` (a constant name), ``event_id_col``,
        ``timestamp_col``, ``anonymous_id_col``, ``user_id_col``, ``session_id_col``,
        ``url_col``, ``path_col``, ``referrer_col``, ``properties``. See
        :func:`millimetric_nb.backfill` for the other arguments.

        Blocks until done; the first kernel interrupt / Ctrl-C stops it after the
        requests in flight and raises ``SendInterrupted`` (its ``.result`` is the
        account). ``background=True`` returns a ``SendHandle`` at once (``.result()``,
        ``await``, ``.cancel()``; the panel's Cancel works); so does
        :meth:`asend_batch` awaited in a cell.
        """
        options = dict(
            event_col=event_col, client=client, dry_run=dry_run, progress=progress,
            journal=journal, concurrency=concurrency, pii=pii, observer=observer,
            chunksize=chunksize, on_ambiguous=on_ambiguous,
            missing_timestamp=missing_timestamp, **mapping,
        )
        if background:
            return start_background(self._df, route="batch", **options)
        return send_sync(self._df, route="batch", stacklevel=3, **options)

    async def asend_batch(self, event_col: str = "event", **options: Any) -> SendResult:
        """:meth:`send_batch`, awaited: ``result = await df.millimetric.asend_batch(...)``.

        The same arguments as :meth:`send_batch` (but ``background``). In a notebook
        the panel's Cancel works while it runs (the cell awaits); Cancel or a first
        interrupt stop it after the requests in flight, and the result is returned
        with ``result.error.code`` ``"cancelled"`` / ``"interrupted"``.
        """
        return await abackfill(self._df, event_col=event_col, warn_stacklevel=3, **options)

    def track(
        self,
        event: str | None = None,
        event_col: str | None = None,
        *,
        client: ClientLike | None = None,
        dry_run: bool = False,
        progress: bool | Observer = True,
        journal: JournalArg = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        pii: str = PII_DEFAULT,
        observer: Observer | None = None,
        missing_timestamp: MissingTimestamp = "invalid",
        **mapping: Any,
    ) -> SendResult:
        """Send every valid row through ``/v1/track``, one request per row.

        For small ad-hoc sends: ``/v1/track`` allows 50 requests/s where
        ``/v1/batch`` carries up to 5,000 events/s; a large frame gets a warning
        saying how long each would take.
        """
        if event is not None:
            mapping["event"] = event
        if event_col is not None:
            mapping["event_col"] = event_col
        return send_sync(
            self._df, route="track", stacklevel=3, client=client, dry_run=dry_run,
            progress=progress, journal=journal, concurrency=concurrency, pii=pii,
            observer=observer, missing_timestamp=missing_timestamp, **mapping,
        )

    def identify(
        self,
        anonymous_id_col: str = "anonymous_id",
        user_id_col: str = "user_id",
        traits: str | Sequence[str] | None = None,
        *,
        client: ClientLike | None = None,
        dry_run: bool = False,
        progress: bool | Observer = True,
        journal: JournalArg = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        pii: str = "warn",
        observer: Observer | None = None,
    ) -> SendResult:
        """One ``/v1/identify`` per row: link each ``anonymous_id`` to its ``user_id``.

        ``traits``: a list of columns (missing values left out), or the name of a
        column holding dicts. Rows with a missing or invalid id are ``invalid``.
        """
        for col in (anonymous_id_col, user_id_col):
            _column(self._df, col, col)
        warns = _pii_warnings(self._df, traits, pii)
        client = sync_client(client, dry_run)
        return self._per_row(
            "identify",
            _identify_preparer(anonymous_id_col, user_id_col, traits),
            client=client, dry_run=dry_run, progress=progress, journal=journal,
            concurrency=concurrency, observer=observer, warnings=warns,
        )

    def forget(
        self,
        user_id_col: str = "user_id",
        confirm: bool = False,
        *,
        client: ClientLike | None = None,
        dry_run: bool = False,
        progress: bool | Observer = True,
        journal: JournalArg = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        pii: str = "warn",
        observer: Observer | None = None,
    ) -> SendResult:
        """Permanently delete every event of each distinct user id (``/v1/forget``).

        Refuses to run without ``confirm=True``; needs an ``sk_`` key. One request
        per distinct user id; every row of that user gets its outcome.

        With ``journal=``, a user id whose delete that journal already recorded as
        acknowledged is ``skipped`` (so an interrupted run resumes where it
        stopped). A delete only removes what was stored *before* it: for a later,
        new request to delete the same users, use a new journal (or none), or
        their newer events stay.
        """
        from .engine import resolve_async_client
        from .frame import check_pii

        check_pii(pii)  # only user ids are sent: nothing else to check
        if confirm is not True and not dry_run:
            raise ConfigurationError(
                "forget permanently deletes every event of these users: "
                "call it with confirm=True to proceed (or dry_run=True to see the plan)",
                code="confirmation_required",
            )
        _column(self._df, user_id_col, "user_id")
        client = sync_client(client, dry_run)
        if not dry_run:
            resolve_async_client(client).check_key("forget")  # sk_ only, before any row
        return self._per_row(
            "forget",
            _forget_preparer(user_id_col),
            client=client, dry_run=dry_run, progress=progress, journal=journal,
            concurrency=concurrency, observer=observer, whole=True,
        )

    def _per_row(
        self,
        route: str,
        prepare: Preparer,
        *,
        client: ClientLike | None,
        dry_run: bool,
        progress: bool | Observer,
        journal: JournalArg,
        concurrency: int,
        observer: Observer | None,
        warnings: Sequence[str] = (),
        whole: bool = False,
    ) -> SendResult:
        """identify / forget: one call per unit the preparer plans, through the engine."""
        from .engine import run_rows

        df = self._df
        chunks, total = iter_source(df, max(1, len(df)) if whole else DEFAULT_CHUNKSIZE)
        return run_blocking(
            client,
            lambda stop: run_rows(
                chunks,
                route=route,
                prepare=prepare,
                client=client,
                journal=journal,
                dry_run=dry_run,
                observer=observer_for(progress, observer, route, dry_run=dry_run,
                                      journal=journal, client=client),
                concurrency=concurrency,
                total_rows=total,
                warnings=warnings,
                show_keys=False,
                stop=stop,
            ),
            journal,
        )


def _pii_warnings(df: pd.DataFrame, traits: Any, pii: str) -> list[str]:
    """Trait columns that look like personal data -> a warning, or an error for ``pii="error"``.

    Same rules as for event properties (the frame layer's: names such as ``email`` or
    ``phone``, or values shaped like them).
    """
    from .frame import check_pii, personal_data_error, pii_columns

    check_pii(pii)
    if pii in ("ignore", "allow") or traits is None or isinstance(traits, str):
        return []
    found = pii_columns(df, list(traits))
    if not found:
        return []
    if pii == "error":
        raise personal_data_error(found, "trait")
    why = "; ".join(f"{c!r} ({reason})" for c, reason in found.items())
    msg = (
        f"trait column(s) look like personal data, which the contract says not to send: {why} "
        "(pass pii='allow' to send them without this warning)"
    )
    _warnings.warn(msg, DataWarning, stacklevel=3)
    return [msg]


__all__ = ["MillimetricAccessor"]
