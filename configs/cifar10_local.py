"""CIFAR-10 from a local image-folder tree (`root/{train,test}/<class>/*.jpg`), no tfds needed.

Defaults to `data/cifar10` (relative to the repository root, where README "Data" puts the data;
set `--config.data.data_dir` for another location). Decoded arrays are cached under
`data.cache_dir`.
Usage: `--config configs/cifar10_local.py:ARCH,T` (default `resnet20,4`).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import ml_collections


def get_config(arg: str = "resnet20,4") -> ml_collections.ConfigDict:
    """Returns the config for 'ARCH,T' on the local CIFAR-10 image folders."""
    config = runpy.run_path(str(Path(__file__).with_name("cifar.py")))["get_config"](
        f"cifar10,{arg}"
    )
    config.data.name = "image_folder"
    config.data.data_dir = "data/cifar10"
    return config
