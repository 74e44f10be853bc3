"""Fused linear + KD loss: the KL family from the student's hidden states and output projection,
row chunk by row chunk, without ever materialising the [tokens, vocab] logits (issue 19).

At LLM sizes the logits are the memory problem: one float32 [16384, 128256] array is 8.4 GB and
the unfused gradient keeps several. :func:`fused_linear_kd` takes hidden states [..., H] and the
projection [H, V] (and the teacher's logits [..., V], or its hidden states and projection) and
returns the per-example values of the materialised loss, `method(hidden @ weight + bias,
teacher_logits)`, and the same gradients with respect to hidden, weight and bias, up to float32
rounding. The largest temporaries are a few [chunk_rows, V] arrays.

Design (one `jax.custom_vjp`):
- Forward: a `lax.fori_loop` over chunks of `chunk_rows` rows. Per chunk: the student's logits
  h_c @ W + b with float32 accumulation (bf16 inputs give float32 logits and softmax statistics),
  the teacher's chunk logits (a slice, or t_c @ W_t + b_t), then the materialised path's own code
  on the chunk (:func:`kd.hta_kl_with_weight`, :func:`kd.fixed_ratio_kl`), so the values match
  it by construction. The last chunk, when the rows do not divide, starts earlier (it overlaps the
  one before) instead of padding, so no input is copied; overlapping rows are written once.
- Backward, `reduction="none"` (any per-row cotangent): the cotangent differs per row, so the
  gradient cannot be summed into dW ahead of time. A second loop recomputes each chunk's logits
  (one extra matmul per chunk, plus the teacher's when it comes as hidden states), takes the
  gradient with respect to them from kd's hand-written VJP with the chunk's cotangent rows, and
  accumulates dW += h_c^T g, db += sum_rows g and writes dh_c = g W^T. Residuals: the inputs
  (references to arrays that are alive anyway) and the HTA-KL head weights [N], so the backward
  does not search the head set again.
- `reduction="sum"` / `"mean"` (a scalar loss): its cotangent is one number, so the forward
  computes the gradient in the same loop (Liger Kernel's approach, no recompute: the three
  matmuls of the unfused path), keeps dh [N, H], dW [H, V], db [V] in float32 and the backward
  scales them.

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
from typing import Any

import jax
import jax.numpy as jnp

from htakl_jax.losses import kd

Array = jax.Array

FUSED_METHODS = ("fkl", "rkl", "symmetric", "fixed_ratio", "hta_kl")
REDUCTIONS = ("none", "sum", "mean")
# "auto" chunks (`chunk_rows_for`): the largest power of two of rows whose [rows, V] logits hold at
# most this many elements. On the CPU backend 2M elements (8 MiB in float32; V = 32000: 64 rows),
# with which the fused gradient's temporaries at [4096 x 512] @ [512, 32000] are 14% of the
# unfused ones (benchmarks/fused_memory.py). Each chunk's KD loss runs over kd's smaller row
# blocks (1 MiB; row_block="auto"), as the head-set search's probe sums materialise
# [rows, probes, V] on the CPU; the chunk itself also runs a matmul, which wants rows.
# Elsewhere 16M elements and at
# least ACCELERATOR_MIN_ROWS rows: every chunk's matmul reads the whole projection, so a GPU needs
# a few hundred rows per chunk to stay compute-bound (not measured yet).
CPU_CHUNK_ELEMENTS = 1 << 21
CHUNK_ELEMENTS = 1 << 24
ACCELERATOR_MIN_ROWS = 256
# The fixed-weight methods as their FKL weight r (loss r * FKL + (1 - r) * RKL), as in kd.
_FIXED_RATIOS = {"fkl": 1.0, "rkl": 0.0, "symmetric": 0.5}


def chunk_rows_for(num_rows: int, vocab: int, backend: str | None = None) -> int:
    """Default rows per chunk on `backend` (None: JAX's default backend), at most num_rows.

    CPU: the largest power of two with rows * vocab <= CPU_CHUNK_ELEMENTS (at least 1); other
    backends: the same with CHUNK_ELEMENTS, and at least ACCELERATOR_MIN_ROWS.
    """
    on_cpu = (backend or jax.default_backend()) == "cpu"
    elements = CPU_CHUNK_ELEMENTS if on_cpu else CHUNK_ELEMENTS
    rows = max(1, elements // max(vocab, 1))
    rows = 1 << (rows.bit_length() - 1)
    if not on_cpu:
        rows = max(rows, ACCELERATOR_MIN_ROWS)
    return max(1, min(rows, num_rows))


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The static part of a call (hashable: a nondiff argument of the custom VJP)."""

    method: str
    path: str
    chunk: int
    reduction: str
    static_hyper: tuple[tuple[str, Any], ...]


# --------------------------------------------------------------------------- one chunk


def _acc_dtype(*xs: Array) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _linear(h: Array, w: Array, b: Array | None) -> Array:
    """h @ w (+ b) with float32 (or wider) accumulation and result."""
    dtype = _acc_dtype(h, w)
    out = jnp.matmul(h, w, preferred_element_type=dtype)
    return out if b is None else out + b.astype(dtype)


def _rows(x: Array | None, start: Array, size: int) -> Array | None:
    return None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _teacher_chunk(teacher: tuple, start: Array, size: int) -> Array:
    """The teacher's logits of rows [start, start + size): a slice, or computed from its hidden
    states and projection."""
    if len(teacher) == 1:
        logits = teacher[0]
        if jnp.dtype(logits.dtype).itemsize != 2 or jax.default_backend() != "cpu":
            return _rows(logits, start, size)
        # XLA:CPU slices 16-bit floats as float32 and hoists the convert of all the teacher logits
        # out of the loop (a float32 copy of them); sliced as uint16, they cost one 16-bit copy.
        raw = _rows(jax.lax.bitcast_convert_type(logits, jnp.uint16), start, size)
        return jax.lax.bitcast_convert_type(raw, logits.dtype)
    t_hidden, t_weight, t_bias = teacher
    return _linear(_rows(t_hidden, start, size), t_weight, t_bias)


def _chunk_kd(
    spec: _Spec, hyper: dict, s: Array, t: Array, valid: Array | None, w_head: Array | None
) -> tuple[Array, Array]:
    """(values [c], head weights [c]) of the method on chunk logits [c, V], by kd's own code.

    With `w_head` given (HTA-KL's backward) the weights are those, not searched again.
    """
    h = dict(spec.static_hyper) | hyper
    tau = h["temperature"]
    if spec.method == "hta_kl" and w_head is None:
        return kd.hta_kl_with_weight(
            s,
            t,
            temperature=tau,
            mu=h["mu"],
            where=valid,
            path=spec.path,
            row_block="auto",
            weight_temperature=h["weight_temperature"],
        )
    if w_head is not None:
        ratio = w_head
    else:
        ratio = h["head_ratio"] if spec.method == "fixed_ratio" else _FIXED_RATIOS[spec.method]
    values = kd.fixed_ratio_kl(
        s, t, head_ratio=ratio, temperature=tau, where=valid, row_block="auto"
    )
    return values, jnp.broadcast_to(jnp.asarray(ratio, values.dtype), values.shape)


def _chunk_grad(
    spec: _Spec, hyper: dict, s: Array, t: Array, valid: Array | None, ct: Array, w_head
) -> tuple[Array, Array, Array]:
    """Values [c], head weights [c] and d(sum_rows ct * values) / d s, [c, V]."""
    values, vjp_fn, heads = jax.vjp(
        lambda s_: _chunk_kd(spec, hyper, s_, t, valid, w_head), s, has_aux=True
    )
    (ds,) = vjp_fn(ct.astype(values.dtype))
    return values, heads, ds


# --------------------------------------------------------------------------- the loop


def _write(x: Array, start: Array, new: Array, rows: Array) -> Array:
    """x with rows [start, start + c) set to `rows` where `new` (the rest keep their value)."""
    old = jax.lax.dynamic_slice_in_dim(x, start, rows.shape[0], axis=0)
    mask = new.reshape(new.shape + (1,) * (rows.ndim - 1))
    return jax.lax.dynamic_update_slice_in_dim(x, jnp.where(mask, rows, old), start, axis=0)


def _accumulate(grads: tuple, h_c: Array, w: Array, g: Array, start: Array, new: Array):
    """(dh, dW, db) plus one chunk's share: dh_c = g W^T, h_c^T g and sum_rows g (float32)."""
    dh, dw, db = grads
    g_mm = g.astype(jnp.result_type(h_c, w))  # bf16 weights: bf16 matmul, float32 accumulation
    dh_c = jax.lax.dot_general(g_mm, w, (((1,), (1,)), ((), ())), preferred_element_type=dw.dtype)
    dw = dw + jax.lax.dot_general(
        h_c, g_mm, (((0,), (0,)), ((), ())), preferred_element_type=dw.dtype
    )
    db = None if db is None else db + jnp.sum(g, axis=0).astype(db.dtype)
    return _write(dh, start, new, dh_c.astype(dh.dtype)), dw, db


def _sweep(spec: _Spec, student, teacher, where, hyper, *, ct=None, w_head=None):
    """One pass over the row chunks: (values [N], head weights [N], grads).

    grads is None without `ct`; with `ct` [N] (the cotangent of each row's value) it is
    (dh [N, H], dW [H, V], db [V] or None) in float32, of sum_rows ct * values.
    """
    h, w, b = student
    n, c = h.shape[0], spec.chunk
    acc = _acc_dtype(h, w)
    out_dtype = jnp.promote_types(acc, _acc_dtype(teacher[0]))

    def body(i, carry):
        values, heads, grads = carry
        start = jnp.minimum(i * c, n - c)  # the last chunk overlaps the one before
        new = start + jnp.arange(c) >= i * c  # rows no earlier chunk has done
        valid, w_c = _rows(where, start, c), _rows(w_head, start, c)
        h_c = _rows(h, start, c)
        if valid is not None:  # padding may hold NaN: keep it out of dW = h^T g
            h_c = jnp.where(valid[:, None], h_c, 0)
        s, t = _linear(h_c, w, b), _teacher_chunk(teacher, start, c)
        if ct is None:
            v, wh = _chunk_kd(spec, hyper, s, t, valid, w_c)
        else:
            ct_c = jnp.where(new, _rows(ct, start, c), 0.0)
            v, wh, g = _chunk_grad(spec, hyper, s, t, valid, ct_c, w_c)
            grads = _accumulate(grads, h_c, w, g, start, new)
        values = _write(values, start, new, v.astype(out_dtype))
        return values, _write(heads, start, new, wh.astype(out_dtype)), grads

    grads = None
    if ct is not None:
        db = None if b is None else jnp.zeros(b.shape, acc)
        grads = (jnp.zeros(h.shape, acc), jnp.zeros(w.shape, acc), db)
    init = (jnp.zeros((n,), out_dtype), jnp.zeros((n,), out_dtype), grads)
    return jax.lax.fori_loop(0, -(-n // c), body, init)


# --------------------------------------------------------------------------- the custom VJP


def _reduce(spec: _Spec, values: Array, where: Array | None) -> Array:
    if spec.reduction == "none":
        return values
    total = jnp.sum(values)
    return total if spec.reduction == "sum" else total / _row_count(values, where)


def _row_count(values: Array, where: Array | None) -> Array:
    count = values.shape[0] if where is None else jnp.sum(where)
    return jnp.maximum(jnp.asarray(count, values.dtype), 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(spec: _Spec, student: tuple, teacher: tuple, where, hyper: dict):
    """(loss [N] or scalar, head weights [N]); student = (hidden [N, H], weight [H, V], bias)."""
    values, heads, _ = _sweep(spec, student, teacher, where, hyper)
    return _reduce(spec, values, where), heads


def _fused_fwd(spec: _Spec, student: tuple, teacher: tuple, where, hyper: dict):
    if spec.reduction == "none":
        values, heads, _ = _sweep(spec, student, teacher, where, hyper)
        saved_heads = heads if spec.method == "hta_kl" else None
        return (values, heads), (student, teacher, where, hyper, saved_heads)
    n = student[0].shape[0]
    out_dtype = jnp.promote_types(_acc_dtype(*student[:2]), _acc_dtype(teacher[0]))
    ct = jnp.ones((n,), out_dtype)
    if spec.reduction == "mean":
        ct = ct / _row_count(ct, where)
    values, heads, grads = _sweep(spec, student, teacher, where, hyper, ct=ct)
    return (_reduce(spec, values, where), heads), (student, grads)


def _fused_bwd(spec: _Spec, residuals: tuple, cotangents: tuple):
    ct = cotangents[0]  # the head weights' cotangent is dropped: they carry no gradient
    if spec.reduction == "none":
        student, teacher, where, hyper, heads = residuals
        _, _, grads = _sweep(spec, student, teacher, where, hyper, ct=ct, w_head=heads)
    else:
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


def _resolve_chunk(chunk_rows: int | str, num_rows: int, vocab: int) -> int:
    if chunk_rows == "auto":
        return chunk_rows_for(num_rows, vocab)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be 'auto' or a positive int, got {chunk_rows!r}")
    return min(chunk_rows, num_rows)


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
    reduction: str = "none",
) -> tuple[Array, Array]:
    """:func:`fused_linear_kd` and the head weight w_head [...] it used (for logging; gradient-free;
    the constant FKL weight r for the fixed-weight methods)."""
    if method not in FUSED_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {FUSED_METHODS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
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
        chunk=_resolve_chunk(chunk_rows, num_rows, vocab),
        reduction=reduction,
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
    reduction: str = "none",
) -> Array:
    """KD loss of the student logits `hidden @ weight + bias` without materialising them.

    Equals `loss(hidden @ weight + bias, teacher_logits, ...)` per example, in value and in its
    gradients with respect to hidden, weight and bias, up to float32 rounding, for `loss` the
    method's function (:func:`kd.forward_kl`, `reverse_kl`, `symmetric_kl`, `fixed_ratio_kl`,
    `hta_kl`), while keeping only a few [chunk_rows, V] temporaries (see the module docstring).

    Args:
      hidden: student hidden states [..., H] (e.g. [batch, length, H]); bf16 is fine (logits
        and softmax statistics are accumulated in float32).
      weight: student output projection [H, V]; bias: optional [V].
      teacher: logits [..., V], or (hidden [..., H'], weight [H', V][, bias [V]]) whose logits
        are computed per chunk. Gets no gradient.
      method: one of FUSED_METHODS ("fkl", "rkl", "symmetric", "fixed_ratio" with head_ratio,
        "hta_kl" with mu, weight_temperature and the head-set `path`).
      temperature, mu, head_ratio, weight_temperature: as in the unfused functions; constants
        here (no gradient), Python numbers compiled in, arrays traced.
      where: optional bool [...] mask of valid rows (padding): other rows give 0 and no
        gradient; their hidden states and teacher logits may hold anything.
      chunk_rows: rows per chunk, or "auto" (:func:`chunk_rows_for`: about 2M logits per chunk
        on the CPU backend, 16M and at least 256 rows elsewhere). Larger chunks: fewer passes
        over the projection (each chunk's matmul reads all of it), more memory.
      reduction: "none" (per-example values [...], any cotangent: the backward recomputes the
        chunk logits), "sum" or "mean" (over valid rows; a scalar: the gradient is computed in
        the forward pass, no recompute).
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
        reduction=reduction,
    )[0]
