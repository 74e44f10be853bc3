"""Executes the notebooks in place, as they are committed (with outputs and figures):

  python notebooks/run.py [quickstart.ipynb analysis.ipynb]

from the repository root, on one CPU device, the full (not HTAKL_QUICK) run into the notebooks'
default workdir, which is emptied first so the outputs show a run from scratch.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = "/tmp/htakl_quickstart"  # the notebooks' default


def main(names: list[str]) -> None:
    os.environ.update(JAX_PLATFORMS="cpu", XLA_FLAGS="")
    for var in ("HTAKL_QUICK", "HTAKL_WORKDIR"):
        os.environ.pop(var, None)
    if "quickstart.ipynb" in names:
        shutil.rmtree(WORKDIR, ignore_errors=True)
    for name in names:
        path = ROOT / "notebooks" / name
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        )
        client.execute()
        nbformat.write(nb, path)
        print(f"executed {path}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["quickstart.ipynb", "analysis.ipynb"])
