"""Model zoo: ``get_model(name, ...)`` builds an ANN teacher or an SNN student of one topology."""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from htakl_jax.layers import check_neuron_kwargs, neuron_kwargs_tuple
from htakl_jax.models.base import REMAT_MODES, Network, check_positive_int, check_remat
from htakl_jax.models.resnet import BasicBlock, ResNet19, ResNet20
from htakl_jax.models.sew_resnet import SEWBlock, SEWResNet
from htakl_jax.models.vgg import VGG16

# Compute dtypes by name (the `model.dtype` config key); parameters always stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

MODELS = {
    "resnet19": ResNet19,
    "resnet20": ResNet20,
    "vgg16": VGG16,
    "sew_resnet18": functools.partial(SEWResNet, blocks=(2, 2, 2, 2)),
    "sew_resnet34": functools.partial(SEWResNet, blocks=(3, 4, 6, 3)),
}


def get_model(
    name: str,
    *,
    num_classes: int,
    spiking: bool,
    timesteps: int = 4,
    width_mult: float = 1.0,
    dtype: Any = jnp.float32,
    bn_axis_name: str | None = None,
    remat: str = "none",
    **neuron_kwargs: Any,
) -> Network:
    """Build a classifier: ``spiking=False`` the ANN teacher (ReLU), ``True`` the SNN student (LIF).

    Args:
      name: one of ``MODELS`` (resnet19, resnet20, vgg16, sew_resnet18, sew_resnet34).
      num_classes: size of the logits' last axis.
      spiking: LIF neurons over ``timesteps`` steps instead of ReLU.
      timesteps: default T of the student (override per call with ``apply(..., timesteps=T2)``).
      width_mult: scales every channel / hidden width (rounded, at least 1).
      dtype: computation dtype (parameters stay float32; logits are returned as float32).
      bn_axis_name: mesh axis for cross-device BatchNorm statistics inside ``jax.shard_map``.
      remat: what the backward recomputes instead of storing (memory for time; results, variables
        and sown values are unchanged): ``"none"``; ``"neuron"``, each LIF its membrane;
        ``"block"``, each residual block / conv-BN-act unit all but its conv outputs (see
        :mod:`htakl_jax.models.base`).
      **neuron_kwargs: tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, forwarded
        to every LIF (accepted and unused for the ANN).

    ``model.apply(variables, x_BHWC, train=...)`` returns ``[B, classes]`` (ANN) or
    ``[T, B, classes]`` (SNN); see :class:`htakl_jax.models.base.Network`.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid names: {sorted(MODELS)}")
    num_classes = check_positive_int(num_classes, "num_classes")
    timesteps = check_positive_int(timesteps, "timesteps")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    check_neuron_kwargs(neuron_kwargs)
    remat = check_remat(remat)
    if remat == "neuron":
        neuron_kwargs["remat"] = True
    return MODELS[name](
        num_classes=num_classes,
        spiking=bool(spiking),
        timesteps=timesteps,
        width_mult=width_mult,
        dtype=dtype,
        bn_axis_name=bn_axis_name,
        neuron_kwargs=neuron_kwargs_tuple(neuron_kwargs),
        remat_blocks=remat == "block",
    )


__all__ = [
    "DTYPES",
    "MODELS",
    "REMAT_MODES",
    "BasicBlock",
    "Network",
    "ResNet19",
    "ResNet20",
    "SEWBlock",
    "SEWResNet",
    "VGG16",
    "get_model",
]
