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


def _interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval, from SciPy."""
    x = np.asarray(values)
    half = scipy_stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


# The per-teacher mean gaps, by hand (t2 counts its seeds 0-3 only), and at seeds 0-1.
MEANS = [-1.25, 0.75, -2.0, 1.0, -0.5, 1.5]
MEANS_01 = [-1.5, 0.75, -1.5, 1.5, -0.5, 1.5]


@pytest.mark.parametrize("present", [(0, 1, 2, 3), (0, 1, 2, 3, 4, 5), (0, 1, 2, 4)])
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
    if max(present) >= 4:
        expected += [[MEANS[i] for i in present], [MEANS_01[i] for i in present]]
    over = rows[len(present) :]
    assert len(over) == len(expected)
    for row, means in zip(over, expected, strict=True):
        np.testing.assert_allclose(row["differences"], means, atol=1e-9)
        mean, low, high = _interval(means)
        np.testing.assert_allclose((row["mean"], row["low"], row["high"]), (mean, low, high))
    assert (tmp_path / "out" / "teachers.md").read_text().count("| over teachers") == len(over)


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
    for row, means in zip(result["over_teachers"], (fkl_means, fkl_means + MEANS), strict=True):
        v_t, v_c = means.var(ddof=1) / 6, (10 / 7) / 8  # squared standard errors
        df = (v_t + v_c) ** 2 / (v_t**2 / 5 + v_c**2 / 7)
        half = scipy_stats.t.ppf(0.975, df) * np.sqrt(v_t + v_c)
        gain = means.mean() - 36.0
        assert row["df"] == pytest.approx(df)
        np.testing.assert_allclose(
            (row["mean"], row["low"], row["high"]), (gain, gain - half, gain + half)
        )
    assert result["gap"] == pytest.approx(np.mean(MEANS))
    # Per teacher, paired by seed: FKL - CE, then HTA-KL - CE, at the planned seeds.
    first_fkl, first_hta = result["per_teacher"][:2]
    np.testing.assert_allclose(first_fkl["differences"], [4.0, 5.0, 6.0, 5.0])
    np.testing.assert_allclose(first_hta["differences"], [3.0, 3.0, 4.5, 4.5])
    assert len(result["per_teacher"]) == 12 and "seed4" in result["per_teacher"][-1]["comparison"]
