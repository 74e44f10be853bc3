"""Block rematerialisation whose recompute order survives XLA's scheduler.

``remat(target, static_argnums=..., policy=...)`` wraps a Flax module class or method like
``flax.linen.remat``: the forward keeps only the block's inputs (variables and activations) plus
what ``policy`` saves, and the backward recomputes the rest of the block just before
differentiating it. Variables (including BatchNorm's 'batch_stats' updates and sown
'intermediates') and all values are those of the plain block; the variable tree is unchanged.

Why not plain ``nn.remat`` (``jax.checkpoint``): it keeps the recomputation apart from the forward
with optimization barriers only, and XLA:CPU drops those before it schedules. Its schedulers then
run the recomputation right after the forward or put off the (tiny) parameter-gradient
reductions until the optimizer update, and either way keeps the block activations alive: in
``benchmarks/memory.py`` ``nn.remat`` blocks did not lower a ResNet-20 step's peak at all.
Here a ``jax.custom_vjp`` orders the backward with data dependencies instead:

- forward: the block runs once under ``jax.checkpoint(policy)`` inside ``jax.vjp``; its
  residuals are the inputs and the policy's saved values;
- backward: one element of every residual gets ``0 * ct[0]`` added (``ct``: the output
  cotangent), so no recomputation can start before the backward has reached this block; the
  parameter cotangents then pass an optimization barrier (so the next step reads the very values
  that are returned, not a duplicate that XLA could fuse and schedule apart) and one element of
  the input cotangent gets ``0 * sum(parameter cotangents)`` added, so the previous block's
  backward waits until this block's parameter gradients are done and its activations are free.

Adding an exact zero changes no finite value (a NaN/inf cotangent element spreads NaN, where the
gradient would be non-finite anyway). Each gate is a one-element in-place update, so it costs no
memory pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax.core import lift
from flax.linen.transforms import lift_transform

from htakl_jax.layers import CONV_OUTPUT

_save_named_conv_outputs = jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT)


def save_conv_outputs(prim: Any, *_: Any, **params: Any) -> bool:
    """``jax.checkpoint`` policy: save every convolution output, recompute everything else.

    Convs carry almost all of a step's FLOPs, BN and the LIF scan are cheap elementwise passes, so
    the backward then recomputes only BN and LIF from the saved conv outputs. Convolutions that run
    as matmuls (``layers.im2col_conv``) mark their outputs with ``layers.CONV_OUTPUT``.
    """
    return prim is jax.lax.conv_general_dilated_p or _save_named_conv_outputs(prim, **params)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _zero_after(tree: Any, reduce: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """A float32 ``0.0`` that XLA can only compute once every float leaf of ``tree`` exists."""
    zero = jnp.zeros((), jnp.float32)
    for leaf in filter(_is_float, jax.tree.leaves(tree)):
        zero = zero + 0.0 * reduce(leaf).astype(jnp.float32)
    return zero


def _first(x: jax.Array) -> jax.Array:
    return jnp.ravel(x)[0]


def _add_to_first(tree: Any, zero: jax.Array) -> Any:
    """``tree`` with ``zero`` added to the first element of each float leaf (in place: O(1))."""

    def add(leaf):
        if not _is_float(leaf):
            return leaf
        if jnp.ndim(leaf) == 0:
            return leaf + zero.astype(leaf.dtype)
        start = (0,) * leaf.ndim
        first = jax.lax.slice(leaf, start, (1,) * leaf.ndim) + zero.astype(leaf.dtype)
        return jax.lax.dynamic_update_slice(leaf, first, start)

    return jax.tree.map(add, tree)


def _ordered_checkpoint(
    fn: Callable[..., Any], *, policy: Callable[..., bool] | None, static_argnums: Sequence[int]
) -> Callable[..., Any]:
    """The scope-level transform (the counterpart of ``flax.core.lift.checkpoint``)."""
    static = frozenset(static_argnums)

    def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
        def block(variable_groups, dynamic):
            it = iter(dynamic)
            full = [a if i in static else next(it) for i, a in enumerate(args)]
            scope = scope_fn(variable_groups, rng_groups)
            y = fn(scope, *full)
            return y, repack_fn(scope)

        @jax.custom_vjp
        def run(variable_groups, dynamic):
            return block(variable_groups, dynamic)

        def run_fwd(variable_groups, dynamic):
            checkpointed = jax.checkpoint(block, policy=policy)
            y, vjp_fn, new_vars = jax.vjp(checkpointed, variable_groups, dynamic, has_aux=True)
            return (y, new_vars), vjp_fn

        def run_bwd(vjp_fn, ct):
            ct_y, _ = ct  # variables written by the block (BN statistics, sown counts) get none
            vjp_fn = _add_to_first(vjp_fn, _zero_after(ct_y, _first))
            d_vars, d_dynamic = vjp_fn(ct_y)
            d_vars = jax.lax.optimization_barrier(d_vars)
            return d_vars, _add_to_first(d_dynamic, _zero_after(d_vars, jnp.sum))

        run.defvjp(run_fwd, run_bwd)
        dynamic = tuple(a for i, a in enumerate(args) if i not in static)
        return run(variable_groups, dynamic)

    return lift.pack(inner, (True,), (True,), (True,), name="remat")


def remat(
    target: Any,
    *,
    static_argnums: Sequence[int] = (),
    policy: Callable[..., bool] | None = save_conv_outputs,
) -> Any:
    """``target`` (a Module class, or a method taking the module first) rematerialised as in the
    module docstring.

    ``static_argnums`` count ``self`` as 0, as in ``nn.remat``; static arguments (Python values
    that steer control flow or fix shapes: ``train``, ``timesteps``, a layer factory) are passed
    through as they are. ``policy`` is a ``jax.checkpoint`` policy (``None``: save nothing).
    """
    return lift_transform(
        _ordered_checkpoint,
        target,
        policy=policy,
        static_argnums=tuple(i - 1 for i in static_argnums),
    )
