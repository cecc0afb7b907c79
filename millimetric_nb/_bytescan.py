"""Text and datetime columns read as bytes: Arrow buffers under numpy.

The frame layer (:mod:`millimetric_nb.frame`) checks and encodes columns with polars;
a few of its steps are a single pass over bytes that numpy does with no query at all:

* which rows of a text column hold a byte JSON must escape, or a given byte (``@``
  before an email pattern), and each row's length in characters, read from the
  column's Arrow ``large_string`` buffers (offsets, data, validity);
* UTC microsecond timestamps written as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (the text of
  :func:`millimetric_nb.encode.to_utc_iso`) with digit tables into a fixed-width byte
  matrix, handed to polars as an Arrow string array built from buffers.

Everything here is exact: a helper either gives the same answer as the polars
expression it replaces, or says it cannot (the caller then keeps the polars path).
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

__all__ = [
    "TextBytes",
    "arrow_text_bytes",
    "char_lengths",
    "civil_years",
    "datetime_us",
    "escape_rows",
    "first_last_bytes",
    "iso_utc_series",
    "rows_with_byte",
    "text_bytes",
]


class TextBytes(NamedTuple):
    """A text column as its Arrow ``large_string`` buffers, read by numpy (no copy).

    Attributes:
        offsets: int64, one more than the rows: row ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
        data: the UTF-8 bytes (uint8), the whole buffer (``offsets`` index into it).
        valid: bool per row, ``False`` for a null.
    """

    offsets: np.ndarray
    data: np.ndarray
    valid: np.ndarray

    @property
    def n(self) -> int:
        """Rows."""
        return int(self.valid.size)

    def used(self) -> np.ndarray:
        """The bytes the rows span, from the first row's start to the last row's end."""
        return self.data[int(self.offsets[0]):int(self.offsets[-1])]


def _validity(buf: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    """An Arrow validity bitmap (LSB first; ``None`` = no nulls) as bools."""
    if buf is None:
        return np.ones(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
    return bits[offset:offset + n].astype(bool)


def arrow_text_bytes(arr: pa.Array | pa.ChunkedArray) -> TextBytes:
    """The buffers of an Arrow text array (``string``, ``large_string`` or ``string_view``;
    chunks are combined, and anything but ``large_string`` is cast to it)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    n = len(arr)
    validity, offs, data = arr.buffers()
    if offs is None or n == 0:
        offsets = np.zeros(n + 1, dtype=np.int64)
    else:
        offsets = np.frombuffer(offs, dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    raw = (np.frombuffer(data, dtype=np.uint8) if data is not None and data.size
           else np.zeros(0, dtype=np.uint8))
    return TextBytes(offsets, raw, _validity(validity, arr.offset, n))


def text_bytes(ps: pl.Series) -> TextBytes:
    """The buffers of a polars String series (exported as Arrow ``large_string``; under
    no name: polars cannot export one holding a NUL character)."""
    return arrow_text_bytes(ps.alias("").to_arrow(compat_level=pl.CompatLevel.oldest()))


def _rows_of(tb: TextBytes, hits: np.ndarray) -> np.ndarray:
    """Rows (bool per row, nulls ``False``) holding any of the positions ``hits`` of
    :meth:`TextBytes.used`."""
    out = np.zeros(tb.n, dtype=bool)
    if hits.size:
        rows = np.searchsorted(tb.offsets, hits + tb.offsets[0], side="right") - 1
        out[rows] = True
        out &= tb.valid
    return out


def escape_rows(tb: TextBytes) -> np.ndarray:
    """Rows holding a byte JSON must escape in a string: a control character
    (``< 0x20``), ``"`` or ``\\`` (what orjson escapes; it writes everything else,
    non-ASCII included, as it is). Bool per row; nulls are ``False``."""
    seg = tb.used()
    bad = seg < 0x20
    bad |= seg == 0x22
    bad |= seg == 0x5C
    return _rows_of(tb, np.flatnonzero(bad))


def rows_with_byte(tb: TextBytes, byte: int) -> np.ndarray:
    """Rows holding ``byte`` (an ASCII byte: it never occurs inside a multi-byte character)."""
    return _rows_of(tb, np.flatnonzero(tb.used() == byte))


def char_lengths(tb: TextBytes) -> np.ndarray:
    """Each row's length in characters (code points; 0 for a null), as int64: its bytes
    less its UTF-8 continuation bytes (``0b10xxxxxx``)."""
    nbytes = np.diff(tb.offsets)
    seg = tb.used()
    if seg.size and int(seg.max()) >= 0x80:
        cont = np.flatnonzero((seg & 0xC0) == 0x80)
        rows = np.searchsorted(tb.offsets, cont + tb.offsets[0], side="right") - 1
        nbytes = nbytes - np.bincount(rows, minlength=tb.n)
    return np.where(tb.valid, nbytes, 0).astype(np.int64)


def first_last_bytes(tb: TextBytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first byte, last byte, non-empty)`` of each row (0 for empty and null rows;
    non-empty is ``False`` for nulls)."""
    starts, ends = tb.offsets[:-1], tb.offsets[1:]
    full = (ends > starts) & tb.valid
    first = np.zeros(tb.n, dtype=np.uint8)
    last = np.zeros(tb.n, dtype=np.uint8)
    first[full] = tb.data[starts[full]]
    last[full] = tb.data[ends[full] - 1]
    return first, last, full


# --------------------------------------------------------------------------- timestamps

_US_PER_DAY: Final = 86_400_000_000
_US_PER_S: Final = 1_000_000


def _digit_table(width: int) -> np.ndarray:
    """``0``..``10**width - 1`` written with ``width`` ASCII digits, each entry one
    little-endian integer whose bytes are the digits in writing order."""
    places = 10 ** np.arange(width - 1, -1, -1)
    digits = np.arange(10**width)[:, None] // places % 10 + ord("0")
    return digits.astype(np.uint8).view(f"<u{width}").ravel()


#: "00".."99" and "0000".."9999" (see :func:`_digit_table`), to be written into the
#: text with one take and one strided store per field.
_D2: Final = _digit_table(2)
_D4: Final = _digit_table(4)
#: One timestamp's text: each digit group a field at its byte offset, for those stores.
_ISO_ROW: Final = np.dtype({
    "names": ["year", "month", "day", "hour", "minute", "second", "dot", "f2", "f4", "z"],
    "formats": ["<u4", "<u2", "<u2", "<u2", "<u2", "<u2", "u1", "<u2", "<u4", "u1"],
    "offsets": [0, 5, 8, 11, 14, 17, 19, 20, 22, 26],
    "itemsize": 27,
})
_TEMPLATE: Final = b"0000-00-00T00:00:00.000000Z"
_LONG: Final = len(_TEMPLATE)
_SHORT: Final = len("YYYY-MM-DDTHH:MM:SSZ")


def datetime_us(ps: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A polars ``Datetime("us")`` series as ``(int64 microseconds since the epoch (0 at
    nulls), present)``, read from its Arrow buffers."""
    if not (isinstance(ps.dtype, pl.Datetime) and ps.dtype.time_unit == "us"):
        raise TypeError(f"expected a Datetime('us') series, got {ps.dtype}")
    arr = ps.alias("").to_arrow()  # unnamed: see text_bytes; a timestamp[us] array
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    validity, data = arr.buffers()  # the int64 values, as for the physical type
    if data is None or n == 0:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    values = np.frombuffer(data, dtype=np.int64, count=n, offset=arr.offset * 8)
    present = _validity(validity, arr.offset, n)
    return np.where(present, values, 0), present


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proleptic Gregorian ``(year, month, day)`` of days since 1970-01-01 (H. Hinnant's
    ``civil_from_days``, floor arithmetic). In int32: any day count of int64
    microseconds (at most about 1.07e8) keeps every intermediate far below 2**31."""
    z = np.asarray(days).astype(np.int32) + 719_468
    era = z // 146_097
    doe = z - era * 146_097  # [0, 146096]
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365  # [0, 399]
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # [0, 365]
    mp = (5 * doy + 2) // 153  # [0, 11], March first
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def civil_years(us: np.ndarray) -> np.ndarray:
    """The UTC year of each microsecond timestamp (any int64)."""
    return _civil(np.asarray(us, dtype=np.int64) // _US_PER_DAY)[0]


#: Rows of text per data buffer of a string view (its offsets are int32).
_ROWS_PER_BUFFER: Final = (2**31 - 1) // _LONG


def iso_utc_series(us: np.ndarray, present: np.ndarray) -> pl.Series:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` of each UTC microsecond timestamp (the fraction
    only when it is not zero), null where not ``present``, as a polars String series.

    Every present timestamp must fall in years 1-9999 (four digits); check with
    :func:`civil_years` first (absent rows may hold anything). The texts are written
    into one fixed-width row of bytes each and handed to polars as an Arrow string
    view over those rows (no copy): a whole-second timestamp is the first 20 bytes of
    its row, where ``Z`` takes the place of the dot.
    """
    us = np.asarray(us, dtype=np.int64)
    present = np.asarray(present, dtype=bool)
    n = us.size
    if not n:
        return pl.Series(values=[], dtype=pl.String)
    us = np.where(present, us, 0)
    days = us // _US_PER_DAY
    in_day = us - days * _US_PER_DAY
    year, month, day = _civil(days)
    secs = (in_day // _US_PER_S).astype(np.int32)
    frac = (in_day - secs * np.int64(_US_PER_S)).astype(np.int32)
    rows = np.frombuffer(bytearray(_TEMPLATE * n), dtype=_ISO_ROW)
    head = _D4.take(year)
    rows["year"] = head
    rows["month"] = _D2.take(month)
    rows["day"] = _D2.take(day)
    rows["hour"] = _D2.take(secs // 3600)
    rows["minute"] = _D2.take(secs // 60 % 60)
    rows["second"] = _D2.take(secs % 60)
    rows["f2"] = _D2.take(frac // 10_000)
    rows["f4"] = _D4.take(frac % 10_000)
    whole = frac == 0
    if whole.any():
        rows["dot"][whole] = ord("Z")
    # Arrow string views: (length, first 4 bytes, buffer index, offset) as 4 int32 each;
    # an absent row is an all-zero (empty, inline) view under a null bit
    views = np.zeros((n, 4), dtype=np.int32)
    views[:, 0] = np.where(present, np.where(whole, _SHORT, _LONG), 0)
    views[:, 1] = np.where(present, head.view(np.int32), 0)
    i = np.arange(n, dtype=np.int64)
    views[:, 2] = np.where(present, i // _ROWS_PER_BUFFER, 0)
    views[:, 3] = np.where(present, i % _ROWS_PER_BUFFER * _LONG, 0)
    data = rows.view(np.uint8)
    chunk = _ROWS_PER_BUFFER * _LONG
    buffers = [pa.py_buffer(data[s:s + chunk]) for s in range(0, data.size, chunk)]
    nulls = n - int(np.count_nonzero(present))
    validity = None if not nulls else pa.py_buffer(np.packbits(present, bitorder="little"))
    arr = pa.Array.from_buffers(pa.string_view(), n, [validity, pa.py_buffer(views), *buffers],
                                null_count=nulls)
    out = pl.from_arrow(arr)
    assert isinstance(out, pl.Series)
    return out
