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
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

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


# On the CPU backend, convolutions over images of at most IM2COL_MAX_PIXELS pixels (H * W;
# ResNet-20's last two stages, 4x4 and 2x2 at 32x32 input) with at least IM2COL_MIN_CHANNELS input
# channels run as one matmul over im2col patches (`im2col_conv`). XLA:CPU (JAX 0.10.2) otherwise
# turned some of their gradients into convolutions whose window is the whole 2x2 image, which its
# Eigen kernels ran at about 2 GFLOP/s: at full width and batch 64, ResNet-20's stage-4 gradients
# took 3.2 s of a 4.0 s ANN training step, the whole step 0.6 s with matmuls (`python
# benchmarks/conv.py`). Larger images and narrow layers keep XLA's convolution, which was faster
# or as fast there (with every small image as matmuls, the quickstart's student at width 1/4 on
# 8x8 digits trained 17% slower). Other backends always keep XLA's convolution.
IM2COL_MAX_PIXELS = 16
IM2COL_MIN_CHANNELS = 128
# The `checkpoint_name` of an `im2col_conv` output, so remat policies can save it like a conv's.
CONV_OUTPUT = "conv_output"
_NHWC = ("NHWC", "HWIO", "NHWC")


def im2col_conv(
    x_NHWC: jax.Array,
    kernel_HWIO: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
) -> jax.Array:
    """The convolution ``[N, H, W, I] * [KH, KW, I, O] -> [N, OH, OW, O]`` as one matmul.

    The padded input's KH * KW shifted, strided views are concatenated along channels into patches
    ``[N, OH, OW, KH*KW*I]`` (ordered like the kernel's leading axes) and multiplied by the kernel
    reshaped to ``[KH*KW*I, O]``, accumulating in float32. Equals ``lax.conv_general_dilated``
    with explicit ``padding`` ((top, bottom), (left, right)) up to float rounding; its gradients
    are matmuls and slices.
    """
    kh, kw, i, o = kernel_HWIO.shape
    (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
    x = jnp.pad(x_NHWC, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    views = [
        x[:, a : a + (oh - 1) * sh + 1 : sh, b : b + (ow - 1) * sw + 1 : sw, :]
        for a in range(kh)
        for b in range(kw)
    ]
    patches = jnp.concatenate(views, axis=-1)
    y = jnp.matmul(patches, kernel_HWIO.reshape(kh * kw * i, o), preferred_element_type=jnp.float32)
    return checkpoint_name(y.astype(jnp.result_type(x_NHWC, kernel_HWIO)), CONV_OUTPUT)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    *,
    max_pixels: int = IM2COL_MAX_PIXELS,
) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments, for ``nn.Conv``) that runs as
    :func:`im2col_conv` on the CPU backend for NHWC images of at most ``max_pixels`` pixels and at
    least IM2COL_MIN_CHANNELS channels (explicit padding, no dilation, one group); as XLA's
    convolution otherwise."""
    as_matmul = (
        jax.default_backend() == "cpu"
        and lhs.ndim == 4
        and lhs.shape[1] * lhs.shape[2] <= max_pixels
        and not isinstance(padding, str)
        and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        and feature_group_count == 1
        and lhs.shape[-1] >= IM2COL_MIN_CHANNELS
        and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if as_matmul:
        return im2col_conv(lhs, rhs, window_strides, padding)
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
    )


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
    # On CPU, convolutions over at most this many pixels (and >= IM2COL_MIN_CHANNELS channels) run
    # as matmuls (`conv_general_dilated`); 0: none.
    im2col_max_pixels: int = IM2COL_MAX_PIXELS

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
            conv_general_dilated=functools.partial(
                conv_general_dilated, max_pixels=self.im2col_max_pixels
            ),
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
