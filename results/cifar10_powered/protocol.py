"""The data-driven steps of the powered protocol (configs/powered.py), each reading only training
metrics or hold-out accuracies, never the test split:

  python results/cifar10_powered/protocol.py choose-lr WORKDIR [OUT]   # tuning.{json,md}
  python results/cifar10_powered/protocol.py head-ratio WORKDIR [OUT]  # head_ratio.json
  python results/cifar10_powered/protocol.py spread WORKDIR [T=1]      # the 4-seed check
  python results/cifar10_powered/protocol.py change WORKDIR [OUT]      # t2_long(_ext)
  python results/cifar10_powered/protocol.py replicate WORKDIR [OUT]   # t2_rep
  python results/cifar10_powered/protocol.py teachers [OUT]            # t2_teacherK
  python results/cifar10_powered/protocol.py kd-gain WORKDIR [OUT]     # t2_ce
  python results/cifar10_powered/protocol.py tune-methods WORKDIR [OUT] # t2_lr
  python results/cifar10_powered/protocol.py per-method-lr [OUT]       # t2_lr
  python results/cifar10_powered/protocol.py rerun-rates [OUT]         # t2_lr

OUT is the protocol's results folder (this folder for the first protocol, `restart/` for the
restart). `spread` reads test accuracies, but only the spread of the paired differences, to check
the protocol's power after 4 seeds as planned; it selects nothing, and exits 1 when the spread is
above 2 points so that run.sh stops instead of spending the budget on an underpowered grid.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import runpy
import sys

import numpy as np

from htakl_jax import metrics, runs
from htakl_jax.analysis import stats, tables

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIRST_SEEDS = (0, 1, 2, 3)
MAX_SPREAD = 2.0  # points: the planned bound on the SD of the paired accuracy differences


def _tuning_runs(workdir: str) -> list[dict]:
    """Every finished hold-out run in WORKDIR/tune/*: method, learning rate, T and hold-out
    accuracy, sorted by method and learning rate."""
    found = []
    for path in sorted(glob.glob(os.path.join(workdir, "tune", "*", runs.RESULTS_FILE))):
        with open(path) as f:
            r = json.load(f)
        if not r["config"]["data"]["eval_on_validation"]:
            raise ValueError(f"{path} was not evaluated on the hold-out")
        found.append(
            {
                "method": r["method"],
                "lr": r["config"]["student"]["lr"],
                "timesteps": r["student_timesteps"],
                "holdout_accuracy": r["student_accuracy"][str(r["student_timesteps"])],
                "examples": r["num_eval_examples"],
            }
        )
    if not found:
        raise FileNotFoundError(f"no tuning run in {workdir}/tune")
    return sorted(found, key=lambda r: (r["method"], r["lr"]))


def _chosen(found: list[dict]) -> dict:
    """The run with the best hold-out accuracy (the smallest learning rate among ties)."""
    return max(sorted(found, key=lambda r: r["lr"]), key=lambda r: r["holdout_accuracy"])


def _tuning_lines(title: str, command: str, found: list[dict]) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Written by `python results/cifar10_powered/protocol.py {command}`: accuracy on",
        "the 1,000 training images held out of all training (the test split is never read).",
        "",
        "| method | learning rate | hold-out accuracy (%) |",
        "|---|---|---|",
    ] + [f"| {r['method']} | {r['lr']:g} | {100 * r['holdout_accuracy']:.1f} |" for r in found]


def choose_lr(workdir: str, out: str = HERE) -> None:
    """The FKL learning rate with the best hold-out accuracy -> tuning.json and tuning.md."""
    found = _tuning_runs(workdir)
    chosen = _chosen(found)
    title = "Student learning rate (FKL, T = 1, seed 0, CIFAR-10 hold-out)"
    lines = _tuning_lines(title, "choose-lr WORKDIR", found) + ["", f"Chosen: {chosen['lr']:g}."]
    _write(out, "tuning", lines, {"runs": found, "chosen": chosen})


def tune_methods(workdir: str, out: str = os.path.join(HERE, "t2_lr")) -> None:
    """Per method, the learning rate with the best hold-out accuracy among WORKDIR/tune/* ->
    OUT/tuning.{json,md} ({"runs": [...], "chosen": {method: run}})."""
    found = _tuning_runs(workdir)
    methods = sorted({r["method"] for r in found})
    chosen = {m: _chosen([r for r in found if r["method"] == m]) for m in methods}
    title = "Student learning rate per method (T = 2, seed 0, CIFAR-10 hold-out)"
    lines = _tuning_lines(title, "tune-methods WORKDIR", found) + [""]
    lines += [f"Chosen for {m}: {r['lr']:g}." for m, r in chosen.items()]
    _write(out, "tuning", lines, {"runs": found, "chosen": chosen})


def head_ratio(workdir: str, out: str = HERE) -> None:
    """Mean adaptive head weight of HTA-KL over training (seeds 0-3) -> head_ratio.json."""
    means = []
    for seed in FIRST_SEEDS:
        path = os.path.join(workdir, "cells", f"hta_kl_T1_s{seed}", "student", metrics.METRICS_FILE)
        records = metrics.read_metrics(path)
        if not records:
            raise FileNotFoundError(f"no training metrics in {path}")
        means.append(float(np.mean([r["train_w_head"] for r in records])))
    chosen = {"head_ratio": float(np.mean(means)), "seeds": list(FIRST_SEEDS)}
    result = {"per_seed_epoch_mean": means, "chosen": chosen}
    runs.write_json(os.path.join(out, "head_ratio.json"), result)
    print(json.dumps(result, indent=2))


def _paired_seeds(acc: dict[tuple[str, int], float]) -> list[int]:
    """The seeds with both an FKL and an HTA-KL cell."""
    return sorted({s for m, s in acc if m == "fkl"} & {s for m, s in acc if m == "hta_kl"})


def _gaps(results_csv: str, seeds: list[int]) -> list[float]:
    """HTA-KL - FKL test accuracy at T = 2 (points) per seed, from a grid's results.csv."""
    acc = tables.main_accuracies(tables.read_csv(results_csv), 2)
    return [100 * (acc["hta_kl", s] - acc["fkl", s]) for s in seeds]


def _minus(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _seed_header(command: str, seeds: list[int]) -> list[str]:
    """The title and provenance lines of a table paired by student seed."""
    return [
        f"# HTA-KL - FKL test accuracy (points), T = 2, seeds {_seed_range(seeds)}, paired by seed",
        "",
        f"Written by `python results/cifar10_powered/protocol.py {command}` "
        f"(Student t, {len(seeds) - 1} df).",
    ]


def _paired_lines(rows: list) -> tuple[list[str], list[dict]]:
    """Each (comparison, differences) row's mean, SD and 95% interval (Student t, n - 1 df) as
    Markdown table lines and as JSON records."""
    lines = [
        "| comparison | differences | mean | SD | 95% CI | verdict |",
        "|---|---|---|---|---|---|",
    ]
    records = []
    for comparison, diffs in rows:
        s = stats.paired_stats(diffs)
        records.append({"comparison": comparison, "differences": diffs} | dataclasses.asdict(s))
        listed = ", ".join(f"{d:+.2f}" for d in diffs)
        verdict = "detected" if s.detected else "not detected"
        ci = f"[{s.low:+.2f}, {s.high:+.2f}]"
        lines.append(
            f"| {comparison} | {listed} | {s.mean:+.2f} | {s.std:.2f} | {ci} | {verdict} |"
        )
    return lines, records


def _write(out: str, name: str, lines: list[str], result: dict) -> None:
    """`lines` -> OUT/NAME.md (and printed), `result` -> OUT/NAME.json."""
    os.makedirs(out, exist_ok=True)
    runs.write_json(os.path.join(out, f"{name}.json"), result)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _write_paired(out: str, name: str, header: list[str], rows: list, meta: dict) -> None:
    """The paired rows (`_paired_lines`) under `header` -> OUT/NAME.md, and with `meta` ->
    OUT/NAME.json."""
    lines, records = _paired_lines(rows)
    _write(out, name, header + [""] + lines, meta | {"rows": records})


def _seed_range(seeds: list[int]) -> str:
    """'0-3' for consecutive seeds, else the list."""
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def change(workdir: str, out: str = os.path.join(HERE, "t2_long")) -> None:
    """The longer T = 2 protocol's readings 1 and 2: HTA-KL - FKL after 8 epochs (WORKDIR's
    results.csv, written by the report stage) and its change from 4 epochs (t2/results.csv), at
    every seed of WORKDIR's grid, paired by seed -> OUT/change.{json,md}."""
    long_csv = os.path.join(workdir, "results.csv")
    seeds = _paired_seeds(tables.main_accuracies(tables.read_csv(long_csv), 2))
    long = _gaps(long_csv, seeds)
    short = _gaps(os.path.join(HERE, "t2", "results.csv"), seeds)
    rows = [
        ("HTA-KL - FKL, 8 epochs", long),
        ("HTA-KL - FKL, 4 epochs (t2/)", short),
        ("change from 4 to 8 epochs", _minus(long, short)),
    ]
    _write_paired(out, "change", _seed_header("change WORKDIR", seeds), rows, {"seeds": seeds})


def replicate(workdir: str, out: str = os.path.join(HERE, "t2_rep")) -> None:
    """The T = 2 replication's readings: HTA-KL - FKL after 4 epochs from the retrained teacher
    (WORKDIR's results.csv), against the first teacher's (t2/) and against 8 epochs from the
    same retrained teacher (t2_long/), seeds 0-3, paired by seed -> OUT/replicate.{json,md}."""
    seeds = list(FIRST_SEEDS)
    rep = _gaps(os.path.join(workdir, "results.csv"), seeds)
    first = _gaps(os.path.join(HERE, "t2", "results.csv"), seeds)
    long = _gaps(os.path.join(HERE, "t2_long", "results.csv"), seeds)
    rows = [
        ("HTA-KL - FKL, 4 epochs, retrained teacher (t2_rep/)", rep),
        ("HTA-KL - FKL, 4 epochs, first teacher (t2/)", first),
        ("HTA-KL - FKL, 8 epochs, retrained teacher (t2_long/)", long),
        ("teacher effect at 4 epochs (t2_rep/ - t2/)", _minus(rep, first)),
        ("change from 4 to 8 epochs, same teacher (t2_long/ - t2_rep/)", _minus(long, rep)),
    ]
    header = _seed_header("replicate WORKDIR", seeds)
    _write_paired(out, "replicate", header, rows, {"seeds": seeds})


# The two teachers of root seed 0 that came before the teacher-seed protocols, with the student
# seeds those protocols plan (t2/ has 8; its first 4 count here).
SEED0_TEACHERS = (
    ("first", "t2", "root seed 0, at 6efb815, AMD EPYC", 4),
    ("retrained", "t2_rep", "root seed 0, at 3c646e7, Intel Xeon", 4),
)
# The teacher-seed protocol's primary reading (ac7209d) is over these four, the first extension's
# (fcfc610) over these seven, the second's (25284df) over these ten.
FIRST_TEACHERS = ("first", "retrained", "seed 1", "seed 2")
SEVEN_TEACHERS = FIRST_TEACHERS + ("seed 3", "seed 4", "seed 5")
TEN_TEACHERS = SEVEN_TEACHERS + ("seed 6", "seed 7", "seed 8")
# The over-all-teachers mean was read over each group above and (round three, 1348554) over all
# teachers, each look deciding whether to add teachers: round three adds its mean at
# 1 - 0.05 / LOOKS.
EARLIER_LOOKS = tuple(map(len, (FIRST_TEACHERS, SEVEN_TEACHERS, TEN_TEACHERS)))
LOOKS = len(EARLIER_LOOKS) + 1


def _teacher_grids() -> tuple[tuple[str, str, str, int], ...]:
    """The teacher draws of the T = 2 protocol's recipe, in the order they were trained: name,
    the folder of their 4-epoch students' results.csv (relative to this one), how the teacher
    came about, and the student seeds its protocol plans (0 to n - 1). The teacher-seed grids
    come from configs/powered.py's PROTOCOLS, as run.sh runs them."""
    powered = runpy.run_path(os.path.join(REPO, "configs", "powered.py"))
    grids = list(SEED0_TEACHERS)
    for p in powered["PROTOCOLS"].values():
        if "teacher_seed" in p:
            k, folder = p["teacher_seed"], os.path.relpath(p["results"], powered["RESULTS"])
            grids.append((f"seed {k}", folder, f"root seed {k}", p["seeds"]))
    return tuple(grids)


def _over_teachers(label: str, gaps: dict[str, list[float]], seeds: int | None = None) -> tuple:
    """A row over teachers: each teacher's mean gap (over its first `seeds` student seeds, or
    all of them), one difference per teacher."""
    means = [float(np.mean(g[:seeds])) for g in gaps.values()]
    return (f"over teachers ({', '.join(gaps)}){label}: per-teacher means", means)


def teachers(out: str = os.path.join(HERE, "t2_teachers")) -> None:
    """The teacher-seed readings: HTA-KL - FKL after 4 epochs, per teacher (each grid whose
    results.csv exists, at its planned student seeds), and over teachers as a random factor:
    the per-teacher mean gaps' mean, SD and 95% interval (Student t, teachers - 1 df), over the
    first four teachers and, once there are more, over the first seven, the first ten and all
    of them, each also at student seeds 0-1 only (equal weights); beyond ten, the all-teachers
    mean also at 1 - 0.05 / LOOKS (`_looks_lines`) -> OUT/teachers.{json,md}."""
    gaps: dict[str, list[float]] = {}
    rows = []
    for name, grid, origin, n in _teacher_grids():
        path = os.path.join(HERE, grid, "results.csv")
        if os.path.isfile(path):
            gaps[name] = _gaps(path, list(range(n)))
            label = f"teacher {name} ({origin}; {grid}/), student seeds 0-{n - 1}"
            rows.append((label, gaps[name]))
    rows.append(_over_teachers("", {k: g for k, g in gaps.items() if k in FIRST_TEACHERS}))
    extensions = ((SEVEN_TEACHERS, FIRST_TEACHERS), (TEN_TEACHERS, SEVEN_TEACHERS))
    for group, more in extensions + ((tuple(gaps), TEN_TEACHERS),):
        if set(gaps) - set(more):  # each extension's rows, once it has a teacher
            within = {k: g for k, g in gaps.items() if k in group}
            rows += [_over_teachers("", within), _over_teachers(", student seeds 0-1", within, 2)]
    header = [
        "# HTA-KL - FKL test accuracy (points), T = 2, 4 epochs: per teacher, and over teachers",
        "",
        "Written by `python results/cifar10_powered/protocol.py teachers` (Student t, n - 1 df",
        "per row: n student seeds in a teacher's row, n teachers in the rows over teachers).",
    ]
    meta = {"teachers": list(gaps), "student_seeds": {k: len(g) for k, g in gaps.items()}}
    lines, records = _paired_lines(rows)
    result = meta | {"rows": records}
    if set(gaps) - set(TEN_TEACHERS):  # round three: its primary row (all teachers), adjusted
        looks, adjusted = _looks_lines(rows[-2][1])
        lines, result = lines + looks, result | adjusted
    _write(out, "teachers", header + [""] + lines, result)


def _looks_lines(means: list[float]) -> tuple[list[str], dict]:
    """The over-all-teachers mean (per-teacher `means`) at 1 - 0.05 / LOOKS (Bonferroni over the
    looks at it): Markdown lines below the table and the JSON record ("looks_adjusted")."""
    confidence = 1 - 0.05 / LOOKS
    s = stats.paired_stats(means, confidence=confidence)
    verdict = "excludes 0" if s.detected else "does not exclude 0"
    lines = [
        "",
        f"Adjusted for the {LOOKS} looks at the over-all-teachers mean (at "
        f"{', '.join(map(str, EARLIER_LOOKS))} and {len(means)} teachers):",
        f"{len(means)} teachers, mean {s.mean:+.2f}, {100 * confidence:g}% interval (Bonferroni, "
        f"0.05 / {LOOKS}) [{s.low:+.2f}, {s.high:+.2f}], which {verdict}.",
    ]
    return lines, {"looks_adjusted": {"looks": LOOKS} | dataclasses.asdict(s)}


def _welch_line(label: str, w: stats.WelchStats) -> tuple[str, dict]:
    """A Markdown table row of Welch's reading (points) and its JSON record."""
    verdict = "detected" if w.detected else "not detected"
    ci = f"[{w.low:+.2f}, {w.high:+.2f}]"
    line = f"| {label} | {w.mean:+.2f} | {ci} | {w.df:.1f} | {verdict} |"
    return line, {"comparison": label} | dataclasses.asdict(w)


def _arm_accuracies(
    ce: dict[int, float],
) -> tuple[dict[str, dict[str, list[float]]], list[tuple[str, list[float]]]]:
    """Per teacher grid found (`_teacher_grids`, at its planned student seeds): the FKL and
    HTA-KL test accuracies (points) at T = 2, and its rows of differences from the CE
    accuracies `ce` (seed -> points) paired by student seed."""
    arms: dict[str, dict[str, list[float]]] = {}
    rows = []
    for name, grid, _, n in _teacher_grids():
        path = os.path.join(HERE, grid, "results.csv")
        if not os.path.isfile(path):
            continue
        acc = tables.main_accuracies(tables.read_csv(path), 2)
        arms[name] = {m: [100 * acc[m, s] for s in range(n)] for m in ("fkl", "hta_kl")}
        base = [ce[s] for s in range(n)]
        for m, label in (("fkl", "FKL"), ("hta_kl", "HTA-KL")):
            rows.append((f"teacher {name} ({grid}/): {label} - CE", _minus(arms[name][m], base)))
    return arms, rows


def kd_gain(workdir: str, out: str = os.path.join(HERE, "t2_ce")) -> None:
    """The CE arm's readings: distillation's gain over teachers, FKL - CE and HTA-KL - CE, as
    the mean of the per-teacher means minus the mean CE accuracy (WORKDIR's results.csv) with
    Welch's 95% interval; per teacher, the same paired by student seed; and the HTA-KL - FKL
    gap over teachers beside the FKL gain -> OUT/kd_gain.{json,md}."""
    acc = tables.main_accuracies(tables.read_csv(os.path.join(workdir, "results.csv")), 2)
    ce = {s: 100 * a for (m, s), a in sorted(acc.items()) if m == "ce"}
    arms, paired_rows = _arm_accuracies(ce)
    means = {m: [float(np.mean(a[m])) for a in arms.values()] for m in ("fkl", "hta_kl")}
    welch = {m: stats.welch_stats(means[m], list(ce.values())) for m in means}
    gap = float(np.mean(np.subtract(means["hta_kl"], means["fkl"])))
    lines = [
        "# Distillation's gain over CE alone: test accuracy (points), T = 2, 4 epochs",
        "",
        "Written by `python results/cifar10_powered/protocol.py kd-gain WORKDIR`. CE (no",
        f"distillation) at seeds {_seed_range(list(ce))}: {np.mean(list(ce.values())):.2f} ± "
        f"{np.std(list(ce.values()), ddof=1):.2f}%. Over teachers ({', '.join(arms)}): the mean",
        "of the per-teacher means minus the CE mean, Welch's 95% interval (unpaired).",
        "",
        "| comparison | mean | 95% CI | df | verdict |",
        "|---|---|---|---|---|",
    ]
    records = []
    for m, label in (("fkl", "FKL"), ("hta_kl", "HTA-KL")):
        line, record = _welch_line(f"{label} - CE, over {len(arms)} teachers", welch[m])
        lines.append(line)
        records.append(record)
    paired_lines, paired_records = _paired_lines(paired_rows)
    lines += [
        "",
        f"HTA-KL - FKL over the same teachers: {gap:+.2f} points, "
        f"{gap / welch['fkl'].mean:+.0%} of the FKL - CE gain.",
        "",
        "Per teacher, paired by student seed (Student t, n - 1 df):",
        "",
    ] + paired_lines
    result = {"ce": ce, "teachers": list(arms), "over_teachers": records, "gap": gap}
    _write(out, "kd_gain", lines, result | {"per_teacher": paired_records})


# The per-method learning-rate protocol: the teachers whose 4-epoch students trained at the
# current numerics (the first teacher's ran before a rounding change), their student seeds, and
# the rate every earlier T = 2 grid used.
LR_TEACHERS = ("retrained", "seed 1", "seed 2", "seed 3", "seed 4", "seed 5")
LR_SEEDS = (0, 1)
COMMON_LR = 0.1


def _lr_grid(name: str, method: str) -> str:
    """The folder (in t2_lr/) of `method`'s grid at its tuned rate under teacher `name`, as
    t2_lr/run.sh names it."""
    return f"{name.replace(' ', '')}_{method}"


def _tuned_accuracies(out: str, grid: str, name: str, chosen: dict) -> dict[str, list[float]]:
    """Per method, test accuracy (points) at T = 2 at LR_SEEDS: at the common rate from the
    teacher's T = 2 grid, and at the tuned rate from OUT/_lr_grid(...) when it differs."""
    common = tables.main_accuracies(tables.read_csv(os.path.join(HERE, grid, "results.csv")), 2)
    acc = {}
    for m in ("fkl", "hta_kl"):
        source = common
        if chosen[m]["lr"] != COMMON_LR:
            path = os.path.join(out, _lr_grid(name, m), "results.csv")
            source = tables.main_accuracies(tables.read_csv(path), 2)
        acc[m] = [100 * source[m, s] for s in LR_SEEDS]
        acc[f"{m}_common"] = [100 * common[m, s] for s in LR_SEEDS]
    return acc


def _chosen_rates(out: str) -> dict[str, dict]:
    """OUT/tuning.json's chosen run per method (`tune_methods`)."""
    with open(os.path.join(out, "tuning.json")) as f:
        return json.load(f)["chosen"]


def rerun_rates(out: str = os.path.join(HERE, "t2_lr")) -> None:
    """Prints METHOD:RATE for each method whose chosen rate (OUT/tuning.json) is not COMMON_LR:
    the grids t2_lr/run.sh trains."""
    chosen = _chosen_rates(out)
    print(" ".join(f"{m}:{r['lr']:g}" for m, r in chosen.items() if r["lr"] != COMMON_LR))


def per_method_lr(out: str = os.path.join(HERE, "t2_lr")) -> None:
    """The per-method learning-rate readings (OUT/tuning.json's rates), over teachers as a
    random factor (each teacher's mean over LR_SEEDS, Student t, teachers - 1 df): 1. HTA-KL -
    FKL, each at its tuned rate; 2. its change from the common rate, and each re-run method's
    tuned - common (rows only when a rate differs from COMMON_LR). Per teacher, reading 1 by
    seed (descriptive) -> OUT/per_method_lr.{json,md}."""
    chosen = _chosen_rates(out)
    per_teacher = {}
    for name, grid, _, _ in _teacher_grids():
        if name in LR_TEACHERS:
            acc = _tuned_accuracies(out, grid, name, chosen)
            gap = _minus(acc["hta_kl"], acc["fkl"])
            common_gap = _minus(acc["hta_kl_common"], acc["fkl_common"])
            per_teacher[name] = {"gap": gap, "change": _minus(gap, common_gap)}
            for m in ("fkl", "hta_kl"):
                per_teacher[name][f"{m}_change"] = _minus(acc[m], acc[f"{m}_common"])
    labels = {"gap": "1. HTA-KL - FKL, each at its tuned rate"}
    if any(chosen[m]["lr"] != COMMON_LR for m in ("fkl", "hta_kl")):
        labels["change"] = f"2. change of HTA-KL - FKL from the common rate {COMMON_LR:g}"
    for m, label in (("fkl", "FKL"), ("hta_kl", "HTA-KL")):
        if chosen[m]["lr"] != COMMON_LR:
            labels[f"{m}_change"] = f"3. {label} at {chosen[m]['lr']:g} - {label} at {COMMON_LR:g}"
    names = ", ".join(per_teacher)
    rows = [
        (
            f"{label}, over teachers ({names}): per-teacher means",
            [float(np.mean(t[key])) for t in per_teacher.values()],
        )
        for key, label in labels.items()
    ]
    rows += [(f"teacher {name}: {labels['gap']}", t["gap"]) for name, t in per_teacher.items()]
    rates = ", ".join(f"{m} {chosen[m]['lr']:g}" for m in ("fkl", "hta_kl"))
    header = [
        "# Each method at its own learning rate: test accuracy (points), T = 2, 4 epochs",
        "",
        f"Written by `python results/cifar10_powered/protocol.py per-method-lr`: rates {rates}",
        f"(tuning.md), student seeds {_seed_range(list(LR_SEEDS))}, paired by teacher and seed",
        "with the common-rate grids. Student t, n - 1 df: n teachers in the rows over teachers",
        "(the readings), n seeds in a teacher's row (descriptive).",
    ]
    meta = {"chosen": chosen, "seeds": list(LR_SEEDS), "per_teacher": per_teacher}
    _write_paired(out, "per_method_lr", header, rows, meta)


def spread(workdir: str, timesteps: str = "1") -> None:
    """Paired HTA-KL - FKL test-accuracy differences at seeds 0-3 of the students trained (and
    evaluated) at `timesteps`: their spread and interval."""
    diffs = []
    for seed in FIRST_SEEDS:
        acc = {}
        for method in ("fkl", "hta_kl"):
            path = os.path.join(
                workdir, "cells", f"{method}_T{timesteps}_s{seed}", runs.RESULTS_FILE
            )
            with open(path) as f:
                acc[method] = json.load(f)["student_accuracy"][timesteps]
        diffs.append(100 * (acc["hta_kl"] - acc["fkl"]))
    s = stats.paired_stats(diffs)
    print(f"paired differences (pp): {np.round(diffs, 2).tolist()}")
    print(f"std {s.std:.2f} pp; {stats.verdict(s)}; seeds for 1 pp at 80% power: {s.seeds_needed}")
    if s.std > MAX_SPREAD:
        sys.exit(f"spread above {MAX_SPREAD:g} points: change the protocol")
    print("protocol holds")


COMMANDS = {
    "choose-lr": choose_lr,
    "head-ratio": head_ratio,
    "spread": spread,
    "change": change,
    "replicate": replicate,
    "teachers": teachers,
    "kd-gain": kd_gain,
    "tune-methods": tune_methods,
    "per-method-lr": per_method_lr,
    "rerun-rates": rerun_rates,
}

if __name__ == "__main__":
    if len(sys.argv) not in (2, 3, 4) or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: protocol.py {{{','.join(COMMANDS)}}} [WORKDIR] [OUT]")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
