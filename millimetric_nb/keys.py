"""API keys: parsing, kind rules and masking.

A key has the shape ``{kind}_{env}_{prefix}_{secret}``. The 8-character prefix
is safe to show; the secret never is. :class:`ApiKey` keeps the secret out of
every ``repr``/``str`` so that a key cannot leak through logs, exceptions or a
notebook's output. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from . import contract
from .errors import KeyRefusedError

_KEY_RE = re.compile(contract.KEY_PATTERN)

Use = Literal["ingest", "read", "forget"]


def mask(raw: str) -> str:
    """A printable form of a key: ``sk_live_1a2b3c4d_…``; never the secret.

    Works on anything, including malformed keys (only a safe head is kept).
    """
    m = _KEY_RE.match(raw or "")
    if m:
        kind, env, prefix, _ = m.groups()
        return f"{kind}_{env}_{prefix}_…"
    # Malformed: show at most the kind-like head, never the rest.
    head = (raw or "")[:3]
    return f"{head}…" if re.fullmatch(r"[a-z]{2}_", head) else "…"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A parsed key. ``str()``/``repr()`` show the masked form only."""

    kind: contract.KeyKind
    env: str
    prefix: str
    _secret: str = field(repr=False)

    @classmethod
    def parse(cls, raw: str) -> ApiKey:
        """Parse ``raw``; raise :class:`KeyRefusedError` (``malformed_api_key``) if misshapen."""
        if not isinstance(raw, str):
            raise KeyRefusedError(
                f"an API key must be a string of the shape {contract.KEY_SHAPE}",
                code="malformed_api_key",
            )
        m = _KEY_RE.match(raw.strip())
        if not m:
            raise KeyRefusedError(
                f"the key {mask(raw)} is not of the shape {contract.KEY_SHAPE}",
                code="malformed_api_key",
            )
        kind, env, prefix, secret = m.groups()
        return cls(kind, env, prefix, secret)  # type: ignore[arg-type]

    @property
    def masked(self) -> str:
        """``sk_live_1a2b3c4d_…``."""
        return f"{self.kind}_{self.env}_{self.prefix}_…"

    def reveal(self) -> str:
        """The whole key, for the Authorization header only."""
        return f"{self.kind}_{self.env}_{self.prefix}_{self._secret}"

    @property
    def spec(self) -> contract.KeyKindSpec:
        """What this kind of key may do."""
        return contract.KEY_KINDS[self.kind]

    def check_use(self, use: Use) -> None:
        """Raise :class:`KeyRefusedError` unless this key may be used for ``use`` here.

        ``pk_`` keys are refused for everything: they belong in the browser snippet
        and must never be in notebook or server code.
        """
        if self.kind == "pk":
            raise KeyRefusedError(
                f"{self.masked} is a browser (pk_) key: pk_ keys belong only in the website "
                "snippet and must never appear in notebooks, shells or server code. "
                "Use a server key (sk_live_…) here.",
                code="browser_key_refused",
            )
        spec = self.spec
        allowed = {"ingest": spec.can_ingest, "read": spec.can_read, "forget": spec.can_forget}[use]
        if not allowed:
            need = "an sk_ key" if use != "read" else "an sk_ or rk_ key"
            raise KeyRefusedError(
                f"{self.masked} is a {self.kind}_ key ({spec.where}); it cannot be used to "
                f"{use}. Use {need}.",
                code="insufficient_scope",
            )

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"ApiKey({self.masked!r})"

    # Pickling would write the secret into the pickle (a cache, a process pool's pipe, a
    # saved session): refused, as for the clients. Copies are the key itself (immutable).
    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"ApiKey cannot be pickled (it holds a secret): {self.masked}")

    def __reduce__(self) -> Any:
        raise TypeError(f"ApiKey cannot be pickled (it holds a secret): {self.masked}")

    def __copy__(self) -> ApiKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ApiKey:
        return self


__all__ = ["ApiKey", "mask"]
