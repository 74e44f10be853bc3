"""The reduced-scale reproduction on real data for 2 CPU cores (results/, README "Results").

Usage: `--config configs/reduced.py:DATASET` with DATASET `cifar10` (the JPEG image folders in
`data/cifar10`) or `tiny_imagenet` (a 40-images-per-class subset in `data/tiny-imagenet-200`);
the grids are run through `configs/compare.py:reduced:DATASET` (results/README.md has the
commands).

What is reduced, relative to the paper (ResNet-20, full data, 300 epochs, T up to 6):
- width: resnet20 at width 1/8 (stage widths 8-16-32-64; 3.4 M MACs at 32x32 instead of 216 M);
- data: CIFAR-10 trains on a fixed class-balanced subset of 5,000 of the 50,000 training images;
  a further 1,000 training images (100 per class, disjoint) are held out for tuning alpha and the
  KD temperature. Tiny ImageNet trains on all 8,000 subset images (40 per class, no hold-out: too
  few to spare) and reuses the CIFAR-10 alpha and temperature;
- epochs: teacher 40 (CIFAR-10) / 8 (Tiny ImageNet); students 5 (CIFAR-10) / 2 (Tiny ImageNet),
  cosine schedule, batch 64;
- evaluation happens once, after the last epoch (no best-on-test checkpoint selection), on the
  whole test split (Tiny ImageNet: the 10,000 validation images), at T = 1 and 2.
Choices made for the small width and short schedule, identical for every method:
- `decay_input=False` LIF (h = v - v/tau + x): at width 1/8 the default charge (x/tau) leaves
  most neurons silent and the students learn several times slower (see configs/quickstart.py);
- student learning rate 0.4 (the paper's 0.01 is for 300 epochs): with CE alone and T = 1, three
  epochs reach 10.7% / 18.4% / 23.9% hold-out accuracy at 0.02 / 0.1 / 0.4 (one run each).
alpha and the KD temperature come from results/tuning.json, written by results/tune_cifar10.sh
(FKL on the CIFAR-10 hold-out); without that file, alpha 0.9 and temperature 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from htakl_jax import defaults

TUNING = Path(__file__).resolve().parents[1] / "results" / "tuning.json"


def tuned_kd() -> tuple[float, float]:
    """(alpha, temperature) chosen on the CIFAR-10 hold-out, or (0.9, 4.0) before tuning."""
    if not TUNING.is_file():
        return 0.9, 4.0
    chosen = json.loads(TUNING.read_text())["chosen"]
    return float(chosen["alpha"]), float(chosen["temperature"])


def get_config(arg: str = "cifar10") -> ml_collections.ConfigDict:
    """The reduced protocol for `arg` in {cifar10, tiny_imagenet}."""
    if arg not in ("cifar10", "tiny_imagenet"):
        raise ValueError(
            f"configs/reduced.py: dataset must be cifar10 or tiny_imagenet, got {arg!r}"
        )
    config = defaults.get_config()
    if arg == "cifar10":
        config.data.name = "image_folder"
        config.data.data_dir = "data/cifar10"
        config.data.train_examples = 5000
        config.data.validation_examples = 1000
        config.teacher.epochs = 40
        config.student.epochs = 5
    else:
        config.data.name = "tiny_imagenet"
        config.data.data_dir = "data/tiny-imagenet-200"
        config.data.eval_split = "val"
        config.data.pad = 8  # 64x64 images: twice CIFAR's 4-pixel shift
        config.teacher.epochs = 8
        config.student.epochs = 2
    config.model.name = "resnet20"
    config.model.width_mult = 0.125
    config.model.neuron.decay_input = False
    config.teacher.batch_size = 64
    config.student.batch_size = 64
    config.student.lr = 0.4
    config.student.timesteps = 2
    config.student.alpha, config.student.temperature = tuned_kd()
    config.eval.timesteps = (1, 2)
    config.eval.batch_size = 500
    # One evaluation after the last epoch: the test split never selects a checkpoint.
    config.eval.every_epochs = 1000
    config.checkpoint.every_epochs = 1
    config.log_every_steps = 20
    return config
