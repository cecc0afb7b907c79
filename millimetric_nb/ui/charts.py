"""Small charts of rows per day, for the places people would rather look than read.

:func:`per_day` counts rows by UTC day and by a label (a row's status, or
"sent"/"stored"); :func:`chart_png` draws such a table as stacked (or side by
side) bars and returns PNG bytes; :func:`chart_html` wraps it in an ``<img>``
(class ``mm-chart``) for an HTML repr. matplotlib (the ``plot`` extra) is imported
on first use, through its object API (``matplotlib.figure.Figure``: no pyplot, no
global state, no backend to pick); without it :func:`chart_png` returns ``None``
and the callers show their tables alone.

This module draws data and knows nothing of sending (level 2 in DESIGN.md):
``SendResult``, ``Verification`` and the backfill panel use it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "COLORS",
    "chart_html",
    "chart_png",
    "frame_timestamps",
    "has_matplotlib",
    "per_day",
    "utc_days",
]

#: Bar colours by label (statuses of a send, and verify's sent / stored).
COLORS: dict[str, str] = {
    "planned": "#90a4ae",
    "sent": "#2e7d32",
    "failed": "#c62828",
    "ambiguous": "#ef6c00",
    "invalid": "#6a1b9a",
    "skipped": "#bdbdbd",
    "stored": "#1565c0",
}
_ORDER = ("planned", "sent", "skipped", "ambiguous", "failed", "invalid", "stored")


def has_matplotlib() -> bool:
    """Whether matplotlib can be imported (the ``plot`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def utc_days(values: Any) -> pd.Series:
    """The UTC calendar day (midnight, tz-aware) of each value; ``NaT`` where a value is
    missing or not a date-time. Naive values are taken as UTC (as the encoder does)."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype):
        ts = pd.to_datetime(s, utc=True)
    elif pd.api.types.is_numeric_dtype(s.dtype):  # epoch numbers are refused by the encoder
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    else:
        ts = pd.to_datetime(s.astype("string"), utc=True, errors="coerce", format="ISO8601")
    return ts.dt.floor("D")


def per_day(days: Any, labels: Any, *, order: Sequence[str] = _ORDER) -> pd.DataFrame:
    """Rows per UTC day and label: one row per day (sorted), one column per label seen.

    ``days`` are date-times (see :func:`utc_days`), ``labels`` the label of each row
    (same length). Rows without a day are left out (the caller says how many).
    """
    d = utc_days(pd.Series(np.asarray(days, dtype=object)))
    lab = pd.Series(np.asarray(labels, dtype=object), index=d.index).astype("string")
    keep = d.notna().to_numpy()
    if not keep.any():
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="day"))
    table = pd.crosstab(d[keep].rename("day"), lab[keep])
    cols = [c for c in order if c in table.columns] + [
        c for c in table.columns if c not in order
    ]
    table = table[cols]
    table.columns.name = None
    return table


def chart_png(
    table: pd.DataFrame, *, title: str = "", stacked: bool = True, width: float = 5.5
) -> bytes | None:
    """The bars of ``table`` (from :func:`per_day`) as PNG bytes; ``None`` without
    matplotlib or data."""
    if table.empty or not has_matplotlib():
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 2.2), dpi=90)
    ax = fig.subplots()
    x = np.arange(len(table))
    labels = [pd.Timestamp(d).strftime("%Y-%m-%d") for d in table.index]
    n = len(table.columns)
    bottom = np.zeros(len(table))
    bar_width = 0.8 if stacked else 0.8 / max(n, 1)
    for i, col in enumerate(table.columns):
        values = table[col].to_numpy(dtype=float)
        color = COLORS.get(str(col))
        if stacked:
            ax.bar(x, values, bar_width, bottom=bottom, label=str(col), color=color)
            bottom += values
        else:
            ax.bar(x + (i - (n - 1) / 2) * bar_width, values, bar_width, label=str(col),
                   color=color)
    step = max(1, len(labels) // 8)
    ax.set_xticks(x[::step], labels[::step], fontsize=7, rotation=30, ha="right")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("rows", fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, frameon=False, ncols=min(n, 4))
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def chart_html(table: pd.DataFrame, *, title: str = "", stacked: bool = True) -> str:
    """``<img class="mm-chart">`` with the chart inline (base64 PNG), or ``""``."""
    png = chart_png(table, title=title, stacked=stacked)
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(title or "rows per day", quote=True)
    return f"<img class='mm-chart' alt='{alt}' src='data:image/png;base64,{data}'>"


def frame_timestamps(frame: pd.DataFrame, mapping: Mapping[str, Any]) -> pd.Series | None:
    """The column a send maps to ``timestamp`` (the accessor's mapping rules), or ``None``
    when there is none or the mapping does not resolve."""
    from ..errors import MillimetricError
    from ..frame import resolve_mapping

    try:
        resolved, _ = resolve_mapping(list(frame.columns), **mapping)
    except (MillimetricError, TypeError):
        return None
    label: Hashable | None = resolved.columns.get("timestamp")
    if label is None:
        return None
    col = frame[label]
    return col if isinstance(col, pd.Series) else None
