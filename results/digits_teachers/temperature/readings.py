"""The readings of the digits temperature protocol (configs/digits_teachers.py, `teacherK_tauX`;
../README.md, "Temperature"), from the grids' results.csv that run.sh copies into
teacherK_tauX/ here and the follow-up's KD temperature 4 cells (../followup/teacherK/) ->
readings.{md,json} here:

  python results/digits_teachers/temperature/readings.py [FOLDER]

For each teacher K (1, then 0) and temperature X (8, then 2), paired by student seed (0-3,
Student t, 3 df), in test accuracy points at T = 2:
1. Primary: the change of RKL's gap to FKL from temperature 4 to X,
   (RKL - FKL at X) - (RKL - FKL at 4); teacher 1 at X = 8 first.
2. RKL - FKL at X itself; and at X = 8, HTA-KL - FKL and its change from temperature 4.
Only the grids with every planned cell enter.
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
CONFIG = runpy.run_path(str(HERE.parents[2] / "configs" / "digits_teachers.py"))
SEEDS = CONFIG["TEMPERATURE_SEEDS"]
NAMES = {"fkl": "FKL", "rkl": "RKL", "hta_kl": "HTA-KL"}


def read_cells(path: Path) -> dict[str, dict[int, float]]:
    """Test accuracy (points) at T = 2 per method and seed from a grid's results.csv; only the
    methods with every seed of SEEDS."""
    out: dict[str, dict[int, float]] = {}
    for (method, seed), accuracy in tables.main_accuracies(tables.read_csv(path), 2).items():
        out.setdefault(method, {})[seed] = 100 * accuracy
    return {m: a for m, a in out.items() if set(SEEDS) <= set(a)}


def read_pair(
    path: Path, base_path: Path
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]] | None:
    """`read_cells` of a grid's results.csv at `path` and of the results.csv at `base_path`
    that it is compared with; None while the grid has none."""
    if not path.is_file():
        return None
    return read_cells(path), read_cells(base_path)


def _gap(cells: dict[str, dict[int, float]], method: str) -> list[float]:
    return [cells[method][s] - cells["fkl"][s] for s in SEEDS]


def row(label: str, diffs: list[float]) -> tuple[list, dict]:
    s = stats.paired_stats(diffs)
    verdict = "detected" if s.detected else "not detected"
    row = [label, f"{s.mean:+.2f}", f"{s.std:.2f}", f"[{s.low:+.2f}, {s.high:+.2f}]", verdict]
    return row, {"comparison": label, "differences": diffs} | dataclasses.asdict(s)


def gap_rows(
    who: str,
    setting: str,
    base_setting: str,
    methods: tuple[str, ...],
    cells: dict[str, dict[int, float]],
    base: dict[str, dict[int, float]],
) -> list[tuple[list, dict]]:
    """For each of `methods` that `cells` and `base` (the same teacher's cells in another
    setting) both have whole: its change of gap to FKL from `base_setting` to `setting`, then
    its gap to FKL in `setting`, paired by seed."""
    found = []
    for method in methods:
        if method not in cells or "fkl" not in cells or method not in base:
            continue
        now, before = _gap(cells, method), _gap(base, method)
        name = NAMES[method]
        change = [a - b for a, b in zip(now, before, strict=True)]
        found.append(row(f"{who}: ({name} - FKL at {setting}) - (at {base_setting})", change))
        found.append(row(f"{who}: {name} - FKL at {setting}", now))
    return found


def accuracy_line(label: str, cells: dict[str, dict[int, float]]) -> str:
    """`- label: FKL 85.70, RKL ...`: each method's mean test accuracy (%) over SEEDS."""
    parts = [
        f"{NAMES[m]} {np.mean([a[s] for s in SEEDS]):.2f}" for m, a in cells.items() if m in NAMES
    ]
    return f"- {label}: " + ", ".join(parts)


def readings(folder: Path = HERE, followup: Path = HERE.parent / "followup") -> dict:
    """Writes FOLDER/readings.{md,json} (see the module docstring); returns the JSON content."""
    found, lines = [], []
    for k in CONFIG["TEMPERATURE_TEACHERS"]:
        at_4 = read_cells(followup / f"teacher{k}" / "results.csv")
        lines.append(accuracy_line(f"teacher {k}, temperature 4", at_4))
        for tau in CONFIG["TEMPERATURES"]:
            path = folder / f"teacher{k}_tau{tau:g}" / "results.csv"
            if not path.is_file():
                continue
            at_tau = read_cells(path)
            lines.append(accuracy_line(f"teacher {k}, temperature {tau:g}", at_tau))
            methods = ("rkl", "hta_kl")
            found += gap_rows(f"teacher {k}", f"{tau:g}", "4", methods, at_tau, at_4)
    if not found:
        raise FileNotFoundError(f"no finished temperature grid under {folder}")
    title = "RKL and HTA-KL against FKL on digits at KD temperatures 2, 4 and 8 (T = 2)"
    return write_readings(folder, title, "temperature/readings.py", "", lines, found)


def write_readings(
    folder: Path,
    title: str,
    script: str,
    note: str,
    lines: list[str],
    found: list,
    *,
    stem: str = "readings",
    ci_header: str = "95% CI (3 df)",
) -> dict:
    """Writes FOLDER/STEM.md (`title`, the accuracy `lines` with the `note` on where they come
    from, and the table of `found`, the rows of `gap_rows` or `row`) and STEM.json; returns the
    JSON content. `script`: the writing script's path under results/digits_teachers/."""
    headers = ["comparison (points, seeds 0-3 paired)", "mean", "SD", ci_header, "verdict"]
    text = [
        f"# {title}",
        "",
        f"Written by `python results/digits_teachers/{script}`. Mean test accuracy (%), "
        f"seeds 0-3{note}:",
        "",
        *lines,
        "",
        tables.markdown_table(headers, [row for row, _ in found]),
    ]
    result = {"seeds": list(SEEDS), "rows": [r for _, r in found]}
    runs.write_json(folder / f"{stem}.json", result)
    (folder / f"{stem}.md").write_text("\n".join(text))
    print("\n".join(text))
    return result


if __name__ == "__main__":
    readings(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
