"""Multi-step LIF / IF spiking neurons with SpikingJelly ``LIFNode(step_mode='m')`` semantics.

Per element, over the leading time axis ``t = 0 .. T-1`` (docs/method.md §2), with
``v[-1] = v_reset`` (hard reset) or ``0`` (soft reset, ``v_reset=None``, which also uses 0 inside
the charge):

- charge, ``decay_input=True``:  ``h[t] = v[t-1] + (x[t] - (v[t-1] - v_reset)) / tau``
- charge, ``decay_input=False``: ``h[t] = v[t-1] - (v[t-1] - v_reset) / tau + x[t]``
- charge, IF (``tau -> inf``):   ``h[t] = v[t-1] + x[t]``
- fire:  ``s[t] = H(h[t] - v_threshold)`` with ``H(0) = 1``, surrogate derivative backward
- reset: hard ``v[t] = h[t] (1 - s') + v_reset s'``; soft ``v[t] = h[t] - v_threshold s'``,
  ``s' = stop_gradient(s[t])`` when ``detach_reset`` else ``s[t]``.

The public functions use a fused ``jax.custom_vjp`` over the whole sequence: the forward is one
``lax.scan`` that saves only the pre-spike membrane ``h`` ([T, ...], the one array the backward
needs: spikes are ``h >= v_threshold``), and the backward is one reverse ``lax.scan`` doing BPTT by
hand (both fully unrolled for T <= 6, where XLA then fuses each into one elementwise pass).
:func:`lif_autodiff` is the plain autodiff-through-scan reference kept for cross-checks.
Gradients flow to ``x_seq`` only; the neuron constants are static Python numbers. Forward-mode
autodiff (``jax.jvp``) is not supported by the fused path (a ``custom_vjp`` limitation).

The membrane is computed in ``x_seq``'s dtype (as SpikingJelly does), so bf16 inputs give a bf16
membrane.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from htakl_jax import surrogate as surrogate_lib

__all__ = [
    "IF",
    "LIF",
    "MAX_UNROLLED_T",
    "NeuronConfig",
    "if_neuron",
    "lif",
    "lif_autodiff",
    "neuron_config",
]

SpikeFn = Callable[[jax.Array], jax.Array]

_DEFAULT_SURROGATE = surrogate_lib.sigmoid(4.0)


@dataclasses.dataclass(frozen=True)
class NeuronConfig:
    """Static neuron constants; hashable so it can be a ``nondiff_argnums`` / jit-static argument.

    ``tau=None`` means integrate-and-fire (no leak). Build it with :func:`neuron_config`, which
    checks the values.
    """

    tau: float | None
    v_threshold: float
    v_reset: float | None
    decay_input: bool
    detach_reset: bool
    surrogate: SpikeFn

    @property
    def v_init(self) -> float:
        return 0.0 if self.v_reset is None else self.v_reset

    def charge(self, v: jax.Array, x: jax.Array) -> jax.Array:
        """Pre-spike membrane ``h`` from the previous post-reset ``v`` and input ``x``."""
        if self.tau is None:
            return v + x
        v_reset = 0.0 if self.v_reset is None else self.v_reset
        # Same floating-point expression (operation order) as SpikingJelly, for exact spike parity.
        if self.decay_input:
            return v + (x - (v - v_reset)) / self.tau
        return v - (v - v_reset) / self.tau + x

    @property
    def dh_dv(self) -> float:
        return 1.0 if self.tau is None else 1.0 - 1.0 / self.tau

    @property
    def dh_dx(self) -> float:
        return 1.0 / self.tau if (self.tau is not None and self.decay_input) else 1.0

    def reset(self, h: jax.Array, s: jax.Array) -> jax.Array:
        """Post-reset membrane ``v`` from ``h`` and the (possibly detached) spike ``s``."""
        if self.v_reset is None:
            return h - self.v_threshold * s
        return h * (1 - s) + self.v_reset * s

    def spike_grad(self, h: jax.Array) -> jax.Array:
        """Surrogate ``ds/dh`` at ``h``."""
        grad = getattr(self.surrogate, "grad", None)
        if grad is None:
            # An arbitrary callable: take its VJP elementwise (it must act elementwise).
            _, vjp = jax.vjp(self.surrogate, h - self.v_threshold)
            return vjp(jnp.ones_like(h))[0]
        return grad(h - self.v_threshold)


def neuron_config(
    *,
    tau: float | None,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate_fn: SpikeFn,
) -> NeuronConfig:
    """The checked constants of one neuron; the one place their rules live.

    Raises ValueError whose message starts with the offending argument's name: ``tau`` must be
    >= 1 (``tau = 1`` is a memoryless neuron; SpikingJelly's LIFNode asserts ``tau > 1``, so it
    has no counterpart there), ``v_reset`` below ``v_threshold``, all finite Python numbers.
    """

    def as_float(name: str, value: object) -> float:
        try:
            out = float(value)  # type: ignore[arg-type]
        except (TypeError, jax.errors.ConcretizationTypeError) as e:
            raise ValueError(f"{name} must be a Python float (static), got {value!r}") from e
        if not math.isfinite(out):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return out

    if tau is not None:
        tau = as_float("tau", tau)
        if tau < 1.0:
            raise ValueError(f"tau must be >= 1 (a leak, not an overshoot), got {tau}")
    v_threshold = as_float("v_threshold", v_threshold)
    if v_reset is not None:
        v_reset = as_float("v_reset", v_reset)
        if v_reset >= v_threshold:
            raise ValueError(
                f"v_reset ({v_reset}) must be below v_threshold ({v_threshold}) "
                "or None for a soft reset"
            )
    if not callable(surrogate_fn):
        raise ValueError(f"surrogate_fn must be callable, got {surrogate_fn!r}")
    return NeuronConfig(
        tau, v_threshold, v_reset, bool(decay_input), bool(detach_reset), surrogate_fn
    )


def _check_input(x_seq: jax.Array) -> jax.Array:
    x_seq = jnp.asarray(x_seq)
    if x_seq.ndim < 1:
        raise ValueError(f"x_seq must have a leading time axis [T, ...], got shape {x_seq.shape}")
    if x_seq.shape[0] == 0:
        raise ValueError(f"x_seq must have at least one timestep, got shape {x_seq.shape}")
    if not jnp.issubdtype(x_seq.dtype, jnp.floating):
        raise ValueError(f"x_seq must be a floating array, got dtype {x_seq.dtype}")
    return x_seq


# ----------------------------------------------------------------------------------------------
# Fused path: custom_vjp over the whole sequence.

# Up to this many time steps the scans are fully unrolled. XLA then fuses the whole recurrence
# into one elementwise pass per direction with no temporary [T, ...] buffers: a scan loop re-reads
# and re-writes the membrane through memory at every step, copies the carry, and zero-fills its
# stacked outputs first. The fused pass recomputes step t from x[0..t] (O(T^2) reads), which still
# wins up to T = 8 on the fwd+bwd over [T, 64, 64, 32, 32] (T = 4: 2.1x, T = 6: 1.5x, T = 8:
# 1.2x faster) and makes the ResNet-19/20 steps 0-10% faster at T = 4 and 6; at T = 12 XLA stops
# fusing it and it is 1.6x slower than the loop. Longer sequences stay loops.
MAX_UNROLLED_T = 6


def _unroll(num_steps: int) -> bool | int:
    return True if num_steps <= MAX_UNROLLED_T else 1


def _forward_scan(
    cfg: NeuronConfig,
    x_seq: jax.Array,
    *,
    spikes: bool = True,
    membrane: bool = True,
    h: bool = True,
) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None]:
    """(spikes [T, ...], post-reset v [T, ...], pre-spike h [T, ...]); unrequested ones are None."""

    def step(v, x):
        h_t = cfg.charge(v, x)
        s_t = surrogate_lib.heaviside(h_t - cfg.v_threshold)
        v = cfg.reset(h_t, s_t)
        # Emit only what is asked for, so no unused [T, ...] stacks are materialised.
        return v, (s_t if spikes else None, v if membrane else None, h_t if h else None)

    v0 = jnp.full_like(x_seq[0], cfg.v_init)  # *_like: keeps shard_map's varying-axes type
    return jax.lax.scan(step, v0, x_seq, unroll=_unroll(x_seq.shape[0]))[1]


def _backward_scan(
    cfg: NeuronConfig, h_seq: jax.Array, gs_seq: jax.Array, gv_seq: jax.Array | None
) -> jax.Array:
    """Hand BPTT: input cotangent [T, ...] from h [T, ...] and spike / membrane cotangents."""
    a, b = cfg.dh_dv, cfg.dh_dx

    def step(dv_next, inputs):
        h, gs, gv = inputs
        s = surrogate_lib.heaviside(h - cfg.v_threshold)
        # dL/dv[t]: from h[t+1] (carried) plus the direct membrane cotangent.
        dv = dv_next if gv is None else dv_next + gv
        if cfg.v_reset is None:
            dv_dh, dv_ds = 1.0, -cfg.v_threshold
        else:
            dv_dh, dv_ds = 1 - s, cfg.v_reset - h
        ds = gs if cfg.detach_reset else gs + dv * dv_ds
        dh = dv * dv_dh + ds * cfg.spike_grad(h).astype(h.dtype)
        return a * dh, b * dh

    dv0 = jnp.zeros_like(h_seq[0])
    xs = (h_seq, gs_seq.astype(h_seq.dtype), None if gv_seq is None else gv_seq.astype(h_seq.dtype))
    _, dx_seq = jax.lax.scan(step, dv0, xs, reverse=True, unroll=_unroll(h_seq.shape[0]))
    return dx_seq


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _lif_fused(cfg: NeuronConfig, with_membrane: bool, remat: bool, x_seq: jax.Array):
    s_seq, v_seq, _ = _forward_scan(cfg, x_seq, membrane=with_membrane, h=False)
    return (s_seq, v_seq) if with_membrane else s_seq


def _lif_fused_fwd(cfg: NeuronConfig, with_membrane: bool, remat: bool, x_seq: jax.Array):
    s_seq, v_seq, h_seq = _forward_scan(cfg, x_seq, membrane=with_membrane, h=not remat)
    out = (s_seq, v_seq) if with_membrane else s_seq
    # remat: keep x (usually alive upstream anyway) and recompute h in the backward instead.
    return out, (x_seq if remat else h_seq)


def _lif_fused_bwd(cfg: NeuronConfig, with_membrane: bool, remat: bool, residual, g):
    if remat:
        h_seq = _forward_scan(cfg, residual, spikes=False, membrane=False)[2]
    else:
        h_seq = residual
    gs_seq, gv_seq = g if with_membrane else (g, None)
    return (_backward_scan(cfg, h_seq, gs_seq, gv_seq).astype(residual.dtype),)


_lif_fused.defvjp(_lif_fused_fwd, _lif_fused_bwd)


# ----------------------------------------------------------------------------------------------
# Reference path: autodiff through lax.scan.


def lif_autodiff(
    cfg: NeuronConfig, x_seq: jax.Array, *, with_membrane: bool = False, remat: bool = False
):
    """The reference LIF: :func:`lif`'s outputs with JAX differentiating the scan (it saves the
    scan carries). ``cfg`` from :func:`neuron_config`; for tests and benchmarks."""

    def step(v, x):
        h = cfg.charge(v, x)
        s = cfg.surrogate(h - cfg.v_threshold)
        v = cfg.reset(h, jax.lax.stop_gradient(s) if cfg.detach_reset else s)
        return v, (s, v)

    if remat:
        step = jax.checkpoint(step)
    v0 = jnp.full_like(x_seq[0], cfg.v_init)  # *_like: keeps shard_map's varying-axes type
    _, (s_seq, v_seq) = jax.lax.scan(step, v0, x_seq)
    return (s_seq, v_seq) if with_membrane else s_seq


# ----------------------------------------------------------------------------------------------
# Public API.


def lif(
    x_seq: jax.Array,
    *,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate_fn: SpikeFn = _DEFAULT_SURROGATE,
    return_membrane: bool = False,
    remat: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Multi-step leaky integrate-and-fire neuron (SpikingJelly ``LIFNode(step_mode='m')``).

    Args:
      x_seq: input current ``[T, ...]`` (floating; time is axis 0).
      tau: membrane time constant (>= 1, static).
      v_threshold: firing threshold.
      v_reset: hard-reset potential (below ``v_threshold``); ``None`` for a soft reset (subtract
        ``v_threshold`` on a spike, membrane starts at 0).
      decay_input: whether the input is also divided by ``tau`` (see module docstring).
      detach_reset: stop the gradient through the reset's use of the spike.
      surrogate_fn: spike function, e.g. ``surrogate.atan(2.0)``; Heaviside forward, surrogate
        backward. Its ``.grad`` is used by the fused backward (a plain callable works too).
      return_membrane: also return the post-reset membrane ``v[t]``.
      remat: memory/compute trade-off of the backward. ``False``: the forward saves the pre-spike
        membrane ``h`` ([T, ...], x's dtype) as the only residual. ``True``: it saves nothing new
        (only a reference to ``x_seq``, which upstream layers usually keep alive anyway) and the
        backward re-runs the cheap elementwise forward scan to rebuild ``h``. Same gradients.

    Returns:
      spikes ``[T, ...]`` in ``{0, 1}`` with ``x_seq``'s dtype, or ``(spikes, membrane)`` with
      ``return_membrane``.
    """
    cfg = neuron_config(
        tau=tau,
        v_threshold=v_threshold,
        v_reset=v_reset,
        decay_input=decay_input,
        detach_reset=detach_reset,
        surrogate_fn=surrogate_fn,
    )
    return _lif_fused(cfg, bool(return_membrane), bool(remat), _check_input(x_seq))


def if_neuron(
    x_seq: jax.Array,
    *,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    detach_reset: bool = False,
    surrogate_fn: SpikeFn = _DEFAULT_SURROGATE,
    return_membrane: bool = False,
    remat: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Multi-step integrate-and-fire neuron (``h[t] = v[t-1] + x[t]``); otherwise as :func:`lif`."""
    cfg = neuron_config(
        tau=None,
        v_threshold=v_threshold,
        v_reset=v_reset,
        decay_input=True,
        detach_reset=detach_reset,
        surrogate_fn=surrogate_fn,
    )
    return _lif_fused(cfg, bool(return_membrane), bool(remat), _check_input(x_seq))


def _sow_counts(module: nn.Module, spikes_TB: jax.Array) -> None:
    # Float32 counts: int32 could overflow for large layers x batch x T; rates need no exactness.
    module.sow("intermediates", "spike_count", jnp.sum(spikes_TB, dtype=jnp.float32))
    module.sow("intermediates", "neuron_count", jnp.asarray(spikes_TB.size, jnp.float32))
    module.sow("intermediates", "num_neurons", math.prod(spikes_TB.shape[2:]))


def _check_module_input(name: str, x: jax.Array) -> None:
    if jnp.ndim(x) < 2:
        raise ValueError(f"{name} expects x of shape [T, B, ...], got shape {jnp.shape(x)}")


# The collection of stage features (models.stage_features) and what a student's tap records: the
# time mean [B, ...] of the LIF's spikes, of its input current, or of its charged membrane h.
FEATURES = "features"
TAP_KINDS = ("rate", "preact", "membrane")


class LIF(nn.Module):
    """Flax wrapper of :func:`lif`: ``[T, B, ...] -> spikes [T, B, ...]``; no parameters.

    When ``'intermediates'`` is mutable it sows, per call: ``spike_count`` (float32 scalar, total
    spikes), ``neuron_count`` (float32, ``T * B * neurons``, so the firing rate is
    ``spike_count / neuron_count``) and ``num_neurons`` (int, neurons per timestep per example).
    With ``tap`` set and the ``'features'`` collection mutable it sows, under the name ``tap``, the
    time mean ``[B, ...]`` of ``tap_kind`` (one of ``TAP_KINDS``), with its gradient.
    """

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    detach_reset: bool = False
    surrogate: SpikeFn = _DEFAULT_SURROGATE
    remat: bool = False
    tap: str | None = None
    tap_kind: str = "rate"

    @nn.compact
    def __call__(self, x_TB: jax.Array) -> jax.Array:
        _check_module_input("LIF", x_TB)
        constants = dict(
            tau=self.tau,
            v_threshold=self.v_threshold,
            v_reset=self.v_reset,
            decay_input=self.decay_input,
            detach_reset=self.detach_reset,
        )
        spikes = lif(x_TB, **constants, surrogate_fn=self.surrogate, remat=self.remat)
        _sow_counts(self, spikes)
        if self.tap is not None and self.is_mutable_collection(FEATURES):
            cfg = neuron_config(**constants, surrogate_fn=self.surrogate)
            self.sow(FEATURES, self.tap, _tap_value(cfg, self.tap_kind, x_TB, spikes))
        return spikes


def _tap_value(cfg: NeuronConfig, kind: str, x_TB: jax.Array, spikes_TB: jax.Array) -> jax.Array:
    """The time mean [B, ...] of the spikes, the input current or the charged membrane h."""
    if kind == "rate":
        return jnp.mean(spikes_TB, 0)
    if kind == "preact":
        return jnp.mean(x_TB, 0)
    if kind != "membrane":
        raise ValueError(f"tap_kind must be one of {TAP_KINDS}, got {kind!r}")
    # h[t] = charge(v[t-1], x[t]) from the post-reset membranes, differentiable end to end.
    _, v_TB = lif_autodiff(cfg, x_TB, with_membrane=True)
    v_prev = jnp.concatenate([jnp.full_like(v_TB[:1], cfg.v_init), v_TB[:-1]])
    return jnp.mean(cfg.charge(v_prev, x_TB), 0)


class IF(nn.Module):
    """Flax wrapper of :func:`if_neuron`; same shapes and sown counts as :class:`LIF`."""

    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    detach_reset: bool = False
    surrogate: SpikeFn = _DEFAULT_SURROGATE
    remat: bool = False

    @nn.compact
    def __call__(self, x_TB: jax.Array) -> jax.Array:
        _check_module_input("IF", x_TB)
        spikes = if_neuron(
            x_TB,
            v_threshold=self.v_threshold,
            v_reset=self.v_reset,
            detach_reset=self.detach_reset,
            surrogate_fn=self.surrogate,
            remat=self.remat,
        )
        _sow_counts(self, spikes)
        return spikes
