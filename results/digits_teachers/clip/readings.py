"""The readings of the digits gradient-clipping test (run.sh here; ../README.md, "Gradient
clipping") -> readings.{md,json} here:

  python results/digits_teachers/clip/readings.py

Under teacher 1, then teacher 0, paired by student seed (0-3, Student t, 3 df), test accuracy
points at T = 2, against the follow-up's unclipped cells (../followup/teacherK/):
1. Primary: teacher 1, (RKL - FKL clipped) - (RKL - FKL unclipped);
2. RKL - FKL clipped; HTA-KL - FKL clipped and its change; the same under teacher 0.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "temperature", HERE.parent / "temperature" / "readings.py"
)
temperature = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(temperature)
FOLLOWUP = HERE.parent / "followup"


def readings(folder: Path = HERE, followup: Path = FOLLOWUP) -> dict:
    """Writes FOLDER/readings.{md,json} (see the module docstring); returns the JSON content."""
    found, lines = [], []
    for k in (1, 0):
        pair = temperature.read_pair(
            folder / f"teacher{k}" / "results.csv", followup / f"teacher{k}" / "results.csv"
        )
        if pair is None:
            continue
        cells, base = pair
        lines.append(temperature.accuracy_line(f"teacher {k}, unclipped", base))
        lines.append(temperature.accuracy_line(f"teacher {k}, clipped at 2.0", cells))
        methods = ("rkl", "hta_kl")
        found += temperature.gap_rows(f"teacher {k}", "clip 2.0", "none", methods, cells, base)
    if not found:
        raise FileNotFoundError(f"no finished clipping grid under {folder}")
    title = "RKL and HTA-KL against FKL on digits with the student's gradient clipped (T = 2)"
    note = " (unclipped: the follow-up's cells in ../followup/)"
    return temperature.write_readings(folder, title, "clip/readings.py", note, lines, found)


if __name__ == "__main__":
    readings()
