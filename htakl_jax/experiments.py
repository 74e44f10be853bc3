"""Experiment grid: methods x timesteps x seeds distilled from one shared teacher, then the tables
and figures of the paper for all of them.

  python -m htakl_jax.experiments --config configs/compare.py:quickstart --workdir runs/compare

Stages (``--stage``, default ``all``):
  train    the teacher once (WORKDIR/teacher), then every cell with ``train.train_and_evaluate``
           in WORKDIR/cells/<cell>/ (a cell = one student: method, training T, seed, head ratio);
  analyze  per cell: firing rates, energy and t-SNE features on a fixed eval subset
           (WORKDIR/cells/<cell>/analysis/, by ``analysis.report.analyze_workdir``);
  report   WORKDIR/results.{csv,json}, table1.md (accuracy, mean ± std over seeds), paired.md,
           table3.md (energy), ablation.md, and plots/ (accuracy vs T, firing rates per layer,
           head-ratio sweep, HTA-KL weight trajectory, t-SNE), by ``analysis.grid``.
A cell whose results.json (analysis.json) is whole is skipped, so an interrupted grid resumes where
it stopped (a half-trained cell resumes from its checkpoint). A damaged cell is redone, not skipped
(`cell_trained`, `cell_analysed`): a results.json that is not valid JSON, cut short or lacks the
accuracies is retrained (evaluated again from its checkpoint, or trained again without one), and so
is one whose student checkpoint is gone while the cell still needs its analysis; a retrained
cell's old analysis.json is removed; an analysis.json that is not whole is redone. Every file the
grid writes is written whole or not at all (`runs.atomic_write`), so a run killed at any moment
(benchmarks/kill_grid.py) and rerun ends with the same tables as an uninterrupted one. Each cell
stores the config it was run with (cell.json); rerunning with a different config for an existing
cell is refused (a cell.json that cannot be read is written again).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from htakl_jax import checkpoint, compilation, config_validation, methods, runs, train
from htakl_jax.analysis import grid as grid_lib
from htakl_jax.analysis import report

STAGES = ("all", "train", "analyze", "report")
CELLS_DIR = "cells"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One student of the grid: distillation ``method`` (with ``head_ratio`` for fixed_ratio, and
    for hta_kl optionally the ``weight_temperature`` of its weights), training ``timesteps`` and
    ``seed``."""

    method: str
    timesteps: int
    seed: int
    head_ratio: float | None = None
    weight_temperature: float | None = None

    @property
    def name(self) -> str:
        ratio = "" if self.head_ratio is None else f"_r{self.head_ratio:.2f}"
        weights = "" if self.weight_temperature is None else f"_w{self.weight_temperature:g}"
        return f"{self.method}{ratio}{weights}_T{self.timesteps}_s{self.seed}"


def _ints(key: str, values: Any) -> tuple[int, ...]:
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"config.{key} must be a non-empty sequence of ints, got {values!r}")
    return values


def _ablation_cells(cfg: ml_collections.ConfigDict) -> list[Cell]:
    """The fixed head ratios and the HTA-KL weight temperatures at ablation.timesteps and seeds,
    with adaptive HTA-KL at the same T and seeds as their reference."""
    ratios = tuple(cfg.ablation.head_ratios)
    weight_temperatures = tuple(cfg.ablation.weight_temperatures)
    if not ratios and not weight_temperatures:
        return []
    if not all(isinstance(r, int | float) and 0.0 <= r <= 1.0 for r in ratios):
        raise ValueError(f"config.ablation.head_ratios must lie in [0, 1], got {ratios!r}")
    if not all(isinstance(w, int | float) and w > 0 for w in weight_temperatures):
        raise ValueError(
            f"config.ablation.weight_temperatures must be > 0, got {weight_temperatures!r}"
        )
    t = int(cfg.ablation.timesteps)
    if t < 1:
        raise ValueError(f"config.ablation.timesteps must be >= 1, got {t!r}")
    seeds = _ints("ablation.seeds", cfg.ablation.seeds)
    cells = [Cell("fixed_ratio", t, s, head_ratio=float(r)) for r in ratios for s in seeds]
    cells += [
        Cell("hta_kl", t, s, weight_temperature=float(w))
        for w in weight_temperatures
        for s in seeds
    ]
    return cells + [Cell("hta_kl", t, s) for s in seeds]


def grid_cells(cfg: ml_collections.ConfigDict) -> list[Cell]:
    """Main grid (methods x grid.timesteps x grid.seeds), then the ablation cells."""
    names = tuple(cfg.grid.methods)
    bad = [m for m in names if m not in methods.NAMES or m == "fixed_ratio"]
    if not names or bad:
        raise ValueError(
            f"config.grid.methods {names!r}: invalid {bad}; choose from "
            f"{sorted(set(methods.NAMES) - {'fixed_ratio'})} (fixed ratios: config.ablation)"
        )
    ts = _ints("grid.timesteps", cfg.grid.timesteps)
    if min(ts) < 1:
        raise ValueError(f"config.grid.timesteps must be >= 1, got {ts!r}")
    seeds = _ints("grid.seeds", cfg.grid.seeds)
    cells = [Cell(m, t, s) for m in names for t in ts for s in seeds]
    return list(dict.fromkeys(cells + _ablation_cells(cfg)))


def cell_dir(workdir: str, cell: Cell) -> str:
    """The workdir of `cell`: WORKDIR/cells/<cell name>."""
    return os.path.join(workdir, CELLS_DIR, cell.name)


def shared_teacher_dir(workdir: str) -> str:
    """The grid's one teacher: the teacher phase of the grid's own workdir."""
    return runs.phase_dir(os.path.abspath(workdir), "teacher")


def cell_config(
    cfg: ml_collections.ConfigDict, cell: Cell, workdir: str
) -> ml_collections.ConfigDict:
    """The training config of ``cell``: the base config with the cell's overrides."""
    c = copy.deepcopy(cfg.base)
    with c.unlocked():
        c.seed = cell.seed
        c.student.method = cell.method
        c.student.head_ratio = cell.head_ratio
        c.student.weight_temperature = cell.weight_temperature
        c.student.timesteps = cell.timesteps
        c.student.teacher_checkpoint = shared_teacher_dir(workdir)
        c.eval.timesteps = tuple(
            sorted({int(t) for t in cfg.base.eval.timesteps} | {cell.timesteps})
        )
    return c


def _is_main() -> bool:
    return jax.process_index() == 0


def _check_or_write_cell_spec(directory: str, cell: Cell, config: ml_collections.ConfigDict):
    path = os.path.join(directory, "cell.json")
    spec = {"cell": dataclasses.asdict(cell), "config": json.loads(config.to_json())}
    stored = runs.read_json_object(path)
    if stored is not None:
        if stored != spec:
            raise ValueError(
                f"cell {cell.name} in {directory} was run with a different config; use a new "
                "--workdir or delete that cell folder to rerun it"
            )
    elif _is_main():
        if os.path.exists(path):
            logging.warning("grid: %s is damaged; writing it again", path)
        os.makedirs(directory, exist_ok=True)
        runs.write_json(path, spec)


def cell_analysed(directory: str) -> bool:
    """Whether the cell in `directory` has a whole analysis.json (`report.read_summary`)."""
    return grid_lib.read_cell_analysis(directory) is not None


def cell_trained(cfg: ml_collections.ConfigDict, directory: str, cell: Cell) -> bool:
    """Whether `cell` (in `directory`) needs no training: its results.json is whole
    (`grid_lib.read_cell_results`) and, while its analysis is still to do, its student
    checkpoint exists (the analysis restores it)."""
    if grid_lib.read_cell_results(directory, cell) is None:
        return False
    if cfg.analysis.num_examples <= 0 or cell_analysed(directory):
        return True
    return checkpoint.has_checkpoint(runs.phase_dir(directory, "student"))


def _forget_analysis(directory: str) -> None:
    """Removes the analysis.json of a cell about to be (re)trained: it is redone afterwards."""
    path = os.path.join(directory, report.ANALYSIS_DIR, report.SUMMARY_FILE)
    if _is_main() and os.path.exists(path):
        logging.info("grid: %s is retrained; its analysis will be redone", directory)
        os.remove(path)


def train_grid(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    cells: Sequence[Cell],
    *,
    train_fn: Callable[..., Any] = train.train_and_evaluate,
) -> None:
    """Trains the shared teacher (once), then each cell not `cell_trained`."""
    if runs.teacher_finished(shared_teacher_dir(workdir)):
        logging.info("grid: reusing the teacher in %s", shared_teacher_dir(workdir))
    else:
        logging.info("grid: training the shared teacher in %s", shared_teacher_dir(workdir))
        teacher_cfg = copy.deepcopy(cfg.base)
        with teacher_cfg.unlocked():
            teacher_cfg.student.teacher_checkpoint = ""
        train_fn(teacher_cfg, workdir, mode="teacher")
    for i, cell in enumerate(cells):
        directory = cell_dir(workdir, cell)
        config = cell_config(cfg, cell, workdir)
        _check_or_write_cell_spec(directory, cell, config)
        if cell_trained(cfg, directory, cell):
            logging.info("grid: cell %d/%d %s done, skipped", i + 1, len(cells), cell.name)
            continue
        if os.path.exists(os.path.join(directory, runs.RESULTS_FILE)):
            logging.warning("grid: %s is damaged or incomplete; redoing the cell", directory)
        _forget_analysis(directory)
        logging.info("grid: cell %d/%d %s", i + 1, len(cells), cell.name)
        train_fn(config, directory, mode="all")


def analyze_grid(cfg: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell]) -> None:
    """Analyses each trained cell (`cell_trained`) without a whole analysis.json
    (`report.analyze_workdir`, no figures; process 0 only)."""
    a = cfg.analysis
    if a.num_examples <= 0 or not _is_main():
        return
    eval_data = None
    for cell in cells:
        directory = cell_dir(workdir, cell)
        if cell_analysed(directory) or not cell_trained(cfg, directory, cell):
            continue
        if eval_data is None:
            _, eval_ds, info = runs.load_data(cfg.base)
            eval_data = (eval_ds, info)
        logging.info("grid: analysing %s", cell.name)
        report.analyze_workdir(
            directory,
            eval_data=eval_data,
            plots=False,
            num_examples=a.num_examples,
            batch_size=a.batch_size,
            tsne_examples=a.tsne_examples,
            e_ac_pj=a.e_ac_pj,
            e_mac_pj=a.e_mac_pj,
        )


def report_grid(cfg: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell]) -> dict:
    """Writes the grid's tables and figures (`htakl_jax.analysis.grid`) into the workdir;
    returns the results.json content."""
    cells_dir = os.path.join(workdir, CELLS_DIR)
    rows = grid_lib.collect_rows(cells_dir, cells)
    if not rows:
        raise FileNotFoundError(f"no finished cell in {cells_dir}; run --stage=train")
    grid = grid_lib.grid_tables(
        rows,
        timesteps=cfg.grid.timesteps,
        seeds=tuple(cfg.grid.seeds),
        energy_timesteps=cfg.analysis.energy_timesteps,
        ablation_timesteps=cfg.ablation.timesteps,
        ablation_seeds=tuple(cfg.ablation.seeds),
    )
    results = grid_lib.write_tables(
        grid, workdir, e_ac_pj=cfg.analysis.e_ac_pj, e_mac_pj=cfg.analysis.e_mac_pj
    )
    grid_lib.plot_grid(
        grid,
        cells_dir,
        os.path.join(workdir, "plots"),
        tsne_perplexity=cfg.analysis.tsne_perplexity,
    )
    return results


def run_grid(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    stage: str = "all",
    train_fn: Callable[..., Any] = train.train_and_evaluate,
) -> dict | None:
    """Runs ``stage`` of the grid (see the module docstring); returns results.json's content for
    stages that report. ``train_fn`` has ``train.train_and_evaluate``'s signature (swappable in
    tests)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    cells = grid_cells(cfg)
    os.makedirs(workdir, exist_ok=True)
    if stage in ("all", "train"):
        train_grid(cfg, workdir, cells, train_fn=train_fn)
    if stage in ("all", "analyze"):
        analyze_grid(cfg, workdir, cells)
    if stage in ("all", "report") and _is_main():
        return report_grid(cfg, workdir, cells)
    return None


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    checkpoint.quiet_orbax_logging()
    cfg, workdir = FLAGS.config, FLAGS.workdir
    try:
        cells = grid_cells(cfg)
        config_validation.validate(
            cfg.base, mode="all", workdir=workdir, num_devices=jax.device_count()
        )
        for cell in cells:  # each cell's method and its settings
            config_validation.check_values(
                cell_config(cfg, cell, workdir), num_devices=jax.device_count()
            )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    compilation.enable_compilation_cache(cfg.base.compilation_cache)
    results = run_grid(cfg, workdir, stage=FLAGS.stage)
    if results is not None:
        with open(os.path.join(workdir, "table1.md")) as f:
            print(f.read())
        if os.path.isfile(os.path.join(workdir, "table3.md")):
            with open(os.path.join(workdir, "table3.md")) as f:
                print(f.read())


if __name__ == "__main__":
    config_flags.DEFINE_config_file(
        "config", None, "Grid config, e.g. configs/compare.py:quickstart.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Grid directory (teacher/, cells/, tables, plots/).")
    flags.DEFINE_enum("stage", "all", STAGES, "Which stage(s) to run.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
