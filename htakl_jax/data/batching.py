"""Stateless batch order: every index array is a pure function of (seed, epoch, step).

Resuming therefore needs no iterator state, and all hosts of a multi-host run agree on the global
batch; each host then takes its contiguous part with `process_slice`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _check_nonneg_int(value: int, arg: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{arg} must be a non-negative int, got {value!r}")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """Permutation of range(n), int64 [n], determined by (seed, epoch) alone.

    Uses NumPy's PCG64 seeded with the entropy (seed, epoch); no global RNG state is touched.
    """
    _check_nonneg_int(seed, "seed")
    _check_nonneg_int(epoch, "epoch")
    _check_nonneg_int(n, "n")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int64)


def num_batches(n: int, batch_size: int, *, drop_last: bool = True) -> int:
    """Number of batches `epoch_batches` yields for n examples."""
    _check_nonneg_int(n, "n")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_batches(
    seed: int,
    epoch: int,
    n: int,
    global_batch_size: int,
    *,
    drop_last: bool = True,
    start: int = 0,
) -> Iterator[np.ndarray]:
    """Yield int64 [global_batch_size] index arrays of one shuffled epoch, from batch `start`.

    drop_last=False yields a final smaller batch. `start` resumes mid-epoch (batch number).
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    _check_nonneg_int(start, "start")
    perm = epoch_permutation(seed, epoch, n)
    for i in range(start, num_batches(n, global_batch_size, drop_last=drop_last)):
        yield perm[i * global_batch_size : (i + 1) * global_batch_size]


def step_batches(
    seed: int, n: int, global_batch_size: int, *, num_epochs: int, start_step: int = 0
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (epoch, int64 [global_batch_size] indices) for every training step from global step
    `start_step` to the end of epoch `num_epochs` (exclusive end; epochs of
    `num_batches(n, global_batch_size)` steps in `epoch_batches` order, last partial batch
    dropped), so that a training loop over steps is one flat loop and resuming is `start_step`.
    """
    per_epoch = num_batches(n, global_batch_size)
    if per_epoch < 1:
        raise ValueError(f"global batch of {global_batch_size} exceeds the {n} examples")
    _check_nonneg_int(start_step, "start_step")
    first_epoch, first_batch = divmod(start_step, per_epoch)
    for epoch in range(first_epoch, num_epochs):
        start = first_batch if epoch == first_epoch else 0
        for indices in epoch_batches(seed, epoch, n, global_batch_size, start=start):
            yield epoch, indices


def process_slice(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This host's contiguous part [B / process_count] of a global batch of indices [B]."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count), got {process_index} of {process_count}"
        )
    b = len(indices)
    if b % process_count:
        raise ValueError(
            f"global batch of {b} indices does not split evenly over {process_count} processes"
        )
    per = b // process_count
    return indices[process_index * per : (process_index + 1) * per]


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices int64 [batch_size], valid bool [batch_size]) in order 0..n-1.

    Every example appears exactly once with valid=True; the last batch is padded with index 0 and
    valid=False so that every batch has one static shape (no recompilation).
    """
    _check_nonneg_int(n, "n")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size, dtype=np.int64)
        valid = idx < n
        yield np.where(valid, idx, 0), valid
