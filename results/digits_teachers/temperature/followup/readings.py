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
        pair = temperature.read_pair(
            folder / f"teacher{k}_{name}" / "results.csv", followup / f"teacher{k}" / "results.csv"
        )
        if pair is None:
            continue
        cells, base = pair
        lines.append(temperature.accuracy_line(f"teacher {k}, {setting}", cells))
        who = f"teacher {k}"
        found += temperature.gap_rows(who, setting, base_setting, methods, cells, base)
    if not found:
        raise FileNotFoundError(f"no finished follow-up grid under {folder}")
    title = "Temperature follow-up (post hoc): HTA-KL at temperature 2, RKL at a lower rate"
    note = " (the base cells, temperature 4 and rate 0.1, in ../../followup/)"
    script = "temperature/followup/readings.py"
    return temperature.write_readings(folder, title, script, note, lines, found)


if __name__ == "__main__":
    readings()
