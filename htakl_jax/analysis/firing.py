"""Firing rates of a spiking student over an evaluation set and the input spike rate of each layer.

One jitted forward pass per batch collects two kinds of counts, summed over the set:

- per LIF neuron layer (sown by :class:`htakl_jax.neurons.LIF` into ``'intermediates'``): spikes and
  ``neurons x T x examples``; its firing rate is ``spikes / (neurons x T x examples)``;
- per conv / dense layer (recorded with ``flax.linen.intercept_methods`` on the tensor the layer
  actually consumes): the sum and the number of its input elements over ``T x examples``.

Rule mapping layers to their input spikes: a layer's *input spike rate* is measured on its own
input, ``sum(input) / size(input)``, i.e. spikes arriving per input element per timestep. Where the
input is a LIF's output (every conv of ResNet-19/20 and VGG-16 except the first) this equals that
LIF's firing rate exactly; after an average pool it is the mean of the pooled spikes (the source's
rate, as pooling keeps the mean); after a SEW ADD connection it is the sum of both summed maps'
rates, so each arriving spike is counted once. The source LIF named by
:func:`htakl_jax.energy.count_macs` (``LayerMACs.source``, the last neuron run before the layer) is
kept alongside for display. The first conv sees the real-valued image and has no rate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from htakl_jax.energy import LayerMACs, count_macs
from htakl_jax.neurons import IF, LIF

__all__ = ["SpikeStats", "rates_table", "spike_stats"]


@dataclasses.dataclass(frozen=True)
class SpikeStats:
    """Spike counts of one spiking model over an evaluation set (all sums in float64).

    timesteps: T the model ran at. num_examples: images evaluated.
    spikes / neuron_steps: LIF path (e.g. ``"stage1_block0/act1"``) -> total spikes and
      ``neurons x T x num_examples``.
    input_sums / input_sizes: conv/dense path -> sum and element count of the layer's input over
      the set (the first conv's entry sums image values and is not a rate).
    layers: the model's :func:`~htakl_jax.energy.count_macs` records, in execution order.
    """

    timesteps: int
    num_examples: int
    spikes: Mapping[str, float]
    neuron_steps: Mapping[str, float]
    input_sums: Mapping[str, float]
    input_sizes: Mapping[str, float]
    layers: tuple[LayerMACs, ...]

    def layer_rates(self) -> dict[str, float]:
        """Firing rate of each LIF layer, ``spikes / (neurons x T x examples)``, in run order."""
        return {k: self.spikes[k] / self.neuron_steps[k] for k in self.spikes}

    @property
    def overall_rate(self) -> float:
        """All spikes over all neuron-timesteps of the network."""
        return sum(self.spikes.values()) / sum(self.neuron_steps.values())

    @property
    def classifier(self) -> LayerMACs:
        """The last dense layer (the classifier)."""
        dense = [r for r in self.layers if r.kind == "dense"]
        if not dense:
            raise ValueError("the model has no dense layer, so no classifier input to report")
        return dense[-1]

    @property
    def pre_classifier_layer(self) -> str:
        """Path of the LIF feeding the classifier (the paper's rate "before the last layer")."""
        source = self.classifier.source
        if source is None:
            raise ValueError(f"classifier {self.classifier.path!r} is not fed by a spiking layer")
        return source

    @property
    def pre_classifier_rate(self) -> float:
        """Firing rate of :attr:`pre_classifier_layer` (the rate Figure 3 of the paper reports)."""
        return self.layer_rates()[self.pre_classifier_layer]

    def input_rates(self) -> dict[str, float]:
        """Input spike rate (spikes per input element per timestep) of each spike-fed layer."""
        return {
            r.path: self.input_sums[r.path] / self.input_sizes[r.path]
            for r in self.layers
            if r.spike_input
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: rates overall, before the classifier and per layer."""
        return {
            "timesteps": self.timesteps,
            "num_examples": self.num_examples,
            "overall_rate": self.overall_rate,
            "pre_classifier_layer": self.pre_classifier_layer,
            "pre_classifier_rate": self.pre_classifier_rate,
            "layer_rates": self.layer_rates(),
            "input_rates": self.input_rates(),
            "spikes": dict(self.spikes),
            "neuron_steps": dict(self.neuron_steps),
        }


def _batch_counts(
    variables: Any, x_BHWC: jax.Array, *, model: nn.Module, timesteps: int
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
    """(spikes, neuron_steps, input_sums) of one batch, keyed by module path."""
    input_sums: dict[str, jax.Array] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Conv | nn.Dense):
            path = "/".join(module.path)
            total = jnp.sum(args[0], dtype=jnp.float32)
            input_sums[path] = input_sums.get(path, 0.0) + total
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        _, state = model.apply(
            variables, x_BHWC, train=False, timesteps=timesteps, mutable=["intermediates"]
        )
    flat = flax.traverse_util.flatten_dict(state.get("intermediates", {}))
    spikes, neurons = {}, {}
    for key, values in flat.items():
        path = "/".join(key[:-1])
        if key[-1] == "spike_count":
            spikes[path] = sum(values)
        elif key[-1] == "neuron_count":
            neurons[path] = sum(values)
    return spikes, neurons, input_sums


def _layout(
    model: nn.Module, shape_BHWC: tuple[int, ...], timesteps: int
) -> tuple[dict[str, int], list[str]]:
    """Input element count of each conv/dense layer for a batch of ``shape_BHWC``, and the paths of
    the neuron layers in run order (abstract trace, nothing computed)."""
    sizes: dict[str, int] = {}
    neurons: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__":
            path = "/".join(module.path)
            if isinstance(module, nn.Conv | nn.Dense):
                sizes[path] = sizes.get(path, 0) + math.prod(args[0].shape)
            elif isinstance(module, LIF | IF) and path not in neurons:
                neurons.append(path)
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct(shape_BHWC, jnp.float32)

    def init(x):
        return model.init(jax.random.key(0), x, train=False, timesteps=timesteps)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(init, x)
    return sizes, neurons


def spike_stats(
    model: nn.Module,
    variables: Any,
    images_NHWC: np.ndarray | jax.Array,
    *,
    timesteps: int | None = None,
    batch_size: int = 256,
) -> SpikeStats:
    """Runs a spiking ``model`` (eval-mode BN) over normalised ``images_NHWC`` and sums its counts.

    Args:
      model: a :func:`htakl_jax.models.get_model` network with ``spiking=True``.
      variables: its ``{'params', 'batch_stats'}``.
      images_NHWC: normalised float images ``[N, H, W, 3]``.
      timesteps: T to run at (default: the model's own).
      batch_size: examples per forward pass (the last batch may be smaller: one extra compile).
    """
    if not getattr(model, "spiking", False):
        raise ValueError("spike_stats needs a spiking model (get_model(..., spiking=True))")
    images = np.asarray(images_NHWC) if not isinstance(images_NHWC, jax.Array) else images_NHWC
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images_NHWC must be a non-empty [N, H, W, C] array, got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images_NHWC must be normalised floats, got dtype {images.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t = int(model.timesteps if timesteps is None else timesteps)
    if t < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    n = int(images.shape[0])
    fn = jax.jit(functools.partial(_batch_counts, model=model, timesteps=t))
    spikes: dict[str, float] = {}
    neurons: dict[str, float] = {}
    sums: dict[str, float] = {}
    sizes: dict[str, float] = {}
    size_cache: dict[tuple[int, ...], dict[str, int]] = {}
    order: list[str] = []
    for start in range(0, n, batch_size):
        batch = jnp.asarray(images[start : start + batch_size], jnp.float32)
        out = jax.device_get(fn(variables, batch))
        for acc, part in zip((spikes, neurons, sums), out, strict=True):
            for k, v in part.items():
                acc[k] = acc.get(k, 0.0) + float(v)
        if batch.shape not in size_cache:
            size_cache[batch.shape], order = _layout(model, tuple(batch.shape), t)
        for k, v in size_cache[batch.shape].items():
            sizes[k] = sizes.get(k, 0.0) + float(v)
    layers = tuple(count_macs(model, tuple(int(d) for d in images.shape[1:])))
    # Run order, not the alphabetical order of the 'intermediates' collection.
    spikes = {k: spikes[k] for k in order}
    neurons = {k: neurons[k] for k in order}
    return SpikeStats(t, n, spikes, neurons, sums, sizes, layers)


def rates_table(stats: SpikeStats) -> list[dict[str, Any]]:
    """One row per LIF layer: ``layer``, ``firing_rate``, ``spikes``, ``neuron_steps``."""
    rates = stats.layer_rates()
    return [
        {
            "layer": k,
            "firing_rate": rates[k],
            "spikes": stats.spikes[k],
            "neuron_steps": stats.neuron_steps[k],
        }
        for k in stats.spikes
    ]
