"""What the sub-commands share: the key and host, the client, reading the input
file, writing a frame out, and turning any refusal into one line and exit code 2.

A key is read from ``$MILLIMETRIC_KEY``, else asked for without echo
(:func:`getpass.getpass`); ``--key`` works but warns (it lands in shell history).
No output of the command ever holds a key: the client scrubs server messages,
and this module prints keys only masked.
"""

from __future__ import annotations

import argparse
import codecs
import getpass
import os
import sys
import warnings
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import pandas as pd

from .. import contract
from ..datasources import field_columns, iter_source
from ..errors import ConfigurationError, MillimetricError, ValidationError

if TYPE_CHECKING:  # the client (httpx) is imported when one is made
    from ..sync import Client

#: Exit codes: 0 all good, 1 the data (some rows invalid, not sent, missing), 2 the
#: command could not do its job (bad input, no key, the server refused the key...).
EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2
#: Suffixes read as text, whose encoding is checked before the run.
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".json")
_UTF8_BLOCK = 1 << 20

#: The mapping flags: option -> the keyword of ``backfill()`` / ``df.millimetric``.
MAPPING_FLAGS: dict[str, str] = {
    "--event": "event",
    "--event-col": "event_col",
    "--event-id-col": "event_id_col",
    "--timestamp-col": "timestamp_col",
    "--anonymous-id-col": "anonymous_id_col",
    "--user-id-col": "user_id_col",
    "--session-id-col": "session_id_col",
    "--url-col": "url_col",
    "--path-col": "path_col",
    "--referrer-col": "referrer_col",
}


class CliError(Exception):
    """A refusal of the command: one line saying what is wrong and what to do."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = code


def one_line(exc: MillimetricError) -> str:
    """A typed error as one line: its message, the first fields it names, its code."""
    text = " ".join(exc.message.split())
    named = [f"{path}: {msgs[0]}" for path, msgs in sorted(exc.field_errors.items()) if msgs]
    if named and not any(n in text for n in named[:1]):
        text += " (" + "; ".join(named[:3]) + ("; ..." if len(named) > 3 else "") + ")"
    return f"{text} [{exc.code}]"


def say(text: str = "", file: TextIO | None = None) -> None:
    """Print one line to stdout (or ``file``)."""
    print(text, file=file if file is not None else sys.stdout, flush=True)


def note(text: str) -> None:
    """Print one line to stderr (warnings, notes)."""
    print(text, file=sys.stderr, flush=True)


@contextmanager
def printed_warnings() -> Iterator[None]:
    """Python warnings raised inside the block are printed as ``warning: ...`` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: set[str] = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if text not in seen:
            seen.add(text)
            note(f"warning: {text}")


# --------------------------------------------------------------------------- options


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--host`` and ``--key``."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--host", default=None,
        help=f"base URL of the API (default: ${contract.ENV_HOST}, else {contract.DEFAULT_HOST})",
    )
    group.add_argument(
        "--key", default=None,
        help=f"the API key. Better: set ${contract.ENV_KEY}, or leave both out to be asked "
        "for it without echo; a key given here lands in your shell history (a warning says so)",
    )


def add_mapping_options(parser: argparse.ArgumentParser) -> None:
    """The column mapping flags (as ``df.millimetric.send_batch``'s keywords)."""
    group = parser.add_argument_group(
        "column mapping",
        "which columns hold the event's fields. A field whose flag is not given is taken "
        "from a column of the field's own name (user_id, timestamp...), if there is one",
    )
    group.add_argument("--event", metavar="NAME", help="one event name for every row")
    group.add_argument("--event-col", metavar="COL",
                       help="the column of event names (default: 'event')")
    for flag, keyword in MAPPING_FLAGS.items():
        if flag in ("--event", "--event-col"):
            continue
        field = keyword.removesuffix("_col")
        group.add_argument(flag, metavar="COL", help=f"the column of {field}")
    group.add_argument(
        "--properties", metavar="COL[,COL...]",
        help="the columns sent as properties (comma-separated; '' sends none). Default: "
        "every column not mapped to a field, or a column named 'properties' holding objects "
        "(in JSON Lines or Parquet)",
    )
    group.add_argument(
        "--pii", choices=("warn", "error", "ignore"), default="warn",
        help="columns that look like personal data (email, phone...): warn (default), "
        "error (refuse them), ignore",
    )


def mapping_of(args: argparse.Namespace) -> dict[str, Any]:
    """The ``backfill()`` mapping keywords the flags give."""
    from ..frame import check_mapping_keywords

    mapping: dict[str, Any] = {}
    for keyword in MAPPING_FLAGS.values():
        value = getattr(args, keyword, None)
        if value is not None:
            mapping[keyword] = value
    if args.properties is not None:
        mapping["properties"] = [c.strip() for c in args.properties.split(",") if c.strip()]
    check_mapping_keywords(mapping)
    return mapping


# --------------------------------------------------------------------------- key, client


def read_key(args: argparse.Namespace) -> str:
    """The key: ``--key`` (with a warning), ``$MILLIMETRIC_KEY``, else a prompt without echo."""
    if args.key:
        note(
            "warning: --key puts the key in your shell history; prefer "
            f"{contract.ENV_KEY}=... or the prompt (leave --key out)"
        )
        return str(args.key)
    env = os.environ.get(contract.ENV_KEY, "")
    if env.strip():
        return env
    if sys.stdin.isatty():
        try:
            typed = getpass.getpass("Millimetric API key (sk_..., not shown): ")
        except EOFError:
            typed = ""
        if typed.strip():
            return typed.strip()
    raise CliError(
        f"no API key: set {contract.ENV_KEY} (export {contract.ENV_KEY}=sk_...), or run the "
        "command in a terminal to be asked for it"
    )


def make_client(args: argparse.Namespace) -> Client:
    """A synchronous :class:`~millimetric_nb.sync.Client` for the flags and environment."""
    from ..sync import Client

    return Client(key=read_key(args), host=args.host)


# --------------------------------------------------------------------------- input


def default_beside(path: Path, suffix: str) -> Path:
    """``FILE<suffix>`` next to ``FILE`` (a directory's goes next to the directory)."""
    return path.parent / f"{path.name}{suffix}"


def _check_utf8(path: Path) -> None:
    """Refuse a text file that is not UTF-8, naming the line, before anything is read."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as fh:
        while block := fh.read(_UTF8_BLOCK):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                at = line + block[: exc.start].count(b"\n")
                raise CliError(
                    f"{path} is not UTF-8 (byte 0x{block[exc.start]:02x} on line {at}): "
                    f"convert it first, e.g. iconv -f cp1252 -t utf-8 '{path}' > "
                    f"'{path.with_name(path.stem + '.utf8' + path.suffix)}'"
                ) from None
            line += block.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CliError(
                f"{path} is not UTF-8 (it ends inside a character): convert it first, "
                "e.g. with iconv -f cp1252 -t utf-8"
            ) from None


def check_source(path_text: str, mapping: dict[str, Any]) -> Path:
    """The input path, checked before any run: it exists, has data, can be read, is
    UTF-8 (text formats) and has a column for the event (unless ``--event``).

    Reading goes through the package's own source reading
    (:func:`millimetric_nb.engine.iter_source`), so every format it reads, the
    command reads. Raises :class:`CliError` (exit 2) naming the problem and the fix.
    """
    path = Path(path_text)
    if not path.exists():
        raise CliError(f"{path}: no such file or directory; check the path")
    if path.is_dir():
        if not any(p.is_file() and not p.name.startswith(".") for p in path.rglob("*")):
            raise CliError(
                f"{path} is a directory with no data files: point at a file, or a directory "
                "of .csv, .jsonl or .parquet files"
            )
    elif path.stat().st_size == 0:
        raise CliError(f"{path} is empty: export the events with a header line and one row each")
    elif path.suffix.lower() in _TEXT_SUFFIXES:
        _check_utf8(path)
    from ..frame import resolve_mapping

    first = _first_rows(path, field_columns(mapping))
    if first is None or len(first) == 0:
        raise CliError(
            f"{path} has no rows" + (f" (only the columns {_names(first.columns)})"
                                     if first is not None and len(first.columns) else "")
            + ": export the events with one row each"
        )
    try:
        resolve_mapping(list(first.columns), **mapping)
    except ValidationError as exc:
        fields = {p[0] for p in exc.problems}
        if "event_col" in fields and "event" not in mapping:
            wanted = mapping.get("event_col", "event")
            raise CliError(
                f"{path} has no column {wanted!r} for the event name (columns: "
                f"{_names(first.columns)}): name it with --event-col COLUMN, or give every "
                "row one name with --event NAME"
            ) from None
        raise CliError(f"{path}: {one_line(exc)}") from None
    return path


def _names(columns: Any, most: int = 12) -> str:
    shown = [str(c) for c in list(columns)[:most]]
    return ", ".join(shown) + (", ..." if len(columns) > most else "")


def _first_rows(path: Path, text_columns: set[Hashable]) -> pd.DataFrame | None:
    """The first rows of the source, or ``None`` if it has none; a read error -> CliError."""
    chunks: Iterator[pd.DataFrame] | None = None
    try:
        chunks, _total = iter_source(path, 100, text_columns)
        return next(chunks, None)
    except ConfigurationError as exc:
        raise CliError(f"{one_line(exc)}") from None
    except pd.errors.EmptyDataError:
        raise CliError(
            f"{path} has no header and no rows: export the events with a header line"
        ) from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8: convert it first (e.g. with iconv)") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CliError(
            f"cannot read {path} ({type(exc).__name__}: {reason}): check that it is a "
            "well-formed .csv, .jsonl or .parquet file"
        ) from None
    finally:
        close = getattr(chunks, "close", None)
        if callable(close):
            close()


# --------------------------------------------------------------------------- output


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """``--output PATH`` (.csv or .parquet)."""
    parser.add_argument(
        "-o", "--output", metavar="PATH",
        help="write the rows to PATH (.csv or .parquet) instead of printing a table",
    )


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Dict and list cells as JSON text (for CSV and Parquet)."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, dict | list)).any():
            out[col] = out[col].map(
                lambda v: orjson.dumps(v).decode() if isinstance(v, dict | list) else v
            )
    return out


def write_frame(df: pd.DataFrame, output: str | None, what: str) -> None:
    """``df`` to ``output`` (.csv / .parquet), or as a table on stdout."""
    if output is None:
        if df.empty:
            say(f"no {what}")
            return
        with pd.option_context("display.max_rows", None, "display.max_columns", None,
                               "display.width", 200, "display.max_colwidth", 60):
            say(df.to_string(index=False))
        return
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise CliError(f"--output {output}: write a .csv or a .parquet file")
    if not path.parent.exists():
        raise CliError(f"--output {output}: the folder {path.parent} does not exist")
    plain = _plain(df)
    if suffix == ".csv":
        plain.to_csv(path, index=False)
    else:
        plain.to_parquet(path, index=False)
    say(f"wrote {len(df):,} {what} to {path}")


Handler = Callable[[argparse.Namespace], int]

__all__ = [
    "EXIT_DATA",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAPPING_FLAGS",
    "CliError",
    "Handler",
    "add_connection_options",
    "add_mapping_options",
    "add_output_option",
    "check_source",
    "default_beside",
    "make_client",
    "mapping_of",
    "note",
    "one_line",
    "printed_warnings",
    "read_key",
    "say",
    "write_frame",
]
