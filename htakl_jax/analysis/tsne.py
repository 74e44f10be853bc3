"""t-SNE of penultimate features (the input of the classifier) of a teacher and its students."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from matplotlib.figure import Figure

from htakl_jax.analysis.endpoints import apply_in_batches
from htakl_jax.analysis.plots import new_figure, save

__all__ = ["penultimate_features", "plot_tsne", "tsne_embed"]


def _features(variables: Any, x: jax.Array, *, model: nn.Module, timesteps: int | None):
    kwargs = {"timesteps": timesteps} if getattr(model, "spiking", False) and timesteps else {}
    _, feats = model.apply(variables, x, train=False, return_features=True, **kwargs)
    # Student features [T, B, D] are spikes: their mean over T is each unit's firing rate.
    return jnp.mean(feats, 0) if feats.ndim == 3 else feats


def penultimate_features(
    model: nn.Module,
    variables: Any,
    images_NHWC: np.ndarray,
    *,
    timesteps: int | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Features ``[N, D]`` (float32) feeding the classifier; a student's are averaged over T.

    ``images_NHWC`` are normalised floats; ``timesteps`` overrides a student's T.
    """
    fn = functools.partial(_features, model=model, timesteps=timesteps)
    return apply_in_batches(fn, variables, images_NHWC, batch_size=batch_size)


def tsne_embed(features_ND: np.ndarray, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE embedding ``[N, 2]`` (scikit-learn, PCA init; perplexity capped below N).

    Identical feature rows (e.g. a student whose penultimate layer never spikes) have no structure
    to embed and make scikit-learn's PCA init divide by zero: they map to the origin (warning).
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features_ND, np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"features_ND must be [N >= 3, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features_ND contains NaN or infinite values")
    if np.all(x == x[0]):
        logging.warning("t-SNE: all %d feature rows are identical; embedding at the origin", len(x))
        return np.zeros((x.shape[0], 2))
    perplexity = min(float(perplexity), (x.shape[0] - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x)


def plot_tsne(
    features_by_model: Mapping[str, np.ndarray],
    labels_N: np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    perplexity: float = 30.0,
    seed: int = 0,
) -> Figure:
    """One t-SNE panel per model (e.g. ``{"Teacher ANN": f_t, "HTA-KL T=4": f_s}``), points coloured
    by class label; all feature arrays are ``[N, D_model]`` for the same N examples."""
    labels = np.asarray(labels_N)
    if not features_by_model:
        raise ValueError("features_by_model is empty")
    for name, f in features_by_model.items():
        if np.shape(f)[0] != labels.shape[0]:
            raise ValueError(
                f"features_by_model[{name!r}] has {np.shape(f)[0]} rows, labels_N has "
                f"{labels.shape[0]}"
            )
    n = len(features_by_model)
    fig = new_figure(4.0 * n, 4.0)
    for i, (name, feats) in enumerate(features_by_model.items()):
        ax = fig.add_subplot(1, n, i + 1)
        emb = tsne_embed(feats, perplexity=perplexity, seed=seed)
        ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab20", s=5)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    return save(fig, path)
