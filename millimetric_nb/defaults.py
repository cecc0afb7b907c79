"""The defaults of the sending faces' options, in a module that imports nothing.

The faces (``mm.backfill``, ``df.millimetric.send_batch``, ``mm.validate``...) show
these in their signatures. They live here, not in the engine or the frame layer, so
that a face can name them without importing those modules (and polars with them)
when the package is imported: the engine and the frame layer are imported the first
time a frame is prepared. The engine and the frame layer use the same values
(``tests/test_types.py`` checks that they agree).

Standard library only.
"""

from __future__ import annotations

from typing import Final

#: Rows validated and encoded at a time (a source is read in chunks of this many).
DEFAULT_CHUNKSIZE: Final = 25_000
#: Requests in flight at once (the client's rate-limit bucket sets the pace).
DEFAULT_CONCURRENCY: Final = 20
#: Property columns that look like personal data refuse the send unless told otherwise.
PII_DEFAULT: Final = "error"

__all__ = ["DEFAULT_CHUNKSIZE", "DEFAULT_CONCURRENCY", "PII_DEFAULT"]
