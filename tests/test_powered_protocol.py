"""The powered protocol's readings over teachers (results/cifar10_powered/protocol.py teachers),
on made-up grids whose gaps are chosen by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "protocol", ROOT / "results/cifar10_powered/protocol.py"
)
protocol = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(protocol)

# Per teacher grid: HTA-KL - FKL (points) at student seeds 0, 1, ... (FKL fixed at 40%).
GAPS = {
    "t2": [-1.0, -2.0, -1.5, -0.5, 9.0, 9.0, 9.0, 9.0],  # seeds 4-7 are outside the protocol
    "t2_rep": [0.5, 1.0, 0.0, 1.5],
    "t2_teachers/seed1": [-3.0, 0.0, -1.0, -4.0],
    "t2_teachers/seed2": [1.0, 2.0, 0.0, 1.0],
    "t2_teachers/seed3": [-2.0, 1.0],
    "t2_teachers/seed4": [0.0, 3.0],
    "t2_teachers/seed5": [1.0, 2.0],
    "t2_teachers/seed6": [-4.0, 0.0],
    "t2_teachers/seed7": [2.0, -1.0],
    "t2_teachers/seed8": [-1.0, -3.0],
    "t2_teachers/seed9": [0.5, -0.5],
    "t2_teachers/seed10": [-2.5, 0.5],
}


def _write_grid(root: Path, grid: str, gaps: list[float]) -> None:
    (root / grid).mkdir(parents=True, exist_ok=True)
    with open(root / grid / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["method", "timesteps", "seed", "accuracy_T2"])
        w.writeheader()
        for seed, gap in enumerate(gaps):
            w.writerow({"method": "fkl", "timesteps": 2, "seed": seed, "accuracy_T2": 0.4})
            w.writerow(
                {"method": "hta_kl", "timesteps": 2, "seed": seed, "accuracy_T2": 0.4 + gap / 100}
            )


def _interval(values: list[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and 1 - alpha Student-t interval, from SciPy."""
    x = np.asarray(values)
    half = scipy_stats.t.ppf(1 - alpha / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


# The per-teacher mean gaps, by hand (t2 counts its seeds 0-3 only), and at seeds 0-1.
MEANS = [-1.25, 0.75, -2.0, 1.0, -0.5, 1.5, 1.5, -2.0, 0.5, -2.0, 0.0, -1.0]
MEANS_01 = [-1.5, 0.75, -1.5, 1.5, -0.5, 1.5, 1.5, -2.0, 0.5, -2.0, 0.0, -1.0]
SEVEN = 7  # the first extension's teachers: grids 0-6; grids 7-9 (seeds 6-8) are the second's
TEN = 10  # grids 10-11 (seeds 9-10) are the third's


@pytest.mark.parametrize(
    "present",
    [
        (0, 1, 2, 3),
        (0, 1, 2, 3, 4, 5),
        (0, 1, 2, 4),
        tuple(range(8)),
        (0, 1, 2, 3, 7),
        tuple(range(12)),
        (0, 1, 2, 3, 8, 11),
    ],
)
def test_teachers_reads_planned_seeds_and_averages_over_teachers(tmp_path, monkeypatch, present):
    grids = list(GAPS.items())
    for i in present:
        _write_grid(tmp_path, *grids[i])
    monkeypatch.setattr(protocol, "HERE", str(tmp_path))
    protocol.teachers(str(tmp_path / "out"))
    rows = json.loads((tmp_path / "out" / "teachers.json").read_text())["rows"]

    for row, i in zip(rows[: len(present)], present, strict=True):  # seeds 3-5 plan 0-1
        np.testing.assert_allclose(row["differences"], grids[i][1][:4], atol=1e-9)
    # The planned four-teacher row holds the first four teachers only, whichever others exist.
    expected = [[MEANS[i] for i in present if i < 4]]
    if max(present) >= 4:  # the seven teachers' rows, at planned seeds and at seeds 0-1
        first_seven = [i for i in present if i < SEVEN]
        expected += [[MEANS[i] for i in first_seven], [MEANS_01[i] for i in first_seven]]
    if max(present) >= SEVEN:  # the first ten's
        first_ten = [i for i in present if i < TEN]
        expected += [[MEANS[i] for i in first_ten], [MEANS_01[i] for i in first_ten]]
    if max(present) >= TEN:  # then every teacher's
        expected += [[MEANS[i] for i in present], [MEANS_01[i] for i in present]]
    over = rows[len(present) :]
    assert len(over) == len(expected)
    for row, means in zip(over, expected, strict=True):
        np.testing.assert_allclose(row["differences"], means, atol=1e-9)
        mean, low, high = _interval(means)
        np.testing.assert_allclose((row["mean"], row["low"], row["high"]), (mean, low, high))
    text = (tmp_path / "out" / "teachers.md").read_text()
    assert text.count("| over teachers") == len(over)
    # Round three adds the all-teachers mean at 98.75% (Bonferroni over four looks), only then.
    adjusted = json.loads((tmp_path / "out" / "teachers.json").read_text()).get("looks_adjusted")
    assert (adjusted is not None) == (max(present) >= TEN) == ("98.75% interval" in text)
    if adjusted is not None:
        mean, low, high = _interval([MEANS[i] for i in present], alpha=0.05 / 4)
        got = (adjusted["mean"], adjusted["low"], adjusted["high"], adjusted["confidence"])
        np.testing.assert_allclose(got, (mean, low, high, 0.9875))
        _, low95, high95 = _interval([MEANS[i] for i in present])
        assert low < low95 and high > high95


# The CE arm (kd-gain): per teacher grid, FKL accuracy (points) at seeds 0, 1, ...; HTA-KL is
# FKL + GAPS. CE at seeds 0-7.
FKL = {
    "t2": [40.0, 42.0, 41.0, 41.0, 0.0, 0.0, 0.0, 0.0],
    "t2_rep": [39.0, 39.0, 40.0, 38.0],
    "t2_teachers/seed1": [42.0, 43.0, 41.0, 42.0],
    "t2_teachers/seed2": [40.0, 40.0, 40.0, 40.0],
    "t2_teachers/seed3": [38.0, 39.0],
    "t2_teachers/seed4": [41.0, 41.0],
}
CE = [36.0, 37.0, 35.0, 36.0, 38.0, 34.0, 36.0, 36.0]  # mean 36, var 10/7


def _write_arm_grid(root: Path, grid: str, fkl: list[float], gaps: list[float]) -> None:
    (root / grid).mkdir(parents=True, exist_ok=True)
    with open(root / grid / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["method", "timesteps", "seed", "accuracy_T2"])
        w.writeheader()
        for seed, (a, gap) in enumerate(zip(fkl, gaps, strict=False)):
            w.writerow({"method": "fkl", "timesteps": 2, "seed": seed, "accuracy_T2": a / 100})
            w.writerow(
                {"method": "hta_kl", "timesteps": 2, "seed": seed, "accuracy_T2": (a + gap) / 100}
            )


def test_kd_gain_welch_over_teachers_and_paired_per_teacher(tmp_path, monkeypatch):
    for grid, fkl in FKL.items():
        _write_arm_grid(tmp_path, grid, fkl, GAPS[grid])
    workdir = tmp_path / "ce"
    workdir.mkdir()
    with open(workdir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["method", "timesteps", "seed", "accuracy_T2"])
        w.writeheader()
        w.writerows(
            {"method": "ce", "timesteps": 2, "seed": s, "accuracy_T2": a / 100}
            for s, a in enumerate(CE)
        )
    monkeypatch.setattr(protocol, "HERE", str(tmp_path))
    protocol.kd_gain(str(workdir), str(tmp_path / "out"))
    result = json.loads((tmp_path / "out" / "kd_gain.json").read_text())

    # Per-teacher FKL means at the planned seeds, by hand: 41, 39, 42, 40, 38.5, 41.
    fkl_means = np.array([41.0, 39.0, 42.0, 40.0, 38.5, 41.0])
    for row, means in zip(result["over_teachers"], (fkl_means, fkl_means + MEANS[:6]), strict=True):
        v_t, v_c = means.var(ddof=1) / 6, (10 / 7) / 8  # squared standard errors
        df = (v_t + v_c) ** 2 / (v_t**2 / 5 + v_c**2 / 7)
        half = scipy_stats.t.ppf(0.975, df) * np.sqrt(v_t + v_c)
        gain = means.mean() - 36.0
        assert row["df"] == pytest.approx(df)
        np.testing.assert_allclose(
            (row["mean"], row["low"], row["high"]), (gain, gain - half, gain + half)
        )
    assert result["gap"] == pytest.approx(np.mean(MEANS[:6]))
    # Per teacher, paired by seed: FKL - CE, then HTA-KL - CE, at the planned seeds.
    first_fkl, first_hta = result["per_teacher"][:2]
    np.testing.assert_allclose(first_fkl["differences"], [4.0, 5.0, 6.0, 5.0])
    np.testing.assert_allclose(first_hta["differences"], [3.0, 3.0, 4.5, 4.5])
    assert len(result["per_teacher"]) == 12 and "seed4" in result["per_teacher"][-1]["comparison"]


def _write_tuning_run(workdir: Path, method: str, lr: float, acc: float, holdout: bool) -> None:
    run = workdir / "tune" / f"{method}_lr{lr}"
    run.mkdir(parents=True)
    record = {
        "method": method,
        "student_timesteps": 2,
        "student_accuracy": {"2": acc},
        "num_eval_examples": 1000,
        "config": {"data": {"eval_on_validation": holdout}, "student": {"lr": lr}},
    }
    (run / "results.json").write_text(json.dumps(record))


def test_tune_methods_chooses_each_methods_best_holdout_rate(tmp_path):
    # FKL best at 0.1; HTA-KL ties at 0.05 and 0.2 (the smaller is chosen).
    holdout = {("fkl", 0.05): 0.35, ("fkl", 0.1): 0.38, ("fkl", 0.2): 0.36}
    holdout |= {("hta_kl", 0.05): 0.37, ("hta_kl", 0.1): 0.36, ("hta_kl", 0.2): 0.37}
    for (method, lr), acc in holdout.items():
        _write_tuning_run(tmp_path, method, lr, acc, holdout=True)
    protocol.tune_methods(str(tmp_path), str(tmp_path / "out"))
    result = json.loads((tmp_path / "out" / "tuning.json").read_text())
    assert {m: r["lr"] for m, r in result["chosen"].items()} == {"fkl": 0.1, "hta_kl": 0.05}
    assert len(result["runs"]) == 6
    assert "Chosen for hta_kl: 0.05." in (tmp_path / "out" / "tuning.md").read_text()

    _write_tuning_run(tmp_path, "fkl", 0.4, 0.9, holdout=False)  # scored on the test split
    with pytest.raises(ValueError, match="not evaluated on the hold-out"):
        protocol.tune_methods(str(tmp_path), str(tmp_path / "out"))


# The per-method learning-rate readings: the six teachers of the current numerics at seeds 0-1.
LR_GRIDS = ("t2_rep", *(f"t2_teachers/seed{k}" for k in range(1, 6)))
COMMON_GAPS = [[0.5, 1.0], [-3.0, 0.0], [1.0, 2.0], [-2.0, 1.0], [0.0, 3.0], [1.0, -1.0]]
# HTA-KL at its tuned rate minus HTA-KL at 0.1, per teacher and seed.
HTA_CHANGE = [[1.0, 2.0], [0.0, 0.0], [-1.0, 3.0], [2.0, 2.0], [0.5, 0.5], [-2.0, 1.0]]


def _write_method_grid(path: Path, method: str, accuracies: list[float]) -> None:
    path.mkdir(parents=True)
    with open(path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["method", "timesteps", "seed", "accuracy_T2"])
        w.writeheader()
        for seed, a in enumerate(accuracies):
            w.writerow({"method": method, "timesteps": 2, "seed": seed, "accuracy_T2": a / 100})


@pytest.mark.parametrize("hta_lr", [0.05, 0.1])
def test_per_method_lr_reads_tuned_grids_against_common_rate(tmp_path, monkeypatch, capsys, hta_lr):
    _write_grid(tmp_path, "t2", [9.0] * 8)  # the first teacher is outside this protocol
    for grid, gaps in zip(LR_GRIDS, COMMON_GAPS, strict=True):
        _write_grid(tmp_path, grid, gaps)  # FKL at 40%
    out = tmp_path / "t2_lr"
    names = ["retrained"] + [f"seed{k}" for k in range(1, 6)]
    for name, gaps, change in zip(names, COMMON_GAPS, HTA_CHANGE, strict=True):
        tuned = [40.0 + g + c for g, c in zip(gaps, change, strict=True)]
        _write_method_grid(out / f"{name}_hta_kl", "hta_kl", tuned)
    chosen = {"fkl": {"lr": 0.1}, "hta_kl": {"lr": hta_lr}}
    (out / "tuning.json").write_text(json.dumps({"chosen": chosen}))
    monkeypatch.setattr(protocol, "HERE", str(tmp_path))
    protocol.rerun_rates(str(out))  # what t2_lr/run.sh trains: only a rate other than 0.1
    assert capsys.readouterr().out.strip() == ("" if hta_lr == 0.1 else f"hta_kl:{hta_lr:g}")
    protocol.per_method_lr(str(out))
    rows = json.loads((out / "per_method_lr.json").read_text())["rows"]

    common = np.mean(COMMON_GAPS, axis=1)
    change = np.mean(HTA_CHANGE, axis=1)
    if hta_lr == 0.1:  # nothing re-ran: the reading is the common-rate gap, and only it
        expected = [common]
    else:  # the gap, its change from the common rate, and HTA-KL's own change (the same here)
        expected = [common + change, change, change]
    over, per_teacher = rows[: len(expected)], rows[len(expected) :]
    for row, means in zip(over, expected, strict=True):
        np.testing.assert_allclose(row["differences"], means, atol=1e-9)
        mean, low, high = _interval(list(means))
        np.testing.assert_allclose((row["mean"], row["low"], row["high"]), (mean, low, high))
    assert len(per_teacher) == 6 and "teacher seed 5" in per_teacher[-1]["comparison"]
    shift = np.asarray(HTA_CHANGE) if hta_lr != 0.1 else 0.0
    np.testing.assert_allclose(
        [r["differences"] for r in per_teacher], np.asarray(COMMON_GAPS) + shift, atol=1e-9
    )
