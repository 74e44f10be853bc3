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
    for k in range(4):
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
        t1 = get_config(f"teacher{k}_t1")  # the same cells at T = 1, the same teacher
        assert t1.base.to_dict() == c.base.to_dict() and t1.grid.timesteps == (1,)
        assert (t1.grid.methods, t1.grid.seeds) == (c.grid.methods, c.grid.seeds)
    with pytest.raises(ValueError, match="argument must be one of"):
        get_config("teacher4")


# Per teacher: FKL at seeds 0-7 is 80 + OFFSET[s] (points); HTA-KL adds GAP[k][s].
OFFSET = [0.0, 1.0, -1.0, 2.0, 0.0, -2.0, 1.0, -1.0]
GAP = {
    0: [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0],  # mean 2
    1: [0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 1.0, -1.0],  # mean 0
    2: [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0],  # mean -1
    3: [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0],  # mean 3
}
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
    for k in range(4):
        _write(tmp_path, k, timesteps=timesteps)
    rows = readings.readings(tmp_path, timesteps)["rows"]
    assert [r["comparison"].split(":")[0] for r in rows][:1] == [
        "HTA-KL - FKL over teachers [0, 1, 2, 3]"
    ]
    over = rows[0]
    np.testing.assert_allclose(over["differences"], [2.0, 0.0, -1.0, 3.0])
    np.testing.assert_allclose(
        (over["mean"], over["low"], over["high"]), _interval([2.0, 0.0, -1.0, 3.0])
    )
    for k, row in enumerate(rows[1:5]):
        np.testing.assert_allclose(row["differences"], GAP[k], atol=1e-9)
    # FKL - CE by Welch: per-teacher FKL means 80-83 (var 5/3 over 4) against CE (var 16/7 over 8).
    fkl_ce, fkl_ce_paired, hta_ce = rows[5], rows[6], rows[7]
    v_t, v_c = (5 / 3) / 4, (16 / 7) / 8
    df = (v_t + v_c) ** 2 / (v_t**2 / 3 + v_c**2 / 7)
    half = scipy_stats.t.ppf(0.975, df) * np.sqrt(v_t + v_c)
    assert fkl_ce["df"] == pytest.approx(df)
    np.testing.assert_allclose(
        (fkl_ce["mean"], fkl_ce["low"], fkl_ce["high"]), (11.5, 11.5 - half, 11.5 + half)
    )
    assert hta_ce["mean"] == pytest.approx(11.5 + 1.0)  # the gaps' mean over teachers is 1
    np.testing.assert_allclose(
        fkl_ce_paired["differences"], [80 + o - c for o, c in zip(OFFSET, CE, strict=True)]
    )
    assert "interim" not in (tmp_path / "readings.md").read_text()
    assert json.loads((tmp_path / "readings.json").read_text())["teachers"] == [0, 1, 2, 3]


def test_readings_leave_out_an_unfinished_teacher(tmp_path):
    _write(tmp_path, 0)
    _write(tmp_path, 1, seeds=range(5))  # cut off after seed 4
    result = readings.readings(tmp_path)
    assert result["teachers"] == [0]
    # No interval over one teacher: its own gap, then FKL and HTA-KL - CE paired by seed.
    assert [r["n"] for r in result["rows"]] == [8, 8, 8]
    assert "interim" in (tmp_path / "readings.md").read_text()
