"""Figures (matplotlib, no pyplot state: each function builds a ``Figure`` on the Agg canvas).

Every function returns the figure and, given ``path``, also saves it as PNG (parent folders made).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["new_figure", "plot_accuracy_vs_timesteps", "plot_firing_rates", "save"]


def new_figure(width: float = 6.0, height: float = 4.0) -> Figure:
    """A figure on the Agg canvas (works headless and in notebooks)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike | None, dpi: int = 120) -> Figure:
    """Saves ``fig`` as PNG at ``path`` (if given) and returns it."""
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=dpi)
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
