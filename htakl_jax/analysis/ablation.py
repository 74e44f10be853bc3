"""Head/tail ablation (the paper's Figure 2) and the adaptive-weight trajectory of HTA-KL."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from htakl_jax.analysis.plots import new_figure, save

__all__ = ["plot_ratio_sweep", "plot_weight_trajectory", "weight_trajectory"]


def weight_trajectory(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``{'epoch', 'w_head', 'w_tail'}`` arrays ``[E]`` from HTA-KL student metrics records.

    The weights are the epoch means of the batch-mean adaptive weights (``train_w_head`` /
    ``train_w_tail``). A resumed run may repeat an epoch: the last record of an epoch wins.
    """
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for r in records:
        if "train_w_head" not in r:
            raise ValueError(f"metrics record of epoch {r.get('epoch')} has no 'train_w_head'")
        by_epoch[int(r["epoch"])] = r
    epochs = sorted(by_epoch)
    return {
        "epoch": np.asarray(epochs),
        "w_head": np.asarray([by_epoch[e]["train_w_head"] for e in epochs], np.float64),
        "w_tail": np.asarray([by_epoch[e]["train_w_tail"] for e in epochs], np.float64),
    }


def plot_ratio_sweep(
    ratios: Sequence[float],
    mean_accuracy: Sequence[float],
    std_accuracy: Sequence[float] | None = None,
    path: str | os.PathLike | None = None,
    *,
    adaptive: tuple[float, float] | None = None,
    timesteps: int | None = None,
) -> Figure:
    """Accuracy (%) of fixed head ratio r (FKL weight r, RKL weight 1-r) against r, with the
    adaptive HTA-KL accuracy ``(mean, std)`` as a horizontal line and band."""
    r = np.asarray(ratios, np.float64)
    m = 100 * np.asarray(mean_accuracy, np.float64)
    if r.shape != m.shape or r.ndim != 1 or r.size == 0:
        raise ValueError(f"ratios {r.shape} and mean_accuracy {m.shape} must be equal 1-D shapes")
    order = np.argsort(r)
    fig = new_figure()
    ax = fig.add_subplot()
    err = None if std_accuracy is None else 100 * np.asarray(std_accuracy, np.float64)[order]
    ax.errorbar(r[order], m[order], yerr=err, marker="o", capsize=3, label="fixed ratio r")
    if adaptive is not None:
        am, asd = 100 * adaptive[0], 100 * adaptive[1]
        ax.axhline(am, color="C3", lw=1.5, label="HTA-KL (adaptive)")
        if asd > 0:
            ax.axhspan(am - asd, am + asd, color="C3", alpha=0.15)
    ax.set_xlabel("head ratio r (weight of FKL; RKL gets 1 - r)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Head/tail ablation" + (f" (T={timesteps})" if timesteps else ""))
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_weight_trajectory(
    trajectories: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike | None = None,
) -> Figure:
    """Mean adaptive ``w_head`` (solid) and ``w_tail`` (dashed) per epoch for each labelled run
    (values of :func:`weight_trajectory`)."""
    if not trajectories:
        raise ValueError("trajectories is empty")
    fig = new_figure()
    ax = fig.add_subplot()
    for i, (name, tr) in enumerate(trajectories.items()):
        ax.plot(tr["epoch"], tr["w_head"], color=f"C{i}", marker=".", label=f"{name} w_head")
        ax.plot(tr["epoch"], tr["w_tail"], color=f"C{i}", ls="--", label=f"{name} w_tail")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean adaptive weight")
    ax.set_ylim(0, 1)
    ax.set_title("HTA-KL head/tail weights during training")
    ax.legend(fontsize=8)
    return save(fig, path)
