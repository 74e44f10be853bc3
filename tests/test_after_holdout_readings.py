"""results/cpu_cifar10/after_holdout/readings.py on made-up results whose differences and
intervals are computed by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "readings", ROOT / "results/cpu_cifar10/after_holdout/readings.py"
)
readings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readings)

T975_1DF = 12.706204736174698  # Student t quantiles, 1 and 2 degrees of freedom
T975_2DF = 4.302652729749464
TWO_SEEDS = {0: ("results.json", "ce/results.json"), 1: ("seed1/results.json",)}


def _write(path: Path, phases: dict[str, dict[str, float] | None]) -> None:
    records = [
        {"name": n, "status": "done", "accuracy": a}
        if a is not None
        else {"name": n, "status": "skipped: budget"}
        for n, a in phases.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"phases": records}))


def _acc(t1: float, t2: float, t4: float) -> dict[str, float]:
    return {"1": t1, "2": t2, "4": t4}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    teacher = {"ann": 0.8357}
    _write(
        tmp_path / "results.json",
        {"teacher": teacher, "hta_kl": _acc(0.60, 0.65, 0.66), "fkl": _acc(0.59, 0.64, 0.66)},
    )
    _write(tmp_path / "ce/results.json", {"teacher": teacher, "ce": _acc(0.55, 0.60, 0.61)})
    seed1 = {"teacher": teacher, "hta_kl": _acc(0.62, 0.68, 0.67)}
    seed1 |= {"fkl": _acc(0.60, 0.65, 0.66), "ce": _acc(0.56, 0.62, 0.62), "rkl": None}
    _write(tmp_path / "seed1/results.json", seed1)
    return tmp_path


def test_paired_differences_and_intervals(folder):
    content = readings.readings(folder, TWO_SEEDS)
    assert content["teacher"] == pytest.approx(83.57)
    rows = {(r["a"], r["b"], r["T"]): r for r in content["paired"]}
    # HTA-KL - FKL at T = 2: seed 0 +1, seed 1 +3 points; sd = 2 / sqrt 2, half = t * sd / sqrt 2.
    r = rows["hta_kl", "fkl", 2]
    assert r["diffs"] == pytest.approx([1.0, 3.0]) and r["mean"] == pytest.approx(2.0)
    assert (r["low"], r["high"]) == pytest.approx((2 - T975_1DF, 2 + T975_1DF))
    assert r["verdict"].startswith("not detected")
    # FKL - CE at T = 4: +5, +4.
    assert rows["fkl", "ce", 4]["diffs"] == pytest.approx([5.0, 4.0])
    md = (folder / "readings.md").read_text()
    assert md.startswith("# Width-1/4 recipe after the hold-out fixes: seeds 0 and 1 ")
    assert "| HTA-KL | 1 | 62.00 | 68.00 | 67.00 |" in md
    # sd = sqrt 2 points: a paired t-test needs n with power >= 0.8 at a 1-point effect.
    n = r["seeds_for_1_point"]
    sd = 2**0.5
    assert readings.stats.paired_t_power(n, sd, 1.0, 0.05) >= 0.8
    assert readings.stats.paired_t_power(n - 1, sd, 1.0, 0.05) < 0.8
    assert 16 <= n <= 20  # the normal approximation: (1.96 + 0.84)^2 * 2 = 15.7, plus t's tails
    row = "| HTA-KL - FKL | 2 | 0 and 1 | +1.00, +3.00 | +2.00 | not detected (95% CI [-10.71, "
    row += f"14.71]) | {n} |"
    assert row in md
    assert json.loads((folder / "readings.json").read_text())["paired"] == content["paired"]


def test_a_third_seed_narrows_to_two_degrees_of_freedom(folder):
    seed2 = {"teacher": {"ann": 0.8357}, "hta_kl": _acc(0.61, 0.70, 0.66)}
    seed2 |= {"fkl": _acc(0.60, 0.65, 0.66), "ce": _acc(0.56, 0.60, 0.62)}
    _write(folder / "seed2/results.json", seed2)
    content = readings.readings(folder, TWO_SEEDS | {2: ("seed2/results.json",)})
    r = {(r["a"], r["b"], r["T"]): r for r in content["paired"]}["hta_kl", "fkl", 2]
    # +1, +3, +5 points: mean 3, sd 2, half-width t(2 df) * 2 / sqrt 3.
    assert r["diffs"] == pytest.approx([1.0, 3.0, 5.0]) and r["n"] == 3
    half = T975_2DF * 2 / 3**0.5
    assert (r["low"], r["high"]) == pytest.approx((3 - half, 3 + half))
    assert r["verdict"] == "not detected (95% CI [-1.97, 7.97])"
    md = (folder / "readings.md").read_text()
    assert md.startswith("# Width-1/4 recipe after the hold-out fixes: seeds 0, 1 and 2 ")


def test_a_seed_without_a_student_leaves_only_its_pairs(folder):
    seed2 = {"teacher": {"ann": 0.8357}, "hta_kl": _acc(0.61, 0.70, 0.66)}
    _write(folder / "seed2/results.json", seed2 | {"fkl": _acc(0.60, 0.65, 0.66), "ce": None})
    content = readings.readings(folder, TWO_SEEDS | {2: ("seed2/results.json",)})
    rows = {(r["a"], r["b"], r["T"]): r for r in content["paired"]}
    assert rows["hta_kl", "fkl", 2]["seeds"] == [0, 1, 2]
    assert rows["hta_kl", "fkl", 2]["diffs"] == pytest.approx([1.0, 3.0, 5.0])
    assert rows["hta_kl", "ce", 2]["seeds"] == [0, 1] and rows["hta_kl", "ce", 2]["n"] == 2
    md = (folder / "readings.md").read_text()
    assert "| CE (no KD) | 2 |" not in md and "| FKL | 2 | 60.00 | 65.00 | 66.00 |" in md


def test_seeds_with_different_teachers_are_refused(folder):
    _write(folder / "seed1/results.json", {"teacher": {"ann": 0.80}, "ce": _acc(0.5, 0.5, 0.5)})
    with pytest.raises(ValueError, match="teachers differ"):
        readings.readings(folder, TWO_SEEDS)
    _write(folder / "ce/results.json", {"teacher": {"ann": 0.80}, "ce": _acc(0.5, 0.5, 0.5)})
    with pytest.raises(ValueError, match="ce/results.json: teacher differs"):
        readings.readings(folder, TWO_SEEDS)
