"""Shared front and back end of every topology: argument checks, folding, per-timestep logits."""

from __future__ import annotations

import operator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from htakl_jax.layers import LayerFactory, scale_width, unfold_time


def check_positive_int(value: Any, what: str) -> int:
    """``value`` as a Python int (static: it fixes shapes), or a ValueError naming ``what``."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be a positive int, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


class Network(nn.Module):
    """Base of all classifiers; a subclass implements ``_forward``.

    ``__call__(x_BHWC, *, train, timesteps=None, return_features=False)``:
      x_BHWC: normalised float images ``[B, H, W, C]`` (8x8, 32x32 or 64x64 all work).
      train: BatchNorm uses batch statistics (and updates 'batch_stats', which must be mutable) when
        True, running averages when False.
      timesteps: overrides ``self.timesteps`` for this call (SNN only; the ANN ignores it).
      return_features: also return the penultimate features (the input of the last dense layer).
    Returns float32 logits ``[B, classes]`` (ANN) or per-timestep ``[T, B, classes]`` (SNN; predict
    with their mean over T), and with ``return_features`` a tuple ``(logits, features)`` with
    features ``[B, D]`` / ``[T, B, D]``.
    """

    num_classes: int
    spiking: bool = False
    timesteps: int = 4
    width_mult: float = 1.0
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    neuron_kwargs: tuple[tuple[str, Any], ...] = ()

    def _forward(
        self, x_BHWC: jax.Array, ops: LayerFactory, *, train: bool, timesteps: int
    ) -> tuple[jax.Array, jax.Array]:
        """Returns time-folded ``(logits [N, classes], features [N, D])``, N = T*B (SNN) or B."""
        raise NotImplementedError

    def width(self, channels: int) -> int:
        """``channels`` scaled by ``width_mult``."""
        return scale_width(channels, self.width_mult)

    @nn.compact
    def __call__(
        self,
        x_BHWC: jax.Array,
        *,
        train: bool,
        timesteps: int | None = None,
        return_features: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        if x_BHWC.ndim != 4:
            raise ValueError(f"x_BHWC must be [B, H, W, C] images, got shape {x_BHWC.shape}")
        if not jnp.issubdtype(x_BHWC.dtype, jnp.floating):
            raise ValueError(f"x_BHWC must be normalised floats, got dtype {x_BHWC.dtype}")
        t = self.timesteps if timesteps is None else timesteps
        if self.spiking:
            t = check_positive_int(t, "timesteps")
        else:
            t = 1
        ops = LayerFactory(
            spiking=self.spiking,
            dtype=self.dtype,
            bn_axis_name=self.bn_axis_name,
            neuron_kwargs=self.neuron_kwargs,
        )
        logits, features = self._forward(x_BHWC.astype(self.dtype), ops, train=train, timesteps=t)
        logits = logits.astype(jnp.float32)
        if self.spiking:
            logits, features = unfold_time(logits, t), unfold_time(features, t)
        return (logits, features) if return_features else logits
