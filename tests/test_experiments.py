"""Grid runner: cell enumeration, cell configs, skip-on-rerun and the written report."""

from __future__ import annotations

import csv
import json
import os
import runpy
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import experiments, runs
from htakl_jax.steps import TrainState

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "compare.py"


def small_config():
    cfg = runpy.run_path(str(CONFIG))["get_config"]("quickstart")
    cfg.grid.methods = ("fkl", "hta_kl")
    cfg.grid.timesteps = (1, 2)
    cfg.grid.seeds = (0, 1)
    cfg.ablation.head_ratios = (0.0, 1.0)
    cfg.ablation.timesteps = 2
    cfg.ablation.seeds = (0,)
    cfg.analysis.num_examples = 0  # the fake runs below have no checkpoints to analyse
    return cfg


def fake_accuracy(config) -> float:
    s = config.student
    bonus = {"fkl": 0.0, "hta_kl": 0.02, "fixed_ratio": 0.01 * (s.head_ratio or 0)}[s.method]
    return 0.5 + 0.1 * s.timesteps + 0.01 * config.seed + bonus


def write_finished_teacher(workdir: str) -> None:
    """A (tiny) teacher checkpoint marked finished, as a completed teacher phase leaves one."""
    zeros = {"w": jnp.zeros(2)}
    state = TrainState(step=jnp.asarray(3), params=zeros, batch_stats=zeros, opt_state=zeros)
    ck = ckpt_lib.PhaseCheckpoints(runs.phase_dir(workdir, "teacher"), async_save=False)
    ck.save(state, {"epoch": 1, "finished": True})
    ck.close()


class FakeTrain:
    """Stands in for train.train_and_evaluate: records calls and writes what it would write."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, workdir, *, mode):
        self.calls.append((mode, os.path.basename(workdir)))
        if mode == "teacher":
            write_finished_teacher(workdir)
            return None
        os.makedirs(os.path.join(workdir, "student"), exist_ok=True)
        acc = fake_accuracy(config)
        results = {
            "dataset": config.data.name,
            "model": config.model.name,
            "method": config.student.method,
            "teacher_accuracy": 0.97,
            "student_accuracy": {str(t): acc for t in config.eval.timesteps},
        }
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f)
        with open(os.path.join(workdir, "student", "metrics.jsonl"), "w") as f:
            for e in (1, 2):
                rec = {"epoch": e, "train_loss": 1.0}
                if config.student.method == "hta_kl":
                    rec |= {"train_w_head": 0.5 + 0.1 * e, "train_w_tail": 0.5 - 0.1 * e}
                f.write(json.dumps(rec) + "\n")
        return results


def test_grid_cells_and_cell_config(tmp_path):
    cfg = small_config()
    cells = experiments.grid_cells(cfg)
    names = [c.name for c in cells]
    # 2 methods x 2 T x 2 seeds, 2 fixed ratios; hta_kl T=2 seed 0 is not repeated.
    assert len(names) == 8 + 2 == len(set(names))
    assert "fixed_ratio_r0.00_T2_s0" in names and "hta_kl_T2_s1" in names
    cell = experiments.Cell("fixed_ratio", 2, 1, 0.25)
    c = experiments.cell_config(cfg, cell, str(tmp_path))
    assert (c.seed, c.student.method, c.student.head_ratio, c.student.timesteps) == (
        1,
        "fixed_ratio",
        0.25,
        2,
    )
    assert c.student.teacher_checkpoint == os.path.join(str(tmp_path), "teacher")
    assert 2 in c.eval.timesteps
    assert cfg.base.student.method == "hta_kl"  # the base is not modified


def test_weight_temperature_arms(tmp_path):
    cfg = small_config()
    cfg.ablation.head_ratios = ()
    cfg.ablation.weight_temperatures = (1.0,)
    cfg.ablation.seeds = (0, 1)
    names = [c.name for c in experiments.grid_cells(cfg)]
    assert "hta_kl_w1_T2_s0" in names and "hta_kl_w1_T2_s1" in names
    assert len(names) == len(set(names)) == 8 + 2
    cell = experiments.Cell("hta_kl", 2, 1, weight_temperature=1.0)
    c = experiments.cell_config(cfg, cell, str(tmp_path))
    assert (c.student.method, c.student.weight_temperature) == ("hta_kl", 1.0)
    cfg.ablation.weight_temperatures = (0.0,)
    with pytest.raises(ValueError, match="weight_temperatures"):
        experiments.grid_cells(cfg)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("methods", ("fkl", "nope"), "grid.methods"),
        ("methods", ("fixed_ratio",), "grid.methods"),
        ("timesteps", (0,), "grid.timesteps"),
        ("seeds", (), "grid.seeds"),
    ],
)
def test_grid_rejects_bad_config(key, value, match):
    cfg = small_config()
    cfg.grid[key] = value
    with pytest.raises(ValueError, match=match):
        experiments.grid_cells(cfg)


def test_bad_head_ratio_is_rejected():
    cfg = small_config()
    cfg.ablation.head_ratios = (0.5, 1.5)
    with pytest.raises(ValueError, match="head_ratios"):
        experiments.grid_cells(cfg)


def test_grid_trains_once_skips_on_rerun_and_resumes(tmp_path):
    cfg = small_config()
    workdir = str(tmp_path / "grid")
    fake = FakeTrain()
    results = experiments.run_grid(cfg, workdir, train_fn=fake)
    assert [c for c in fake.calls if c[0] == "teacher"] == [("teacher", "grid")]
    assert sorted(c[1] for c in fake.calls if c[0] == "all") == sorted(
        c.name for c in experiments.grid_cells(cfg)
    )

    # Rerun: every cell is done, nothing is trained.
    fake.calls.clear()
    experiments.run_grid(cfg, workdir, train_fn=fake)
    assert fake.calls == []

    # An interrupted cell (no results.json yet) is the only one rerun.
    os.remove(os.path.join(workdir, "cells", "fkl_T2_s1", "results.json"))
    experiments.run_grid(cfg, workdir, train_fn=fake)
    assert fake.calls == [("all", "fkl_T2_s1")]

    # A changed config for existing cells is refused rather than mixed into the tables.
    cfg.base.student.epochs = 99
    with pytest.raises(ValueError, match="different config"):
        experiments.run_grid(cfg, workdir, train_fn=fake)

    # Report contents.
    assert len(results["rows"]) == 10
    with open(os.path.join(workdir, "results.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    row = next(r for r in rows if r["cell"] == "hta_kl_T2_s1")
    assert float(row["accuracy"]) == pytest.approx(0.5 + 0.2 + 0.01 + 0.02)
    table1 = Path(workdir, "table1.md").read_text()
    # hta_kl T=1 over seeds 0, 1: 62% and 63% -> 62.50 ± 0.71 (ddof=1)
    assert "| HTA-KL | resnet20 | 62.50 ± 0.71 | 72.50 ± 0.71 |" in table1
    assert "| FKL | resnet20 | 60.50 ± 0.71 | 70.50 ± 0.71 |" in table1
    assert "| Teacher ANN | resnet20 | 97.00 | - |" in table1
    assert "Fixed ratio" not in table1
    # Paired by seed, HTA-KL is exactly 2 points above FKL at both T (zero spread); a fixed
    # ratio ran at one seed only: no interval.
    paired = Path(workdir, "paired.md").read_text()
    row = "| HTA-KL - FKL | {} | accuracy (pp) | 2 | +2.00 | 0.00 | [+2.00, +2.00] | 2 | detected |"
    assert row.format(1) in paired and row.format(2) in paired
    assert (
        "| Fixed ratio r=1 - FKL | 2 | accuracy (pp) | 1 | +1.00 | - | - | - | no interval |"
        in paired
    )
    ablation_md = Path(workdir, "ablation.md").read_text()
    assert "| 1 | 71.00 |" in ablation_md and "| HTA-KL (adaptive) | 72.00 |" in ablation_md
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved["ablation"]["ratios"] == [0.0, 1.0]
    for name in ("accuracy_vs_T.png", "ablation_head_ratio.png", "hta_kl_weights.png"):
        assert Path(workdir, "plots", name).read_bytes()[:4] == b"\x89PNG"


def test_stage_is_checked(tmp_path):
    with pytest.raises(ValueError, match="stage"):
        experiments.run_grid(small_config(), str(tmp_path), stage="nope")


@pytest.mark.slow
def test_grid_end_to_end_trains_analyses_and_reports(tmp_path):
    """A real two-cell grid: the shared teacher and students train, every cell is analysed by
    the same analysis as `python -m htakl_jax.analysis`, and the report reads those analyses."""
    cfg = runpy.run_path(str(CONFIG))["get_config"]("quickstart")
    base = cfg.base
    base.model.width_mult = 0.0625
    for phase in (base.teacher, base.student):
        phase.epochs, phase.batch_size = 1, 256  # 5 steps over the 1437 digits
    base.eval.timesteps, base.eval.batch_size = (1,), 128
    cfg.grid.methods, cfg.grid.timesteps, cfg.grid.seeds = ("fkl", "hta_kl"), (1,), (0,)
    cfg.ablation.head_ratios = ()
    cfg.analysis.num_examples, cfg.analysis.tsne_examples, cfg.analysis.batch_size = 48, 24, 48
    workdir = str(tmp_path / "grid")
    results = experiments.run_grid(cfg, workdir)

    for row in results["rows"]:
        cell = Path(workdir, "cells", row["cell"])
        analysis = json.loads((cell / "analysis" / "analysis.json").read_text())
        cell_results = json.loads((cell / "results.json").read_text())
        assert analysis["student_accuracy"] == cell_results["student_accuracy"]
        assert row["firing_rate"] == analysis["firing"]["pre_classifier_rate"]
        assert row["energy_mj"] == analysis["energy"]["student"]["energy_mj"] > 0
        # The endpoints cover the whole eval split; their accuracy is results.json's.
        endpoints = analysis["endpoints"]
        assert endpoints["examples"] == cell_results["num_eval_examples"]
        assert endpoints["accuracy"] == pytest.approx(cell_results["student_accuracy"]["1"])
        assert row["nll"] == endpoints["nll"] > 0 and 0 <= row["teacher_agreement"] <= 1
        with np.load(cell / "analysis" / "tsne_features.npz") as z:
            assert z["teacher"].shape[0] == z["student"].shape[0] == len(z["labels"]) == 24
    labels = [r[0] for r in results["table3"]["rows"]]
    assert labels == ["Teacher ANN", "FKL", "HTA-KL"]
    for name in ("accuracy_vs_T.png", "firing_rates.png", "tsne.png", "hta_kl_weights.png"):
        assert Path(workdir, "plots", name).read_bytes()[:4] == b"\x89PNG", name
    assert "| HTA-KL | resnet20 |" in Path(workdir, "table1.md").read_text()
    assert "| HTA-KL | 1 | 1 |" in Path(workdir, "endpoints.md").read_text()
    assert (
        "| HTA-KL - FKL | 1 | kl_teacher_student (nats) | 1 |"
        in Path(workdir, "paired.md").read_text()
    )

    # Rerun: teacher, cells and analyses are all done; only the report is written again.
    fake = FakeTrain()
    again = experiments.run_grid(cfg, workdir, train_fn=fake)
    assert fake.calls == [] and again["rows"] == results["rows"]
