"""CIFAR-10/100 experiments with the paper's protocol.

Usage: `--config configs/cifar.py:DATASET,ARCH,T`, e.g. `configs/cifar.py:cifar100,resnet20,2`.
DATASET in {cifar10, cifar100} (tensorflow-datasets source; prepare it once with `tfds build`),
ARCH in {resnet19, resnet20, vgg16}, T = training timesteps of the student (1, 2, 4 or 6).
Paper settings: SGD momentum 0.9, LR 0.01 with cosine decay, batch 128, 300 epochs, random crop (pad
4) + horizontal flip. Choices where the paper is silent are documented in htakl_jax/defaults.py.
"""

from __future__ import annotations

import ml_collections

from htakl_jax import defaults

_DATASETS = ("cifar10", "cifar100")
_ARCHS = ("resnet19", "resnet20", "vgg16")


def get_config(arg: str = "cifar10,resnet20,4") -> ml_collections.ConfigDict:
    """Returns the config for 'DATASET,ARCH,T'."""
    parts = [p.strip() for p in arg.split(",")]
    if len(parts) != 3:
        raise ValueError(f"configs/cifar.py expects 'DATASET,ARCH,T', got {arg!r}")
    dataset, arch, timesteps = parts
    if dataset not in _DATASETS:
        raise ValueError(f"configs/cifar.py: dataset {dataset!r} not in {_DATASETS}")
    if arch not in _ARCHS:
        raise ValueError(f"configs/cifar.py: arch {arch!r} not in {_ARCHS}")
    if not timesteps.isdigit() or int(timesteps) < 1:
        raise ValueError(f"configs/cifar.py: T must be a positive integer, got {timesteps!r}")

    config = defaults.get_config()
    config.data.name = dataset
    config.data.pad = 4
    config.data.flip = True
    config.model.name = arch
    config.student.timesteps = int(timesteps)
    config.student.lr = 0.01
    config.student.epochs = 300
    config.student.batch_size = 128
    config.teacher.epochs = 300
    config.teacher.batch_size = 128
    return config
