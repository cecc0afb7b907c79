"""The package's public surface: what ``__all__`` lists resolves, one base per kind
(``MillimetricError``, ``MillimetricWarning``), ``ClientLike``, ``py.typed``, the
shared defaults, and an import that leaves the heavy modules for later (issue 9).

No timing here: ``benchmarks/bench_import.py`` prints how long the import takes.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

import millimetric_nb as mm
from millimetric_nb import defaults
from millimetric_nb.errors import MillimetricError, MillimetricWarning

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "millimetric_nb"
#: An exception the package exports on purpose outside MillimetricError: a stopped
#: synchronous send is a KeyboardInterrupt, so ``except Exception`` does not swallow it.
NOT_MILLIMETRIC_ERRORS = {"SendInterrupted"}


def _package_modules() -> list[str]:
    names = [
        m.name for m in pkgutil.walk_packages([str(PACKAGE)], "millimetric_nb.")
        if not m.name.endswith("__main__")  # runs the command line
    ]
    for name in names:
        importlib.import_module(name)
    return names


def _classes_defined_in_package() -> list[type]:
    found: dict[int, type] = {}
    for name in _package_modules():
        for value in vars(sys.modules[name]).values():
            if inspect.isclass(value) and value.__module__.startswith("millimetric_nb"):
                found[id(value)] = value
    return list(found.values())


@pytest.mark.parametrize("name", mm.__all__)
def test_every_name_in_all_resolves(name):
    assert getattr(mm, name) is not None
    assert name in dir(mm)


def test_all_lists_what_users_catch_and_call():
    wanted = {
        "BatchFailedError", "MillimetricWarning", "DataWarning", "EnrichedFieldWarning",
        "PossiblyTruncatedWarning", "IncompleteReadWarning", "JournalBusy", "ClientLike",
        "aquery", "aquery_all", "astats", "asources", "averify", "verify",
    }
    assert wanted <= set(mm.__all__)
    assert len(mm.__all__) == len(set(mm.__all__))


def test_exported_exceptions_and_warnings_derive_from_the_bases():
    exported = [getattr(mm, n) for n in mm.__all__]
    classes = [c for c in exported if inspect.isclass(c) and issubclass(c, BaseException)]
    warnings_ = [c for c in classes if issubclass(c, Warning)]
    errors = [c for c in classes if not issubclass(c, Warning)]
    assert len(warnings_) >= 5 and len(errors) >= 15
    assert [c for c in warnings_ if not issubclass(c, MillimetricWarning)] == []
    assert [c.__name__ for c in errors if not issubclass(c, MillimetricError)] == sorted(
        NOT_MILLIMETRIC_ERRORS)
    assert not issubclass(MillimetricWarning, MillimetricError)  # two hierarchies


def test_every_warning_the_package_defines_is_a_millimetric_warning_and_exported():
    defined = [c for c in _classes_defined_in_package() if issubclass(c, Warning)]
    assert {c.__name__ for c in defined} >= {
        "DataWarning", "EnrichedFieldWarning", "PossiblyTruncatedWarning",
        "IncompleteReadWarning",
    }
    assert [c for c in defined if not issubclass(c, MillimetricWarning)] == []
    assert sorted(c.__name__ for c in defined if c.__name__ not in mm.__all__) == []


def test_old_homes_of_the_warnings_still_work():
    from millimetric_nb import events, frame, read

    assert frame.DataWarning is mm.DataWarning
    assert events.EnrichedFieldWarning is mm.EnrichedFieldWarning
    assert read.PossiblyTruncatedWarning is mm.PossiblyTruncatedWarning
    assert read.IncompleteReadWarning is mm.IncompleteReadWarning


def test_one_filter_silences_every_package_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=mm.MillimetricWarning)
        for cls in (mm.DataWarning, mm.EnrichedFieldWarning, mm.PossiblyTruncatedWarning,
                    mm.IncompleteReadWarning):
            warnings.warn("x", cls, stacklevel=1)
        warnings.warn("kept", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["kept"]


def test_journal_busy_is_a_millimetric_error_with_a_code(tmp_path):
    path = tmp_path / "j.sqlite"
    with mm.Journal(path) as first, mm.Journal(path) as second:
        first.start_run()
        with pytest.raises(mm.JournalBusy) as ei:
            second.start_run()
    err = ei.value
    assert isinstance(err, mm.MillimetricError) and isinstance(err, mm.ConfigurationError)
    assert err.code == "journal_busy"
    assert str(path) in str(err)


def test_batch_failed_error_is_exported_from_the_client():
    from millimetric_nb.client import BatchFailedError

    assert mm.BatchFailedError is BatchFailedError
    assert issubclass(mm.BatchFailedError, mm.MillimetricError)


def test_client_like_is_the_union_of_both_clients():
    assert set(typing.get_args(mm.ClientLike)) == {mm.Client, mm.AsyncClient}
    client = mm.AsyncClient("sk_live_1a2b3c4d_" + "s" * 24, "http://127.0.0.1:9")
    assert isinstance(client, mm.ClientLike)


def test_no_client_parameter_is_typed_any():
    # every client= parameter, the faces' and the engine's, is ClientLike
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "client: Any" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert offenders == []


def test_py_typed_ships_with_the_package():
    assert (PACKAGE / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["millimetric_nb"]
    assert config["tool"]["mypy"]["files"] == ["millimetric_nb"]


def test_the_faces_defaults_are_the_engines():
    from millimetric_nb import backfill as _face  # the function
    from millimetric_nb import datasources, engine, frame

    assert _face is mm.backfill
    assert engine.DEFAULT_CONCURRENCY == defaults.DEFAULT_CONCURRENCY
    assert inspect.signature(engine.run_rows).parameters["concurrency"].default == (
        defaults.DEFAULT_CONCURRENCY)
    assert frame.PII_DEFAULT == defaults.PII_DEFAULT
    assert datasources.DEFAULT_CHUNKSIZE == defaults.DEFAULT_CHUNKSIZE
    face = inspect.signature(mm.backfill).parameters
    assert face["concurrency"].default == defaults.DEFAULT_CONCURRENCY
    assert face["pii"].default == defaults.PII_DEFAULT
    assert face["chunksize"].default == defaults.DEFAULT_CHUNKSIZE


def test_lazy_names_fail_clearly_when_unknown():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = mm.nope


# ------------------------------------------------------------------ import in a fresh process

_PROBE = """
import json, sys
import millimetric_nb as mm
heavy = {heavy!r}
at_import = [m for m in heavy if m in sys.modules]
import millimetric_nb.engine, millimetric_nb.validate  # the submodules, first use
faces = [mm.backfill.__module__, mm.validate.__module__, type(mm.Client).__name__]
print(json.dumps({{"at_import": at_import, "faces": faces}}))
"""
HEAVY = ("polars", "pyarrow", "ipywidgets", "matplotlib", "duckdb", "dask", "httpx",
         "millimetric_nb.frame", "millimetric_nb.engine", "millimetric_nb.validate",
         "millimetric_nb.client")


def _probe(code: str) -> dict[str, list[str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_DRY_PROBE = """
import json, sys, warnings
import pandas as pd
import millimetric_nb as mm
warnings.simplefilter("ignore")
df = pd.DataFrame({{"event": ["a", "b"], "user_id": "u"}})
result = df.millimetric.send_batch(dry_run=True, progress=False)
report = mm.validate(df)
loaded = [m for m in {http!r} if m in sys.modules]
print(json.dumps({{"at_import": loaded, "planned": result.counts["planned"],
                  "valid": report.n_valid_rows}}))
"""


def test_a_dry_run_and_a_validation_never_load_the_http_stack():
    http = ("httpx", "httpcore", "anyio", "tenacity", "millimetric_nb.client")
    found = _probe(_DRY_PROBE.format(http=http))
    assert found["planned"] == 2 and found["valid"] == 2  # they did run
    assert found["at_import"] == []


def test_import_leaves_the_heavy_modules_for_later():
    found = _probe(_PROBE.format(heavy=HEAVY))
    pandas_alone = _probe(
        f"import json, sys, pandas; print(json.dumps({{'at_import': "
        f"[m for m in {HEAVY!r} if m in sys.modules]}}))"
    )["at_import"]
    # pandas 3 imports pyarrow itself when it is installed: not ours to defer
    assert sorted(set(found["at_import"]) - set(pandas_alone)) == []
    assert "polars" not in found["at_import"]
    # a submodule imported after the package does not replace the face of its name
    assert found["faces"] == ["millimetric_nb.api", "millimetric_nb.datasources", "type"]
