"""The readings of the clipped comparison over eight teachers (run_teachers.sh here; ../README.md,
"Gradient clipping over eight teachers") -> teachers_readings.{md,json} here:

  python results/digits_teachers/clip/teachers_readings.py

From each teacher K's clipped cells (teacherK/ here, seeds 0-3) and its unclipped T = 2 grid
(../teacherK/, the same seeds), in test accuracy points at T = 2:
1. Primary: HTA-KL - FKL clipped over teachers: each teacher's mean gap over seeds 0-3 (paired
   by seed), their mean and 95% interval (Student t, teachers - 1 df).
2. Over teachers, the change of that gap from unclipped to clipped (per-teacher means of the
   seed-paired changes).
3. Per teacher: HTA-KL - FKL clipped and its change, paired by seed (3 df).
Only teachers with every planned cell enter; interim until all eight have.
"""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "temperature", HERE.parent / "temperature" / "readings.py"
)
temperature = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(temperature)
TEACHERS = runpy.run_path(str(HERE.parents[2] / "configs" / "digits_teachers.py"))["TEACHERS"]


def readings(folder: Path = HERE, unclipped: Path = HERE.parent) -> dict:
    """Writes FOLDER/teachers_readings.{md,json} (see the module docstring); returns the JSON."""
    per_teacher, lines, gaps, changes = [], [], {}, {}
    for k in TEACHERS:
        pair = temperature.read_pair(
            folder / f"teacher{k}" / "results.csv", unclipped / f"teacher{k}" / "results.csv"
        )
        if pair is None:
            continue
        cells, base = pair
        rows = temperature.gap_rows(f"teacher {k}", "clip 2.0", "none", ("hta_kl",), cells, base)
        if not rows:
            continue
        change, gap = rows
        per_teacher += [gap, change]
        gaps[k], changes[k] = np.mean(gap[1]["differences"]), np.mean(change[1]["differences"])
        lines.append(temperature.accuracy_line(f"teacher {k}, clipped at 2.0", cells))
    if not per_teacher:
        raise FileNotFoundError(f"no finished clipped teacher grid under {folder}")
    over = []
    if len(gaps) > 1:  # an interval over teachers needs two
        teachers = list(gaps)
        label = f"HTA-KL - FKL clipped, over teachers {teachers}: per-teacher means"
        over.append(temperature.row(label, [float(gaps[k]) for k in teachers]))
        label = f"its change from unclipped, over teachers {teachers}: per-teacher means"
        over.append(temperature.row(label, [float(changes[k]) for k in teachers]))
    interim = "" if len(gaps) == len(TEACHERS) else " (interim: not every teacher has finished)"
    title = "HTA-KL against FKL on digits over eight teachers, gradients clipped at 2.0" + interim
    note = " (unclipped: the same seeds of the T = 2 grids in ../teacherK/)"
    return temperature.write_readings(
        folder,
        title,
        "clip/teachers_readings.py",
        note,
        lines,
        over + per_teacher,
        stem="teachers_readings",
        ci_header="95% CI (over teachers: teachers - 1 df; per teacher: 3 df)",
    )


if __name__ == "__main__":
    readings()
