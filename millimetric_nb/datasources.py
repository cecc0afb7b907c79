"""Every kind of source, read as a stream of pandas chunks with global row numbers.

:func:`iter_source` is the one place where a source becomes ``(chunks, total rows if
known)`` for the backfill engine, :func:`validate` and the command line. Memory is
bounded by the chunk size (and, for Dask, by a few partitions): nothing is read whole.

Sources, and how each is read:

* a pandas ``DataFrame`` (sliced), or an iterable of DataFrames (as given);
* a path to a ``.csv`` / ``.tsv`` / ``.jsonl`` file, plain or compressed (``.gz``,
  ``.zst``: decompressed as a stream by pyarrow), through pandas' ``chunksize``;
* a Parquet file, a folder of Parquet files, a glob (``"events/**/*.parquet"``) or a
  list of Parquet paths, read as one pyarrow dataset: hive-partitioned folders
  (``day=2026-11-01/part-0.parquet``) give their partition columns to the mapping,
  ``filter=`` (a ``pyarrow.compute`` Expression) is pushed down to the scan;
* a pyarrow ``Table``, ``RecordBatch``, ``RecordBatchReader`` or ``Dataset``;
* a polars ``DataFrame`` (sliced) or ``LazyFrame`` (streamed with ``collect_batches``);
* a DuckDB relation (``con.sql("SELECT ...")``) or :func:`sql` (a query and its
  connection), fetched as Arrow record batches;
* a Dask DataFrame: partition by partition, each computed on the user's cluster (the
  ``distributed`` client in use, else dask's local scheduler), a few ahead, in order.

Row numbers: a DataFrame keeps its index; every other source is numbered from 0 in
reading order (``result.rows`` / ``.failed`` / ``errors.row``), which is stable across
runs: a folder's or a glob's files are read in sorted path order, a list's in the
given order, Dask partitions in partition order. (A DuckDB query without
``ORDER BY`` is ordered as DuckDB returns it; give one for a stable order.)

Errors are one :class:`~millimetric_nb.errors.SourceError` with a stable ``code`` and
``details["source"]`` / ``details["part"]``: a missing path, a folder with no Parquet
file or a glob matching nothing (``source_empty``), parts whose schemas clash
(``source_schema_mismatch``, found from the footers before anything is read), a part
that cannot be opened (``source_part_failed``), a query that fails
(``source_query_failed``). Every Parquet part's footer is read before the first row,
so a run never starts on a dataset with a broken part. A Dask partition is computed
whole before any of its rows is given out, so nothing of a partition that raises is
sent. A missing optional dependency is a ConfigurationError ``missing_dependency``
naming the extra to install.
"""

from __future__ import annotations

import functools
import glob
import io
import itertools
import os
import re
import sys
from collections.abc import Collection, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .defaults import DEFAULT_CHUNKSIZE, PII_DEFAULT
from .errors import ConfigurationError, MillimetricError, SourceError
from .rules import ERROR_COLUMNS, column_fields

if TYPE_CHECKING:  # the frame layer (and polars) is imported when a chunk is checked,
    # pyarrow when a source is read through it
    import pyarrow as pa

    from .frame import MergedWarnings, MissingTimestamp, PiiMode
    from .validate import ValidationReport

_FIRST_CHUNK = 1000
#: Dask partitions computed ahead of the one being sent.
DASK_LOOKAHEAD = 2

Source = Any  # a DataFrame, a path, DataFrames, or any source listed in the module doc

_COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_PARQUET = (".parquet", ".pq")
_GLOB_CHARS = re.compile(r"[*?\[]")


def _missing_extra(what: str, extra: str, exc: ImportError) -> ConfigurationError:
    err = ConfigurationError(
        f"{what} needs the optional dependency {exc.name or extra!r}: "
        f"pip install 'millimetric-nb[{extra}]'",
        code="missing_dependency",
    )
    err.__cause__ = exc
    return err


def _require(module: str, extra: str, what: str) -> Any:
    """Import ``module`` of the optional extra ``extra``, or a clear error naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing_extra(what, extra, exc) from exc


def _source_error(message: str, code: str, source: str, part: str | None = None) -> SourceError:
    return SourceError(message, code=code, details={"source": source, "part": part})


# --------------------------------------------------------------------------- DuckDB


@dataclass(frozen=True)
class SqlSource:
    """A DuckDB query and its connection, read as a source (make one with :func:`sql`)."""

    query: str
    con: Any = None

    def __repr__(self) -> str:
        return f"sql({self.query!r})"


def sql(query: str, *, con: Any = None) -> SqlSource:
    """A DuckDB SQL query as a source for :func:`~millimetric_nb.backfill` and :func:`validate`.

    ``mm.backfill(mm.sql("SELECT * FROM 'events/*.parquet' ORDER BY ts", con=con))``.
    ``con``: a ``duckdb`` connection (default: DuckDB's default connection). The
    query runs when the send starts and is fetched as Arrow record batches; a query
    that fails is a :class:`~millimetric_nb.errors.SourceError` ``source_query_failed``.
    Give an ``ORDER BY`` for row numbers that are stable across runs (a journal
    resumes by event id either way). Needs the ``duckdb`` extra.
    """
    if not isinstance(query, str) or not query.strip():
        raise ConfigurationError("sql() needs a query string", code="invalid_source")
    if con is None:
        _require("duckdb", "duckdb", "sql()")
    elif not callable(getattr(con, "sql", None)):
        raise ConfigurationError(
            f"sql(con=...) needs a duckdb connection, not a {type(con).__name__}",
            code="invalid_source",
        )
    return SqlSource(query, con)


def _duckdb_name(source: Any) -> str:
    """How a query is named in errors (never ``repr(relation)``: that runs the query)."""
    if isinstance(source, SqlSource):
        return f"the DuckDB query {_short(source.query)!r}"
    try:
        return f"the DuckDB relation {_short(source.sql_query())!r}"
    except Exception:  # a relation that cannot render its SQL
        return "the DuckDB relation"


def _duckdb_chunks(source: Any, chunksize: int) -> Iterator[pd.DataFrame]:
    """A DuckDB query's rows, fetched as Arrow record batches of ``chunksize`` rows.

    The query starts here (before the run), so a query that cannot run is raised at
    once; one that fails while its rows stream ends the reading with the same error.
    """
    import pyarrow as pa

    duckdb = _require("duckdb", "duckdb", "reading a DuckDB query")
    name = _duckdb_name(source)

    def failed(exc: Exception) -> SourceError:
        return _source_error(f"{name} failed: {type(exc).__name__}: {exc}",
                             "source_query_failed", name, "query")

    try:
        if isinstance(source, SqlSource):
            rel = (duckdb if source.con is None else source.con).sql(source.query)
            if rel is None:
                raise _source_error(f"{name} returns no rows (not a SELECT)",
                                    "source_query_failed", name, "query")
        else:
            rel = source
        reader = rel.to_arrow_reader(chunksize)
    except duckdb.Error as exc:
        raise failed(exc) from exc

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except (duckdb.Error, pa.ArrowException, OSError) as exc:
            raise failed(exc) from exc

    return _arrow_chunks(batches(), reader.schema, chunksize)


# --------------------------------------------------------------------------- Arrow to pandas


@functools.cache
def _nullable() -> dict[pa.DataType, Any]:
    """Arrow integer and boolean types -> pandas' nullable dtypes (built on first use)."""
    import pyarrow as pa

    return {
        pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
        pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
    }


def _pool() -> pa.MemoryPool:
    """The memory pool for what is read: the system allocator's. Arrow's default pool
    (jemalloc or mimalloc) keeps memory it freed for later, which over a long run of
    chunks, each read and let go, holds more at the peak: over the 10M-row Parquet dry
    run of ``benchmarks/bench_sources.py``, 459-465 MB above the start with the default
    pool against 432-436 MB with this one, for about 5 % fewer rows/s (measured side by
    side, 2026-12-06). Memory is the bound that run has to keep."""
    import pyarrow as pa

    return pa.system_memory_pool()


def _to_pandas(batches: list[pa.RecordBatch], start: int) -> pd.DataFrame:
    """One chunk: Arrow batches as pandas, rows numbered from ``start``.

    Integer and boolean columns that hold nulls become pandas' nullable dtypes
    (``Int64``...), so an integer stays an integer (plain pandas would make it a
    float: ``7`` would be sent as ``7.0``); columns without nulls keep numpy dtypes.
    """
    import pyarrow as pa

    types = _nullable()
    table = pa.Table.from_batches(batches)
    nullable = {
        f.name for f, col in zip(table.schema, table.columns, strict=True)
        if f.type in types and col.null_count
    }
    if nullable:
        df = table.to_pandas(types_mapper=types.get, memory_pool=_pool())
        for f in table.schema:  # the columns without nulls go back to numpy dtypes
            if f.type in types and f.name not in nullable and f.name in df.columns:
                df[f.name] = df[f.name].to_numpy(dtype=f.type.to_pandas_dtype())
    else:
        df = table.to_pandas(memory_pool=_pool())
    df.index = pd.RangeIndex(start, start + len(df))
    return df


class _Numbering:
    """Row numbers handed out so far across a source's chunks."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows = 0

    def frame(self, batches: list[pa.RecordBatch]) -> pd.DataFrame:
        df = _to_pandas(batches, self.rows)
        self.rows += len(df)
        return df


def _rechunk(
    batches: Iterable[pa.RecordBatch], chunksize: int, numbering: _Numbering
) -> Iterator[pd.DataFrame]:
    """Arrow batches of any size as pandas chunks of ``chunksize`` rows (the last shorter)."""
    buf: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        while batch.num_rows:
            take = min(chunksize - held, batch.num_rows)
            buf.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held == chunksize:
                yield numbering.frame(buf)
                buf, held = [], 0
    if buf:
        yield numbering.frame(buf)


def _arrow_chunks(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, chunksize: int
) -> Iterator[pd.DataFrame]:
    """Chunks of a stream of batches; one empty frame (its columns) when it has no row."""
    numbering = _Numbering()
    yield from _rechunk(batches, chunksize, numbering)
    if numbering.rows == 0:
        yield schema.empty_table().to_pandas()


# --------------------------------------------------------------------------- Parquet datasets


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in _PARQUET


def _hidden(rel: Path) -> bool:
    # Spark's _SUCCESS and _delta_log, checksum .crc files, editors' dotfiles
    return any(p.startswith(("_", ".")) for p in rel.parts)


def _folder_files(folder: Path) -> list[Path]:
    files = [
        p for p in folder.rglob("*")
        if p.is_file() and _is_parquet(p) and not _hidden(p.relative_to(folder))
    ]
    return sorted(files, key=lambda p: p.as_posix())


def _glob_base(pattern: str) -> Path:
    """The folder a glob starts in (its parts before the first wildcard)."""
    fixed = list(itertools.takewhile(lambda p: not _GLOB_CHARS.search(p), Path(pattern).parts))
    return Path(*fixed) if fixed else Path(".")


def _partition_base(folder: Path) -> Path:
    """Above any ``key=value`` folders: ``events/day=2026-11-01`` -> ``events``, so that
    reading one partition's folder gives the same columns (and ids) as the dataset."""
    while "=" in folder.name and folder.parent != folder:
        folder = folder.parent
    return folder


def parquet_dataset(
    files: Sequence[Path], *, base: Path | None, name: str
) -> tuple[Any, int]:
    """One pyarrow dataset over ``files`` (in that order), and its row count.

    Every file's footer is read first: a part that cannot be opened or whose schema
    clashes with the others' is a :class:`SourceError` naming it, before any row is
    read. Types are unified permissively (``int32`` with ``int64`` gives ``int64``);
    hive partition folders (``key=value``) under ``base`` become columns (values as
    text or integers); ``base=None`` (a single file): none.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    schema: pa.Schema | None = None
    rows = 0
    for f in files:
        try:
            meta = pq.read_metadata(str(f))
        except (OSError, pa.ArrowException) as exc:
            raise _source_error(
                f"part {str(f)!r} of {name} cannot be read as Parquet: {exc}",
                "source_part_failed", name, str(f),
            ) from exc
        rows += meta.num_rows
        part_schema = meta.schema.to_arrow_schema()
        try:
            schema = part_schema if schema is None else pa.unify_schemas(
                [schema, part_schema], promote_options="permissive"
            )
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise _source_error(
                f"part {str(f)!r} of {name} has a schema that clashes with the parts before "
                f"it: {exc}. Make the parts' column types agree (or read them yourself)",
                "source_schema_mismatch", name, str(f),
            ) from exc
    kwargs: dict[str, Any] = {"format": "parquet"}
    if base is not None:  # one file alone has no partitions
        kwargs["partitioning"] = pads.HivePartitioning.discover(infer_dictionary=False)
        kwargs["partition_base_dir"] = _partition_base(base).as_posix()
    paths = [f.as_posix() for f in files]
    try:
        found = pads.dataset(paths, **kwargs)
        assert schema is not None
        full = pa.unify_schemas([found.schema, schema], promote_options="permissive")
        dataset = pads.dataset(paths, schema=full, **kwargs)
    except (OSError, pa.ArrowException) as exc:
        raise _source_error(
            f"the partitions of {name} clash with its columns: {exc}",
            "source_schema_mismatch", name,
        ) from exc
    return dataset, rows


def _dataset_chunks(
    dataset: Any, chunksize: int, filter: Any, name: str
) -> Iterator[pd.DataFrame]:
    """A dataset's rows in file order, part by part (a chunk never spans two parts)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not isinstance(dataset, pads.FileSystemDataset):
        batches = dataset.to_batches(filter=filter, batch_size=chunksize, memory_pool=_pool())
        yield from _arrow_chunks(batches, dataset.schema, chunksize)
        return
    numbering = _Numbering()
    # memory over speed (reading is a small part of a run's time): one batch read
    # ahead, column chunks decoded one at a time, not a row group's byte ranges
    # buffered ahead of time (pre_buffer), about 50 MB less at the peak
    options = pads.ParquetFragmentScanOptions(pre_buffer=False)
    for frag in dataset.get_fragments(filter=filter):
        try:
            batches = frag.to_batches(
                schema=dataset.schema, filter=filter, batch_size=chunksize,
                batch_readahead=1, fragment_readahead=1, use_threads=False,
                fragment_scan_options=options, memory_pool=_pool(),
            )
            yield from _rechunk(batches, chunksize, numbering)
        except (OSError, pa.ArrowException) as exc:
            raise _source_error(
                f"reading part {frag.path!r} of {name} failed after {numbering.rows:,} rows: "
                f"{type(exc).__name__}: {exc}",
                "source_part_failed", name, frag.path,
            ) from exc
    if numbering.rows == 0:
        yield dataset.schema.empty_table().to_pandas()


# --------------------------------------------------------------------------- files


def _whole_floats_to_int(frame: pd.DataFrame, columns: Collection[Hashable]) -> pd.DataFrame:
    """JSON integers in a column with nulls come back from pandas as floats: the
    listed (id) columns get them back as integers, when every value is whole."""
    for col in columns:
        if col in frame.columns and frame.columns.is_unique:
            s = frame[col]
            if pd.api.types.is_float_dtype(s.dtype):
                v = s.dropna()
                if len(v) and bool((v == np.floor(v)).all()) and bool((v.abs() < 2**53).all()):
                    frame[col] = s.astype("Int64")
    return frame


def _open(path: Path, compression: str | None) -> Any:
    """A binary stream of the file's bytes, decompressed on the fly (pyarrow's codecs)."""
    import pyarrow as pa

    return pa.input_stream(str(path), compression=compression)


def _csv_separator(path: Path, compression: str | None) -> str:
    """``,`` unless the header line has no comma and has semicolons (the CSV that
    spreadsheet software writes where the comma is the decimal mark): then ``;``."""
    import pyarrow as pa

    try:
        with _open(path, compression) as fh:
            head = fh.read(1 << 16)
    except (OSError, pa.ArrowException):
        return ","
    header = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    return ";" if "," not in header and ";" in header else ","


def _stream_closed_after(chunks: Iterator[pd.DataFrame], stream: Any) -> Iterator[pd.DataFrame]:
    try:
        yield from chunks
    finally:
        stream.close()


def read_path(
    path: Path, chunksize: int, text_columns: Collection[Hashable] = ()
) -> tuple[Iterator[pd.DataFrame], int | None]:
    """Chunks of one file. ``text_columns`` (the event's string fields) are read as
    written: a CSV's as text (pandas would turn ``00123`` into 123, and an id column
    with a blank into floats, chunk by chunk); JSON Lines keep JSON's own types
    (pandas would turn ``"00123"`` into 123.0 and numbers in ``*_at`` columns into
    dates), with whole numbers in id columns that have nulls kept whole. ``.gz`` and
    ``.zst`` files are decompressed as they are read."""
    suffixes = [s.lower() for s in path.suffixes]
    if not path.exists():
        raise _source_error(f"no such file: {path}", "source_not_found", str(path))
    compression = _COMPRESSION.get(suffixes[-1]) if suffixes else None
    kinds = suffixes[:-1] if compression else suffixes
    if kinds and kinds[-1] in _PARQUET and not compression:
        dataset, rows = parquet_dataset([path], base=None, name=f"the Parquet file {str(path)!r}")
        return _dataset_chunks(dataset, chunksize, None, str(path)), rows
    if kinds and kinds[-1] in (".jsonl", ".ndjson", ".json"):
        stream = io.TextIOWrapper(_open(path, compression), encoding="utf-8")
        # precise_float: pandas' fast parser reads 3.97 as 3.9699999999999998
        reader = pd.read_json(stream, lines=True, chunksize=chunksize,  # type: ignore[call-overload]
                              dtype=False, precise_float=True)  # (stubs: text streams too)
        chunks = (_whole_floats_to_int(c, text_columns) for c in reader)
        return _stream_closed_after(chunks, stream), None
    if any(s in (".csv", ".tsv", ".txt") for s in kinds):
        sep = "\t" if ".tsv" in kinds else _csv_separator(path, compression)
        dtype = {c: str for c in text_columns}
        stream = _open(path, compression)
        reader = pd.read_csv(stream, chunksize=chunksize, sep=sep, dtype=dtype, encoding="utf-8")
        return _stream_closed_after(iter(reader), stream), None
    raise ConfigurationError(
        f"cannot tell the format of {path.name!r}: use .csv, .jsonl (JSON Lines) or "
        ".parquet (CSV and JSON Lines may be compressed: .csv.gz, .jsonl.zst), or a folder "
        "or glob of Parquet files",
        code="unknown_source_format",
    )


def _parquet_files(files: Sequence[Path], name: str) -> list[Path]:
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise _source_error(f"no such file: {missing[0]} (in {name})", "source_not_found",
                            name, str(missing[0]))
    other = [f for f in files if not _is_parquet(f)]
    if other:
        raise ConfigurationError(
            f"{name} holds {str(other[0])!r}, which is not a .parquet file: a folder, a glob "
            "or a list is read as one Parquet dataset (pass other files one by one)",
            code="unknown_source_format",
        )
    return list(files)


def _common_base(files: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([f.parent.as_posix() for f in files]))


def read_location(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    chunksize: int,
    text_columns: Collection[Hashable] = (),
    filter: Any = None,
) -> tuple[Iterator[pd.DataFrame], int | None]:
    """Chunks of a file, a folder of Parquet files, a glob, or a list of Parquet paths."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
            name = f"the folder {text!r}"
            files = _folder_files(path)
            if not files:
                raise _source_error(
                    f"{name} holds no Parquet file (*.parquet, *.pq; names starting with "
                    "'_' or '.' are skipped)", "source_empty", text,
                )
            base: Path | None = path
        elif not path.exists() and _GLOB_CHARS.search(text):
            name = f"the glob {text!r}"
            files = sorted((Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()),
                           key=lambda p: p.as_posix())
            if not files:
                raise _source_error(f"{name} matches no file", "source_empty", text)
            if len(files) == 1 and not _is_parquet(files[0]) and filter is None:
                return read_path(files[0], chunksize, text_columns)
            files = _parquet_files(files, name)
            base = _glob_base(text)
        else:
            if filter is not None and not _is_parquet(path):
                raise _no_filter(f"the file {path.name!r}")
            if filter is None or not path.exists():
                return read_path(path, chunksize, text_columns)
            name, files, base = f"the Parquet file {text!r}", [path], None
    else:
        paths = [Path(os.fspath(p)) for p in source]
        name = f"the list of {len(paths)} Parquet file(s)"
        if not paths:
            raise _source_error("the list of files is empty", "source_empty", "[]")
        files = _parquet_files(paths, name)
        base = _common_base(files)
    dataset, rows = parquet_dataset(files, base=base, name=name)
    return _dataset_chunks(dataset, chunksize, filter, name), (rows if filter is None else None)


# --------------------------------------------------------------------------- Dask


def _is_dask(source: Any) -> bool:
    return type(source).__module__.split(".", 1)[0] == "dask" and hasattr(source, "npartitions")


def _dask_client() -> Any:
    """The ``distributed`` client in use, or ``None`` (dask's local scheduler)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def computed_in_order(parts: Sequence[Any], lookahead: int, name: str) -> Iterator[Any]:
    """Each of ``parts`` (Dask delayed objects) computed, in order, ``lookahead`` ahead.

    With a ``distributed`` client the computations run on its cluster as futures;
    without one, each is computed here with dask's scheduler when its turn comes. A
    part that raises is a :class:`SourceError` naming it (a
    :class:`~millimetric_nb.errors.MillimetricError` raised by the part itself, such as
    a ``pii="error"`` refusal, is re-raised as is); the parts computed ahead are
    cancelled.
    """
    client = _dask_client()
    futures: dict[int, Any] = {}
    try:
        for i, part in enumerate(parts):
            try:
                if client is None:
                    value = part.compute()
                else:
                    for j in range(i, min(len(parts), i + 1 + lookahead)):
                        if j not in futures:
                            futures[j] = client.compute(parts[j])
                    value = futures.pop(i).result()
            except MillimetricError:
                raise
            except Exception as exc:
                raise _source_error(
                    f"partition {i} of {name} failed: {type(exc).__name__}: {exc}",
                    "source_part_failed", name, f"partition {i}",
                ) from exc
            yield value
    finally:
        for fut in futures.values():
            fut.cancel()


def _dask_chunks(ddf: Any, chunksize: int) -> Iterator[pd.DataFrame]:
    name = f"the Dask DataFrame ({ddf.npartitions} partitions)"
    start = 0
    yielded = False
    for part in computed_in_order(ddf.to_delayed(), DASK_LOOKAHEAD, name):
        n = len(part)
        part.index = pd.RangeIndex(start, start + n)
        for i in range(0, n, chunksize):
            yielded = True
            yield part.iloc[i : i + chunksize]
        start += n
    if not yielded:
        yield ddf._meta.iloc[:0]


# --------------------------------------------------------------------------- dispatch


def _no_filter(what: str) -> ConfigurationError:
    return ConfigurationError(
        f"filter= applies to Parquet files, folders, globs and pyarrow Tables or Datasets, "
        f"not to {what}: filter it yourself before passing it",
        code="invalid_filter",
    )


def _check_filter(filter: Any) -> None:
    import pyarrow.compute as pc

    if filter is not None and not isinstance(filter, pc.Expression):
        raise ConfigurationError(
            f"filter= must be a pyarrow.compute Expression (e.g. pc.field('day') >= "
            f"'2026-11-01'), not a {type(filter).__name__}",
            code="invalid_filter",
        )


def _module_of(source: Any) -> str:
    return type(source).__module__.split(".", 1)[0]


def _frame_chunks(frame: pd.DataFrame, chunksize: int) -> Iterator[pd.DataFrame]:
    if len(frame) == 0:
        yield frame
        return
    # small chunks first so the first requests leave at once, then full size
    start, size = 0, min(chunksize, _FIRST_CHUNK)
    while start < len(frame):
        yield frame.iloc[start : start + size]
        start += size
        size = min(chunksize, size * 4)


def _not_frames(source: Any) -> str | None:
    """Why a source that iterates but not over DataFrames is refused (with the fix),
    before anything is read: iterating would yield its labels, columns or records."""
    if isinstance(source, pd.Series):
        return "pass a DataFrame (series.to_frame(), or the whole frame)"
    if hasattr(source, "to_pandas") and not isinstance(source, Iterator):
        return "pass a pandas DataFrame: source.to_pandas()"
    if isinstance(source, dict):
        return "pass one DataFrame, or its frames: pd.concat(d.values()) or d.values()"
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], dict):
        return "records are not a DataFrame: pass pd.DataFrame(records)"
    return None


def _checked_frames(source: Iterable[Any]) -> Iterator[pd.DataFrame]:
    for i, item in enumerate(source):
        if not isinstance(item, pd.DataFrame):
            raise ConfigurationError(
                f"item {i} of the source is a {type(item).__name__}, not a DataFrame",
                code="invalid_source",
            )
        yield item


def _arrow_source(
    source: Any, chunksize: int, filter: Any
) -> tuple[Iterator[pd.DataFrame], int | None] | None:
    """Chunks of a pyarrow Table / RecordBatch / RecordBatchReader / Dataset, else None."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    if isinstance(source, pa.RecordBatch):
        source = pa.Table.from_batches([source])
    if isinstance(source, pa.Table):
        if filter is not None:
            source = source.filter(filter)
        batches = source.to_batches(max_chunksize=chunksize)
        return _arrow_chunks(batches, source.schema, chunksize), source.num_rows
    if isinstance(source, pads.Dataset):
        name = "the pyarrow Dataset"
        return _dataset_chunks(source, chunksize, filter, name), None
    if isinstance(source, pa.RecordBatchReader):
        if filter is not None:
            raise _no_filter("a RecordBatchReader")
        return _arrow_chunks(source, source.schema, chunksize), None
    return None


def _polars_source(source: Any, chunksize: int) -> tuple[Iterator[pd.DataFrame], int | None]:
    import polars as pl

    if isinstance(source, pl.DataFrame):
        batches = (b for s in source.iter_slices(chunksize) for b in s.to_arrow().to_batches())
        return _arrow_chunks(batches, source.head(0).to_arrow().schema, chunksize), source.height
    lazy: pl.LazyFrame = source
    schema = lazy.head(0).collect().to_arrow().schema

    def streamed() -> Iterator[pa.RecordBatch]:
        for df in lazy.collect_batches(chunk_size=chunksize, lazy=True, maintain_order=True):
            yield from df.to_arrow().to_batches()

    return _arrow_chunks(streamed(), schema, chunksize), None


def iter_source(
    source: Source,
    chunksize: int,
    text_columns: Collection[Hashable] = (),
    filter: Any = None,
) -> tuple[Iterator[pd.DataFrame], int | None]:
    """``(chunks, total rows if known)`` for any source (see the module's doc).

    ``text_columns``: for a CSV or JSON Lines file, the columns read as written rather
    than as pandas infers them (see :func:`field_columns`). ``filter``: a
    ``pyarrow.compute`` Expression applied to a Parquet dataset's scan (pushed down to
    the files: partitions and row groups it excludes are not read) or an Arrow Table.
    """
    if chunksize < 1:
        raise ConfigurationError("chunksize must be at least 1", code="invalid_chunksize")
    _check_filter(filter)
    if isinstance(source, pd.DataFrame):
        if filter is not None:
            raise _no_filter("a pandas DataFrame (use df[mask])")
        return _frame_chunks(source, chunksize), len(source)
    if isinstance(source, (str, os.PathLike)) or (
        isinstance(source, (list, tuple)) and source
        and all(isinstance(p, (str, os.PathLike)) for p in source)
    ):
        return read_location(source, chunksize, text_columns, filter)
    module = _module_of(source)
    if module == "pyarrow":
        found = _arrow_source(source, chunksize, filter)
        if found is not None:
            return found
    elif filter is not None:
        raise _no_filter(f"a {type(source).__name__}")
    if module == "polars" and type(source).__name__ in ("DataFrame", "LazyFrame"):
        return _polars_source(source, chunksize)
    if isinstance(source, SqlSource) or (module in ("duckdb", "_duckdb") and hasattr(
            source, "to_arrow_reader")):
        return _duckdb_chunks(source, chunksize), None
    if _is_dask(source):
        if type(source).__name__ != "DataFrame":
            raise ConfigurationError(
                f"cannot read a Dask {type(source).__name__}: pass a Dask DataFrame",
                code="invalid_source",
            )
        _require("dask.dataframe", "dask", "reading a Dask DataFrame")
        return _dask_chunks(source, chunksize), None
    refused = _not_frames(source)
    if refused:
        raise ConfigurationError(
            f"cannot backfill from a {type(source).__name__}: {refused}",
            code="invalid_source",
        )
    if isinstance(source, Iterable):
        return _checked_frames(source), None
    raise ConfigurationError(
        f"cannot backfill from a {type(source).__name__}: pass a DataFrame, an iterable of "
        "DataFrames, a path (CSV, JSON Lines, Parquet, a folder or glob of Parquet files), "
        "a pyarrow Table / Dataset / RecordBatchReader, a polars DataFrame or LazyFrame, "
        "a DuckDB relation or mm.sql(...), or a Dask DataFrame",
        code="invalid_source",
    )


def field_columns(mapping: dict[str, Any]) -> set[Hashable]:
    """The columns that feed the event's string fields under ``mapping`` (the
    contract's field names, and the columns named by ``*_col`` keywords)."""
    cols: set[Hashable] = {"event", *column_fields()}
    for key, value in mapping.items():
        if key.endswith("_col") and value is not None:
            cols.add(value)
    return cols


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- validation


_ERROR_COLUMNS = list(ERROR_COLUMNS)
_PARTITION_META = {
    "kind": "object", "position": "int64", "field": "object", "rule": "object",
    "message": "object", "value": "object",
}


def _check_partition(
    part: pd.DataFrame,
    mapping: dict[str, Any],
    pii: str,
    now: Any,
    missing_timestamp: str = "invalid",
    partition_info: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The column-wise checks of one Dask partition, run on a worker.

    One row per problem (``kind="error"``, ``position`` local to the partition), one
    per warning (``kind="warning"``) and one ``kind="rows"`` row holding the
    partition's row count in ``position``, so that the client can number rows globally.
    """
    from .frame import EventIdState, prepare_chunk, resolve_mapping

    del partition_info
    part = part.reset_index(drop=True)
    fm, warns = resolve_mapping(list(part.columns), **mapping)
    p = prepare_chunk(part, fm, pii=pii, now=now, ids=EventIdState(),  # type: ignore[arg-type]
                      encode=False, missing_timestamp=missing_timestamp)  # type: ignore[arg-type]
    errors = p.errors
    out = pd.DataFrame({
        "kind": "error",
        "position": errors["position"].to_numpy(dtype=np.int64),
        "field": errors["field"].astype(object).to_numpy(),
        "rule": errors["rule"].astype(object).to_numpy(),
        "message": errors["message"].astype(object).to_numpy(),
        "value": errors["value"].astype(object).to_numpy(),
    })
    extra: list[tuple[str, int, str | None, str | None, str | None, str | None]] = [
        ("warning", 0, None, None, w, None) for w in [*warns, *p.warnings]
    ]
    extra.append(("rows", len(part), None, None, None, None))
    tail = pd.DataFrame(extra, columns=list(_PARTITION_META))
    return pd.concat([out, tail], ignore_index=True).astype({"position": "int64"})


def _validate_dask(
    ddf: Any, mapping: dict[str, Any], pii: str, now: Any, missing_timestamp: str,
    tally: MergedWarnings,
) -> tuple[pd.DataFrame, int]:
    _require("dask.dataframe", "dask", "validating a Dask DataFrame")
    name = f"the Dask DataFrame ({ddf.npartitions} partitions)"
    checked = ddf.map_partitions(
        _check_partition, mapping, pii, now, missing_timestamp,
        meta=_PARTITION_META, align_dataframes=False,
    )
    parts = checked.to_delayed()
    pieces: list[pd.DataFrame] = []
    offset = 0
    for found in computed_in_order(parts, len(parts), name):
        kind = found["kind"].to_numpy()
        errs = found[kind == "error"]
        if len(errs):
            pos = errs["position"].to_numpy(dtype=np.int64) + offset
            pieces.append(pd.DataFrame({
                "row": pos.astype(object), "position": pos, "field": errs["field"].to_numpy(),
                "rule": errs["rule"].to_numpy(), "message": errs["message"].to_numpy(),
                "value": errs["value"].to_numpy(),
            }))
        for w in found.loc[kind == "warning", "message"]:
            tally.add(_shift_rows(w, offset))
        offset += int(found.loc[kind == "rows", "position"].sum())
    return _concat_errors(pieces), offset


def _shift_rows(message: str, offset: int) -> str:
    """A partition's warning naming rows by their place in the partition, renumbered
    from the partition's ``offset`` in the whole frame (as its errors are)."""
    from .frame import ROWS_WARNING, rows_phrase

    named = ROWS_WARNING.match(message)
    if named is None or not offset:
        return message
    labels = named["labels"].split(", ")
    total = int(named["total"].replace(",", "")) if named["total"] else len(labels)
    shifted = [str(int(x) + offset) if x.isdigit() else x for x in labels]
    return f"{rows_phrase(shifted, total)} {named['rest']}"


def _concat_errors(pieces: list[pd.DataFrame]) -> pd.DataFrame:
    if not pieces:
        return pd.DataFrame({c: pd.Series([], dtype=object if c != "position" else "int64")
                             for c in _ERROR_COLUMNS})
    return pd.concat(pieces, ignore_index=True)


def validate(
    source: Source,
    *,
    pii: PiiMode = PII_DEFAULT,
    now: pd.Timestamp | None = None,
    missing_timestamp: MissingTimestamp = "invalid",
    warn: bool = True,
    chunksize: int = DEFAULT_CHUNKSIZE,
    filter: Any = None,
    **mapping: Any,
) -> ValidationReport:
    """Check every row of any source against the contract; send nothing.

    The accessor's ``validate`` for every source :func:`~millimetric_nb.backfill`
    takes (a DataFrame, a file, a Parquet folder or glob, Arrow, polars, DuckDB,
    Dask...), read chunk by chunk. One :class:`~millimetric_nb.validate.ValidationReport`
    is merged from the chunks: errors carry global row positions (``row`` is the
    DataFrame's index label for a DataFrame, the row number from 0 otherwise), warnings
    that count rows are summed.

    A Dask DataFrame is checked on its cluster: each partition runs the column-wise
    checks on a worker (``map_partitions``) and only the problems come back.

    Args:
        source: see :func:`millimetric_nb.datasources.iter_source`.
        pii: personal-looking property columns: ``"error"`` (the default, as for a
            send: raise), ``"warn"``, ``"allow"`` or ``"ignore"``.
        now: reference time for "timestamp in the future" (default: now).
        missing_timestamp: an empty timestamp cell is ``"invalid"`` (default) or
            ``"server_time"`` (valid, stored at arrival), as for a send.
        warn: also issue each warning with :func:`warnings.warn`.
        chunksize: rows checked at a time (not used for a DataFrame or Dask).
        filter: a ``pyarrow.compute`` Expression for a Parquet dataset or Arrow source.
        **mapping: the column mapping, as for :func:`~millimetric_nb.backfill`.

    Raises:
        SourceError: the source cannot be read (naming the part).
        ValidationError: a mapping naming a missing column; ``pii="error"``.
    """
    from .frame import (
        EventIdState,
        MergedWarnings,
        check_mapping_keywords,
        check_missing_timestamp,
        check_pii,
        emit_warnings,
        prepare_chunk,
        resolve_mapping,
    )
    from .validate import ValidationReport, validate_frame

    check_pii(pii)
    check_missing_timestamp(missing_timestamp)
    check_mapping_keywords(mapping)
    if isinstance(source, pd.DataFrame) and filter is None:
        report = validate_frame(source, pii=pii, now=now, missing_timestamp=missing_timestamp,
                                warn=False, **mapping)
        if warn:
            emit_warnings(report.warnings, stacklevel=2)
        return report
    tally = MergedWarnings()
    if _is_dask(source) and type(source).__name__ == "DataFrame":
        if filter is not None:
            raise _no_filter("a Dask DataFrame")
        errors, n_rows = _validate_dask(source, mapping, pii, now, missing_timestamp, tally)
    else:
        chunks, _total = iter_source(source, chunksize, field_columns(mapping), filter)
        mappings: dict[tuple[Hashable, ...], Any] = {}
        ids = EventIdState()
        pieces: list[pd.DataFrame] = []
        n_rows = 0
        for chunk in chunks:
            cols = tuple(chunk.columns)
            if cols not in mappings:
                mappings[cols], mwarns = resolve_mapping(list(cols), **mapping)
                for w in mwarns:
                    tally.add(w)
            p = prepare_chunk(chunk, mappings[cols], offset=n_rows, pii=pii, now=now, ids=ids,
                              encode=False, missing_timestamp=missing_timestamp)
            for w in p.warnings:
                tally.add(w)
            if len(p.errors):
                pieces.append(p.errors)
            n_rows += len(chunk)
        errors = _concat_errors(pieces)
    warns = tally.rendered()
    if warn:
        emit_warnings(warns, stacklevel=2)
    return ValidationReport(errors=errors, n_rows=n_rows, warnings=warns)


__all__ = [
    "DASK_LOOKAHEAD",
    "DEFAULT_CHUNKSIZE",
    "Source",
    "SqlSource",
    "computed_in_order",
    "field_columns",
    "iter_source",
    "parquet_dataset",
    "read_location",
    "read_path",
    "sql",
    "validate",
]
