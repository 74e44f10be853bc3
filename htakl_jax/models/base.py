"""Shared front and back end of every topology: argument checks, folding, per-timestep logits, and
block rematerialisation.

Block remat (``Network.remat_blocks``): the stem, every residual block and every stand-alone
conv-BN-act unit runs under :func:`htakl_jax.models.remat.remat`, so the forward keeps only block
*boundaries* (each block's input) and the conv outputs (:data:`BLOCK_REMAT_POLICY`) for the
backward, which recomputes BN, LIF membranes and spikes of one block just before differentiating
it. Variables, sown spike counts and all results are those of the plain model: only what the
backward stores changes.
"""

from __future__ import annotations

import operator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from htakl_jax.layers import (
    IM2COL_MAX_PIXELS,
    DirectEncoder,
    LayerFactory,
    scale_width,
    unfold_time,
)
from htakl_jax.models import remat as remat_lib

# Model-level remat modes (see :func:`check_remat`).
REMAT_MODES = ("none", "neuron", "block")


# What a remat block keeps from its forward besides its inputs: its conv outputs, so no conv runs
# twice (benchmarks/memory.py measures this against saving nothing).
BLOCK_REMAT_POLICY = remat_lib.save_conv_outputs


def check_remat(remat: str) -> str:
    """``remat`` if it is one of :data:`REMAT_MODES`, else a ValueError.

    ``"none"``: plain backward. ``"neuron"``: every LIF recomputes its membrane in its own backward
    (the LIF ``remat`` field). ``"block"``: every block recomputes its internals (see the module
    docstring).
    """
    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
    return remat


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

    ``__call__(x_BHWC, *, train, timesteps=None, return_features=False, features=None)``:
      x_BHWC: normalised float images ``[B, H, W, C]`` (8x8, 32x32 or 64x64 all work).
      train: BatchNorm uses batch statistics (and updates 'batch_stats', which must be mutable) when
        True, running averages when False.
      timesteps: overrides ``self.timesteps`` for this call (SNN only; the ANN ignores it).
      return_features: also return the penultimate features (the input of the last dense layer).
      features: with the 'features' collection mutable, sow every stage's output (ResNet-19: 3
        stages, ResNet-20 and SEW-ResNet: 4, VGG-16: its 5 conv blocks before pooling) for the
        feature-distillation methods: the ANN's post-ReLU map, the student's time mean of its
        block output spikes ('rate'), of the input current of the block's last LIF ('preact') or
        of its charged membrane ('membrane'). Read them with ``layers.stage_features``. None (the
        default): no taps, the plain forward pass.
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
    # Recompute each block's internals in the backward (see the module docstring).
    remat_blocks: bool = False
    # On CPU, convolutions over at most this many pixels with >= layers.IM2COL_MIN_CHANNELS channels
    # run as matmuls (the same result up to float rounding); 0 keeps XLA's convolution everywhere.
    im2col_max_pixels: int = IM2COL_MAX_PIXELS

    def _forward(
        self, x_BHWC: jax.Array, ops: LayerFactory, *, train: bool, timesteps: int
    ) -> tuple[jax.Array, jax.Array]:
        """Returns time-folded ``(logits [N, classes], features [N, D])``, N = T*B (SNN) or B."""
        raise NotImplementedError

    def width(self, channels: int) -> int:
        """``channels`` scaled by ``width_mult``."""
        return scale_width(channels, self.width_mult)

    def block(self, cls: type[nn.Module]) -> type[nn.Module]:
        """The block class ``cls``, rematerialised when ``remat_blocks``.

        Call the created block positionally, ``block(x, train, timesteps)``: under remat ``train``
        and ``timesteps`` are static (they steer Python control flow and fix shapes). Variables
        and sown values keep the paths of the plain class.
        """
        if not self.remat_blocks:
            return cls
        return remat_lib.remat(cls, static_argnums=(2, 3), policy=BLOCK_REMAT_POLICY)

    def conv_bn_act(
        self,
        x: jax.Array,
        ops: LayerFactory,
        index: int,
        features: int,
        train: bool,
        timesteps: int,
        tap: str | None = None,
    ) -> jax.Array:
        """One conv3x3 (stride 1) - BN - act unit, layers named ``conv{index}``, ``bn{index}``,
        ``act{index}`` directly in this module; a remat block of its own when ``remat_blocks``.
        ``tap``: the stage name when the unit ends a stage.
        ``[N, H, W, C] -> [N, H, W, features]``."""
        unit = type(self)._conv_bn_act
        if self.remat_blocks:
            # Lifting the method (not a child module) keeps the unit's layers at the top level,
            # so remat and plain models have the same variable tree.
            static = (2, 3, 4, 5, 6, 7)
            unit = remat_lib.remat(unit, static_argnums=static, policy=BLOCK_REMAT_POLICY)
        return unit(self, x, ops, index, features, train, timesteps, tap)

    def encode(
        self,
        x_BHWC: jax.Array,
        ops: LayerFactory,
        features: int,
        names: tuple[str, str],
        train: bool,
        timesteps: int,
    ) -> jax.Array:
        """The direct-encoding stem and its activation, named ``names = (encoder, act)``; a remat
        block of its own when ``remat_blocks``. ``[B, H, W, 3] -> [T*B, H, W, features]``."""
        unit = type(self)._encode
        if self.remat_blocks:
            unit = remat_lib.remat(unit, static_argnums=(2, 3, 4, 5, 6), policy=BLOCK_REMAT_POLICY)
        return unit(self, x_BHWC, ops, features, names, train, timesteps)

    def _encode(self, x, ops, features, names, train, timesteps):
        x = DirectEncoder(ops, features, name=names[0])(x, train=train, timesteps=timesteps)
        return ops.act(x, timesteps, names[1])

    def _conv_bn_act(self, x, ops, index, features, train, timesteps, tap):
        x = ops.conv(features, 3, 1, name=f"conv{index}")(x)
        x = ops.batch_norm(train, name=f"bn{index}")(x)
        return ops.act(x, timesteps, f"act{index}", tap=tap)

    @nn.compact
    def __call__(
        self,
        x_BHWC: jax.Array,
        *,
        train: bool,
        timesteps: int | None = None,
        return_features: bool = False,
        features: str | None = None,
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
            tap_kind=features,
            im2col_max_pixels=self.im2col_max_pixels,
        )
        logits, features = self._forward(x_BHWC.astype(self.dtype), ops, train=train, timesteps=t)
        logits = logits.astype(jnp.float32)
        if self.spiking:
            logits, features = unfold_time(logits, t), unfold_time(features, t)
        return (logits, features) if return_features else logits
