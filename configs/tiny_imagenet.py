"""Tiny ImageNet (64x64, 200 classes) from its native folder layout.

Usage: `--config configs/tiny_imagenet.py:ARCH,T` with ARCH in {resnet20, vgg16, sew_resnet18,
sew_resnet34} and T the student's training timesteps (the paper reports T = 1 and 2), e.g.
`configs/tiny_imagenet.py:vgg16,2`. Point `--config.data.data_dir` at the `tiny-imagenet-200`
folder (wnids.txt, train/, val/); the default is `data/tiny-imagenet-200` (README "Data").
The evaluation split is the official validation set (the test set has no labels).
"""

from __future__ import annotations

import ml_collections

from htakl_jax import defaults

_ARCHS = ("resnet20", "vgg16", "sew_resnet18", "sew_resnet34")


def get_config(arg: str = "resnet20,2") -> ml_collections.ConfigDict:
    """Returns the config for 'ARCH,T'."""
    parts = [p.strip() for p in arg.split(",")]
    if len(parts) != 2:
        raise ValueError(f"configs/tiny_imagenet.py expects 'ARCH,T', got {arg!r}")
    arch, timesteps = parts
    if arch not in _ARCHS:
        raise ValueError(f"configs/tiny_imagenet.py: arch {arch!r} not in {_ARCHS}")
    if not timesteps.isdigit() or int(timesteps) < 1:
        raise ValueError(
            f"configs/tiny_imagenet.py: T must be a positive integer, got {timesteps!r}"
        )

    config = defaults.get_config()
    config.data.name = "tiny_imagenet"
    config.data.data_dir = "data/tiny-imagenet-200"
    config.data.train_split = "train"
    config.data.eval_split = "val"
    # Same augmentation as CIFAR (pad 4 + crop, flip), the common Tiny ImageNet SNN setting.
    config.data.pad = 4
    config.model.name = arch
    config.student.timesteps = int(timesteps)
    config.eval.timesteps = (1, 2, 4)
    return config
