"""Analysis of one trained workdir: firing rates, synaptic operations and energy, t-SNE features.

`analyze(run)` computes (no files written) a :class:`RunAnalysis` of a restored run
(`htakl_jax.runs.load_trained`); `write_analysis` writes it; `analyze_workdir` does both, for
``python -m htakl_jax.analysis --workdir DIR`` and for every cell of a grid
(``htakl_jax.experiments``). Files in ``DIR/analysis/``:

- ``analysis.json``: firing rates (overall, before the classifier, per layer), per-image OPs / ACs /
  MACs / energy of student and teacher, the continuous endpoints on the whole eval split
  (`htakl_jax.analysis.endpoints`: NLL, agreement with the teacher, KL(teacher || student)),
  accuracies from ``DIR/results.json`` when present;
- ``energy.md`` (Table III layout), ``energy_layers.csv`` (per-layer counts), ``firing_rates.csv``;
- ``accuracy.md`` (student accuracy at each evaluated T, teacher accuracy), with results.json;
- ``tsne_features.npz`` (labels, teacher and student penultimate features of the t-SNE examples);
- with ``plots``: ``firing_rates.png``, ``tsne.png`` (teacher vs student features) and
  ``training_curves.png`` (loss and accuracy per epoch of teacher and student, from their
  metrics.jsonl; `write_training_curves`).

Analysis runs on one device of this process (it is a few forward passes).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from htakl_jax import data as data_lib
from htakl_jax import metrics as metrics_lib
from htakl_jax import runs
from htakl_jax.analysis import tables
from htakl_jax.analysis.endpoints import endpoints_from_logits, model_logits
from htakl_jax.analysis.firing import SpikeStats, rates_table, spike_stats
from htakl_jax.analysis.plots import plot_firing_rates, plot_training_curves
from htakl_jax.analysis.tsne import penultimate_features, plot_tsne
from htakl_jax.energy import E_AC_PJ, E_MAC_PJ, EnergyEstimate, count_macs, estimate_energy

__all__ = [
    "ANALYSIS_DIR",
    "RunAnalysis",
    "analyze",
    "analyze_workdir",
    "energy_summary",
    "read_summary",
    "run_endpoints",
    "spikes_and_energy",
    "eval_subset",
    "image_subset",
    "training_records",
    "write_analysis",
    "write_training_curves",
]

ANALYSIS_DIR = "analysis"
SUMMARY_FILE = "analysis.json"
FEATURES_FILE = "tsne_features.npz"
CURVES_FILE = "training_curves.png"


@dataclasses.dataclass
class RunAnalysis:
    """What `analyze` computes: a JSON-ready `summary`, the student's spike statistics, and the
    penultimate features [n, D] of teacher and student on the t-SNE examples (labels [n])."""

    summary: dict[str, Any]
    stats: SpikeStats
    labels: np.ndarray
    teacher_features: np.ndarray
    student_features: np.ndarray

    @property
    def label(self) -> str:
        """The student's display name, e.g. ``"HTA-KL T=2"``."""
        return f"{tables.arm_label(self.summary)} T={self.stats.timesteps}"


def image_subset(
    images: np.ndarray, labels: np.ndarray, info: Any, num_examples: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset (sorted indices from ``seed``) of a split (uint8 ``images``
    [N, H, W, 3], ``labels`` [N]; ``info`` its DatasetInfo): normalised float32 images
    ``[n, H, W, 3]`` and labels ``[n]``; ``n = min(num_examples, N)``."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    n_all = len(labels)
    idx = np.sort(np.random.default_rng(seed).permutation(n_all)[: min(num_examples, n_all)])
    x = data_lib.normalize(images[idx], tuple(info.mean), tuple(info.std))
    return np.asarray(x), np.asarray(labels[idx])


def eval_subset(
    run: runs.TrainedRun, num_examples: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`image_subset` of a restored run's eval split."""
    return image_subset(run.eval_images, run.eval_labels, run.info, num_examples, seed=seed)


def energy_summary(estimate: EnergyEstimate) -> dict[str, Any]:
    """JSON-ready totals and per-layer rows of an :class:`~htakl_jax.energy.EnergyEstimate`."""
    out = dataclasses.asdict(estimate)
    out["layers"] = [dataclasses.asdict(x) for x in estimate.layers]
    return out


def run_endpoints(
    run: runs.TrainedRun, *, timesteps: int, batch_size: int = 256
) -> dict[str, float]:
    """`endpoints_from_logits` of the student at `timesteps` on the whole eval split."""
    images = data_lib.normalize(run.eval_images, tuple(run.info.mean), tuple(run.info.std))
    kw = dict(batch_size=batch_size)
    student = model_logits(run.student, run.student_variables, images, timesteps=timesteps, **kw)
    teacher = model_logits(run.teacher, run.teacher_variables, images, **kw)
    return endpoints_from_logits(student, teacher, run.eval_labels)


def _accuracies(workdir: str) -> dict[str, Any]:
    results = runs.read_results(os.path.join(workdir, runs.RESULTS_FILE))
    if results is None:
        return {}
    return {k: results[k] for k in ("teacher_accuracy", "student_accuracy")}


# What a whole analysis.json holds (what the grid's report reads from it).
SUMMARY_KEYS = (
    ("firing", "pre_classifier_rate"),
    ("firing", "overall_rate"),
    ("firing", "layer_rates"),
    ("energy", "student", "ops"),
    ("energy", "student", "acs"),
    ("energy", "student", "macs"),
    ("energy", "student", "energy_mj"),
    ("energy", "teacher", "macs"),
    ("energy", "teacher", "energy_mj"),
)


def read_summary(path: str | os.PathLike) -> dict[str, Any] | None:
    """The analysis.json (`SUMMARY_FILE`) at `path` when it is whole (a JSON object with every
    `SUMMARY_KEYS` entry), else None: missing, cut short, not JSON or keys missing."""
    summary = runs.read_json_object(path)
    if summary is None:
        return None
    for keys in SUMMARY_KEYS:
        node: Any = summary
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
    return summary


def spikes_and_energy(
    student: Any,
    student_variables: Any,
    teacher: Any,
    images_NHWC: np.ndarray,
    *,
    timesteps: int,
    batch_size: int = 256,
    e_ac_pj: float = E_AC_PJ,
    e_mac_pj: float = E_MAC_PJ,
) -> tuple[SpikeStats, EnergyEstimate, EnergyEstimate]:
    """The spiking `student`'s counts on normalised `images_NHWC` at `timesteps`, and the
    per-image operations and energy of student and ANN `teacher` (Flax modules)."""
    stats = spike_stats(
        student, student_variables, images_NHWC, timesteps=timesteps, batch_size=batch_size
    )
    energy = dict(e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj)
    student_energy = estimate_energy(stats.layers, stats.input_rates(), timesteps, **energy)
    teacher_records = count_macs(teacher, tuple(images_NHWC.shape[1:]))
    return stats, student_energy, estimate_energy(teacher_records, {}, 1, **energy)


def analyze(
    run: runs.TrainedRun,
    *,
    num_examples: int = 1024,
    timesteps: int | None = None,
    batch_size: int = 256,
    tsne_examples: int = 500,
    e_ac_pj: float = E_AC_PJ,
    e_mac_pj: float = E_MAC_PJ,
    seed: int = 0,
) -> RunAnalysis:
    """Firing rates and energy of the student (at ``timesteps``, default the trained T) and the
    teacher on ``num_examples`` eval images (`eval_subset` with ``seed``), and the penultimate
    features of both on the first ``tsne_examples`` of them; the endpoints (`run_endpoints`) on
    the whole eval split."""
    images, labels = eval_subset(run, num_examples, seed=seed)
    t = int(timesteps or run.config.student.timesteps)
    stats, student_energy, teacher_energy = spikes_and_energy(
        run.student,
        run.student_variables,
        run.teacher,
        images,
        timesteps=t,
        batch_size=batch_size,
        e_ac_pj=e_ac_pj,
        e_mac_pj=e_mac_pj,
    )
    s = run.config.student
    summary = {
        "workdir": run.workdir,
        "dataset": run.config.data.name,
        "architecture": run.config.model.name,
        "method": s.method,
        "head_ratio": s.head_ratio,
        "weight_temperature": s.get("weight_temperature"),
        "trained_timesteps": int(s.timesteps),
        "timesteps": t,
        "endpoints": run_endpoints(run, timesteps=t, batch_size=batch_size),
        "firing": stats.to_dict(),
        "energy": {
            "student": energy_summary(student_energy),
            "teacher": energy_summary(teacher_energy),
        },
    } | _accuracies(run.workdir)
    n = min(tsne_examples, len(labels))
    features = [np.zeros((0, 0), np.float32)] * 2
    if n > 0:
        kw = dict(batch_size=batch_size)
        features = [
            penultimate_features(run.teacher, run.teacher_variables, images[:n], **kw),
            penultimate_features(run.student, run.student_variables, images[:n], timesteps=t, **kw),
        ]
    return RunAnalysis(summary, stats, labels[:n], *features)


def energy_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Teacher and student rows of the energy table (`tables.table3`) of one analysis."""
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
                "weight_temperature": (
                    summary.get("weight_temperature") if who == "student" else None
                ),
                "architecture": arch if who == "teacher" else f"{arch} T={e['timesteps']}",
                "firing_rate": rate,
                "ops": e["ops"],
                "acs": e["acs"],
                "macs": e["macs"],
                "energy_mj": e["energy_mj"],
            }
        )
    return rows


def accuracy_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Teacher and student accuracy (%) at each evaluated T, or None without results.json."""
    if "student_accuracy" not in summary:
        return None
    acc = summary["student_accuracy"]
    headers = ["Model", "Architecture"] + [f"T={t}" for t in acc]
    teacher = f"{100 * summary['teacher_accuracy']:.2f}"
    label = tables.arm_label(summary)
    rows = [
        ["Teacher ANN", summary["architecture"], teacher] + ["-"] * (len(acc) - 1),
        [label, summary["architecture"]] + [f"{100 * a:.2f}" for a in acc.values()],
    ]
    return headers, rows


def write_analysis(
    analysis: RunAnalysis, out_dir: str, *, plots: bool = True, tsne_perplexity: float = 30.0
) -> None:
    """Writes `analysis` into ``out_dir`` (see the module docstring); figures with ``plots``."""
    os.makedirs(out_dir, exist_ok=True)
    summary = analysis.summary
    accuracy = accuracy_table(summary)
    if accuracy is not None:
        with runs.atomic_write(os.path.join(out_dir, "accuracy.md")) as f:
            f.write(tables.markdown_table(*accuracy))
    with runs.atomic_write(os.path.join(out_dir, "energy.md")) as f:
        f.write(tables.markdown_table(*tables.table3(energy_rows(summary))))
    layers = summary["energy"]["student"]["layers"]
    tables.write_csv(os.path.join(out_dir, "energy_layers.csv"), layers)
    tables.write_csv(os.path.join(out_dir, "firing_rates.csv"), rates_table(analysis.stats))
    if len(analysis.labels):
        with runs.atomic_write(os.path.join(out_dir, FEATURES_FILE), "wb") as f:
            np.savez(
                f,
                labels=analysis.labels,
                teacher=analysis.teacher_features,
                student=analysis.student_features,
            )
    # Last: a whole one marks a complete analysis (a grid skips cells that have one, see
    # `read_summary`). Every file here is written whole or not at all (`runs.atomic_write`).
    runs.write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
    if not plots:
        return
    plot_firing_rates(
        {analysis.label: analysis.stats.layer_rates()}, os.path.join(out_dir, "firing_rates.png")
    )
    if len(analysis.labels):
        features = {
            "Teacher ANN": analysis.teacher_features,
            analysis.label: analysis.student_features,
        }
        plot_tsne(
            features, analysis.labels, os.path.join(out_dir, "tsne.png"), perplexity=tsne_perplexity
        )


def training_records(config: Any, workdir: str) -> dict[str, list[dict[str, Any]]]:
    """The metrics.jsonl records of the run's teacher (`runs.teacher_dir`: maybe another
    workdir's) and student phases; a phase without the file is left out."""
    dirs = {
        "teacher": runs.teacher_dir(config, workdir),
        "student": runs.phase_dir(workdir, "student"),
    }
    out = {}
    for phase, directory in dirs.items():
        path = os.path.join(directory, metrics_lib.METRICS_FILE)
        if os.path.isfile(path):
            out[phase] = metrics_lib.read_metrics(path)
    return out


def write_training_curves(config: Any, workdir: str, out_dir: str) -> str | None:
    """Plots `training_records` into ``out_dir``/training_curves.png; returns its path, or None
    when no phase has records."""
    records = {k: v for k, v in training_records(config, workdir).items() if v}
    if not records:
        return None
    path = os.path.join(out_dir, CURVES_FILE)
    plot_training_curves(records, path)
    return path


def analyze_workdir(
    workdir: str,
    out_dir: str | None = None,
    *,
    eval_data: tuple[runs.Dataset, Any] | None = None,
    plots: bool = True,
    tsne_perplexity: float = 30.0,
    **options: Any,
) -> dict[str, Any]:
    """Analyses a trained workdir into ``out_dir`` (default ``WORKDIR/analysis``) and returns the
    summary. ``options`` are those of :func:`analyze` (``tsne_examples=0`` skips the t-SNE);
    ``eval_data`` as in `runs.load_trained`."""
    run = runs.load_trained(workdir, eval_data=eval_data)
    analysis = analyze(run, **options)
    out_dir = out_dir or os.path.join(workdir, ANALYSIS_DIR)
    write_analysis(analysis, out_dir, plots=plots, tsne_perplexity=tsne_perplexity)
    if plots:
        write_training_curves(run.config, workdir, out_dir)
    return analysis.summary
