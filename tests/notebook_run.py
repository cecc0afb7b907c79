"""Running a notebook headless for the tests: nbclient, a real kernel, widget state kept.

The kernel inherits this process's environment (``PYTHONPATH`` included, so it imports
the checked-out package) and runs in ``cwd``.
"""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 180) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` in place (outputs and widget state stored); return it."""
    nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(cwd)}},
    ).execute()
    return nb
