"""Datasets as uint8 arrays (`load_split`), on-device augmentation, stateless batch order."""

from htakl_jax.data.augment import augment, normalize, random_crop, random_flip
from htakl_jax.data.batching import (
    epoch_batches,
    epoch_permutation,
    eval_batches,
    num_batches,
    process_slice,
    step_batches,
)
from htakl_jax.data.sources import SOURCES, DatasetInfo, channel_stats, check_split, load_split
from htakl_jax.data.subsets import balanced_split

__all__ = [
    "SOURCES",
    "DatasetInfo",
    "augment",
    "balanced_split",
    "channel_stats",
    "check_split",
    "epoch_batches",
    "epoch_permutation",
    "eval_batches",
    "load_split",
    "normalize",
    "num_batches",
    "process_slice",
    "random_crop",
    "random_flip",
    "step_batches",
]
