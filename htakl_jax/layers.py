"""Building blocks shared by the ANN teachers and SNN students.

Layout convention (docs/method.md §3): inside a network every activation is *time folded*: an
SNN tensor ``[T, B, H, W, C]`` is stored as ``[T*B, H, W, C]`` (time-major, ``n = t * B + b``),
an ANN tensor is plain ``[B, H, W, C]``. Convolutions, BatchNorm, pooling and dense layers
therefore run unchanged on either; only the LIF neuron unfolds to ``[T, B, ...]`` to scan over
time (see :meth:`LayerFactory.act`).

Because BatchNorm sees the folded batch, it normalises over ``T*B`` samples: this is the
threshold-dependent BatchNorm (tdBN) of Zheng et al. with ``alpha * V_th = 1``: tdBN normalises
pre-activations over time and batch to ``alpha * V_th * (x - mean) / sqrt(var + eps)``; with the
default ``v_threshold = 1`` and ``alpha = 1`` that is the standard BatchNorm with scale initialised
to 1, so no special layer is needed.

Direct encoding (:class:`DirectEncoder`): the student sees the same static image at every timestep,
so its first conv + BN is computed once on ``[B, ...]`` and the result repeated ``T`` times. This is
exactly equal to running the folded conv + BN on ``T`` copies of the image: the conv is per sample,
and ``T`` identical copies have the same batch mean and (biased) variance as one copy, so both the
normalised output and the running-statistics update are identical; ``T - 1`` convolutions are saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from htakl_jax.neurons import FEATURES, LIF, TAP_KINDS

# BatchNorm constants shared by every model (PyTorch momentum 0.1 == Flax momentum 0.9).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Keyword arguments that get_model forwards to every LIF neuron.
NEURON_KWARGS = frozenset(
    {"tau", "v_threshold", "v_reset", "decay_input", "detach_reset", "surrogate", "remat"}
)


def check_neuron_kwargs(names: Iterable[str]) -> None:
    """ValueError listing any name that is not a LIF field in :data:`NEURON_KWARGS`."""
    unknown = set(names) - NEURON_KWARGS
    if unknown:
        raise ValueError(f"unknown neuron kwargs {sorted(unknown)}; valid: {sorted(NEURON_KWARGS)}")


# He-normal over fan-out (torchvision's ResNet init); the layer after is always BatchNorm or the
# classifier, so the exact scale matters little, but it keeps ANN and SNN initialisation identical.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def fold_time(x_TB: jax.Array) -> jax.Array:
    """``[T, B, ...] -> [T*B, ...]`` (time-major: row ``t * B + b``)."""
    if x_TB.ndim < 2:
        raise ValueError(
            f"fold_time needs an array of rank >= 2 [T, B, ...], got shape {x_TB.shape}"
        )
    return x_TB.reshape((x_TB.shape[0] * x_TB.shape[1],) + x_TB.shape[2:])


def unfold_time(x_N: jax.Array, timesteps: int) -> jax.Array:
    """``[T*B, ...] -> [T, B, ...]``; inverse of :func:`fold_time`."""
    if x_N.ndim < 1 or timesteps < 1 or x_N.shape[0] % timesteps:
        raise ValueError(
            f"unfold_time: leading dim of shape {x_N.shape} is not a multiple of "
            f"timesteps={timesteps}"
        )
    return x_N.reshape((timesteps, x_N.shape[0] // timesteps) + x_N.shape[1:])


def repeat_over_time(x_B: jax.Array, timesteps: int) -> jax.Array:
    """``[B, ...] -> [T*B, ...]``: the same tensor at every timestep, time folded."""
    if timesteps < 1:
        raise ValueError(f"repeat_over_time: timesteps must be >= 1, got {timesteps}")
    return fold_time(jnp.broadcast_to(x_B[None], (timesteps,) + x_B.shape))


def scale_width(channels: int, width_mult: float) -> int:
    """Channel count scaled by ``width_mult`` (rounded, at least 1)."""
    return max(1, int(round(channels * width_mult)))


def global_avg_pool(x_NHWC: jax.Array) -> jax.Array:
    """``[N, H, W, C] -> [N, C]`` mean over space."""
    return jnp.mean(x_NHWC, axis=(1, 2))


def max_pool2(x_NHWC: jax.Array) -> jax.Array:
    """2x2 stride-2 max pool. 'SAME' padding so odd or 1x1 maps (8x8 inputs) stay valid; for even
    sizes it equals the usual unpadded pool."""
    return nn.max_pool(x_NHWC, (2, 2), strides=(2, 2), padding="SAME")


def avg_pool2(x_NHWC: jax.Array) -> jax.Array:
    """2x2 stride-2 average pool ('SAME', padding excluded from the mean; see :func:`max_pool2`)."""
    return nn.avg_pool(x_NHWC, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Creates the layers of one network so each topology is written once for ANN and SNN.

    ``spiking=False``: :meth:`act` is ReLU. ``spiking=True``: :meth:`act` is a LIF neuron (fields
    of ``neuron_kwargs`` forwarded) scanned over time. The conv / BN / dense constructors fix the
    shared conventions (no conv bias before BN, symmetric PyTorch-style padding, BN constants,
    dtype, ``bn_axis_name`` for cross-device batch statistics under ``shard_map``).

    The constructors must be called inside a ``@nn.compact`` method: the created module becomes a
    child of the module being defined.
    """

    spiking: bool
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    neuron_kwargs: tuple[tuple[str, Any], ...] = ()
    # What stage taps record (one of TAP_KINDS for a student; an ANN records its ReLU output);
    # None: taps record nothing and the forward pass is the plain one.
    tap_kind: str | None = None

    def __post_init__(self):
        check_neuron_kwargs(k for k, _ in self.neuron_kwargs)
        if self.tap_kind is not None and self.tap_kind not in TAP_KINDS:
            raise ValueError(f"features must be one of {TAP_KINDS} or None, got {self.tap_kind!r}")

    def conv(
        self, features: int, kernel_size: int = 3, strides: int = 1, name: str | None = None
    ) -> nn.Conv:
        """Bias-free ``kernel_size`` conv with padding ``kernel_size // 2`` (as PyTorch)."""
        pad = kernel_size // 2
        return nn.Conv(
            features,
            (kernel_size, kernel_size),
            strides=(strides, strides),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv_kernel_init,
            name=name,
        )

    def batch_norm(self, train: bool, name: str | None = None) -> nn.BatchNorm:
        """BatchNorm over all leading axes (``T*B*H*W`` in the folded layout)."""
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=self.dtype,
            axis_name=self.bn_axis_name,
            name=name,
        )

    def dense(self, features: int, name: str | None = None) -> nn.Dense:
        return nn.Dense(features, dtype=self.dtype, name=name)

    def act(self, x_N: jax.Array, timesteps: int, name: str, tap: str | None = None) -> jax.Array:
        """ReLU (ANN) or LIF spikes (SNN) of a time-folded ``[T*B, ...]`` array, same shape.

        For the SNN the LIF module is created under ``name``; it sows its spike counts into the
        'intermediates' collection at that path. ``tap`` names a stage output: with
        ``tap_kind`` set, the ANN's ReLU output or the LIF's ``tap_kind`` feature is sown into
        the 'features' collection under that name (see :func:`stage_features`).
        """
        tap = tap if self.tap_kind is not None else None
        if not self.spiking:
            y = nn.relu(x_N)
            if tap is not None:
                Tap(name=tap)(y)
            return y
        lif = LIF(**dict(self.neuron_kwargs), tap=tap, tap_kind=self.tap_kind or "rate", name=name)
        return fold_time(lif(unfold_time(x_N, timesteps)))

    def tap(self, x_N: jax.Array, timesteps: int, name: str) -> None:
        """Records a stage output that is no activation's (SEW-ResNet's spike sums) when
        ``tap_kind`` is 'rate' (time mean for the SNN) or the network is an ANN."""
        if self.tap_kind is None or (self.spiking and self.tap_kind != "rate"):
            return
        Tap(name=name)(jnp.mean(unfold_time(x_N, timesteps), 0) if self.spiking else x_N)


class Tap(nn.Module):
    """Sows its input, unchanged, into the 'features' collection under its own name (when that
    collection is mutable)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.is_mutable_collection(FEATURES):
            self.sow(FEATURES, self.name, x)
        return x


def stage_features(collection: Mapping[str, Any]) -> list[jax.Array]:
    """The sown 'features' collection of one apply as a list in stage order (stage1, stage2, ...):
    ``[B, H, W, C]`` each (a student's averaged over time)."""
    found = {}
    for path, values in flax.traverse_util.flatten_dict(dict(collection)).items():
        found[path[-1]] = values[0]
    if not found:
        raise ValueError(
            "no stage features were sown: apply with features=KIND and mutable=['features']"
        )
    return [found[k] for k in sorted(found, key=lambda k: int(k.removeprefix("stage")))]


class DirectEncoder(nn.Module):
    """First conv + BN on the static image, computed once and repeated over time.

    ``__call__(x_BHWC, *, train, timesteps) -> [T*B, H', W', features]`` (SNN, time folded) or
    ``[B, H', W', features]`` (ANN). Not followed by an activation: the caller applies
    :meth:`LayerFactory.act` so the first LIF is named like every other.
    """

    ops: LayerFactory
    features: int
    kernel_size: int = 3
    strides: int = 1

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool, timesteps: int) -> jax.Array:
        y = self.ops.conv(self.features, self.kernel_size, self.strides, name="conv")(x_BHWC)
        y = self.ops.batch_norm(train, name="bn")(y)
        return repeat_over_time(y, timesteps) if self.ops.spiking else y


def neuron_kwargs_tuple(neuron_kwargs: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Hashable, order-independent form of neuron kwargs (for Flax module fields)."""
    return tuple(sorted(neuron_kwargs.items()))
