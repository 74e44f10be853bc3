"""The readings of the digits teacher-seed protocol (configs/digits_teachers.py), from the grids'
results.csv that run.sh copies into teacherK/ here (T = 2) or t1/teacherK/ (T = 1) ->
readings.{md,json} there:

  python results/digits_teachers/readings.py [FOLDER [T=2]]

1. Primary: HTA-KL - FKL test accuracy at T over teachers: each teacher's mean gap over
   student seeds 0-7 (paired by seed), their mean and 95% interval (Student t, teachers - 1 df);
   at T = 2 over all eight teachers (the second protocol's primary) and over the first
   protocol's four (0-3).
2. Per teacher: HTA-KL - FKL paired by student seed (Student t, 7 df).
3. Distillation's gain: FKL - CE and HTA-KL - CE, the mean of the per-teacher means minus the CE
   mean (seeds 0-7, teacher 0's grid), Welch's 95% interval; and under teacher 0, paired by seed.
Only the teachers whose grid has every planned cell enter (reading 1 from two of them on, reading
3 once teacher 0's CE cells are there); until all of the T's teachers have, it is interim.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from pathlib import Path

import numpy as np

from htakl_jax import runs
from htakl_jax.analysis import stats, tables

HERE = Path(__file__).resolve().parent
CONFIG = runpy.run_path(str(HERE.parents[1] / "configs" / "digits_teachers.py"))
TEACHERS = {2: CONFIG["TEACHERS"], 1: CONFIG["T1_TEACHERS"]}  # per T
FIRST = CONFIG["T1_TEACHERS"]  # the first protocol's four teachers
SEEDS = CONFIG["SEEDS"]


def read_grid(path: Path, timesteps: int = 2) -> tuple[dict[str, dict[int, float]], float]:
    """From a grid's results.csv: test accuracy (points) per method and student seed of the
    students trained and evaluated at `timesteps`, and the teacher's accuracy (points)."""
    rows = tables.read_csv(path)
    out: dict[str, dict[int, float]] = {}
    for (method, seed), accuracy in tables.main_accuracies(rows, timesteps).items():
        out.setdefault(method, {})[seed] = 100 * accuracy
    return out, 100 * float(rows[0]["teacher_accuracy"])


def _complete(grid: dict[str, dict[int, float]], methods: tuple[str, ...]) -> bool:
    return all(set(SEEDS) <= set(grid.get(m, {})) for m in methods)


def _paired(label: str, diffs: list[float]) -> tuple[list, dict]:
    s = stats.paired_stats(diffs)
    row = [label, s.n, f"{s.mean:+.2f}", f"{s.std:.2f}", f"[{s.low:+.2f}, {s.high:+.2f}]"]
    record = {"comparison": label, "differences": diffs} | dataclasses.asdict(s)
    return row + [f"{s.n - 1}", "detected" if s.detected else "not detected"], record


def _welch(label: str, a: list[float], b: list[float]) -> tuple[list, dict]:
    w = stats.welch_stats(a, b)
    row = [label, f"{w.n_a} vs {w.n_b}", f"{w.mean:+.2f}", "-", f"[{w.low:+.2f}, {w.high:+.2f}]"]
    record = {"comparison": label} | dataclasses.asdict(w)
    return row + [f"{w.df:.1f}", "detected" if w.detected else "not detected"], record


def _diffs(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[s] - b[s] for s in SEEDS]


def gap_rows(gaps: dict[int, list[float]]) -> tuple[list, list]:
    """Readings 1 and 2 from each teacher's HTA-KL - FKL gaps per seed (points): the rows over
    all teachers and, when more have finished, over the first protocol's four; and the rows per
    teacher."""
    subsets = [list(gaps)] + [list(FIRST)] * (set(FIRST) < set(gaps))
    over = [
        _paired(
            f"HTA-KL - FKL over teachers {teachers}: per-teacher means",
            [float(np.mean(gaps[k])) for k in teachers],
        )
        for teachers in subsets
        if len(teachers) > 1  # an interval over teachers needs two
    ]
    per_teacher = [
        _paired(f"HTA-KL - FKL, teacher {k}: per student seed", d) for k, d in gaps.items()
    ]
    return over, per_teacher


def sign_counts(per_teacher: list[dict]) -> dict[str, int]:
    """How many per-teacher readings (records of `gap_rows`) lie below 0 and above 0 with the
    interval excluding 0, and how many are not detected."""
    below = sum(r["high"] is not None and r["high"] < 0 for r in per_teacher)
    above = sum(r["low"] is not None and r["low"] > 0 for r in per_teacher)
    return {"below": below, "above": above, "not_detected": len(per_teacher) - below - above}


def ce_rows(grids: dict[int, dict[str, dict[int, float]]]) -> list[tuple[list, dict]]:
    """Reading 3 (needs teacher 0's CE cells): FKL and HTA-KL minus CE over teachers (Welch)
    and under teacher 0, paired by seed."""
    if 0 not in grids or not _complete(grids[0], ("ce",)):
        return []
    ce, found = grids[0]["ce"], []
    for m, label in (("fkl", "FKL"), ("hta_kl", "HTA-KL")):
        if len(grids) > 1:
            means = [float(np.mean([g[m][s] for s in SEEDS])) for g in grids.values()]
            ce_all = [ce[s] for s in SEEDS]
            found.append(_welch(f"{label} - CE over teachers (Welch)", means, ce_all))
        paired = _diffs(grids[0][m], ce)
        found.append(_paired(f"{label} - CE, teacher 0: per student seed", paired))
    return found


def read_grids(
    folder: Path, timesteps: int
) -> tuple[dict[int, dict[str, dict[int, float]]], dict[int, float]]:
    """The finished grids (every planned FKL and HTA-KL cell) of the T's teachers under
    `folder`, and every found teacher's accuracy (points)."""
    grids, teacher_accuracy = {}, {}
    for k in TEACHERS[timesteps]:
        path = folder / f"teacher{k}" / "results.csv"
        if path.is_file():
            grid, teacher_accuracy[k] = read_grid(path, timesteps)
            if _complete(grid, ("fkl", "hta_kl")):
                grids[k] = grid
    if not grids:
        raise FileNotFoundError(f"no finished teacher grid under {folder}")
    return grids, teacher_accuracy


def readings(folder: Path = HERE, timesteps: int = 2) -> dict:
    """Writes FOLDER/readings.{md,json} for the students at `timesteps` (see the module
    docstring); returns the JSON content."""
    grids, teacher_accuracy = read_grids(folder, timesteps)
    over, per_teacher = gap_rows({k: _diffs(g["hta_kl"], g["fkl"]) for k, g in grids.items()})
    found = over + per_teacher + ce_rows(grids)
    counts = sign_counts([record for _, record in per_teacher])
    headers = ["comparison", "n", "mean", "SD", "95% CI", "df", "verdict"]
    finished = len(grids) == len(TEACHERS[timesteps])
    interim = "" if finished else " (interim: not every teacher has finished)"
    lines = [
        f"# HTA-KL, FKL and CE on digits, T = {timesteps}: test accuracy differences (points)"
        + interim,
        "",
        "Written by `python results/digits_teachers/readings.py`. Teachers' accuracies (%): "
        + ", ".join(f"{k}: {teacher_accuracy[k]:.2f}" for k in grids)
        + ".",
        "",
        tables.markdown_table(headers, [row for row, _ in found]),
        f"Per teacher: HTA-KL below FKL (detected) under {counts['below']}, above (detected) "
        f"under {counts['above']}, not detected under {counts['not_detected']}.",
    ]
    result = {
        "timesteps": timesteps,
        "teachers": list(grids),
        "rows": [r for _, r in found],
        "per_teacher_counts": counts,
    }
    runs.write_json(folder / "readings.json", result)
    (folder / "readings.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    readings(folder, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
