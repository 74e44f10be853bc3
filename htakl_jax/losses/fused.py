"""Fused linear + KD loss: the KL family from the student's hidden states and output projection,
without ever materialising the [tokens, vocab] logits (issue 19).

At LLM sizes the logits are the memory problem: one float32 [16384, 128256] array is 8.4 GB and
the unfused gradient keeps several. :func:`fused_linear_kd` takes hidden states [..., H] and the
projection [H, V] (and the teacher's logits [..., V], or its hidden states and projection) and
returns the per-example values of the materialised loss, `method(hidden @ weight + bias,
teacher_logits)`, and the same gradients with respect to hidden, weight and bias, up to float32
rounding. The largest temporaries are a few [chunk_rows, V] and [N, chunk_cols] arrays (and with
`backward="forward"` a float32 [H, V] accumulator).

Design (one `jax.custom_vjp`):
- Forward, over row chunks (`lax.fori_loop`, `chunk_rows` rows each): the student's logits
  h_c @ W + b with float32 accumulation (bf16 inputs give float32 logits and statistics), the
  teacher's (a slice, or t_c @ W_t + b_t), and kd's own forward on the chunk
  (:func:`kd.row_statistics`: the values, so they match the unfused loss by construction, and
  six numbers per row, HTA-KL's head weights among them). The head set needs whole rows; the
  gradient, given those numbers, does not: it is elementwise (:func:`kd.student_logit_grad`).
- Backward (`backward="sweep"`, the default; any per-row cotangent, so every reduction), over
  vocabulary blocks of `chunk_cols` columns: each block recomputes its logits h @ W[:, j] (+ the
  teacher's), takes its gradient g_j [N, cols], writes dW[:, j] = h^T g_j and db[j] =
  sum_rows g_j once, in the parameter's dtype, and accumulates dh += g_j W[:, j]^T in float32.
  One matmul more than the unfused gradient's three, but no [H, V] accumulator read and written
  per chunk (in a row-chunked backward the three matmuls took 1.4x the unfused ones' time on
  the CPU, these 0.93x; ad-hoc, at [4096 x 512] @ [512, 32000]).
- `backward="forward"` (a scalar loss, `reduction="sum"` / `"mean"`): its cotangent is one
  number, so the forward computes the gradient in the same loop (Liger Kernel's approach: the
  unfused path's three matmuls, no recompute): per chunk g_c, dh_c = g_c W^T, dW += h_c^T g_c
  and db += sum g_c in float32; the backward scales them. It keeps a float32 [H, V]
  accumulator, and its per-chunk dW update is a matmul with only chunk_rows terms per output
  plus a read and write of the accumulator: memory-bound on the CPU. Against the sweep it ran
  5-10% faster on a 2-core AMD EPYC and 10-19% slower on a 2-core AMX Xeon
  (benchmarks/fused_memory.py), hence not the default.
- Chunks and blocks that do not divide the rows or the vocabulary start earlier (overlap the
  one before) instead of padding, so no input is copied; overlapping rows or columns are
  written once.
- On the CPU backend the operands a loop slices pass through an optimization barrier each
  iteration and 16-bit floats are sliced and updated as uint16: XLA:CPU computes 16-bit slices
  in float32 and hoists the conversion of the whole operand out of the loop (a float32 copy of
  bf16 teacher logits: 500 MiB at [4096, 32000]).

Gradient-free: the teacher (logits or hidden states and projection) and the hyperparameters
(temperature, mu, head_ratio, weight_temperature) receive zero cotangents (the unfused functions
differentiate through the temperature; here it is a constant), and the HTA-KL weights are
constants, as in :func:`kd.hta_kl`. Python-number hyperparameters are static (compiled in);
arrays (e.g. a scheduled temperature under jit) are traced. Forward-mode autodiff (jax.jvp) is
not supported (a custom_vjp limitation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from htakl_jax.losses import kd

Array = jax.Array

FUSED_METHODS = kd.KD_METHODS
REDUCTIONS = ("none", "sum", "mean")
# Where the gradient is computed (`backward`; module docstring): "sweep", the backward's
# vocabulary sweep (every reduction), or "forward", the forward's row sweep (scalar reductions).
# "auto" is "sweep" on every backend until a GPU measurement says otherwise.
BACKWARDS = ("auto", "sweep", "forward")
# "auto" chunks and blocks (`chunk_rows_for`, `chunk_cols_for`): about this many elements per
# [rows, V] chunk or [N, cols] block. On the CPU backend 2M elements per chunk (8 MiB in float32;
# V = 32000: 64 rows) and 4M per block (N = 4096: 1024 columns); at [4096 x 512] @ [512, 32000]
# the fused gradient's temporaries are then 5% of the unfused ones; 1024 columns ran 6% faster
# than 512 and 64 rows faster than 32 or 128 (ad-hoc, one run each; benchmarks/fused_memory.py
# and README for the rest). Each chunk's KD
# forward runs over kd's smaller row blocks (row_block="auto"), as the head-set search's probe
# sums materialise [rows, probes, V] on the CPU. Elsewhere 16M elements for both, and at least
# ACCELERATOR_MIN_ROWS rows: every chunk's matmul reads the whole projection, so a GPU needs a
# few hundred rows per chunk to stay compute-bound (not measured yet). Blocks have at least
# MIN_COLS columns, for the same reason.
CPU_CHUNK_ELEMENTS = 1 << 21
CPU_BLOCK_ELEMENTS = 1 << 22
CHUNK_ELEMENTS = 1 << 24
ACCELERATOR_MIN_ROWS = 256
MIN_COLS = 128


def _on_cpu(backend: str | None = None) -> bool:
    return (backend or jax.default_backend()) == "cpu"


def chunk_rows_for(num_rows: int, vocab: int, backend: str | None = None) -> int:
    """Default rows per forward chunk on `backend` (None: JAX's default), at most num_rows.

    CPU: the largest power of two with rows * vocab <= CPU_CHUNK_ELEMENTS (at least 1); other
    backends: the same with CHUNK_ELEMENTS, and at least ACCELERATOR_MIN_ROWS.
    """
    on_cpu = _on_cpu(backend)
    elements = CPU_CHUNK_ELEMENTS if on_cpu else CHUNK_ELEMENTS
    rows = max(1, elements // max(vocab, 1))
    rows = 1 << (rows.bit_length() - 1)
    if not on_cpu:
        rows = max(rows, ACCELERATOR_MIN_ROWS)
    return max(1, min(rows, num_rows))


def chunk_cols_for(num_rows: int, vocab: int, backend: str | None = None) -> int:
    """Default vocabulary columns per backward block on `backend`, at most vocab: a multiple of
    MIN_COLS (128) with num_rows * cols <= CPU_BLOCK_ELEMENTS (other backends: CHUNK_ELEMENTS),
    at least MIN_COLS."""
    elements = CPU_BLOCK_ELEMENTS if _on_cpu(backend) else CHUNK_ELEMENTS
    cols = max(MIN_COLS, elements // max(num_rows, 1) // MIN_COLS * MIN_COLS)
    return max(1, min(cols, vocab))


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The static part of a call (hashable: a nondiff argument of the custom VJP)."""

    method: str
    path: str
    chunk: int
    cols: int
    reduction: str
    grad_in_forward: bool
    static_hyper: tuple[tuple[str, Any], ...]


# --------------------------------------------------------------------------- pieces


def _acc_dtype(*xs: Array) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _linear(h: Array, w: Array, b: Array | None) -> Array:
    """h @ w (+ b) with float32 (or wider) accumulation and result."""
    dtype = _acc_dtype(h, w)
    out = jnp.matmul(h, w, preferred_element_type=dtype)
    return out if b is None else out + b.astype(dtype)


def _bits(dtype: jnp.dtype) -> jnp.dtype | None:
    """uint16 for 16-bit floats on the CPU backend (sliced and updated as such; see the module
    docstring), else None."""
    if jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2 and _on_cpu():
        return jnp.dtype(jnp.uint16)
    return None


def _slice(x: Array | None, start: Array, size: int, axis: int) -> Array | None:
    """x[start : start + size] along `axis` (None stays None)."""
    if x is None:
        return None
    bits = _bits(x.dtype)
    if bits is None:
        return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)
    raw = jax.lax.dynamic_slice_in_dim(jax.lax.bitcast_convert_type(x, bits), start, size, axis)
    return jax.lax.bitcast_convert_type(raw, x.dtype)


def _write(x: Array, start: Array, new: Array, block: Array, axis: int) -> Array:
    """x with [start, start + size) along `axis` set to `block` where `new` [size] (the rest
    keep their value); `x` may be a `_bits` buffer of block's dtype."""
    if x.dtype != block.dtype:
        block = jax.lax.bitcast_convert_type(block, x.dtype)
    old = jax.lax.dynamic_slice_in_dim(x, start, block.shape[axis], axis=axis)
    mask = jnp.expand_dims(new, [d for d in range(block.ndim) if d != axis])
    return jax.lax.dynamic_update_slice_in_dim(x, jnp.where(mask, block, old), start, axis=axis)


def _buffer(shape: tuple[int, ...], dtype: jnp.dtype) -> Array:
    """Zeros to `_write` blocks of `dtype` into (as `_bits` where that applies)."""
    return jnp.zeros(shape, _bits(dtype) or dtype)


def _unbuffer(x: Array, dtype: jnp.dtype) -> Array:
    return x if x.dtype == dtype else jax.lax.bitcast_convert_type(x, dtype)


def _loop(count: int, body: Callable, state: Any, operands: Any) -> Any:
    """state after body(i, state, operands) for i < count (a fori_loop). `operands`, the arrays
    the body slices, pass through an optimization barrier each iteration on the CPU backend, so
    XLA cannot hoist work on the whole of them out of the loop (see the module docstring)."""
    barrier = _on_cpu()

    def step(i, carry):
        state, ops = carry
        ops = jax.lax.optimization_barrier(ops) if barrier else ops
        return body(i, state, ops), ops

    return jax.lax.fori_loop(0, count, step, (state, operands))[0]


def _hyper(spec: _Spec, hyper: dict) -> dict:
    return dict(spec.static_hyper) | hyper


def _block(i: Array, size: int, total: int) -> tuple[Array, Array]:
    """(start, new [size]) of the i-th block of `size` of `total`: the last starts early."""
    start = jnp.minimum(i * size, total - size)
    return start, start + jnp.arange(size) >= i * size


# --------------------------------------------------------------------------- the two sweeps


def _chunk_stats(spec: _Spec, hp: dict, s: Array, t: Array, valid: Array | None) -> kd.RowStats:
    """kd.RowStats [c] of chunk logits s, t [c, V] (rows outside `valid` give 0)."""
    return kd.row_statistics(
        s,
        t,
        method=spec.method,
        temperature=hp["temperature"],
        mu=hp["mu"],
        head_ratio=hp["head_ratio"],
        weight_temperature=hp["weight_temperature"],
        path=spec.path,
        where=valid,
    )


def _chunk_grad(spec: _Spec, hp: dict, s, t, stats: kd.RowStats, ct: Array, valid) -> Array:
    """d(sum_rows ct * values) / d s, [c, V], for chunk logits s, t [c, V] and their stats."""
    return kd.student_logit_grad(
        s,
        t,
        stats,
        ct,
        method=spec.method,
        temperature=hp["temperature"],
        head_ratio=hp["head_ratio"],
        where=valid,
    )


def _backprop(h: Array, w: Array, g: Array) -> tuple[Array, Array]:
    """(g W^T, h^T g) for logits h @ W with gradient g, float32 (or wider) accumulated; bf16
    inputs multiply in bf16."""
    g_mm = g.astype(jnp.result_type(h, w))
    acc = _acc_dtype(h, w)
    dh = jax.lax.dot_general(g_mm, w, (((1,), (1,)), ((), ())), preferred_element_type=acc)
    dw = jax.lax.dot_general(h, g_mm, (((0,), (0,)), ((), ())), preferred_element_type=acc)
    return dh, dw


def _accumulate(grads: tuple, h_c: Array, w: Array, g: Array, start: Array, new: Array):
    """(dh, dW, db) plus one row chunk's share: dh_c = g W^T, h_c^T g, sum_rows g (float32)."""
    dh, dw, db = grads
    dh_c, dw_c = _backprop(h_c, w, g)
    db = None if db is None else db + jnp.sum(g, axis=0).astype(db.dtype)
    return _write(dh, start, new, dh_c.astype(dh.dtype), 0), dw + dw_c, db


def _row_sweep(spec: _Spec, student, teacher, where, hyper, ct=None) -> tuple:
    """(kd.RowStats [N], grads) of the student logits h @ W + b over chunks of spec.chunk rows.

    grads is None without `ct`; with a scalar `ct` (the cotangent of every row's value) it is
    (dh [N, H], dW [H, V], db [V] or None) in float32, of ct * sum_rows values.
    """
    h, w, b = student
    n, c = h.shape[0], spec.chunk
    hp = _hyper(spec, hyper)

    def body(i, carry, ops):
        stats, grads = carry
        h, teacher_rows, where = ops
        start, new = _block(i, c, n)
        valid, h_c = _slice(where, start, c, 0), _slice(h, start, c, 0)
        if valid is not None:  # padding may hold NaN: keep it out of dW = h^T g
            h_c = jnp.where(valid[:, None], h_c, 0)
        s = _linear(h_c, w, b)
        if len(teacher) == 1:
            t = _slice(teacher_rows, start, c, 0)
        else:
            t = _linear(_slice(teacher_rows, start, c, 0), *teacher[1:])
        chunk = _chunk_stats(spec, hp, s, t, valid)
        if grads is not None:
            g = _chunk_grad(spec, hp, s, t, chunk, jnp.where(new, ct, 0.0), valid)
            grads = _accumulate(grads, h_c, w, g, start, new)
        stats = jax.tree.map(lambda x, y: _write(x, start, new, y.astype(x.dtype), 0), stats, chunk)
        return stats, grads

    dtype = jnp.promote_types(_acc_dtype(h, w), _acc_dtype(teacher[0]))
    init = kd.RowStats(*(jnp.zeros((n,), dtype) for _ in kd.RowStats._fields))
    grads = None
    if ct is not None:
        acc = _acc_dtype(h, w)
        db = None if b is None else jnp.zeros(b.shape, acc)
        grads = (jnp.zeros(h.shape, acc), jnp.zeros(w.shape, acc), db)
    return _loop(-(-n // c), body, (init, grads), (h, teacher[0], where))


def _column_sweep(spec, student, teacher, where, hyper, stats, ct) -> tuple:
    """(dh [N, H], dW [H, V], db [V] or None) of sum_rows ct * values, ct [N], in the inputs'
    dtypes, over blocks of spec.cols vocabulary columns."""
    h, w, b = student
    v, k = w.shape[1], spec.cols
    hp = _hyper(spec, hyper)
    if where is not None:  # padding may hold NaN: keep it out of dW = h^T g
        h = jnp.where(where[:, None], h, 0)

    def body(j, grads, ops):
        dh, dw, db = grads
        w, b, teacher_cols = ops
        start, new = _block(j, k, v)
        w_j, b_j = _slice(w, start, k, 1), _slice(b, start, k, 0)
        if len(teacher) == 1:
            t = _slice(teacher_cols[0], start, k, 1)
        else:
            t_w, t_b = teacher_cols
            t = _linear(teacher[0], _slice(t_w, start, k, 1), _slice(t_b, start, k, 0))
        g = _chunk_grad(spec, hp, _linear(h, w_j, b_j), t, stats, ct, where)
        g = jnp.where(new, g, 0.0)  # columns of the block before (the last block overlaps)
        dh_j, dw_j = _backprop(h, w_j, g)
        dh = dh + dh_j
        dw = _write(dw, start, new, dw_j.astype(w.dtype), 1)
        db = None if db is None else _write(db, start, new, jnp.sum(g, 0).astype(b.dtype), 0)
        return dh, dw, db

    init = (
        jnp.zeros(h.shape, _acc_dtype(h, w)),
        _buffer(w.shape, w.dtype),
        None if b is None else _buffer(b.shape, b.dtype),
    )
    teacher_cols = teacher if len(teacher) == 1 else teacher[1:]
    dh, dw, db = _loop(-(-v // k), body, init, (w, b, teacher_cols))
    db = None if b is None else _unbuffer(db, b.dtype)
    return dh.astype(student[0].dtype), _unbuffer(dw, w.dtype), db


# --------------------------------------------------------------------------- the custom VJP


def _reduce(spec: _Spec, values: Array, where: Array | None) -> Array:
    if spec.reduction == "none":
        return values
    total = jnp.sum(values)
    return total if spec.reduction == "sum" else total / _row_count(len(values), where, total.dtype)


def _row_count(num_rows: int, where: Array | None, dtype: jnp.dtype) -> Array:
    """The valid rows (at least 1): the divisor of "mean"."""
    count = num_rows if where is None else jnp.sum(where)
    return jnp.maximum(jnp.asarray(count, dtype), 1)


def _outputs(spec: _Spec, stats: kd.RowStats, where) -> tuple[Array, Array]:
    """(loss [N] or scalar, head weights [N])."""
    return _reduce(spec, stats.value, where), stats.w_fkl


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(spec: _Spec, student: tuple, teacher: tuple, where, hyper: dict):
    """(loss [N] or scalar, head weights [N]); student = (hidden [N, H], weight [H, V], bias)."""
    return _outputs(spec, _row_sweep(spec, student, teacher, where, hyper)[0], where)


def _fused_fwd(spec: _Spec, student: tuple, teacher: tuple, where, hyper: dict):
    if not spec.grad_in_forward:
        stats, _ = _row_sweep(spec, student, teacher, where, hyper)
        return _outputs(spec, stats, where), (student, teacher, where, hyper, stats)
    dtype = jnp.promote_types(_acc_dtype(*student[:2]), _acc_dtype(teacher[0]))
    ct = _row_weight(spec, student[0].shape[0], where, dtype)
    stats, grads = _row_sweep(spec, student, teacher, where, hyper, ct=ct)
    return _outputs(spec, stats, where), (student, grads)


def _row_weight(spec: _Spec, num_rows: int, where: Array | None, dtype: jnp.dtype) -> Array:
    """d loss / d (each row's value) of a scalar reduction: 1 ("sum"), 1 / valid rows ("mean")."""
    one = jnp.ones((), dtype)
    return one / _row_count(num_rows, where, dtype) if spec.reduction == "mean" else one


def _row_cotangents(spec: _Spec, ct: Array, num_rows: int, where: Array | None) -> Array:
    """The cotangent [N] of each row's value, from that of the (reduced) loss."""
    if spec.reduction == "none":
        return ct
    return jnp.broadcast_to(ct * _row_weight(spec, num_rows, where, ct.dtype), (num_rows,))


def _fused_bwd(spec: _Spec, residuals: tuple, cotangents: tuple):
    ct = cotangents[0]  # the head weights' cotangent is dropped: they carry no gradient
    if not spec.grad_in_forward:
        student, teacher, where, hyper, stats = residuals
        ct = _row_cotangents(spec, ct.astype(stats.value.dtype), len(stats.value), where)
        return _column_sweep(spec, student, teacher, where, hyper, stats, ct), None, None, None
    student, grads = residuals
    grads = jax.tree.map(lambda g: g * ct.astype(g.dtype), grads)
    d_student = tuple(
        None if x is None else g.astype(x.dtype) for x, g in zip(student, grads, strict=True)
    )
    return d_student, None, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


# --------------------------------------------------------------------------- public API


def _is_static(x: Any) -> bool:
    return x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool))


def _check_shapes(hidden, weight, bias, teacher, where) -> tuple[int, ...]:
    """Validate shapes (ValueError naming them); returns the leading shape [...] of hidden."""
    h_shape, w_shape = jnp.shape(hidden), jnp.shape(weight)
    if len(h_shape) < 1 or len(w_shape) != 2 or h_shape[-1] != w_shape[0]:
        raise ValueError(f"need hidden [..., H] and weight [H, V]; got {h_shape} and {w_shape}")
    lead, vocab = h_shape[:-1], w_shape[1]
    if bias is not None and jnp.shape(bias) != (vocab,):
        raise ValueError(f"bias must be [V] = {(vocab,)}; got {jnp.shape(bias)}")
    if isinstance(teacher, tuple | list):
        _check_teacher_linear(teacher, lead, vocab)
    elif jnp.shape(teacher) != lead + (vocab,):
        raise ValueError(
            f"teacher logits {jnp.shape(teacher)} must be {lead + (vocab,)} for student hidden "
            f"{h_shape} and weight {w_shape}"
        )
    if where is not None and jnp.shape(where) != lead:
        raise ValueError(f"`where` must have hidden's leading shape {lead}; got {jnp.shape(where)}")
    if math.prod(lead) == 0:
        raise ValueError(f"hidden {h_shape} has no rows")
    return lead


def _check_teacher_linear(teacher: tuple | list, lead: tuple[int, ...], vocab: int) -> None:
    if len(teacher) not in (2, 3):
        raise ValueError(
            f"teacher must be logits or (hidden, weight[, bias]); got {len(teacher)} items"
        )
    t_h, t_w = jnp.shape(teacher[0]), jnp.shape(teacher[1])
    if len(t_h) < 1 or t_h[:-1] != lead or t_w != (t_h[-1], vocab):
        raise ValueError(
            f"teacher hidden {t_h} and weight {t_w} must be {lead} + (H',) and (H', {vocab})"
        )
    if len(teacher) == 3 and teacher[2] is not None and jnp.shape(teacher[2]) != (vocab,):
        raise ValueError(f"teacher bias must be ({vocab},); got {jnp.shape(teacher[2])}")


def _teacher_operands(teacher: Any, num_rows: int) -> tuple:
    """(logits [N, V],) or (hidden [N, H'], weight [H', V], bias or None), gradient-free."""
    if isinstance(teacher, tuple | list):
        t_hidden, t_weight = teacher[0], teacher[1]
        t_bias = teacher[2] if len(teacher) == 3 else None
        t_hidden = jnp.reshape(t_hidden, (num_rows, jnp.shape(t_hidden)[-1]))
        ops = (t_hidden, t_weight, t_bias)
    else:
        ops = (jnp.reshape(teacher, (num_rows, jnp.shape(teacher)[-1])),)
    return tuple(None if x is None else jax.lax.stop_gradient(jnp.asarray(x)) for x in ops)


def _resolve_size(name: str, value: int | str, auto: int, limit: int) -> int:
    """A chunk_rows / chunk_cols argument: "auto" -> `auto`, a positive int -> at most `limit`."""
    if value == "auto":
        return auto
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be 'auto' or a positive int, got {value!r}")
    return min(value, limit)


def _grad_in_forward(backward: str, reduction: str) -> bool:
    """Whether the forward pass computes the gradient (`backward` "forward", scalar reductions
    only); "auto" and "sweep" leave it to the backward's vocabulary sweep."""
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r}; expected one of {BACKWARDS}")
    if backward == "forward" and reduction == "none":
        raise ValueError(
            'backward="forward" needs a scalar loss (reduction "sum" or "mean"): per-example '
            "values have a cotangent per row, unknown in the forward pass"
        )
    return backward == "forward"


def fused_linear_kd_with_weight(
    hidden: Array,
    weight: Array,
    teacher: Array | tuple,
    *,
    method: str = "hta_kl",
    temperature: float = 1.0,
    mu: float = 0.5,
    head_ratio: float | None = None,
    weight_temperature: float | None = None,
    where: Array | None = None,
    bias: Array | None = None,
    path: str = "auto",
    chunk_rows: int | str = "auto",
    chunk_cols: int | str = "auto",
    reduction: str = "none",
    backward: str = "auto",
) -> tuple[Array, Array]:
    """:func:`fused_linear_kd` and the head weight w_head [...] it used (for logging; gradient-free;
    the constant FKL weight r for the fixed-weight methods)."""
    if method not in FUSED_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {FUSED_METHODS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    grad_in_forward = _grad_in_forward(backward, reduction)
    lead = _check_shapes(hidden, weight, bias, teacher, where)
    num_rows, vocab = math.prod(lead), jnp.shape(weight)[1]
    hyper = {
        "temperature": temperature,
        "mu": mu,
        "head_ratio": head_ratio,
        "weight_temperature": weight_temperature,
    }
    spec = _Spec(
        method=method,
        path=path,
        chunk=_resolve_size("chunk_rows", chunk_rows, chunk_rows_for(num_rows, vocab), num_rows),
        cols=_resolve_size("chunk_cols", chunk_cols, chunk_cols_for(num_rows, vocab), vocab),
        reduction=reduction,
        grad_in_forward=grad_in_forward,
        static_hyper=tuple((k, v) for k, v in hyper.items() if _is_static(v)),
    )
    dynamic = {k: jnp.asarray(v) for k, v in hyper.items() if not _is_static(v)}
    hidden = jnp.reshape(hidden, (num_rows, jnp.shape(hidden)[-1]))
    student = (hidden, jnp.asarray(weight), None if bias is None else jnp.asarray(bias))
    where_n = None if where is None else jnp.reshape(jnp.asarray(where, bool), (num_rows,))
    loss, w_head = _fused(spec, student, _teacher_operands(teacher, num_rows), where_n, dynamic)
    return (loss.reshape(lead) if reduction == "none" else loss), w_head.reshape(lead)


def fused_linear_kd(
    hidden: Array,
    weight: Array,
    teacher: Array | tuple,
    *,
    method: str = "hta_kl",
    temperature: float = 1.0,
    mu: float = 0.5,
    head_ratio: float | None = None,
    weight_temperature: float | None = None,
    where: Array | None = None,
    bias: Array | None = None,
    path: str = "auto",
    chunk_rows: int | str = "auto",
    chunk_cols: int | str = "auto",
    reduction: str = "none",
    backward: str = "auto",
) -> Array:
    """KD loss of the student logits `hidden @ weight + bias` without materialising them.

    Equals the method's unfused function (:func:`kd.forward_kl`, `reverse_kl`, `symmetric_kl`,
    `fixed_ratio_kl`, `hta_kl`) on `hidden @ weight + bias` per example, in value and in its
    gradients with respect to hidden, weight and bias, up to float32 rounding, with only a few
    [chunk_rows, V] and [N, chunk_cols] temporaries (see the module docstring).

    Args:
      hidden: student hidden states [..., H]; bf16 is fine (float32 logits and statistics).
      weight: student output projection [H, V]; bias: optional [V].
      teacher: logits [..., V], or (hidden [..., H'], weight [H', V][, bias [V]]); no gradient.
      method: one of FUSED_METHODS ("fkl", "rkl", "symmetric", "fixed_ratio" with head_ratio,
        "hta_kl" with mu, weight_temperature and the head-set `path`).
      temperature, mu, head_ratio, weight_temperature: as in the unfused functions; constants
        here (no gradient), Python numbers compiled in, arrays traced.
      where: optional bool [...] mask of valid rows: others give 0 and no gradient, whatever
        their hidden states and teacher logits hold (padding).
      chunk_rows, chunk_cols: rows per forward chunk, columns per backward block, or "auto"
        (:func:`chunk_rows_for`, :func:`chunk_cols_for`); larger: fewer passes, more memory.
      reduction: "none" (per-example values [...]), "sum" or "mean" (over valid rows).
      backward: "sweep" ("auto", every reduction): the backward recomputes the logits over
        vocabulary blocks (four matmuls, no [H, V] accumulator). "forward" (scalar reductions):
        the forward pass computes the gradient into a float32 [H, V] accumulator (three
        matmuls, Liger Kernel's approach); faster on some CPUs, slower on others (README).
    """
    return fused_linear_kd_with_weight(
        hidden,
        weight,
        teacher,
        method=method,
        temperature=temperature,
        mu=mu,
        head_ratio=head_ratio,
        weight_temperature=weight_temperature,
        where=where,
        bias=bias,
        path=path,
        chunk_rows=chunk_rows,
        chunk_cols=chunk_cols,
        reduction=reduction,
        backward=backward,
    )[0]
