"""Class-balanced subsets of a split: a reduced training set and a held-out validation set.

Reduced-scale experiments train on part of the training split, and hyperparameters are tuned on
examples held out from it (never on the test split). Both subsets are drawn per class from one
seeded permutation, so they are disjoint, identical for every run that shares ``subset_seed``
(every cell of a grid trains on the same images), and independent of the run's own seed.
"""

from __future__ import annotations

import numpy as np


def per_class_counts(total: int, num_classes: int) -> np.ndarray:
    """``total`` examples spread over classes as evenly as possible (lower classes get the rest)."""
    counts = np.full(num_classes, total // num_classes, dtype=np.int64)
    counts[: total % num_classes] += 1
    return counts


def balanced_split(
    labels_N: np.ndarray,
    num_classes: int,
    *,
    train_examples: int,
    validation_examples: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, class-balanced (train, validation) index arrays into ``labels_N``.

    Args:
      labels_N: int labels in [0, num_classes).
      train_examples: size of the training subset; 0 = every example not held out.
      validation_examples: size of the held-out subset (0 = none).
      seed: the subset seed (not the run seed).

    Returns:
      Sorted int64 indices (train, validation). Within each class a seeded permutation puts the
      validation examples first, so changing ``train_examples`` never moves an example between the
      two sets.

    Raises:
      ValueError: a size is negative, or a class has fewer examples than it must contribute.
    """
    for name, value in (
        ("train_examples", train_examples),
        ("validation_examples", validation_examples),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    labels_N = np.asarray(labels_N)
    have = np.bincount(labels_N, minlength=num_classes)
    val_counts = per_class_counts(validation_examples, num_classes)
    if train_examples:
        train_counts = per_class_counts(train_examples, num_classes)
    else:
        train_counts = have - val_counts
    short = np.flatnonzero(train_counts + val_counts > have)
    if short.size or (train_counts < 0).any():
        c = int(short[0]) if short.size else int(np.flatnonzero(train_counts < 0)[0])
        raise ValueError(
            f"class {c} has {have[c]} examples but the split needs {train_counts[c]} for training "
            f"+ {val_counts[c]} held out (train_examples={train_examples}, "
            f"validation_examples={validation_examples}, {num_classes} classes)"
        )
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels_N == c))
        val_idx.append(members[: val_counts[c]])
        train_idx.append(members[val_counts[c] : val_counts[c] + train_counts[c]])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
