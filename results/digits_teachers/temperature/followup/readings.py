"""The readings of the temperature follow-up (run.sh here; post hoc) -> readings.{md,json} here:

  python results/digits_teachers/temperature/followup/readings.py

Paired by student seed (0-3, Student t, 3 df), test accuracy points at T = 2:
(a) under teachers 1 and 0 at KD temperature 2: HTA-KL - FKL, and its change from
    temperature 4 (the follow-up cells of ../../followup/);
(b) under teacher 1 at temperature 4, student learning rate 0.02: RKL - FKL, and its change
    from the rate 0.1 (the same follow-up cells).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from htakl_jax import runs
from htakl_jax.analysis import tables

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("temperature", HERE.parent / "readings.py")
temperature = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(temperature)
FOLLOWUP = HERE.parents[1] / "followup"


def readings(folder: Path = HERE, followup: Path = FOLLOWUP) -> dict:
    """Writes FOLDER/readings.{md,json} (see the module docstring); returns the JSON content."""
    found, lines = [], []
    grids = [(k, "tau2", "temperature 2", "temperature 4", ("hta_kl",)) for k in (1, 0)]
    grids.append((1, "lr0.02", "learning rate 0.02", "0.1", ("rkl",)))
    for k, name, setting, base_setting, methods in grids:
        path = folder / f"teacher{k}_{name}" / "results.csv"
        if not path.is_file():
            continue
        base = temperature.read_cells(followup / f"teacher{k}" / "results.csv")
        cells = temperature.read_cells(path)
        lines.append(temperature.accuracy_line(f"teacher {k}, {setting}", cells))
        who = f"teacher {k}"
        found += temperature.gap_rows(who, setting, base_setting, methods, cells, base)
    if not found:
        raise FileNotFoundError(f"no finished follow-up grid under {folder}")
    headers = ["comparison (points, seeds 0-3 paired)", "mean", "SD", "95% CI (3 df)", "verdict"]
    text = [
        "# Temperature follow-up (post hoc): HTA-KL at temperature 2, RKL at a lower rate",
        "",
        "Written by `python results/digits_teachers/temperature/followup/readings.py`. Mean "
        "test accuracy (%), seeds 0-3 (the base cells, temperature 4 and rate 0.1, in "
        "../../followup/):",
        "",
        *lines,
        "",
        tables.markdown_table(headers, [row for row, _ in found]),
    ]
    result = {"rows": [r for _, r in found]}
    runs.write_json(folder / "readings.json", result)
    (folder / "readings.md").write_text("\n".join(text))
    print("\n".join(text))
    return result


if __name__ == "__main__":
    readings()
