"""How long ``import millimetric_nb`` takes, and which heavy modules it brings in.

Each measurement is a fresh interpreter (``python -c``), so nothing is cached in the
process; the import is timed inside it with ``time.perf_counter``. Printed: the
median and the spread over RUNS subprocesses, the target (0.4 s, issue 9), what
``import pandas`` alone takes on the same machine (the floor: the accessor registers
with pandas at import), and which of the heavy optional or deferred modules (polars,
pyarrow, ipywidgets, matplotlib, duckdb, dask, httpx) were imported, each said to be
brought by pandas itself when ``import pandas`` alone imports it too.

The CPU time of the importing process is printed too: on a machine shared with other
work, wall time swells with the load average (printed last), CPU time much less.

Usage: ``python benchmarks/bench_import.py [RUNS]`` (default 7). Run it from the
repository root (or with the package installed); it imports the package found first
on ``sys.path`` of a child started in the current directory.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bytecode import compile_package

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
TARGET_S = 0.4
HEAVY = ("polars", "pyarrow", "ipywidgets", "matplotlib", "duckdb", "dask", "httpx")

_CHILD = """
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import {module}
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({{"s": elapsed, "cpu": cpu, "loaded": [m for m in {heavy!r} if m in sys.modules],
                  "file": getattr(sys.modules[{module!r}], "__file__", None)}}))
"""


def measure(module: str) -> dict[str, object]:
    """One fresh interpreter importing ``module``: seconds, heavy modules loaded, file."""
    env = dict(os.environ)
    here = os.getcwd()
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(module=module, heavy=HEAVY)],
        capture_output=True, text=True, check=True, env=env, timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def series(module: str) -> tuple[list[float], list[float], dict[str, object]]:
    """Wall and CPU seconds of RUNS fresh imports of ``module``, and the last run."""
    runs = [measure(module) for _ in range(RUNS)]
    wall = [float(r["s"]) for r in runs]  # type: ignore[arg-type]
    cpu = [float(r["cpu"]) for r in runs]  # type: ignore[arg-type]
    return wall, cpu, runs[-1]


def main() -> None:
    compile_package(os.getcwd())  # the children import the package from the cwd
    times, cpu, last = series("millimetric_nb")
    base, base_cpu, base_last = series("pandas")
    med = statistics.median(times)
    print(f"import millimetric_nb: median {med:.3f} s over {RUNS} fresh processes "
          f"(min {min(times):.3f}, max {max(times):.3f}); target < {TARGET_S} s: "
          f"{'met' if med < TARGET_S else 'NOT met'}")
    print(f"  from {last['file']}")
    floor = statistics.median(base)
    print(f"import pandas alone:   median {floor:.3f} s "
          f"(the floor: the accessor registers with pandas at import)")
    print(f"the package's own share: {med - floor:+.3f} s")
    # CPU seconds of the importing process: less swayed than wall time by a busy machine
    print(f"CPU time: millimetric_nb {statistics.median(cpu):.3f} s, pandas alone "
          f"{statistics.median(base_cpu):.3f} s (medians)")
    by_pandas = set(base_last["loaded"])  # type: ignore[arg-type]
    for name in HEAVY:
        if name in last["loaded"]:  # type: ignore[operator]
            why = " (brought by pandas itself)" if name in by_pandas else ""
            print(f"  {name:<11} imported{why}")
        else:
            print(f"  {name:<11} not imported")
    if hasattr(os, "getloadavg"):
        print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
