"""Tables and figures of a grid of trained students (methods x T x seeds, the head-ratio sweep).

A grid (``htakl_jax.experiments``) keeps one workdir per cell, each with results.json and, once
analysed, analysis/ (`htakl_jax.analysis.report`). From those:
- `collect_rows` reads one flat row per finished cell (`read_cell_results`, `read_cell_analysis`:
  a missing or damaged results.json / analysis.json is an unfinished cell / analysis);
- `grid_tables` computes the tables (no files): Table I (accuracy, mean ± std over seeds), the
  continuous endpoints per arm, every arm minus FKL paired by seed with its 95% interval
  (`htakl_jax.analysis.stats`), Table III (energy) and the head-ratio ablation;
- `write_tables` writes them as Markdown, CSV and JSON (each file whole or not at all:
  `runs.atomic_write`); `plot_grid` draws the figures
  (accuracy vs T, firing rates per layer, t-SNE, the ratio sweep, the HTA-KL weight trajectory).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from htakl_jax import metrics as metrics_lib
from htakl_jax import runs
from htakl_jax.analysis import ablation, report, stats, tables
from htakl_jax.analysis.endpoints import ENDPOINTS
from htakl_jax.analysis.plots import plot_accuracy_vs_timesteps, plot_firing_rates
from htakl_jax.analysis.tsne import plot_tsne

Table = tuple[list[str], list[list[str]]]


class CellLike(Protocol):
    """What the report needs to know of a cell (``experiments.Cell`` is one)."""

    name: str
    method: str
    head_ratio: float | None
    weight_temperature: float | None
    timesteps: int
    seed: int


def _analysis_path(cell_dir: str) -> str:
    return os.path.join(cell_dir, report.ANALYSIS_DIR, report.SUMMARY_FILE)


def read_cell_results(cell_dir: str, cell: CellLike) -> dict[str, Any] | None:
    """The cell's results.json when it is whole (`runs.read_results`) and has the accuracy at the
    cell's own T; None when the cell is unfinished or its results.json is damaged."""
    results = runs.read_results(os.path.join(cell_dir, runs.RESULTS_FILE))
    if results is None or str(cell.timesteps) not in results["student_accuracy"]:
        return None
    return results


def read_cell_analysis(cell_dir: str) -> dict[str, Any] | None:
    """The cell's analysis/analysis.json when it is whole (`report.read_summary`), else None."""
    return report.read_summary(_analysis_path(cell_dir))


def collect_rows(cells_dir: str, cells: Sequence[CellLike]) -> list[dict[str, Any]]:
    """One flat row per finished cell in ``cells_dir/<cell name>``: accuracies (fractions), and
    firing rates and energy per image when the cell has been analysed. A cell whose results.json
    (analysis.json) is missing or damaged counts as not trained (not analysed)."""
    rows = []
    for cell in cells:
        cell_dir = os.path.join(cells_dir, cell.name)
        res = read_cell_results(cell_dir, cell)
        if res is None:
            continue
        row: dict[str, Any] = {
            "cell": cell.name,
            "method": cell.method,
            "head_ratio": cell.head_ratio,
            "weight_temperature": cell.weight_temperature,
            "dataset": res.get("dataset"),
            "architecture": res.get("model"),
            "timesteps": cell.timesteps,
            "seed": cell.seed,
            "teacher_accuracy": res["teacher_accuracy"],
            "accuracy": res["student_accuracy"][str(cell.timesteps)],
        }
        row["arm"] = tables.arm_label(row)
        row |= {f"accuracy_T{t}": a for t, a in res["student_accuracy"].items()}
        an = read_cell_analysis(cell_dir)
        if an is not None:
            endpoints = an.get("endpoints", {})
            row |= {k: endpoints[k] for k in ENDPOINTS if k in endpoints}
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


def _by(rows: Sequence[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


@dataclasses.dataclass
class GridTables:
    """The tables of a grid. `main`: the rows of the main grid (no fixed ratios); `energy_rows`:
    its analysed rows at `energy_timesteps`; `ablation`: the ratio sweep's summary or None."""

    rows: list[dict[str, Any]]
    main: list[dict[str, Any]]
    table1: Table
    endpoints: Table | None
    paired: list[dict[str, Any]]
    energy_timesteps: int
    energy_rows: list[dict[str, Any]]
    table3: Table | None
    ablation: dict[str, Any] | None
    ablation_table: Table | None


def _table3(energy_rows: Sequence[Mapping[str, Any]], energy_t: int) -> Table | None:
    if not energy_rows:
        return None
    r0 = energy_rows[0]
    teacher = {
        "method": "teacher",
        "architecture": r0["architecture"],
        "firing_rate": None,
        "ops": r0["teacher_macs"],
        "acs": 0.0,
        "macs": r0["teacher_macs"],
        "energy_mj": r0["teacher_energy_mj"],
    }
    students = [r | {"architecture": f"{r['architecture']} T={energy_t}"} for r in energy_rows]
    return tables.table3([teacher] + students)


def _ablation(
    rows: Sequence[Mapping[str, Any]], timesteps: int, seeds: Sequence[int]
) -> tuple[dict[str, Any], Table] | tuple[None, None]:
    """The fixed-ratio sweep (mean ± std accuracy per ratio) beside adaptive HTA-KL at the same
    T and seeds."""
    ratios = sorted({r["head_ratio"] for r in rows if r["method"] == "fixed_ratio"})
    if not ratios:
        return None, None
    per_ratio = [
        [r["accuracy"] for r in _by(rows, method="fixed_ratio", head_ratio=x)] for x in ratios
    ]
    hta = [
        r["accuracy"]
        for r in _by(rows, method="hta_kl", timesteps=timesteps, weight_temperature=None)
        if r["seed"] in seeds
    ]
    summary = {
        "timesteps": timesteps,
        "ratios": ratios,
        "accuracy": [tables.mean_std(a) for a in per_ratio],
        "adaptive": tables.mean_std(hta) if hta else None,
    }
    table_rows = [
        [f"{x:g}", tables.format_mean_std(a)] for x, a in zip(ratios, per_ratio, strict=True)
    ]
    if hta:
        table_rows.append(["HTA-KL (adaptive)", tables.format_mean_std(hta)])
    return summary, (["Head ratio", "Accuracy"], table_rows)


def _endpoint_table(rows: Sequence[Mapping[str, Any]]) -> Table | None:
    """Per arm and training T: seeds, and each endpoint's mean ± std over the analysed seeds."""
    analysed = [r for r in rows if "nll" in r]
    if not analysed:
        return None
    headers = ["Arm", "T", "Seeds", "Accuracy (%)", "NLL (nats)", "Agreement (%)", "KL (nats)"]
    out = []
    for arm in dict.fromkeys(r["arm"] for r in analysed):
        for t in sorted({r["timesteps"] for r in _by(analysed, arm=arm)}):
            rs = _by(analysed, arm=arm, timesteps=t)
            cells = [
                tables.format_mean_std([r[k] for r in rs], scale=scale, digits=digits)
                for k, scale, digits in (
                    ("accuracy", 100.0, 2),
                    ("nll", 1.0, 4),
                    ("teacher_agreement", 100.0, 2),
                    ("kl_teacher_student", 1.0, 4),
                )
            ]
            out.append([arm, str(t), str(len(rs))] + cells)
    return headers, out


def paired_table(records: Sequence[Mapping[str, Any]]) -> Table:
    """`stats.paired_comparisons` records as a Markdown-ready table."""
    headers = [
        "Arm - reference",
        "T",
        "Endpoint",
        "Seeds",
        "Mean",
        "SD",
        "95% CI",
        "Seeds for 1 pp (80% power)",
        "Verdict",
    ]

    def num(x: float | None, digits: int) -> str:
        return "-" if x is None else f"{x:+.{digits}f}"

    out = []
    for r in records:
        d = 2 if r["unit"] == "pp" else 4
        ci = "-" if r["low"] is None else f"[{r['low']:+.{d}f}, {r['high']:+.{d}f}]"
        out.append(
            [
                f"{r['arm']} - {r['reference']}",
                str(r["timesteps"]),
                f"{r['endpoint']} ({r['unit']})",
                str(r["n"]),
                num(r["mean"], d),
                "-" if r["n"] < 2 else f"{r['std']:.{d}f}",
                ci,
                "-" if r["seeds_needed"] is None else str(r["seeds_needed"]),
                r["verdict"].split(" (")[0],
            ]
        )
    return headers, out


def grid_tables(
    rows: list[dict[str, Any]],
    *,
    timesteps: Sequence[int],
    seeds: Sequence[int],
    energy_timesteps: int = 0,
    ablation_timesteps: int,
    ablation_seeds: Sequence[int],
) -> GridTables:
    """The tables of the finished cells' `rows` (`collect_rows`). The main grid is the rows at
    `timesteps` and `seeds`; energy at `energy_timesteps` (0: the largest T)."""
    if not rows:
        raise ValueError("no finished cell: nothing to tabulate")
    grid_ts = sorted({int(t) for t in timesteps})
    main = [
        r
        for r in rows
        if r["method"] != "fixed_ratio" and r["timesteps"] in grid_ts and r["seed"] in seeds
    ]
    teacher = {rows[0]["architecture"]: [rows[0]["teacher_accuracy"]]}
    energy_t = int(energy_timesteps) or max(grid_ts)
    energy_rows = [r for r in main if r["timesteps"] == energy_t and "energy_mj" in r]
    ablation_summary, ablation_table = _ablation(
        rows, int(ablation_timesteps), tuple(ablation_seeds)
    )
    return GridTables(
        rows=rows,
        main=main,
        table1=tables.table1(main, teacher=teacher),
        endpoints=_endpoint_table(rows),
        paired=stats.paired_comparisons(
            rows, reference=tables.method_label("fkl"), endpoints=tuple(ENDPOINTS)
        ),
        energy_timesteps=energy_t,
        energy_rows=energy_rows,
        table3=_table3(energy_rows, energy_t),
        ablation=ablation_summary,
        ablation_table=ablation_table,
    )


def _write_markdown(path: str, title: str, table: Table) -> None:
    with runs.atomic_write(path) as f:
        f.write(f"{title}\n\n")
        f.write(tables.markdown_table(*table))


def write_tables(
    grid: GridTables, out_dir: str, *, e_ac_pj: float, e_mac_pj: float
) -> dict[str, Any]:
    """Writes table1.md, paired.md, table3.md, ablation.md, results.csv and results.json (each
    when it has content) into ``out_dir``; returns the results.json content."""
    dataset = grid.rows[0]["dataset"]
    title = f"Student accuracy (%) on {dataset}, mean ± std over seeds"
    _write_markdown(os.path.join(out_dir, "table1.md"), title, grid.table1)
    if grid.endpoints is not None:
        title = (
            "Test accuracy and the continuous endpoints (htakl_jax.analysis.endpoints) on the "
            "whole eval split, mean ± std over seeds"
        )
        _write_markdown(os.path.join(out_dir, "endpoints.md"), title, grid.endpoints)
    if grid.paired:
        title = (
            "Each arm minus standard KD (FKL), paired by training T and seed: mean and sample "
            "SD of the differences, the 95% interval of the mean (Student t, seeds - 1 degrees "
            "of freedom), and the seeds a paired t-test needs to detect a 1-point difference "
            "with 80% power at this SD. 'detected' only when the interval excludes 0; 'not "
            "detected' does not mean absent: the interval bounds what the data allow"
        )
        _write_markdown(os.path.join(out_dir, "paired.md"), title, paired_table(grid.paired))
    if grid.table3 is not None:
        title = (
            f"Per-image operations and energy at T={grid.energy_timesteps} (45 nm: "
            f"{e_ac_pj} pJ/AC, {e_mac_pj} pJ/MAC); firing rate of the layer feeding the "
            "classifier, as the paper"
        )
        _write_markdown(os.path.join(out_dir, "table3.md"), title, grid.table3)
    if grid.ablation_table is not None:
        title = (
            "Head ratio r (loss r*FKL + (1-r)*RKL) vs accuracy (%) at "
            f"T={grid.ablation['timesteps']}"
        )
        _write_markdown(os.path.join(out_dir, "ablation.md"), title, grid.ablation_table)
    results = {
        "rows": grid.rows,
        "table1": {"headers": grid.table1[0], "rows": grid.table1[1]},
        "paired": grid.paired,
        "table3": None
        if grid.table3 is None
        else {
            "headers": grid.table3[0],
            "rows": grid.table3[1],
            "timesteps": grid.energy_timesteps,
        },
        "ablation": grid.ablation,
    }
    tables.write_csv(os.path.join(out_dir, "results.csv"), grid.rows)
    runs.write_json(os.path.join(out_dir, "results.json"), results)
    return results


# ----------------------------------------------------------------------------- figures


def _accuracy_curves(main: Sequence[Mapping[str, Any]]) -> dict[str, tuple]:
    """Arm label -> (T values, mean accuracies, stds) over seeds."""
    curves = {}
    grid_ts = sorted({r["timesteps"] for r in main})
    for arm in dict.fromkeys(r["arm"] for r in main):
        ts = [t for t in grid_ts if _by(main, arm=arm, timesteps=t)]
        summary = [
            tables.mean_std([r["accuracy"] for r in _by(main, arm=arm, timesteps=t)]) for t in ts
        ]
        curves[arm] = (ts, [m for m, _ in summary], [s for _, s in summary])
    return curves


def _cell_analyses(
    grid: GridTables, cells_dir: str
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], np.ndarray | None]:
    """Per arm at the energy T: firing rate per layer (mean over seeds), and the t-SNE
    features of its first seed (with the teacher's, first), with their labels."""
    layer_rates, features, labels = {}, {}, None
    for label in dict.fromkeys(r["arm"] for r in grid.energy_rows):
        cell_rows = _by(grid.energy_rows, arm=label)
        per_seed = [
            read_cell_analysis(os.path.join(cells_dir, r["cell"]))["firing"]["layer_rates"]
            for r in cell_rows
        ]
        layer_rates[label] = {k: float(np.mean([p[k] for p in per_seed])) for k in per_seed[0]}
        first = min(cell_rows, key=lambda r: r["seed"])
        npz = os.path.join(cells_dir, first["cell"], report.ANALYSIS_DIR, report.FEATURES_FILE)
        if os.path.isfile(npz):
            with np.load(npz) as z:
                if labels is None:
                    labels = z["labels"]
                    features["Teacher ANN"] = z["teacher"]
                features[f"{label} T={grid.energy_timesteps}"] = z["student"]
    return layer_rates, features, labels


def _weight_trajectories(
    rows: Sequence[Mapping[str, Any]], cells_dir: str
) -> dict[str, dict[str, np.ndarray]]:
    """The HTA-KL cells' epoch-mean adaptive weights (from their student metrics.jsonl)."""
    trajectories = {}
    for r in _by(rows, method="hta_kl"):
        path = os.path.join(cells_dir, r["cell"], "student", metrics_lib.METRICS_FILE)
        if not os.path.isfile(path):
            continue
        records = metrics_lib.read_metrics(path)
        if records and "train_w_head" in records[0]:
            weights = "" if r["weight_temperature"] is None else f" w@{r['weight_temperature']:g}"
            name = f"T={r['timesteps']}{weights} seed {r['seed']}"
            trajectories[name] = ablation.weight_trajectory(records)
    return trajectories


def plot_grid(
    grid: GridTables, cells_dir: str, plots_dir: str, *, tsne_perplexity: float = 30.0
) -> None:
    """Writes the grid's figures into ``plots_dir`` (see the module docstring)."""
    os.makedirs(plots_dir, exist_ok=True)
    plot_accuracy_vs_timesteps(
        _accuracy_curves(grid.main),
        os.path.join(plots_dir, "accuracy_vs_T.png"),
        teacher_accuracy=grid.rows[0]["teacher_accuracy"],
    )
    layer_rates, features, labels = _cell_analyses(grid, cells_dir)
    if layer_rates:
        plot_firing_rates(layer_rates, os.path.join(plots_dir, "firing_rates.png"))
    if features:
        path = os.path.join(plots_dir, "tsne.png")
        plot_tsne(features, labels, path, perplexity=tsne_perplexity)
    if grid.ablation is not None:
        a = grid.ablation
        ablation.plot_ratio_sweep(
            a["ratios"],
            [m for m, _ in a["accuracy"]],
            [s for _, s in a["accuracy"]],
            os.path.join(plots_dir, "ablation_head_ratio.png"),
            adaptive=a["adaptive"],
            timesteps=a["timesteps"],
        )
    trajectories = _weight_trajectories(grid.rows, cells_dir)
    if trajectories:
        ablation.plot_weight_trajectory(trajectories, os.path.join(plots_dir, "hta_kl_weights.png"))
