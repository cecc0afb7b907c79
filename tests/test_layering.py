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
    "contract": 1, "errors": 1, "keys": 1, "progress": 1, "defaults": 1,
    "encode": 2, "rules": 2, "events": 2, "validate": 2, "frame": 2, "_bytescan": 2,
    "ratelimit": 2, "sample": 2,
    "datasources": 2, "batching": 2,
    "client": 3,
    "sync": 4, "journal": 4, "engine": 4, "results": 4, "read": 4,
    "ui": 5,
    "accessor": 6, "api": 6, "cli": 6, "demo": 6, "__init__": 6,
    # modules of ui/ with a level of their own: the charts draw data and know nothing of
    # sending (results and read draw with them); the forms send, through the faces
    "ui.charts": 2, "ui.forms": 6, "ui.connect": 6, "ui.backfill_form": 6,
}
# the local server is its own program: from the package it may use only these
SERVER_MAY_IMPORT = {"contract", "errors"}
# and only the faces start it
SERVER_IMPORTED_FROM_LEVEL = 6


def unit_of(path: Path) -> str:
    """The layering unit of a source file: its top-level module or subpackage."""
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) == 1:
        return rel.stem
    own = f"{rel.parts[0]}.{Path(rel.parts[1]).stem}"
    return own if own in LEVELS else rel.parts[0]


def _target(parts: list[str]) -> str:
    """The unit of an imported ``millimetric_nb.x[.y...]``: a submodule with its own level
    (``ui.charts``), else the top-level module or subpackage."""
    own = ".".join(parts[1:3])
    return own if len(parts) > 2 and own in LEVELS else parts[1]


def lazy_reexports(path: Path) -> set[int]:
    """Lines of the imports inside a package ``__init__``'s module ``__getattr__``: the
    package re-exporting its own submodules on first use (``ui.track_form``)."""
    if path.name != "__init__.py":
        return set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {
        node.lineno
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__"
        for node in ast.walk(fn)
        if isinstance(node, ast.ImportFrom | ast.Import)
    }


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
                found.append((node.lineno, _target(parts)))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_level():
    units = {unit_of(p) for p in SOURCES}
    assert units - set(LEVELS) - {"server"} == set()
    assert {"engine", "api", "accessor", "ui", "client"} <= units


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_never_up(path):
    unit = unit_of(path)
    lazy = lazy_reexports(path)
    bad = []
    for line, target in package_imports(path):
        if target == unit or (line in lazy and target.startswith(f"{unit}.")):
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
    assert [t for _, t in found if LEVELS[t] > LEVELS["engine"]] == ["ui", "api"]
    assert package_imports(pkg / "ui" / "__init__.py", pkg) == [(1, "progress"), (2, "ui")]


def test_submodules_with_a_level_of_their_own(tmp_path):
    # ui.charts (level 2) may be drawn with by results (4); the ui package's __init__
    # may re-export its forms (level 6) only lazily, from its module __getattr__
    pkg = tmp_path / "millimetric_nb"
    (pkg / "ui").mkdir(parents=True)
    (pkg / "results.py").write_text(
        "def f():\n    from .ui.charts import per_day\n    from .ui import TqdmProgress\n"
    )
    (pkg / "ui" / "__init__.py").write_text(
        "from .forms import Form\ndef __getattr__(name):\n    from .forms import track_form\n"
    )
    assert package_imports(pkg / "results.py", pkg) == [(2, "ui.charts"), (3, "ui")]
    assert package_imports(pkg / "ui" / "__init__.py", pkg) == [(1, "ui.forms"), (3, "ui.forms")]
    assert lazy_reexports(pkg / "ui" / "__init__.py") == {3}  # line 1 stays an upward import
    assert unit_of(PACKAGE / "ui" / "forms.py") == "ui.forms"
    assert unit_of(PACKAGE / "ui" / "__init__.py") == "ui"
