"""Operation counts of the models (SPEC 5).

:func:`count_macs` derives per-layer multiply-accumulate counts from the model itself: it traces
``model.init`` abstractly (``jax.eval_shape``, no arrays are computed) with one image and one
timestep, intercepting every ``nn.Conv`` / ``nn.Dense`` call; a layer's MACs are its output elements
per image times its kernel fan-in (``kh * kw * C_in / groups`` for a conv, ``D_in`` for a dense
layer). BatchNorm, pooling, additions and neurons are not counted (they are not MACs / ACs in the
45 nm energy model). The direct-encoding first conv runs once per image, not once per timestep,
so its count is per image; every other count is per image per timestep.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
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
