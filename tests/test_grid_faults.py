"""The grid under faults: damaged cells are redone, not skipped; files are written whole.

The real-process version (SIGKILL at random moments, rerun, tables compared byte for byte) is
benchmarks/kill_grid.py; these tests damage a finished (fake-trained) grid by hand.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
from pathlib import Path

import jax.numpy as jnp
import pytest

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import experiments, runs
from htakl_jax.analysis import report
from htakl_jax.steps import TrainState
from tests.test_experiments import FakeTrain, small_config

TABLES = ("table1.md", "paired.md", "ablation.md", "results.csv", "results.json")


def tables_of(workdir: str, names=TABLES) -> dict[str, bytes]:
    return {n: Path(workdir, n).read_bytes() for n in names if Path(workdir, n).exists()}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {
    "fkl_T1_s0": truncate,
    "fkl_T2_s1": lambda p: p.write_bytes(b""),
    "hta_kl_T1_s1": lambda p: p.write_text("[1, 2]"),
    "fixed_ratio_r0.00_T2_s0": lambda p: p.write_text(json.dumps({"teacher_accuracy": 0.97})),
    "hta_kl_T2_s0": lambda p: p.write_text(
        json.dumps({"teacher_accuracy": 0.97, "student_accuracy": {}})
    ),
    # No accuracy at the cell's own T (2).
    "hta_kl_T2_s1": lambda p: p.write_text(
        json.dumps({"teacher_accuracy": 0.97, "student_accuracy": {"1": 0.5}})
    ),
}


def test_damaged_results_json_is_retrained_and_tables_match(tmp_path):
    cfg = small_config()
    workdir = str(tmp_path / "grid")
    fake = FakeTrain()
    experiments.run_grid(cfg, workdir, train_fn=fake)
    before = tables_of(workdir)
    assert set(before) == set(TABLES)

    for name, damage in DAMAGES.items():
        damage(Path(workdir, "cells", name, "results.json"))
    # The report alone leaves the damaged cells out rather than failing on them.
    partial = experiments.run_grid(cfg, workdir, stage="report")
    assert len(partial["rows"]) == 10 - len(DAMAGES)
    assert not set(DAMAGES) & {r["cell"] for r in partial["rows"]}

    fake.calls.clear()
    experiments.run_grid(cfg, workdir, train_fn=fake)
    assert sorted(fake.calls) == sorted(("all", name) for name in DAMAGES)
    assert tables_of(workdir) == before


# ----------------------------------------------------------------------------- analysis


def write_student_checkpoint(workdir: str) -> None:
    zeros = {"w": jnp.zeros(2)}
    state = TrainState(step=jnp.asarray(3), params=zeros, batch_stats=zeros, opt_state=zeros)
    ck = ckpt_lib.PhaseCheckpoints(runs.phase_dir(workdir, "student"), async_save=False)
    ck.save(state, {"epoch": 1, "finished": True})
    ck.close()


class FakeTrainWithCheckpoint(FakeTrain):
    """FakeTrain that also leaves a student checkpoint (which a cell's analysis restores)."""

    def __call__(self, config, workdir, *, mode):
        results = super().__call__(config, workdir, mode=mode)
        if mode == "all":
            write_student_checkpoint(workdir)
        return results


class FakeAnalysis:
    """Stands in for report.analyze_workdir: records calls, writes a whole analysis.json."""

    def __init__(self):
        self.calls = []

    def __call__(self, directory, **kwargs):
        name = os.path.basename(directory)
        self.calls.append(name)
        rate = 0.1 + 0.01 * len(name)
        energy = {"ops": 1e6, "acs": 9e5, "macs": 1e5, "energy_mj": 1e-3 * rate}
        summary = {
            "firing": {
                "pre_classifier_rate": rate,
                "overall_rate": rate / 2,
                "layer_rates": {"conv1": rate, "conv2": rate / 2},
            },
            "energy": {"student": energy, "teacher": {"macs": 4e6, "energy_mj": 0.02}},
        }
        os.makedirs(os.path.join(directory, report.ANALYSIS_DIR), exist_ok=True)
        runs.write_json(os.path.join(directory, report.ANALYSIS_DIR, report.SUMMARY_FILE), summary)
        return summary


@pytest.fixture
def analysed_grid(tmp_path, monkeypatch):
    """A finished two-cell grid (fkl and hta_kl at T=1, seed 0) with fake analyses."""
    cfg = small_config()
    cfg.grid.timesteps, cfg.grid.seeds, cfg.ablation.head_ratios = (1,), (0,), ()
    cfg.analysis.num_examples = 8
    analysis = FakeAnalysis()
    monkeypatch.setattr(report, "analyze_workdir", analysis)
    monkeypatch.setattr(runs, "load_data", lambda config: (None, None, None))
    workdir = str(tmp_path / "grid")
    fake = FakeTrainWithCheckpoint()
    experiments.run_grid(cfg, workdir, train_fn=fake)
    assert sorted(analysis.calls) == ["fkl_T1_s0", "hta_kl_T1_s0"]
    names = TABLES[:2] + ("table3.md", "results.csv", "results.json")
    before = tables_of(workdir, names)
    assert "table3.md" in before
    fake.calls.clear()
    analysis.calls.clear()

    def rerun_and_check() -> tuple[list, list]:
        experiments.run_grid(cfg, workdir, train_fn=fake)
        assert tables_of(workdir, names) == before
        calls = (list(fake.calls), list(analysis.calls))
        fake.calls.clear()
        analysis.calls.clear()
        return calls

    return Path(workdir, "cells"), rerun_and_check


def test_damaged_analysis_is_redone(analysed_grid):
    cells, rerun = analysed_grid
    truncate(cells / "fkl_T1_s0" / "analysis" / "analysis.json")
    assert rerun() == ([], ["fkl_T1_s0"])
    # Valid JSON without the energy the report reads: not a whole analysis either.
    (cells / "hta_kl_T1_s0" / "analysis" / "analysis.json").write_text('{"firing": {}}')
    assert rerun() == ([], ["hta_kl_T1_s0"])
    assert rerun() == ([], [])


def test_retrained_cell_is_reanalysed(analysed_grid):
    cells, rerun = analysed_grid
    truncate(cells / "fkl_T1_s0" / "results.json")
    assert rerun() == ([("all", "fkl_T1_s0")], ["fkl_T1_s0"])


def test_missing_checkpoint_retrains_only_when_the_analysis_needs_it(analysed_grid):
    cells, rerun = analysed_grid
    # Analysed: the checkpoint is no longer needed (deleting it to save space redoes nothing).
    for sub in (ckpt_lib.LATEST_DIR, ckpt_lib.BEST_DIR):
        shutil.rmtree(cells / "fkl_T1_s0" / "student" / sub, ignore_errors=True)
    assert rerun() == ([], [])
    # Not analysed: the analysis restores the checkpoint, so the cell is trained again first.
    (cells / "fkl_T1_s0" / "analysis" / "analysis.json").unlink()
    assert rerun() == ([("all", "fkl_T1_s0")], ["fkl_T1_s0"])


def test_damaged_cell_spec_is_written_again(analysed_grid):
    cells, rerun = analysed_grid
    truncate(cells / "hta_kl_T1_s0" / "cell.json")
    assert rerun() == ([], [])
    assert json.loads((cells / "hta_kl_T1_s0" / "cell.json").read_text())["cell"]["seed"] == 0


# ----------------------------------------------------------------------------- whole files


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "t.md"
    path.write_text("old")
    with pytest.raises(RuntimeError), runs.atomic_write(path) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["t.md"]
    with runs.atomic_write(path) as f:
        f.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["t.md"]


def test_read_results(tmp_path):
    path = tmp_path / "results.json"
    assert runs.read_results(path) is None
    good = {"teacher_accuracy": 0.9, "student_accuracy": {"1": 0.5, "2": 0.6}, "x": None}
    runs.write_json(path, good)
    assert runs.read_results(path) == good
    for bad in (
        {"teacher_accuracy": "0.9", "student_accuracy": {"1": 0.5}},
        {"teacher_accuracy": 0.9, "student_accuracy": {"1": None}},
        {"teacher_accuracy": True, "student_accuracy": {"1": 0.5}},
    ):
        runs.write_json(path, bad)
        assert runs.read_results(path) is None, bad
    runs.write_json(path, good)
    truncate(path)
    assert runs.read_results(path) is None


# ----------------------------------------------------------------------------- kill_grid.py


@pytest.fixture
def kill_grid(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    return importlib.import_module("kill_grid")


def test_kill_grid_compares_bytes_but_the_workdir_and_wall_times(kill_grid, tmp_path):
    def grid(name: str, epoch_time: float, accuracy: str = "0.5") -> Path:
        workdir = tmp_path / name
        (workdir / "cells" / "c" / "student").mkdir(parents=True)
        table = f"title\n\n| Method | T=1 |\n|---|---|\n| FKL | {accuracy} |\n"
        (workdir / "table1.md").write_text(table)
        record = {"epoch": 1, "epoch_time_s": epoch_time, "images_per_s": 1 / epoch_time, "x": 1}
        (workdir / "cells" / "c" / "student" / "metrics.jsonl").write_text(json.dumps(record))
        results = {"checkpoints": {"student": str(workdir / "cells" / "c" / "student")}}
        (workdir / "cells" / "c" / "results.json").write_text(json.dumps(results, indent=2))
        return workdir

    stripped = set()
    reference = grid("reference", 1.0)
    assert kill_grid.compare(reference, grid("same", 2.0), stripped) == []
    assert stripped == {"epoch_time_s", "images_per_s"}
    assert kill_grid.compare(reference, grid("other", 1.0, "0.6"), stripped) == [
        "differs: table1.md"
    ]
    (tmp_path / "same" / "results.json").write_text("{}")
    assert kill_grid.compare(reference, tmp_path / "same", stripped) == [
        "only in the rerun: results.json"
    ]


def test_kill_grid_plan_spreads_time_kills_and_cycles_write_kills(kill_grid):
    timeline = [(10.0 * i, kind, f"{kind} {i}") for i, kind in enumerate(kill_grid.WRITES * 2)]
    kills = kill_grid.plan(10, random.Random(0), 100.0, timeline)
    at = [k["at_ref_s"] for k in kills[::2]]
    assert all(20 * i <= t < 20 * (i + 1) for i, t in enumerate(at)), at
    assert [k["kind"] for k in kills[1::2]] == list(kill_grid.WRITES) + [kill_grid.WRITES[0]]
    assert all(1 <= k["nth"] <= 2 for k in kills[1::2])
