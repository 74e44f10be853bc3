"""Experiment grid: methods x timesteps x seeds distilled from one shared teacher, then the tables
and figures of the paper for all of them.

  python -m htakl_jax.experiments --config configs/compare.py:quickstart --workdir runs/compare

Stages (``--stage``, default ``all``):
  train    the teacher once (WORKDIR/teacher), then every cell with ``train.run`` in
           WORKDIR/cells/<cell>/ (a cell = one student: method, training T, seed, head ratio);
  analyze  per cell: firing rates, energy and t-SNE features on a fixed eval subset
           (WORKDIR/cells/<cell>/analysis/);
  report   WORKDIR/results.{csv,json}, table1.md (accuracy, mean ± std over seeds), table3.md
           (energy), ablation.md, and plots/ (accuracy vs T, firing rates per layer, head-ratio
           sweep, HTA-KL weight trajectory, t-SNE).
A cell whose results.json (analysis.json) exists is skipped, so an interrupted grid resumes where it
stopped (a half-trained cell resumes from its checkpoint). Each cell stores the config it was run
with (cell.json); rerunning with a different config for an existing cell is refused.
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
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from htakl_jax import checkpoint, config_validation, losses, train
from htakl_jax.analysis import ablation, report, tables
from htakl_jax.analysis.plots import plot_accuracy_vs_timesteps, plot_firing_rates
from htakl_jax.analysis.tsne import penultimate_features, plot_tsne

STAGES = ("all", "train", "analyze", "report")
CELLS_DIR = "cells"
_TSNE_FEATURES = "tsne_features.npz"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One student of the grid: distillation ``method`` (with ``head_ratio`` for fixed_ratio),
    training ``timesteps`` and ``seed``."""

    method: str
    timesteps: int
    seed: int
    head_ratio: float | None = None

    @property
    def name(self) -> str:
        ratio = "" if self.head_ratio is None else f"_r{self.head_ratio:.2f}"
        return f"{self.method}{ratio}_T{self.timesteps}_s{self.seed}"

    @property
    def label(self) -> str:
        return tables.method_label(self.method, self.head_ratio)


def _ints(key: str, values: Any) -> tuple[int, ...]:
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"config.{key} must be a non-empty sequence of ints, got {values!r}")
    return values


def grid_cells(cfg: ml_collections.ConfigDict) -> list[Cell]:
    """Main grid (methods x grid.timesteps x grid.seeds), then the fixed-ratio ablation cells."""
    methods = tuple(cfg.grid.methods)
    bad = [m for m in methods if m not in losses.METHODS or m == "fixed_ratio"]
    if not methods or bad:
        raise ValueError(
            f"config.grid.methods {methods!r}: invalid {bad}; choose from "
            f"{sorted(set(losses.METHODS) - {'fixed_ratio'})} (fixed ratios: config.ablation)"
        )
    ts = _ints("grid.timesteps", cfg.grid.timesteps)
    if min(ts) < 1:
        raise ValueError(f"config.grid.timesteps must be >= 1, got {ts!r}")
    seeds = _ints("grid.seeds", cfg.grid.seeds)
    cells = [Cell(m, t, s) for m in methods for t in ts for s in seeds]
    ratios = tuple(cfg.ablation.head_ratios)
    if ratios:
        if not all(isinstance(r, int | float) and 0.0 <= r <= 1.0 for r in ratios):
            raise ValueError(f"config.ablation.head_ratios must lie in [0, 1], got {ratios!r}")
        t = int(cfg.ablation.timesteps)
        if t < 1:
            raise ValueError(f"config.ablation.timesteps must be >= 1, got {t!r}")
        a_seeds = _ints("ablation.seeds", cfg.ablation.seeds)
        cells += [Cell("fixed_ratio", t, s, float(r)) for r in ratios for s in a_seeds]
        # The adaptive reference of the sweep, in case the main grid lacks it.
        cells += [Cell("hta_kl", t, s) for s in a_seeds]
    return list(dict.fromkeys(cells))


def teacher_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "teacher")


def cell_config(
    cfg: ml_collections.ConfigDict, cell: Cell, workdir: str
) -> ml_collections.ConfigDict:
    """The training config of ``cell``: the base config with the cell's overrides."""
    c = copy.deepcopy(cfg.base)
    with c.unlocked():
        c.seed = cell.seed
        c.student.method = cell.method
        c.student.head_ratio = cell.head_ratio
        c.student.timesteps = cell.timesteps
        c.student.teacher_checkpoint = teacher_dir(workdir)
        c.eval.timesteps = tuple(
            sorted({int(t) for t in cfg.base.eval.timesteps} | {cell.timesteps})
        )
    return c


def _json_of(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


def _is_main() -> bool:
    return jax.process_index() == 0


def _check_or_write_cell_spec(cell_dir: str, cell: Cell, config: ml_collections.ConfigDict):
    path = os.path.join(cell_dir, "cell.json")
    spec = {"cell": dataclasses.asdict(cell), "config": _json_of(config)}
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        if stored != spec:
            raise ValueError(
                f"cell {cell.name} in {cell_dir} was run with a different config; use a new "
                "--workdir or delete that cell folder to rerun it"
            )
    elif _is_main():
        os.makedirs(cell_dir, exist_ok=True)
        tables.write_json(path, spec)


def train_grid(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    cells: Sequence[Cell],
    *,
    train_fn: Callable[..., Any] = train.run,
) -> None:
    """Trains the shared teacher (once), then each cell lacking results.json."""
    t_done = os.path.join(workdir, "teacher.done")
    if os.path.exists(t_done) or train.teacher_finished(teacher_dir(workdir)):
        logging.info("grid: reusing the teacher in %s", teacher_dir(workdir))
    else:
        logging.info("grid: training the shared teacher in %s", teacher_dir(workdir))
        teacher_cfg = copy.deepcopy(cfg.base)
        with teacher_cfg.unlocked():
            teacher_cfg.student.teacher_checkpoint = ""
        train_fn(teacher_cfg, workdir, mode="teacher")
    if _is_main():
        open(t_done, "w").close()
    for i, cell in enumerate(cells):
        cell_dir = os.path.join(workdir, CELLS_DIR, cell.name)
        config = cell_config(cfg, cell, workdir)
        _check_or_write_cell_spec(cell_dir, cell, config)
        if os.path.isfile(os.path.join(cell_dir, "results.json")):
            logging.info("grid: cell %d/%d %s done, skipped", i + 1, len(cells), cell.name)
            continue
        logging.info("grid: cell %d/%d %s", i + 1, len(cells), cell.name)
        train_fn(config, cell_dir, mode="all")


def analyze_cell(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    cell: Cell,
    eval_data: tuple[np.ndarray, np.ndarray, Any],
) -> dict[str, Any]:
    """Firing rates and energy of one trained cell at its T (writes cell/analysis/analysis.json)
    and the t-SNE features of teacher and student (cell/analysis/tsne_features.npz)."""
    a = cfg.analysis
    cell_dir = os.path.join(workdir, CELLS_DIR, cell.name)
    run = report.load_run(cell_dir, cell_config(cfg, cell, workdir), eval_data=eval_data)
    images, labels = report.eval_subset(run, a.num_examples)
    _, summary = report.run_analysis(
        run, images, batch_size=a.batch_size, e_ac_pj=a.e_ac_pj, e_mac_pj=a.e_mac_pj
    )
    out = os.path.join(cell_dir, report.ANALYSIS_DIR)
    os.makedirs(out, exist_ok=True)
    if a.tsne_examples > 0:
        n = min(a.tsne_examples, len(labels))
        kw = dict(batch_size=a.batch_size)
        np.savez(
            os.path.join(out, _TSNE_FEATURES),
            labels=labels[:n],
            teacher=penultimate_features(run.teacher, run.teacher_variables, images[:n], **kw),
            student=penultimate_features(run.student, run.student_variables, images[:n], **kw),
        )
    tables.write_json(os.path.join(out, "analysis.json"), summary)
    return summary


def analyze_grid(cfg: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell]) -> None:
    """Runs :func:`analyze_cell` for each trained cell lacking analysis.json (process 0 only)."""
    if cfg.analysis.num_examples <= 0 or not _is_main():
        return
    eval_data = None
    for cell in cells:
        cell_dir = os.path.join(workdir, CELLS_DIR, cell.name)
        if not os.path.isfile(os.path.join(cell_dir, "results.json")):
            continue
        if os.path.isfile(os.path.join(cell_dir, report.ANALYSIS_DIR, "analysis.json")):
            continue
        if eval_data is None:
            eval_data = train.load_eval_data(cfg.base)
        logging.info("grid: analysing %s", cell.name)
        analyze_cell(cfg, workdir, cell, eval_data)


def collect_rows(workdir: str, cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """One flat row per finished cell: accuracies (fractions), firing rates, energy per image."""
    rows = []
    for cell in cells:
        cell_dir = os.path.join(workdir, CELLS_DIR, cell.name)
        path = os.path.join(cell_dir, "results.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            res = json.load(f)
        row: dict[str, Any] = {
            "cell": cell.name,
            "method": cell.method,
            "head_ratio": cell.head_ratio,
            "dataset": res.get("dataset"),
            "architecture": res.get("model"),
            "timesteps": cell.timesteps,
            "seed": cell.seed,
            "teacher_accuracy": res["teacher_accuracy"],
            "accuracy": res["student_accuracy"][str(cell.timesteps)],
        }
        row |= {f"accuracy_T{t}": a for t, a in res["student_accuracy"].items()}
        a_path = os.path.join(cell_dir, report.ANALYSIS_DIR, "analysis.json")
        if os.path.isfile(a_path):
            with open(a_path) as f:
                an = json.load(f)
            e = an["energy"]["student"]
            row |= {
                "firing_rate": an["firing"]["pre_classifier_rate"],
                "overall_firing_rate": an["firing"]["overall_rate"],
                "ops": e["ops"],
                "acs": e["acs"],
                "macs": e["macs"],
                "energy_mj": e["energy_mj"],
                "teacher_macs": an["energy"]["teacher"]["macs"],
                "teacher_energy_mj": an["energy"]["teacher"]["energy_mj"],
            }
        rows.append(row)
    return rows


def _by(rows, **match) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def write_report(cfg: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell]) -> dict:
    """Writes results.{csv,json}, table1.md, paired.md, table3.md, ablation.md and plots/;
    returns the results.json content."""
    rows = collect_rows(workdir, cells)
    if not rows:
        raise FileNotFoundError(f"no finished cell in {workdir}/{CELLS_DIR}; run --stage=train")
    plots = os.path.join(workdir, "plots")
    os.makedirs(plots, exist_ok=True)
    main = [r for r in rows if r["method"] != "fixed_ratio"]
    grid_ts = sorted({int(t) for t in cfg.grid.timesteps})
    main = [r for r in main if r["timesteps"] in grid_ts and r["seed"] in tuple(cfg.grid.seeds)]
    arch = rows[0]["architecture"]
    teacher_acc = rows[0]["teacher_accuracy"]

    h1, t1 = tables.table1(main, teacher={arch: [teacher_acc]})
    energy_t = int(cfg.analysis.energy_timesteps) or max(grid_ts)
    e_rows = [r for r in main if r["timesteps"] == energy_t and "energy_mj" in r]
    t3 = None
    if e_rows:
        r0 = e_rows[0]
        teacher_row = {
            "method": "teacher",
            "architecture": arch,
            "firing_rate": None,
            "ops": r0["teacher_macs"],
            "acs": 0.0,
            "macs": r0["teacher_macs"],
            "energy_mj": r0["teacher_energy_mj"],
        }
        arch_t = [r | {"architecture": f"{arch} T={energy_t}"} for r in e_rows]
        t3 = tables.table3([teacher_row] + arch_t)

    with open(os.path.join(workdir, "table1.md"), "w") as f:
        f.write(f"Student accuracy (%) on {rows[0]['dataset']}, mean ± std over seeds\n\n")
        f.write(tables.markdown_table(h1, t1))
    paired = tables.paired_differences(main, reference="fkl")
    if paired[1]:
        with open(os.path.join(workdir, "paired.md"), "w") as f:
            f.write(
                "Accuracy difference to standard KD (FKL), paired by training T and seed, in "
                "percentage points (mean ± std over seeds); |t| = |mean| / (std / sqrt(seeds)), "
                "where |t| below about 4.3 (3 seeds) or 12.7 (2 seeds) is not significant at 5%\n\n"
            )
            f.write(tables.markdown_table(*paired))
    if t3 is not None:
        with open(os.path.join(workdir, "table3.md"), "w") as f:
            f.write(
                f"Per-image operations and energy at T={energy_t} (45 nm: "
                f"{cfg.analysis.e_ac_pj} pJ/AC, {cfg.analysis.e_mac_pj} pJ/MAC); firing rate of "
                "the layer feeding the classifier, as the paper\n\n"
            )
            f.write(tables.markdown_table(*t3))

    # Accuracy vs T per method.
    curves = {}
    for method in dict.fromkeys(r["method"] for r in main):
        ts = [t for t in grid_ts if _by(main, method=method, timesteps=t)]
        stats = [
            tables.mean_std([r["accuracy"] for r in _by(main, method=method, timesteps=t)])
            for t in ts
        ]
        curves[tables.method_label(method)] = (ts, [m for m, _ in stats], [s for _, s in stats])
    plot_accuracy_vs_timesteps(
        curves, os.path.join(plots, "accuracy_vs_T.png"), teacher_accuracy=teacher_acc
    )

    # Firing rate per layer at the energy T (mean over seeds), and t-SNE of the first seed.
    layer_rates, tsne_feats, tsne_labels = {}, {}, None
    for method in dict.fromkeys(r["method"] for r in e_rows):
        per_seed = []
        for r in _by(e_rows, method=method):
            with open(
                os.path.join(workdir, CELLS_DIR, r["cell"], report.ANALYSIS_DIR, "analysis.json")
            ) as f:
                per_seed.append(json.load(f)["firing"]["layer_rates"])
        layer_rates[tables.method_label(method)] = {
            k: float(np.mean([p[k] for p in per_seed])) for k in per_seed[0]
        }
        first = min(_by(e_rows, method=method), key=lambda r: r["seed"])
        npz = os.path.join(workdir, CELLS_DIR, first["cell"], report.ANALYSIS_DIR, _TSNE_FEATURES)
        if os.path.isfile(npz):
            with np.load(npz) as z:
                if tsne_labels is None:
                    tsne_labels = z["labels"]
                    tsne_feats["Teacher ANN"] = z["teacher"]
                tsne_feats[f"{tables.method_label(method)} T={energy_t}"] = z["student"]
    if layer_rates:
        plot_firing_rates(layer_rates, os.path.join(plots, "firing_rates.png"))
    if tsne_feats:
        plot_tsne(
            tsne_feats,
            tsne_labels,
            os.path.join(plots, "tsne.png"),
            perplexity=cfg.analysis.tsne_perplexity,
        )

    # Head/tail ablation and the adaptive weights.
    ablation_out = None
    ratios = sorted({r["head_ratio"] for r in rows if r["method"] == "fixed_ratio"})
    t_ab = int(cfg.ablation.timesteps)
    if ratios:
        stats = [
            tables.mean_std([r["accuracy"] for r in _by(rows, method="fixed_ratio", head_ratio=x)])
            for x in ratios
        ]
        # The adaptive reference over the same seeds as the sweep.
        hta = [
            r["accuracy"]
            for r in _by(rows, method="hta_kl", timesteps=t_ab)
            if r["seed"] in tuple(cfg.ablation.seeds)
        ]
        adaptive = tables.mean_std(hta) if hta else None
        ablation.plot_ratio_sweep(
            ratios,
            [m for m, _ in stats],
            [s for _, s in stats],
            os.path.join(plots, "ablation_head_ratio.png"),
            adaptive=adaptive,
            timesteps=t_ab,
        )
        ab_rows = [
            [
                f"{x:g}",
                tables.format_mean_std(
                    [r["accuracy"] for r in _by(rows, method="fixed_ratio", head_ratio=x)]
                ),
            ]
            for x in ratios
        ]
        if hta:
            ab_rows.append(["HTA-KL (adaptive)", tables.format_mean_std(hta)])
        with open(os.path.join(workdir, "ablation.md"), "w") as f:
            f.write(f"Head ratio r (loss r*FKL + (1-r)*RKL) vs accuracy (%) at T={t_ab}\n\n")
            f.write(tables.markdown_table(["Head ratio", "Accuracy"], ab_rows))
        ablation_out = {
            "timesteps": t_ab,
            "ratios": ratios,
            "accuracy": stats,
            "adaptive": adaptive,
        }
    trajectories = {}
    for r in rows:
        path = os.path.join(workdir, CELLS_DIR, r["cell"], "student", "metrics.jsonl")
        if r["method"] == "hta_kl" and os.path.isfile(path):
            recs = ablation.read_metrics(path)
            if recs and "train_w_head" in recs[0]:
                trajectories[f"T={r['timesteps']} seed {r['seed']}"] = ablation.weight_trajectory(
                    recs
                )
    if trajectories:
        ablation.plot_weight_trajectory(trajectories, os.path.join(plots, "hta_kl_weights.png"))

    results = {
        "rows": rows,
        "table1": {"headers": h1, "rows": t1},
        "table3": None if t3 is None else {"headers": t3[0], "rows": t3[1], "timesteps": energy_t},
        "ablation": ablation_out,
    }
    tables.write_csv(os.path.join(workdir, "results.csv"), rows)
    tables.write_json(os.path.join(workdir, "results.json"), results)
    return results


def run_grid(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    stage: str = "all",
    train_fn: Callable[..., Any] = train.run,
) -> dict | None:
    """Runs ``stage`` of the grid (see the module docstring); returns results.json's content for
    stages that report. ``train_fn`` has ``train.run``'s signature (swappable in tests)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    cells = grid_cells(cfg)
    os.makedirs(workdir, exist_ok=True)
    if stage in ("all", "train"):
        train_grid(cfg, workdir, cells, train_fn=train_fn)
    if stage in ("all", "analyze"):
        analyze_grid(cfg, workdir, cells)
    if stage in ("all", "report") and _is_main():
        return write_report(cfg, workdir, cells)
    return None


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    checkpoint.quiet_orbax_logging()
    cfg, workdir = FLAGS.config, FLAGS.workdir
    try:
        grid_cells(cfg)
        config_validation.validate(
            cfg.base, mode="all", workdir=workdir, num_devices=jax.device_count()
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
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
