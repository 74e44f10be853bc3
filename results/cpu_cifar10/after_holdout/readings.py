"""The seeds of the width-1/4 recipe (README here) side by side, and the paired differences
between its students -> readings.{md,json} here:

  python results/cpu_cifar10/after_holdout/readings.py

Seed 0: results.json (HTA-KL, FKL) and ce/results.json (CE); seed N >= 1: seedN/results.json
(`seed.sh`). Every student of every seed distils the same teacher (seed 0, retrained for seed 1;
checked equal here). Differences in test-accuracy points, paired by student seed over the seeds
that trained both students, with their two-sided 95% interval (Student t, n - 1 degrees of
freedom; `analysis.stats`) and the seeds a paired t-test would need to detect a true 1-point
difference with 80% power were the spread the one observed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from htakl_jax.analysis import stats

HERE = Path(__file__).resolve().parent
SEED_FILES = {
    0: ("results.json", "ce/results.json"),
    1: ("seed1/results.json",),
    2: ("seed2/results.json",),
    3: ("seed3/results.json",),  # HTA-KL and FKL only
}
NAMES = {"hta_kl": "HTA-KL", "fkl": "FKL", "ce": "CE (no KD)"}
PAIRS = (("hta_kl", "fkl"), ("fkl", "ce"), ("hta_kl", "ce"))
TIMESTEPS = ("1", "2", "4")


def read_seed(files: Sequence[Path]) -> dict[str, dict[str, float]]:
    """{phase name: {"ann" or T: accuracy in %}} of the finished phases in `files` (one seed; a
    phase in several files, the teacher, must agree)."""
    found: dict[str, dict[str, float]] = {}
    for file in files:
        for phase in json.loads(file.read_text())["phases"]:
            if phase["status"] != "done":
                continue
            acc = {k: 100 * v for k, v in phase["accuracy"].items()}
            if found.setdefault(phase["name"], acc) != acc:
                raise ValueError(f"{file}: {phase['name']} differs from the seed's other files")
    return found


def check_teachers(seeds: Mapping[int, Mapping[str, Mapping[str, float]]]) -> float:
    """The one teacher accuracy every seed's students distilled; ValueError if they differ."""
    teachers = {round(s["teacher"]["ann"], 4) for s in seeds.values()}
    if len(teachers) != 1:
        raise ValueError(f"the seeds' teachers differ: {sorted(teachers)} %")
    return teachers.pop()


def comparisons(seeds: Mapping[int, Mapping[str, Mapping[str, float]]]) -> list[dict]:
    """One row per (pair, T): the per-seed differences over the seeds that trained both
    students, and their paired statistics."""
    rows = []
    for a, b in PAIRS:
        both = [seed for seed, s in seeds.items() if a in s and b in s]
        for t in TIMESTEPS:
            diffs = [seeds[seed][a][t] - seeds[seed][b][t] for seed in both]
            p = stats.paired_stats(diffs)
            rows.append(
                {"a": a, "b": b, "T": int(t), "seeds": both, "diffs": diffs}
                | {"mean": p.mean, "std": p.std}
                | {"low": p.low, "high": p.high, "n": p.n, "verdict": stats.verdict(p)}
                | {"seeds_for_1_point": p.seeds_needed}
            )
    return rows


def markdown(
    seeds: Mapping[int, Mapping[str, Mapping[str, float]]], teacher: float, rows: list[dict]
) -> str:
    """readings.md: the accuracies per seed, then the paired differences."""
    lines = [
        f"# Width-1/4 recipe after the hold-out fixes: seeds {_and(list(seeds))} (readings.py)",
        "",
        f"Teacher ANN: {teacher:.2f}% (the same for every seed).",
        "",
        "| Student | seed | SNN T=1 | T=2 | T=4 |",
        "|---|---|---|---|---|",
    ]
    for m in NAMES:
        lines += [
            f"| {NAMES[m]} | {seed} | " + " | ".join(f"{acc[m][t]:.2f}" for t in TIMESTEPS) + " |"
            for seed, acc in seeds.items()
            if m in acc
        ]
    lines += [
        "",
        "Paired by student seed (over the seeds that trained both), in test-accuracy points:",
        "",
        "| Difference | T | seeds | per seed | mean | verdict | seeds for 80% power at 1 point |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{d:+.2f}" for d in r["diffs"])
        name = f"{NAMES[r['a']]} - {NAMES[r['b']]}"
        needed = r["seeds_for_1_point"] or f"> {stats.MAX_SEEDS}"
        cells = f"{_and(r['seeds'])} | {per_seed} | {r['mean']:+.2f} | {r['verdict']} | {needed}"
        lines.append(f"| {name} | {r['T']} | {cells} |")
    return "\n".join(lines) + "\n"


def _and(items: Sequence[object]) -> str:
    """'0', '0 and 1', '0, 1 and 2'."""
    words = [str(i) for i in items]
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


def readings(folder: Path = HERE, seed_files: Mapping[int, Sequence[str]] = SEED_FILES) -> dict:
    """Writes FOLDER/readings.{md,json} from the results files of each seed in `seed_files`
    (paths relative to FOLDER; see the module docstring); returns the JSON content."""
    seeds = {s: read_seed([folder / f for f in files]) for s, files in seed_files.items()}
    teacher = check_teachers(seeds)
    rows = comparisons(seeds)
    (folder / "readings.md").write_text(markdown(seeds, teacher, rows))
    content = {"accuracy": seeds, "teacher": teacher, "paired": rows}
    (folder / "readings.json").write_text(json.dumps(content, indent=1) + "\n")
    return content


if __name__ == "__main__":
    readings()
    print((HERE / "readings.md").read_text())
