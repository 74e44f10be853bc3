"""Operation counts of the models (docs/method.md §5).

:func:`count_macs` derives per-layer multiply-accumulate counts from the model itself: it traces
``model.init`` abstractly (``jax.eval_shape``, no arrays are computed) with one image and one
timestep, intercepting every ``nn.Conv`` / ``nn.Dense`` call; a layer's MACs are its output elements
per image times its kernel fan-in (``kh * kw * C_in / groups`` for a conv, ``D_in`` for a dense
layer). BatchNorm, pooling, additions and neurons are not counted (they are not MACs / ACs in the
45 nm energy model). The direct-encoding first conv runs once per image, not once per timestep,
so its count is per image; every other count is per image per timestep.

:func:`estimate_energy` turns the counts and measured input spike rates into the paper's Table III
columns (OPs, ACs, MACs, energy with the 45 nm costs of :func:`energy_mj`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from htakl_jax.neurons import IF, LIF


@dataclasses.dataclass(frozen=True)
class LayerMACs:
    """One conv / dense layer of a model, in execution order.

    path: the layer's module path, e.g. ``"stage1_block0/conv1"``.
    kind: ``"conv"`` or ``"dense"``.
    macs: multiply-accumulates per image (per timestep, except the direct-encoding first layer,
      which runs once per image).
    spike_input: the layer's input comes from spiking neurons (True for every layer executed after
      the first neuron of a spiking model: spikes, or spikes pooled / summed by an average pool or a
      SEW ADD connection). False for the first conv on the image and for every ANN layer.
    source: path of the last neuron that ran before this layer (the producer of its input spikes in
      these models, where the shortcut conv runs before the block's first conv; for the layer after
      a SEW ADD block it is the block's last neuron, one of the two summed maps), or None.
    output_shape: the layer's output shape for one image and one timestep, e.g. ``(32, 32, 128)``.
    """

    path: str
    kind: Literal["conv", "dense"]
    macs: int
    spike_input: bool
    source: str | None
    output_shape: tuple[int, ...]


def count_macs(model: nn.Module, input_shape: Sequence[int] = (32, 32, 3)) -> list[LayerMACs]:
    """Per-layer MAC counts of ``model`` (a :func:`htakl_jax.models.get_model` network, or any Flax
    module called as ``model.init(key, x_1HWC, train=False[, timesteps=1])``) for one image of
    ``input_shape`` ``(H, W, C)``; see :class:`LayerMACs`."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape must be (H, W, C) positive ints, got {input_shape}")
    records: list[LayerMACs] = []
    last_neuron: list[str | None] = [None]

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, LIF | IF):
            out = next_fun(*args, **kwargs)
            last_neuron[0] = "/".join(module.path)
            return out
        if not isinstance(module, nn.Conv | nn.Dense):
            return next_fun(*args, **kwargs)
        x, out = args[0], next_fun(*args, **kwargs)
        if isinstance(module, nn.Conv):
            kernel = module.kernel_size
            kernel = (kernel,) if isinstance(kernel, int) else tuple(kernel)
            fan_in = math.prod(kernel) * x.shape[-1] // module.feature_group_count
            kind = "conv"
        else:
            fan_in, kind = x.shape[-1], "dense"
        records.append(
            LayerMACs(
                path="/".join(module.path),
                kind=kind,
                macs=int(math.prod(out.shape[1:]) * fan_in),
                spike_input=last_neuron[0] is not None,
                source=last_neuron[0],
                output_shape=tuple(out.shape[1:]),
            )
        )
        return out

    x = jnp.zeros((1,) + input_shape, jnp.float32)
    extra = {"timesteps": 1} if getattr(model, "spiking", False) else {}

    def init():
        return model.init(jax.random.key(0), x, train=False, **extra)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(init)
    return records


def total_macs(
    model_or_records: nn.Module | Sequence[LayerMACs],
    input_shape: Sequence[int] = (32, 32, 3),
    *,
    spike_input: bool | None = None,
) -> int:
    """Sum of :func:`count_macs` (per image, per timestep; see there) over all layers, or only over
    layers whose ``spike_input`` equals the given bool."""
    records = (
        count_macs(model_or_records, input_shape)
        if isinstance(model_or_records, nn.Module)
        else model_or_records
    )
    return sum(r.macs for r in records if spike_input is None or r.spike_input == spike_input)


# ----------------------------------------------------------------------------- energy (45 nm)

# Energy per operation in picojoules, 45 nm CMOS (Horowitz 2014), as used by the paper's Table III.
E_AC_PJ = 0.9
E_MAC_PJ = 4.6


def energy_mj(
    acs: float, macs: float, *, e_ac_pj: float = E_AC_PJ, e_mac_pj: float = E_MAC_PJ
) -> float:
    """Energy in millijoules of ``acs`` accumulates and ``macs`` multiply-accumulates.

    ``E = e_ac_pj * ACs + e_mac_pj * MACs`` (pJ), converted to mJ (1 mJ = 1e9 pJ). The paper's
    HTA-KL ResNet-19 row: ``energy_mj(2.11e9, 26.68e6) == 2.02173``.
    """
    for name, value in (("acs", acs), ("macs", macs), ("e_ac_pj", e_ac_pj), ("e_mac_pj", e_mac_pj)):
        if not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return (e_ac_pj * acs + e_mac_pj * macs) * 1e-9


@dataclasses.dataclass(frozen=True)
class LayerOps:
    """Synaptic operations of one layer for one image over all timesteps.

    macs_per_step: :attr:`LayerMACs.macs` (dense-equivalent operations per image per timestep; per
      image for the direct-encoding first conv).
    input_rate: spikes per input element per timestep (None for a layer fed by real values).
    acs: ``macs_per_step * input_rate * T`` for a spike-fed layer, else 0.
    macs: the layer's MACs when fed by real values (once per image), else 0.
    """

    path: str
    kind: str
    spike_input: bool
    source: str | None
    macs_per_step: int
    input_rate: float | None
    acs: float
    macs: float


@dataclasses.dataclass(frozen=True)
class EnergyEstimate:
    """Per-image operation counts and energy of a model (the columns of the paper's Table III).

    ops: dense-equivalent operations, total MACs per image per timestep times T (the paper's OPs).
    acs / macs: sums over :attr:`layers`. energy_mj: :func:`energy_mj` of them.
    """

    timesteps: int
    layers: tuple[LayerOps, ...]
    ops: float
    acs: float
    macs: float
    energy_mj: float
    e_ac_pj: float
    e_mac_pj: float


def estimate_energy(
    records: Sequence[LayerMACs],
    input_rates: Mapping[str, float],
    timesteps: int,
    *,
    e_ac_pj: float = E_AC_PJ,
    e_mac_pj: float = E_MAC_PJ,
) -> EnergyEstimate:
    """Per-image ACs, MACs and energy of a model from its :func:`count_macs` ``records``.

    Args:
      records: :func:`count_macs` output.
      input_rates: layer path -> input spike rate (spikes per input element per timestep, e.g.
        :meth:`htakl_jax.analysis.firing.SpikeStats.input_rates`) for every ``spike_input`` layer.
      timesteps: T the rates were measured at (1 for an ANN, whose layers are all MACs).
      e_ac_pj / e_mac_pj: energy per AC / MAC in pJ.

    A spike-fed layer costs ``macs x input_rate x T`` ACs (one accumulate per arriving spike and
    synapse); a layer fed by real values costs its MACs once per image (the direct-encoding first
    conv runs once, see :func:`count_macs`).
    """
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
    layers = []
    for r in records:
        if r.spike_input:
            if r.path not in input_rates:
                raise ValueError(f"input_rates has no rate for spike-fed layer {r.path!r}")
            rate = float(input_rates[r.path])
            if not rate >= 0:
                raise ValueError(f"input_rates[{r.path!r}] must be >= 0, got {rate!r}")
            acs, macs = r.macs * rate * timesteps, 0.0
        else:
            rate, acs, macs = None, 0.0, float(r.macs)
        layers.append(LayerOps(r.path, r.kind, r.spike_input, r.source, r.macs, rate, acs, macs))
    acs = sum(x.acs for x in layers)
    macs = sum(x.macs for x in layers)
    return EnergyEstimate(
        timesteps=timesteps,
        layers=tuple(layers),
        ops=float(total_macs(records) * timesteps),
        acs=acs,
        macs=macs,
        energy_mj=energy_mj(acs, macs, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj),
        e_ac_pj=e_ac_pj,
        e_mac_pj=e_mac_pj,
    )
