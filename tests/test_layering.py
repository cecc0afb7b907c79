"""DESIGN.md's layering rule, enforced: imports go down, never up.

Every import of the package by the package is read from the source with ``ast``
(lazy imports inside functions included) and checked against the levels below.
A new module must be given a level here, so the rule cannot be skipped by accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "millimetric_nb"

LEVELS: dict[str, int] = {
    "contract": 1, "errors": 1, "keys": 1, "progress": 1,
    "encode": 2, "events": 2, "validate": 2, "frame": 2, "ratelimit": 2, "sample": 2,
    "datasources": 2,
    "client": 3,
    "sync": 4, "journal": 4, "backfill": 4, "results": 4, "read": 4,
    "ui": 5,
    "accessor": 6, "api": 6, "cli": 6, "demo": 6, "__init__": 6,
}
# the local server is its own program: from the package it may use only these
SERVER_MAY_IMPORT = {"contract", "errors"}
# and only the faces start it
SERVER_IMPORTED_FROM_LEVEL = 6


def unit_of(path: Path) -> str:
    """The layering unit of a source file: its top-level module or subpackage."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def package_imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, unit)`` for every import of a package module in ``path`` (under ``root``)."""
    rel = path.relative_to(root)
    here = ["millimetric_nb", *rel.parts[:-1]]  # the package the file lives in
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            # "from . import x" / "from millimetric_nb import x": x may be a module
            names = [f"{mod}.{a.name}" for a in node.names] if mod == "millimetric_nb" else [mod]
        for name in names:
            parts = name.split(".")
            if parts[0] == "millimetric_nb" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_level():
    units = {unit_of(p) for p in SOURCES}
    assert units - set(LEVELS) - {"server"} == set()
    assert {"backfill", "api", "accessor", "ui", "client"} <= units


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_never_up(path):
    unit = unit_of(path)
    bad = []
    for line, target in package_imports(path):
        if target == unit:
            continue
        if unit == "server":
            ok = target in SERVER_MAY_IMPORT
        elif target == "server":
            ok = LEVELS[unit] >= SERVER_IMPORTED_FROM_LEVEL
        else:
            ok = LEVELS[target] <= LEVELS[unit]
        if not ok:
            bad.append(f"line {line}: {unit} imports {target}")
    assert bad == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    # a fake package laid out like the real one: the checker must catch an upward
    # import hidden in a function, and resolve "..", "." and absolute forms
    pkg = tmp_path / "millimetric_nb"
    (pkg / "ui").mkdir(parents=True)
    (pkg / "backfill.py").write_text(
        "from .journal import Journal\n"
        "def f():\n    from .ui import TqdmProgress\n    from millimetric_nb import api\n"
    )
    (pkg / "ui" / "__init__.py").write_text("from ..progress import Done\nfrom . import bar\n")
    found = package_imports(pkg / "backfill.py", pkg)
    assert found == [(1, "journal"), (3, "ui"), (4, "api")]
    assert [t for _, t in found if LEVELS[t] > LEVELS["backfill"]] == ["ui", "api"]
    assert package_imports(pkg / "ui" / "__init__.py", pkg) == [(1, "progress"), (2, "ui")]
