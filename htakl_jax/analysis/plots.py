"""Figures (matplotlib, no pyplot state: each function builds a ``Figure`` on the Agg canvas).

Every function returns the figure and, given ``path``, also saves it as PNG (parent folders made).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from htakl_jax import runs

__all__ = [
    "new_figure",
    "plot_accuracy_vs_timesteps",
    "plot_firing_rates",
    "plot_training_curves",
    "save",
]


def new_figure(width: float = 6.0, height: float = 4.0) -> Figure:
    """A figure on the Agg canvas (works headless and in notebooks)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike | None, dpi: int = 120) -> Figure:
    """Saves ``fig`` as PNG at ``path`` (if given; whole or not at all, `runs.atomic_write`) and
    returns it."""
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with runs.atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    return fig


def plot_firing_rates(
    rates_by_model: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike | None = None,
) -> Figure:
    """Grouped bars: firing rate (%) per LIF layer (x, in run order) for each model/method."""
    if not rates_by_model:
        raise ValueError("rates_by_model is empty")
    layers: list[str] = []
    for rates in rates_by_model.values():
        layers += [k for k in rates if k not in layers]
    fig = new_figure(max(6.0, 0.35 * len(layers) * max(1, len(rates_by_model) ** 0.5)), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(rates_by_model)
    x = np.arange(len(layers))
    for i, (name, rates) in enumerate(rates_by_model.items()):
        y = [100 * rates.get(k, np.nan) for k in layers]
        ax.bar(x + (i - (len(rates_by_model) - 1) / 2) * width, y, width, label=name)
    ax.set_xticks(x, layers, rotation=75, fontsize=7)
    ax.set_ylabel("firing rate (%)")
    ax.set_title("Firing rate per spiking layer")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_accuracy_vs_timesteps(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float] | None]],
    path: str | os.PathLike | None = None,
    *,
    teacher_accuracy: float | None = None,
) -> Figure:
    """Accuracy (%) against T per method: ``curves[name] = (timesteps, mean, std or None)``."""
    if not curves:
        raise ValueError("curves is empty")
    fig = new_figure()
    ax = fig.add_subplot()
    for name, (ts, mean, std) in curves.items():
        mean = 100 * np.asarray(mean, np.float64)
        err = None if std is None else 100 * np.asarray(std, np.float64)
        ax.errorbar(list(ts), mean, yerr=err, marker="o", capsize=3, label=name)
    if teacher_accuracy is not None:
        ax.axhline(100 * teacher_accuracy, color="k", ls="--", lw=1, label="teacher ANN")
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_training_curves(
    records_by_phase: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike | None = None,
) -> Figure:
    """Training loss (left) and accuracy (%, right) per epoch, one colour per phase, from the
    phases' metrics.jsonl records: train accuracy solid, eval accuracy dashed with a marker at
    each evaluated epoch. An epoch recorded twice keeps its last record."""
    if not any(records_by_phase.values()):
        raise ValueError("records_by_phase holds no records")
    fig = new_figure(10.0, 4.0)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (name, records) in enumerate(records_by_phase.items()):
        by_epoch = {r["epoch"]: r for r in records}
        epochs = sorted(by_epoch)
        rows = [by_epoch[e] for e in epochs]
        color = f"C{i}"
        ax_loss.plot(epochs, [r.get("train_loss", np.nan) for r in rows], color=color, label=name)
        train_acc = [100 * r.get("train_accuracy", np.nan) for r in rows]
        ax_acc.plot(epochs, train_acc, color=color, label=f"{name} train")
        evals = [
            (e, 100 * r["eval_accuracy"])
            for e, r in zip(epochs, rows, strict=True)
            if r.get("eval_accuracy") is not None
        ]
        if evals:
            x, y = zip(*evals, strict=True)
            ax_acc.plot(x, y, color=color, ls="--", marker="o", label=f"{name} eval")
    ax_loss.set_ylabel("training loss (the phase's objective)")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    return save(fig, path)
