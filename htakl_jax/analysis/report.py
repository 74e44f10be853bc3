"""Analysis of one trained workdir (``python -m htakl_jax.main ... --workdir DIR``).

``analyze_workdir(DIR)`` restores the best teacher and student checkpoints, runs the student over a
fixed evaluation subset and writes ``DIR/analysis/``:

- ``analysis.json``: firing rates (overall, before the classifier, per layer), per-image OPs / ACs /
  MACs / energy of student and teacher, accuracies from ``DIR/results.json`` when present;
- ``energy.md`` (Table III layout), ``energy_layers.csv`` (per-layer counts), ``firing_rates.csv``;
- ``accuracy.md`` (student accuracy at each evaluated T, teacher accuracy);
- ``firing_rates.png`` and ``tsne.png`` (teacher vs student penultimate features).

Analysis runs on one device of this process (it is a few forward passes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from htakl_jax import data as data_lib
from htakl_jax import parallel, train
from htakl_jax.analysis import tables
from htakl_jax.analysis.firing import SpikeStats, rates_table, spike_stats
from htakl_jax.analysis.plots import plot_firing_rates
from htakl_jax.analysis.tsne import penultimate_features, plot_tsne
from htakl_jax.energy import E_AC_PJ, E_MAC_PJ, EnergyEstimate, count_macs, estimate_energy

__all__ = [
    "TrainedRun",
    "analyze_workdir",
    "energy_summary",
    "eval_subset",
    "load_config",
    "load_run",
    "run_analysis",
]

ANALYSIS_DIR = "analysis"


@dataclasses.dataclass
class TrainedRun:
    """A restored experiment: models (no cross-device BN axis), best variables, uint8 eval split."""

    workdir: str
    config: ml_collections.ConfigDict
    info: Any
    teacher: Any
    teacher_variables: Any
    student: Any
    student_variables: Any
    eval_images: np.ndarray
    eval_labels: np.ndarray


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (``WORKDIR/config.json``, written by ``train.run``)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    eval_data: tuple[np.ndarray, np.ndarray, Any] | None = None,
) -> TrainedRun:
    """Restores the best teacher and student of ``workdir`` and loads the eval split.

    ``eval_data``: an already loaded ``(images, labels, info)`` of the eval split, to share it
    between runs on the same data.
    """
    config = load_config(workdir) if config is None else config
    if eval_data is None:
        eval_data = train.load_eval_data(config)
    images, labels, info = eval_data
    mesh = parallel.make_mesh(jax.devices()[:1])
    models = {}
    for phase, spiking in (("teacher", False), ("student", True)):
        model = train.build_model(
            config, num_classes=info.num_classes, spiking=spiking, bn_axis_name=None
        )
        phase_dir = (
            train.teacher_dir(config, workdir)
            if phase == "teacher"
            else os.path.join(workdir, phase)
        )
        variables, _, _ = train.restore_for_eval(
            phase_dir, model, config, info, mesh, spiking=spiking
        )
        models[phase] = (model, variables)
    return TrainedRun(workdir, config, info, *models["teacher"], *models["student"], images, labels)


def eval_subset(
    run: TrainedRun, num_examples: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset (sorted indices from ``seed``) of the eval split: normalised float32
    images ``[n, H, W, 3]`` and labels ``[n]``; ``n = min(num_examples, split size)``."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    n_all = len(run.eval_labels)
    idx = np.sort(np.random.default_rng(seed).permutation(n_all)[: min(num_examples, n_all)])
    x = data_lib.normalize(run.eval_images[idx], tuple(run.info.mean), tuple(run.info.std))
    return np.asarray(x), np.asarray(run.eval_labels[idx])


def energy_summary(estimate: EnergyEstimate) -> dict[str, Any]:
    """JSON-ready totals and per-layer rows of an :class:`~htakl_jax.energy.EnergyEstimate`."""
    out = dataclasses.asdict(estimate)
    out["layers"] = [dataclasses.asdict(x) for x in estimate.layers]
    return out


def run_analysis(
    run: TrainedRun,
    images_NHWC: np.ndarray,
    *,
    timesteps: int | None = None,
    batch_size: int = 256,
    e_ac_pj: float = E_AC_PJ,
    e_mac_pj: float = E_MAC_PJ,
) -> tuple[SpikeStats, dict[str, Any]]:
    """Spike statistics of the student on ``images_NHWC`` and a JSON-ready summary with the
    firing rates and the energy of student (at ``timesteps``, default the trained T) and teacher."""
    t = int(timesteps or run.config.student.timesteps)
    stats = spike_stats(
        run.student, run.student_variables, images_NHWC, timesteps=t, batch_size=batch_size
    )
    student_energy = estimate_energy(
        stats.layers, stats.input_rates(), t, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj
    )
    teacher_records = count_macs(run.teacher, tuple(images_NHWC.shape[1:]))
    teacher_energy = estimate_energy(teacher_records, {}, 1, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj)
    s = run.config.student
    summary = {
        "workdir": run.workdir,
        "dataset": run.config.data.name,
        "architecture": run.config.model.name,
        "method": s.method,
        "head_ratio": s.head_ratio,
        "trained_timesteps": int(s.timesteps),
        "timesteps": t,
        "firing": stats.to_dict(),
        "energy": {
            "student": energy_summary(student_energy),
            "teacher": energy_summary(teacher_energy),
        },
    }
    return stats, summary


def _energy_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    arch = summary["architecture"]
    rows = []
    for who, method, rate in (
        ("teacher", "teacher", None),
        ("student", summary["method"], summary["firing"]["pre_classifier_rate"]),
    ):
        e = summary["energy"][who]
        rows.append(
            {
                "method": method,
                "head_ratio": summary["head_ratio"] if who == "student" else None,
                "architecture": arch if who == "teacher" else f"{arch} T={e['timesteps']}",
                "firing_rate": rate,
                "ops": e["ops"],
                "acs": e["acs"],
                "macs": e["macs"],
                "energy_mj": e["energy_mj"],
            }
        )
    return rows


def analyze_workdir(
    workdir: str,
    out_dir: str | None = None,
    *,
    num_examples: int = 512,
    timesteps: int | None = None,
    batch_size: int = 256,
    tsne_examples: int = 500,
    tsne_perplexity: float = 30.0,
    e_ac_pj: float = E_AC_PJ,
    e_mac_pj: float = E_MAC_PJ,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes the analysis of a trained workdir into ``out_dir`` (default ``WORKDIR/analysis``)
    and returns its summary (see the module docstring). ``tsne_examples=0`` skips the t-SNE."""
    run = load_run(workdir)
    out_dir = out_dir or os.path.join(workdir, ANALYSIS_DIR)
    os.makedirs(out_dir, exist_ok=True)
    images, labels = eval_subset(run, num_examples, seed=seed)
    stats, summary = run_analysis(
        run, images, timesteps=timesteps, batch_size=batch_size, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj
    )
    results_path = os.path.join(workdir, "results.json")
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)
        summary["teacher_accuracy"] = results["teacher_accuracy"]
        summary["student_accuracy"] = results["student_accuracy"]
        acc = results["student_accuracy"]
        headers = ["Model", "Architecture"] + [f"T={t}" for t in acc]
        rows = [
            ["Teacher ANN", summary["architecture"], f"{100 * results['teacher_accuracy']:.2f}"]
            + ["-"] * (len(acc) - 1),
            [tables.method_label(summary["method"], summary["head_ratio"]), summary["architecture"]]
            + [f"{100 * a:.2f}" for a in acc.values()],
        ]
        with open(os.path.join(out_dir, "accuracy.md"), "w") as f:
            f.write(tables.markdown_table(headers, rows))
    tables.write_json(os.path.join(out_dir, "analysis.json"), summary)
    tables.write_csv(
        os.path.join(out_dir, "energy_layers.csv"), summary["energy"]["student"]["layers"]
    )
    tables.write_csv(os.path.join(out_dir, "firing_rates.csv"), rates_table(stats))
    with open(os.path.join(out_dir, "energy.md"), "w") as f:
        f.write(tables.markdown_table(*tables.table3(_energy_rows(summary))))
    label = tables.method_label(summary["method"], summary["head_ratio"])
    plot_firing_rates(
        {f"{label} T={stats.timesteps}": stats.layer_rates()},
        os.path.join(out_dir, "firing_rates.png"),
    )
    if tsne_examples > 0:
        n = min(tsne_examples, len(labels))
        feats = {
            "Teacher ANN": penultimate_features(
                run.teacher, run.teacher_variables, images[:n], batch_size=batch_size
            ),
            f"{label} T={stats.timesteps}": penultimate_features(
                run.student,
                run.student_variables,
                images[:n],
                timesteps=stats.timesteps,
                batch_size=batch_size,
            ),
        }
        plot_tsne(feats, labels[:n], os.path.join(out_dir, "tsne.png"), perplexity=tsne_perplexity)
    return summary
