"""Quickstart: scikit-learn digits (8x8, 10 classes, offline), a narrow ResNet-20, CPU-sized.

`python -m htakl_jax.main --config configs/quickstart.py --workdir /tmp/qs` trains the teacher,
distills a T=2 student with HTA-KL and evaluates it at T = 1, 2, 4 in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import ml_collections

from htakl_jax import defaults


def get_config() -> ml_collections.ConfigDict:
    """Digits + resnet20 at width 1/4, teacher and student each trained for a few epochs."""
    config = defaults.get_config()
    config.data.name = "digits"
    config.data.pad = 1  # 8x8 images: a 1-pixel shift is the analogue of CIFAR's 4 at 32x32
    config.data.flip = False  # digits are not mirror-symmetric
    config.model.name = "resnet20"
    config.model.width_mult = 0.25
    # At this tiny width, charging with the full input (h = v - v / tau + x) keeps enough spikes
    # flowing for the student to learn in a few epochs; the default (decay_input=True) learns
    # several times slower here.
    config.model.neuron.decay_input = False
    config.teacher.epochs = 15
    config.teacher.batch_size = 64
    config.teacher.lr = 0.1
    config.student.timesteps = 2
    config.student.epochs = 40
    config.student.batch_size = 64
    config.student.lr = 0.1
    config.eval.timesteps = (1, 2, 4)
    config.eval.batch_size = 128
    config.log_every_steps = 10
    return config
