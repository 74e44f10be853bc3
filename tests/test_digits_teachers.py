"""The digits teacher-seed protocol: its config and its readings (results/digits_teachers/
readings.py) on made-up grids whose accuracies are chosen by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from htakl_jax import config_validation as cv

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "readings", ROOT / "results/digits_teachers/readings.py"
)
readings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readings)
get_config = runpy.run_path(str(ROOT / "configs" / "digits_teachers.py"))["get_config"]
quickstart = runpy.run_path(str(ROOT / "configs" / "quickstart.py"))["get_config"]


def test_config_is_the_quickstart_but_for_the_teacher_seed_and_one_evaluation():
    for k in range(8):
        c = get_config(f"teacher{k}")
        cv.check_keys_and_types(c.base)
        cv.check_values(c.base, num_devices=1)
        expected = quickstart().to_dict()
        expected["seed"], expected["eval"]["timesteps"] = k, (2,)
        expected["eval"]["every_epochs"] = 1000
        assert c.base.to_dict() == expected
        assert c.grid.seeds == tuple(range(8)) and c.grid.timesteps == (2,)
        assert c.grid.methods == (("ce",) if k == 0 else ()) + ("fkl", "hta_kl")
        assert c.ablation.head_ratios == () and c.analysis.num_examples == 0
        if k >= 4:  # teachers 4-7: the T = 2 design only
            with pytest.raises(ValueError, match="argument must be one of"):
                get_config(f"teacher{k}_t1")
            continue
        t1 = get_config(f"teacher{k}_t1")  # the same cells at T = 1, the same teacher
        assert t1.base.to_dict() == c.base.to_dict() and t1.grid.timesteps == (1,)
        assert (t1.grid.methods, t1.grid.seeds) == (c.grid.methods, c.grid.seeds)
    with pytest.raises(ValueError, match="argument must be one of"):
        get_config("teacher8")


@pytest.mark.parametrize("k", [1, 0])
def test_temperature_configs_change_only_the_kd_temperature_and_the_cells(k):
    base = get_config(f"teacher{k}").base.to_dict()
    for tau, methods in ((8.0, ("fkl", "rkl", "hta_kl")), (2.0, ("fkl", "rkl"))):
        c = get_config(f"teacher{k}_tau{tau:g}")
        cv.check_values(c.base, num_devices=1)
        expected = base | {"student": base["student"] | {"temperature": tau}}
        assert c.base.to_dict() == expected
        assert (c.grid.methods, c.grid.seeds, c.grid.timesteps) == (methods, (0, 1, 2, 3), (2,))
    with pytest.raises(ValueError, match="argument must be one of"):
        get_config(f"teacher{k + 2}_tau8")


# Per teacher: FKL at seeds 0-7 is 80 + OFFSET[s] (points); HTA-KL adds GAP[k][s].
OFFSET = [0.0, 1.0, -1.0, 2.0, 0.0, -2.0, 1.0, -1.0]
GAP = {
    0: [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0],  # mean 2, above
    1: [0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 1.0, -1.0],  # mean 0
    2: [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0],  # mean -1, below
    3: [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0],  # mean 3, above
    4: [-4.0, -6.0, -5.0, -5.0, -4.0, -6.0, -5.0, -5.0],  # mean -5, below
    5: [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0],  # mean 0
    6: [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # mean 2, above
    7: [1.0, -1.0, 2.0, -2.0, 1.0, -1.0, 2.0, -2.0],  # mean 0
}
# Per-teacher counts, (below, above, not detected), over teachers 0-3 and 0-7.
COUNTS = {4: (1, 2, 1), 8: (2, 3, 3)}
CE = [70.0, 72.0, 71.0, 69.0, 70.0, 70.0, 71.0, 67.0]  # mean 70, var 16/7


def _write(folder: Path, k: int, seeds: range = range(8), timesteps: int = 2) -> None:
    """Teacher k's grid at `timesteps`; its results.csv ends with a row of another T, with
    accuracies that would change every reading, which the readings must leave out."""
    (folder / f"teacher{k}").mkdir(parents=True)
    column = f"accuracy_T{timesteps}"
    with open(folder / f"teacher{k}" / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["method", "timesteps", "seed", "teacher_accuracy", column])
        w.writeheader()
        for s in seeds:
            fkl = 80 + k + OFFSET[s]  # teacher k's FKL mean: 80 + k
            arms = [("fkl", fkl), ("hta_kl", fkl + GAP[k][s])] + [("ce", CE[s])] * (k == 0)
            for m, a in arms:
                row = {"method": m, "timesteps": timesteps, "seed": s, column: a / 100}
                w.writerow(row | {"teacher_accuracy": 0.97})
        other = 3 - timesteps
        w.writerow(
            {"method": "fkl", "timesteps": other, "seed": 0, column: 0.0, "teacher_accuracy": 0.97}
        )


def _interval(x: list[float]) -> tuple[float, float, float]:
    x = np.asarray(x)
    half = scipy_stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return x.mean(), x.mean() - half, x.mean() + half


@pytest.mark.parametrize("timesteps", [1, 2])
def test_readings_over_teachers_per_teacher_and_against_ce(tmp_path, timesteps):
    teachers = range(8) if timesteps == 2 else range(4)  # T = 1: the first protocol's four
    for k in teachers:
        _write(tmp_path, k, timesteps=timesteps)
    result = readings.readings(tmp_path, timesteps)
    rows = result["rows"]
    subsets = [list(teachers)] + [[0, 1, 2, 3]] * (timesteps == 2)
    for row, subset in zip(rows, subsets, strict=False):
        assert row["comparison"].startswith(f"HTA-KL - FKL over teachers {subset}")
        means = [float(np.mean(GAP[k])) for k in subset]
        np.testing.assert_allclose(row["differences"], means)
        np.testing.assert_allclose((row["mean"], row["low"], row["high"]), _interval(means))
    rows = rows[len(subsets) :]
    for k, row in zip(teachers, rows, strict=False):
        assert row["comparison"] == f"HTA-KL - FKL, teacher {k}: per student seed"
        np.testing.assert_allclose(row["differences"], GAP[k], atol=1e-9)
    # FKL - CE by Welch: per-teacher FKL means 80 + k against CE (var 16/7 over 8).
    fkl_ce, fkl_ce_paired, hta_ce = rows[len(teachers) :][:3]
    n = len(teachers)
    v_t, v_c = np.var(np.arange(n), ddof=1) / n, (16 / 7) / 8
    df = (v_t + v_c) ** 2 / (v_t**2 / (n - 1) + v_c**2 / 7)
    half = scipy_stats.t.ppf(0.975, df) * np.sqrt(v_t + v_c)
    gain = 80 + (n - 1) / 2 - 70
    assert fkl_ce["df"] == pytest.approx(df)
    np.testing.assert_allclose(
        (fkl_ce["mean"], fkl_ce["low"], fkl_ce["high"]), (gain, gain - half, gain + half)
    )
    mean_gap = np.mean([np.mean(GAP[k]) for k in teachers])
    assert hta_ce["mean"] == pytest.approx(gain + mean_gap)
    np.testing.assert_allclose(
        fkl_ce_paired["differences"], [80 + o - c for o, c in zip(OFFSET, CE, strict=True)]
    )
    below, above, neither = COUNTS[n]
    assert result["per_teacher_counts"] == {"below": below, "above": above, "not_detected": neither}
    text = (tmp_path / "readings.md").read_text()
    assert "interim" not in text and f"under {below}, above (detected) under {above}," in text
    assert json.loads((tmp_path / "readings.json").read_text())["teachers"] == list(teachers)


def test_readings_leave_out_an_unfinished_teacher(tmp_path):
    _write(tmp_path, 0)
    _write(tmp_path, 1, seeds=range(5))  # cut off after seed 4
    result = readings.readings(tmp_path)
    assert result["teachers"] == [0]
    # No interval over one teacher: its own gap, then FKL and HTA-KL - CE paired by seed.
    assert [r["n"] for r in result["rows"]] == [8, 8, 8]
    assert "interim" in (tmp_path / "readings.md").read_text()


_temperature_spec = importlib.util.spec_from_file_location(
    "temperature_readings", ROOT / "results/digits_teachers/temperature/readings.py"
)
temperature = importlib.util.module_from_spec(_temperature_spec)
_temperature_spec.loader.exec_module(temperature)


def _write_cells(path: Path, cells: dict[str, list[float]]) -> None:
    """A results.csv of T = 2 cells at seeds 0-3, accuracies in points; with a fixed-ratio
    ablation row named like a main arm, which the readings must leave out."""
    path.parent.mkdir(parents=True)
    fields = ["method", "head_ratio", "weight_temperature", "timesteps", "seed", "accuracy_T2"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for method, accuracies in cells.items():
            for s, a in enumerate(accuracies):
                w.writerow({"method": method, "timesteps": 2, "seed": s, "accuracy_T2": a / 100})
        w.writerow(
            {"method": "rkl", "head_ratio": 0.42, "timesteps": 2, "seed": 0, "accuracy_T2": 0}
        )


def test_temperature_readings_pair_each_gap_with_the_temperature_4_cells(tmp_path):
    fkl4, fkl8 = [80.0, 82.0, 78.0, 81.0], [83.0, 85.0, 84.0, 80.0]
    rkl4 = [f - 50 + d for f, d in zip(fkl4, [0.0, 1.0, -1.0, 0.0], strict=True)]
    rkl8 = [f - 10 + d for f, d in zip(fkl8, [1.0, 0.0, 0.0, -1.0], strict=True)]
    hta4, hta8 = [a - 5 for a in fkl4], [a - 1 for a in fkl8]
    _write_cells(
        tmp_path / "followup/teacher1/results.csv", {"fkl": fkl4, "rkl": rkl4, "hta_kl": hta4}
    )
    _write_cells(
        tmp_path / "followup/teacher0/results.csv", {"fkl": fkl4, "rkl": fkl4, "hta_kl": fkl4}
    )
    _write_cells(
        tmp_path / "t/teacher1_tau8/results.csv", {"fkl": fkl8, "rkl": rkl8, "hta_kl": hta8}
    )
    # Teacher 1 at 2: RKL cut off after seed 2, so only its FKL cells are whole: no reading.
    _write_cells(tmp_path / "t/teacher1_tau2/results.csv", {"fkl": fkl4, "rkl": rkl4[:3]})
    rows = temperature.readings(tmp_path / "t", tmp_path / "followup")["rows"]
    assert [r["comparison"] for r in rows] == [
        "teacher 1: (RKL - FKL at 8) - (at 4)",
        "teacher 1: RKL - FKL at 8",
        "teacher 1: (HTA-KL - FKL at 8) - (at 4)",
        "teacher 1: HTA-KL - FKL at 8",
    ]
    change = [41.0, 39.0, 41.0, 39.0]  # (-10 + d8) - (-50 + d4)
    np.testing.assert_allclose(rows[0]["differences"], change, atol=1e-9)
    np.testing.assert_allclose(
        (rows[0]["mean"], rows[0]["low"], rows[0]["high"]), _interval(change)
    )
    np.testing.assert_allclose(rows[1]["differences"], [-9.0, -10.0, -10.0, -11.0], atol=1e-9)
    np.testing.assert_allclose(rows[2]["differences"], [4.0] * 4, atol=1e-9)
    text = (tmp_path / "t" / "readings.md").read_text()
    assert "- teacher 1, temperature 4: FKL 80.25, RKL 30.25, HTA-KL 75.25" in text
    with pytest.raises(FileNotFoundError, match="no finished temperature grid"):
        temperature.readings(tmp_path / "empty", tmp_path / "followup")


def test_clip_readings_pair_the_clipped_cells_with_the_unclipped_follow_up(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "clip_readings", ROOT / "results/digits_teachers/clip/readings.py"
    )
    clip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip)
    fkl = [80.0, 82.0, 78.0, 81.0]
    base = {"fkl": fkl, "rkl": [a - 50 for a in fkl], "hta_kl": [a - 10 for a in fkl]}
    clipped = {"fkl": fkl, "rkl": [a - 20 + d for a, d in zip(fkl, [1, -1, 2, -2], strict=True)]}
    clipped["hta_kl"] = [a - 2 for a in fkl]
    _write_cells(tmp_path / "followup/teacher1/results.csv", base)
    _write_cells(tmp_path / "clip/teacher1/results.csv", clipped)
    rows = clip.readings(tmp_path / "clip", tmp_path / "followup")["rows"]
    assert [r["comparison"] for r in rows] == [
        "teacher 1: (RKL - FKL at clip 2.0) - (at none)",
        "teacher 1: RKL - FKL at clip 2.0",
        "teacher 1: (HTA-KL - FKL at clip 2.0) - (at none)",
        "teacher 1: HTA-KL - FKL at clip 2.0",
    ]
    np.testing.assert_allclose(rows[0]["differences"], [31.0, 29.0, 32.0, 28.0], atol=1e-9)
    np.testing.assert_allclose(rows[2]["differences"], [8.0] * 4, atol=1e-9)
    assert "- teacher 1, clipped at 2.0: FKL 80.25" in (tmp_path / "clip/readings.md").read_text()
