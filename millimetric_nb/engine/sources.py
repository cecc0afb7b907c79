"""Reading a run's input chunk by chunk (what to read is :mod:`millimetric_nb.datasources`).

A DataFrame is sliced; files, Parquet datasets, Arrow, polars, DuckDB and Dask are
streamed, so memory stays bounded. Each chunk is read on the run's one thread (see
:mod:`.worker`), the one that prepares it. A source
that cannot be read further (a corrupt line, an item that is not a DataFrame) ends
the reading: :class:`ChunkReader` keeps the error, and the rows read so far are still
sent and accounted. (A DataFrame's first chunks are small and grow, so the first
requests leave while the rest is prepared: see ``datasources``.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from ..datasources import DEFAULT_CHUNKSIZE, Source, field_columns, iter_source
from ..errors import MillimetricError, SourceError
from .worker import Worker

__all__ = [
    "DEFAULT_CHUNKSIZE",
    "ChunkReader",
    "Source",
    "field_columns",
    "iter_source",
]


class ChunkReader:
    """A source's chunks, read on the run's thread, with the offset of each; a failure to read
    ends them and is kept in :attr:`error` (it names where the reading stopped)."""

    def __init__(self, chunks: Iterator[pd.DataFrame], worker: Worker) -> None:
        self.chunks = chunks
        self.worker = worker  # the run's thread (see .worker)
        self.offset = 0
        self.error: MillimetricError | None = None
        self.template: pd.DataFrame | None = None  # the input's columns, no rows

    async def next(self) -> tuple[pd.DataFrame, int] | None:
        """The next chunk and its offset (global position of its first row), or ``None``."""
        frame = await self._read()
        if frame is None:
            return None
        if self.template is None:
            self.template = frame.iloc[:0]
        offset = self.offset
        self.offset += len(frame)
        return frame, offset

    async def _read(self) -> pd.DataFrame | None:
        try:
            return await self.worker.call(next, self.chunks, None)
        except SourceError as exc:  # it names the source and the part already
            self.error = exc
        except Exception as exc:
            hint = ""
            if isinstance(exc, UnicodeDecodeError):
                hint = (" (the file is not UTF-8: read it yourself and pass the chunks, "
                        "e.g. pd.read_csv(path, encoding='cp1252', chunksize=100_000))")
            self.error = MillimetricError(
                f"reading the source failed after {self.offset:,} rows: "
                f"{type(exc).__name__}: {exc}{hint}",
                code=exc.code if isinstance(exc, MillimetricError) else "source_read_failed",
            )
        return None
