"""The KD loss family: forward / reverse KL, HTA-KL, the ablations and the training objective.

Conventions are in the package docstring (:mod:`htakl_jax.losses`); the head set and the HTA-KL
weights are in :mod:`htakl_jax.losses.head_set`. Imports only jax and numpy.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from htakl_jax.losses import head_set

Array = jax.Array

METHODS = ("ce", "fkl", "rkl", "symmetric", "fixed_ratio", "hta_kl")


# --------------------------------------------------------------------------- validation helpers


def _check_pair(student_logits: Array, teacher_logits: Array) -> None:
    s_shape, t_shape = jnp.shape(student_logits), jnp.shape(teacher_logits)
    if len(s_shape) < 1 or len(t_shape) < 1:
        raise ValueError(
            f"logits need a class axis [..., C]; got student {s_shape} and teacher {t_shape}"
        )
    if s_shape != t_shape:
        raise ValueError(
            f"student logits {s_shape} and teacher logits {t_shape} must have the same shape "
            "(same leading dims and the same number of classes C)"
        )


def _check_where(where: Array | None, batch_shape: tuple[int, ...]) -> None:
    if where is not None and jnp.shape(where) != batch_shape:
        raise ValueError(
            f"`where` must have the logits' leading shape {batch_shape}; got {jnp.shape(where)}"
        )


def _is_concrete_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_temperature(temperature: Any) -> None:
    if _is_concrete_number(temperature) and not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")


def _check_kd_inputs(
    student_logits: Array, teacher_logits: Array, temperature: Any, where: Array | None
) -> None:
    _check_pair(student_logits, teacher_logits)
    _check_where(where, jnp.shape(teacher_logits)[:-1])
    _check_temperature(temperature)


def _check_mu(mu: Any) -> None:
    if _is_concrete_number(mu) and not 0 < mu <= 1:
        raise ValueError(f"mu (head mass threshold) must lie in (0, 1]; got {mu}")


def _check_head_ratio(head_ratio: Any) -> None:
    if head_ratio is None:
        raise ValueError("method 'fixed_ratio' needs head_ratio in [0, 1]; got None")
    if _is_concrete_number(head_ratio) and not 0 <= head_ratio <= 1:
        raise ValueError(f"head_ratio must lie in [0, 1]; got {head_ratio}")


# --------------------------------------------------------------------------- shared pieces


def _compute_dtype(x: Array) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _mask_logits(logits: Array, where: Array | None) -> Array:
    """Replace masked rows by zeros so no NaN/inf from padding reaches the forward or backward."""
    logits = logits.astype(_compute_dtype(logits))
    if where is None:
        return logits
    return jnp.where(jnp.asarray(where, bool)[..., None], logits, 0.0)


def _apply_where(values: Array, where: Array | None) -> Array:
    if where is None:
        return values
    return jnp.where(jnp.asarray(where, bool), values, 0.0)


def _probs(
    student_logits: Array, teacher_logits: Array, temperature: Any, where: Array | None
) -> tuple[Array, Array]:
    """Teacher and student probabilities (p, q) at `temperature`, [..., C] each."""
    _check_kd_inputs(student_logits, teacher_logits, temperature, where)
    s, t = _mask_logits(student_logits, where), _mask_logits(teacher_logits, where)
    pair = _softmax_pair(s, t, jnp.asarray(temperature, s.dtype))
    return pair.p, pair.q


# ----- every KD loss: one custom VJP over all rows
#
# Every KD loss here is w_fkl * KL(p || q) + w_rkl * KL(q || p) per row, with weights that carry
# no gradient into the logits (HTA-KL's come from the head set, in the forward). The forward
# computes per-row statistics only (on the CPU over row blocks, whose temporaries stay in the
# cache); the backward keeps only the logits (alive anyway) and those statistics, and rebuilds
# p and q in one elementwise pass over all rows. With z = logits / tau, d = log p - log q
# (0 log 0 = 0 on masked classes):
#   dKL(p||q)/dz_s = q - p            dKL(q||p)/dz_s = q * (-d - KL(q||p))
#   dKL(p||q)/dz_t = p * (d - KL(p||q))   dKL(q||p)/dz_t = p - q
# and dL/dtau = -(1 / tau) * sum(dL/ds * s + dL/dt * t). Gradients nobody asks for (the
# teacher's, usually) are dropped by XLA. Forward-mode autodiff (jax.jvp) does not pass through
# it (a custom_vjp limitation).


class _SoftmaxPair(NamedTuple):
    """Student and teacher distributions at one temperature: [R, C] arrays, [R] normalisers."""

    log_q: Array
    log_p: Array
    q: Array
    p: Array
    lse_s: Array
    lse_t: Array


def _softmax(x: Array) -> tuple[Array, Array, Array]:
    """(log-probabilities, probabilities [R, C], logsumexp [R]) of logits x [R, C] (x / tau).

    exp(x - max) is computed once and normalised by a division (XLA keeps it rather than
    evaluate exp again for the probabilities); rows of -inf give -inf, as jax.nn.logsumexp.
    """
    peak = jnp.max(x, axis=-1, keepdims=True)
    peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    unnormalised = jnp.exp(x - peak)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    lse = peak + jnp.log(total)
    return x - lse, unnormalised / total, lse[..., 0]


def _softmax_pair(s: Array, t: Array, temperature: Array) -> _SoftmaxPair:
    log_q, q, lse_s = _softmax(s / temperature)
    log_p, p, lse_t = _softmax(t / temperature)
    return _SoftmaxPair(log_q, log_p, q, p, lse_s, lse_t)


def _log_ratio(log_p: Array, log_q: Array) -> Array:
    """d = log p - log q [R, C]. Callers weight it by p (FKL) or q (RKL) only where that is > 0,
    which leaves out the NaN of a class both sides mask (-inf - -inf), keeps a class only one
    side masks at its true +inf, and keeps the finite log of a probability that underflows."""
    return log_p - log_q


class _Spec(NamedTuple):
    """Static choices of a KD loss: which KL terms, adaptive (HTA-KL) weights, head-set path,
    rows per forward block (None: all at once)."""

    terms: tuple[bool, bool]
    adaptive: bool
    path: str
    block: int | None


def _rows_forward(spec: _Spec, s, t, temperature, weights, head, where) -> tuple:
    """Forward of rows s, t [R, C]: (loss, w_fkl, w_rkl, lse_s, lse_t, fkl, rkl), [R] each.

    `weights` (w_fkl, w_rkl) [R] for fixed weights; `head` (mu, weight temperature or None)
    for HTA-KL, whose weights come from the head set of `where`'s rows [R] (None: all).
    """
    pair = _softmax_pair(s, t, temperature)
    d = _log_ratio(pair.log_p, pair.log_q)
    zero = jnp.zeros(s.shape[:-1], s.dtype)
    fkl = jnp.sum(jnp.where(pair.p > 0, pair.p * d, 0.0), axis=-1) if spec.terms[0] else zero
    rkl = jnp.sum(jnp.where(pair.q > 0, -pair.q * d, 0.0), axis=-1) if spec.terms[1] else zero
    if spec.adaptive:
        weights = _head_tail(spec.path, s, t, temperature, pair, head, where)
    w_fkl, w_rkl = weights
    return (w_fkl * fkl + w_rkl * rkl, w_fkl, w_rkl, pair.lse_s, pair.lse_t, fkl, rkl)


def _head_tail(path, s, t, temperature, pair, head, where) -> tuple[Array, Array]:
    """HTA-KL weights [R] from the pair at the loss temperature, or at head's own one."""
    mu, weight_temperature = head
    if weight_temperature is not None:
        pair = _softmax_pair(s, t, weight_temperature)
    # log p (from the logits) lets the threshold search skip a logarithm per class.
    return head_set.head_tail_from_probs(
        pair.p, pair.q, mu, valid=where, path=path, log_p=pair.log_p
    )


def _over_row_blocks(block: int | None, rows: Callable[..., Any], *operands: Any) -> Any:
    """rows(*operands) -> per-row arrays [R] (a pytree) over blocks of `block` rows by lax.map
    (None: all rows at once); operands are [R, ...] arrays or None."""
    if block is None:
        return rows(*operands)
    blocks = jax.tree.map(lambda x: x.reshape((-1, block) + x.shape[1:]), operands)
    out = jax.lax.map(lambda ops: rows(*ops), blocks)
    return jax.tree.map(lambda x: x.reshape(-1), out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _kd_rows(
    spec: _Spec,
    s: Array,
    t: Array,
    temperature: Array,
    weights: tuple[Array, Array] | None,
    head: tuple[Array, Array | None] | None,
    where: Array | None,
) -> tuple[Array, Array]:
    """(w_fkl * FKL + w_rkl * RKL, w_fkl) per row, [R] each, for logits s, t [R, C].

    `weights`, `head` and `where` as in `_rows_forward`; rows outside `where` are computed like
    any other (the caller zeroes their logits and values). The weights get a cotangent only as
    inputs (fixed weights); HTA-KL's are gradient-free.
    """
    return _kd_rows_fwd(spec, s, t, temperature, weights, head, where)[0]


def _kd_rows_fwd(spec, s, t, temperature, weights, head, where):
    out = _all_rows_forward(spec, s, t, temperature, weights, head, where)
    loss, w_fkl, w_rkl, lse_s, lse_t, fkl, rkl = out
    residuals = (s, t, temperature, weights, head, where, w_fkl, w_rkl, lse_s, lse_t, fkl, rkl)
    return (loss, w_fkl), residuals


def _all_rows_forward(spec: _Spec, s, t, temperature, weights, head, where) -> tuple:
    """`_rows_forward` of all rows [R, C], over row blocks of spec.block rows."""
    rows = functools.partial(_rows_forward, spec, temperature=temperature, head=head)
    return _over_row_blocks(
        spec.block, lambda *ops: rows(*ops[:2], weights=ops[2], where=ops[3]), s, t, weights, where
    )


def _kd_rows_bwd(spec, residuals, cotangents):
    s, t, temperature, weights, head, where, w_fkl, w_rkl, lse_s, lse_t, fkl, rkl = residuals
    g, g_w = cotangents
    g_f, g_r = g * w_fkl, g * w_rkl
    ds = _student_grad(spec.terms, s, t, temperature, lse_s, lse_t, g_f, g_r, rkl)
    # The teacher's gradient (dropped by XLA unless asked for) from the pair.
    pair = _pair_from_normalisers(s, t, temperature, lse_s, lse_t)
    d = _log_ratio(pair.log_p, pair.log_q)
    dz_t = 0.0
    if spec.terms[0]:
        dz_t = dz_t + g_f[:, None] * jnp.where(pair.p > 0, pair.p * (d - fkl[:, None]), 0.0)
    if spec.terms[1]:
        dz_t = dz_t + g_r[:, None] * (pair.p - pair.q)
    dt = dz_t / temperature
    d_temperature = -(_finite_dot(ds, s) + _finite_dot(dt, t)) / temperature
    d_weights = None if weights is None else (g * fkl + g_w, g * rkl)
    d_head = jax.tree.map(jnp.zeros_like, head)
    return ds, dt, d_temperature.astype(temperature.dtype), d_weights, d_head, None


def _student_grad(terms, s, t, temperature, lse_s, lse_t, g_f, g_r, rkl) -> Array:
    """d(g_f * FKL + g_r * RKL) / ds for logits s, t [R, K] (any K of the C classes): [R, K].

    g_f, g_r [R] are the weighted cotangents, lse_s, lse_t and rkl [R] the forward's. With
    u = log q, v = log p, tau * ds is
    g_f * (q - p) + g_r * q * (u - v - RKL) (0 where q = 0), here as q * (c + g_r * (u - v))
    - g_f * p with the per-row c = g_f - g_r * RKL: one elementwise pass, 1 / tau folded into
    the per-row factors.
    """
    inv_tau = 1.0 / temperature
    u = s * inv_tau - lse_s[:, None]
    g_f = (g_f * inv_tau)[:, None] if terms[0] else 0.0
    g_r = (g_r * inv_tau)[:, None] if terms[1] else 0.0
    c = g_f - g_r * rkl[:, None] if terms[1] else g_f
    v = t * inv_tau - lse_t[:, None]
    q = jnp.exp(u)
    if terms[1]:
        ds = jnp.where(q > 0, q * (c + g_r * (u - v)), 0.0)
    else:
        ds = q * c
    return ds - g_f * jnp.exp(v) if terms[0] else ds


_kd_rows.defvjp(_kd_rows_fwd, _kd_rows_bwd)


def _pair_from_normalisers(s, t, temperature, lse_s, lse_t) -> _SoftmaxPair:
    log_q, log_p = s / temperature - lse_s[:, None], t / temperature - lse_t[:, None]
    return _SoftmaxPair(log_q, log_p, jnp.exp(log_q), jnp.exp(log_p), lse_s, lse_t)


def _finite_dot(cotangent: Array, logits: Array) -> Array:
    """sum(cotangent * logits) over finite logits: -inf (masked) classes add 0, not NaN."""
    return jnp.sum(jnp.where(jnp.isfinite(logits), cotangent * logits, 0.0))


def _terms(weights: tuple[Any, Any]) -> tuple[bool, bool]:
    """Which KL terms (FKL, RKL) fixed weights keep: a Python 0 drops its term."""
    return tuple(not (_is_concrete_number(w) and w == 0) for w in weights)


class _Rows(NamedTuple):
    """A KD loss's inputs as rows: masked logits s, t [R, C] (float32 at least), tau, the fixed
    weights ([R] each) or HTA-KL's head arguments, the valid rows [R] (or None), the spec, and
    the logits' leading shape [...] (R its size)."""

    spec: _Spec
    s: Array
    t: Array
    tau: Array
    weights: tuple[Array, Array] | None
    head: tuple[Array, Array | None] | None
    where: Array | None
    lead: tuple[int, ...]


def _as_rows(
    student_logits: Array,
    teacher_logits: Array,
    temperature: Any,
    where: Array | None,
    row_block: int | str | None,
    weights: tuple[Any, Any] | None,
    head: tuple[Any, Any, str] | None,
) -> _Rows:
    """Validate and reshape a KD loss's inputs; `weights`, `head` and `row_block` as in `_kd`."""
    _check_kd_inputs(student_logits, teacher_logits, temperature, where)
    shape = jnp.shape(teacher_logits)
    lead, num_classes = shape[:-1], shape[-1]
    num_rows = math.prod(lead)
    s = _mask_logits(student_logits, where).reshape(num_rows, num_classes)
    t = _mask_logits(teacher_logits, where).reshape(num_rows, num_classes)
    tau = jnp.asarray(temperature, s.dtype)
    where_rows = None if where is None else jnp.asarray(where, bool).reshape(num_rows)
    searches = head is not None and head_set.resolve_path(head[2], num_classes) == "threshold"
    block = _resolve_row_block(row_block, num_rows, num_classes, searches)
    if head is None:
        spec = _Spec(_terms(weights), False, "auto", block)
        weights = tuple(
            jnp.broadcast_to(jnp.asarray(w, s.dtype), lead).reshape(num_rows) for w in weights
        )
        return _Rows(spec, s, t, tau, weights, None, where_rows, lead)
    mu, weight_temperature, path = head
    if weight_temperature is not None:
        weight_temperature = jnp.asarray(weight_temperature, s.dtype)
    head_args = (jnp.asarray(mu, s.dtype), weight_temperature)
    spec = _Spec((True, True), True, path, block)
    return _Rows(spec, s, t, tau, None, head_args, where_rows, lead)


def _kd(
    student_logits: Array,
    teacher_logits: Array,
    temperature: Any,
    where: Array | None,
    row_block: int | str | None,
    weights: tuple[Any, Any] | None = None,
    head: tuple[Any, Any, str] | None = None,
) -> tuple[Array, Array]:
    """tau^2 * (w_fkl * FKL + w_rkl * RKL) per example, 0 outside `where`, and w_fkl; [...] each.

    Fixed `weights` (w_fkl, w_rkl), numbers or arrays broadcastable to [...] (a Python 0 drops
    its term), or HTA-KL's `head` (mu, weight_temperature, path). `row_block` as in `hta_kl`.
    """
    r = _as_rows(student_logits, teacher_logits, temperature, where, row_block, weights, head)
    rows, w_fkl = _kd_rows(r.spec, r.s, r.t, r.tau, r.weights, r.head, r.where)
    values = _apply_where(r.tau**2 * rows.reshape(r.lead), where)
    return values, w_fkl.reshape(r.lead)


def _weighted_kl(
    student_logits: Array,
    teacher_logits: Array,
    w_fkl: Any,
    w_rkl: Any,
    temperature: Any,
    where: Array | None,
    row_block: int | str | None = "auto",
) -> Array:
    """tau^2 * (w_fkl * FKL + w_rkl * RKL) per example, 0 on rows outside `where`; [...]."""
    return _kd(student_logits, teacher_logits, temperature, where, row_block, (w_fkl, w_rkl))[0]


# --------------------------------------------------------------------------- public losses


def forward_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    where: Array | None = None,
    row_block: int | str | None = "auto",
) -> Array:
    """Standard KD: tau^2 * KL(p_teacher || q_student) per example. [..., C] -> [...]."""
    return _weighted_kl(student_logits, teacher_logits, 1.0, 0.0, temperature, where, row_block)


def reverse_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    where: Array | None = None,
    row_block: int | str | None = "auto",
) -> Array:
    """Reverse KD: tau^2 * KL(q_student || p_teacher) per example. [..., C] -> [...]."""
    return _weighted_kl(student_logits, teacher_logits, 0.0, 1.0, temperature, where, row_block)


def symmetric_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    where: Array | None = None,
    row_block: int | str | None = "auto",
) -> Array:
    """(FKL + RKL) / 2 per example. [..., C] -> [...]."""
    return fixed_ratio_kl(
        student_logits,
        teacher_logits,
        head_ratio=0.5,
        temperature=temperature,
        where=where,
        row_block=row_block,
    )


def fixed_ratio_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    head_ratio: float,
    temperature: float = 1.0,
    where: Array | None = None,
    row_block: int | str | None = "auto",
) -> Array:
    """Ablation with constant weights: r * FKL + (1 - r) * RKL per example. [..., C] -> [...].

    `row_block`, here and in the other fixed-weight losses, as in :func:`hta_kl`, except that
    "auto" blocks hold about BLOCK_ELEMENTS (262,144) elements.
    """
    _check_head_ratio(head_ratio)
    return _weighted_kl(
        student_logits, teacher_logits, head_ratio, 1.0 - head_ratio, temperature, where, row_block
    )


def head_tail_weights(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    mu: float = 0.5,
    path: str = "auto",
    weight_temperature: float | None = None,
) -> tuple[Array, Array]:
    """HTA-KL weights (w_head, w_tail), each [...], summing to 1; no gradient flows through them.

    w_head = g_head / (g_head + g_tail) with g the summed |p - q| gaps over head and tail classes,
    p and q taken at `weight_temperature` (None: at `temperature`, see :func:`hta_kl`);
    0.5 / 0.5 when the total gap is zero (student equals teacher). `path`: the head-set path
    (:data:`htakl_jax.losses.head_set.PATHS`; all exact).
    """
    _check_mu(mu)
    p, q = _probs(
        jax.lax.stop_gradient(student_logits),
        jax.lax.stop_gradient(teacher_logits),
        temperature if weight_temperature is None else weight_temperature,
        None,
    )
    return jax.lax.stop_gradient(head_set.head_tail_from_probs(p, q, mu, path=path))


# Row blocks: above 2 * BLOCK_ELEMENTS elements per input, every KD loss on the CPU backend runs
# over blocks of about BLOCK_ELEMENTS elements (whole rows; 1 MiB per float32 block) with lax.map.
# HTA-KL's threshold search, weights and KL pair make about twenty passes over about eight
# [rows, C] temporaries (the KL pair alone a few); per block those stay in the cache (8 rows at
# 32000 classes: 8 MiB of temporaries, against 4 GiB for [4096, 32000] at once), and XLA:CPU,
# which allocates and page-faults its temporary buffer afresh at every call, no longer touches
# fresh memory. At [4096, 32000] the gradient ran 1.5-1.7x faster with blocks of 64 rows than at
# once, and blocks of 8 rows were faster again (benchmarks/loss.py; README "Performance"). Not
# the default on other backends: there a loop of blocks adds per-block kernel launches and
# loop-condition round trips, and it has not been measured (pass `row_block` to choose).
# HTA-KL's threshold search takes half as many elements (at least 2 rows): it materialises
# [rows, 8, C] probe sums, and at [4096, 32000] the gradient ran 7-16% faster with blocks of 4
# rows than of 8 (at 128,256 classes 2 rows beat 1), while the fixed-weight losses ran 3-7%
# slower, and HTA-KL by the sort path at [4096, 1000] 3-9% slower with 128 rows than 256.
# The search's blocks also hold at most HEAD_SET_BLOCK_ROWS rows: ranking its candidates compares
# [rows, k, k] pairs (k = min(C, 64)), so at [4096, 40] all rows at once ran 3x slower than
# blocks of 64-1,024 rows, and at [4096, 100] 2.2x slower (ad-hoc, benchmarks/loss.py's inputs).
BLOCK_ELEMENTS = 1 << 18
HEAD_SET_BLOCK_ELEMENTS = 1 << 17
HEAD_SET_BLOCK_ROWS = 512


def row_block_size(
    num_rows: int,
    num_classes: int,
    block_elements: int = BLOCK_ELEMENTS,
    min_rows: int = 1,
    max_rows: int | None = None,
) -> int | None:
    """Rows per block for [num_rows, num_classes] (a divisor of num_rows), or None for one block.

    The target is block_elements // num_classes rows, at least `min_rows`, at most `max_rows`.
    One block when the input holds at most 2 * block_elements elements and at most `max_rows`
    rows, when no divisor lies within 4x below the target (e.g. a prime number of rows) or when
    the only one is all rows.
    """
    max_rows = num_rows if max_rows is None else max_rows
    if num_rows * num_classes <= 2 * block_elements and num_rows <= max_rows:
        return None
    target = min(max_rows, max(min_rows, block_elements // num_classes))
    sizes = range(min(target, num_rows - 1), -(-target // 4) - 1, -1)
    return next((b for b in sizes if num_rows % b == 0), None)


def _resolve_row_block(
    row_block: int | str | None, num_rows: int, num_classes: int, searches: bool
) -> int | None:
    """Rows per block (None: all rows at once) for the `row_block` argument of `hta_kl`;
    `searches`: the head set comes from the threshold search (smaller automatic blocks)."""
    if row_block == "auto":
        if jax.default_backend() != "cpu":
            return None
        if searches:
            return row_block_size(
                num_rows, num_classes, HEAD_SET_BLOCK_ELEMENTS, 2, HEAD_SET_BLOCK_ROWS
            )
        return row_block_size(num_rows, num_classes)
    if row_block is None:
        return None
    if isinstance(row_block, bool) or not isinstance(row_block, int) or row_block < 1:
        raise ValueError(f"row_block must be 'auto', None or a positive int, got {row_block!r}")
    if num_rows % row_block:
        raise ValueError(f"row_block {row_block} does not divide the {num_rows} rows")
    return None if row_block == num_rows else row_block


def hta_kl_with_weight(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    mu: float = 0.5,
    where: Array | None = None,
    path: str = "auto",
    row_block: int | str | None = "auto",
    weight_temperature: float | None = None,
) -> tuple[Array, Array]:
    """:func:`hta_kl` [...] and the head weight w_head [...] it used (for logging)."""
    head = _head_args(mu, weight_temperature, path)
    return _kd(student_logits, teacher_logits, temperature, where, row_block, head=head)


def _head_args(mu: Any, weight_temperature: Any, path: str) -> tuple[Any, Any, str]:
    """HTA-KL's head arguments (mu, weight_temperature, path) for `_kd`, validated."""
    _check_mu(mu)
    if weight_temperature is not None:
        _check_temperature(weight_temperature)
    head_set.check_path(path)
    return mu, weight_temperature, path


def hta_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    mu: float = 0.5,
    where: Array | None = None,
    path: str = "auto",
    row_block: int | str | None = "auto",
    weight_temperature: float | None = None,
) -> Array:
    """HTA-KL per example: w_head * FKL + w_tail * RKL with adaptive, gradient-free weights.

    [..., C] -> [...]. `mu` in (0, 1] is the cumulative teacher mass that bounds the head. The KL
    terms use `temperature`; the head set and the weights use the teacher and student
    distributions at `weight_temperature`. None (the default) means `temperature` as well: one
    softened pair for everything, the literal reading of the paper's equations, whose extracted
    text lost the detail. A number, typically 1 (the unsoftened distributions, as AKL's LLM
    reference has no temperature), decouples the two: the weights then see the sharper tau = 1
    gaps, which move more over training than those at a KD temperature of 4.
    Execution choices that leave the value unchanged (up to float rounding):
    - `path`: how the head set is found (:data:`htakl_jax.losses.head_set.PATHS`; "auto" sorts up
      to `head_set.sort_max_classes()` classes, 16 on the CPU backend and 1,024 elsewhere, and
      searches a threshold above).
    - `row_block`: rows per `lax.map` block (must divide the number of rows), None for all rows
      at once, or "auto": on the CPU backend, blocks of about HEAD_SET_BLOCK_ELEMENTS (131,072)
      elements, 2 to HEAD_SET_BLOCK_ROWS (512) rows, when the head set comes from the threshold
      search (BLOCK_ELEMENTS, 262,144, by the other paths), above twice that per input or above
      512 rows for the search (`row_block_size`); all rows at once elsewhere.
    """
    return hta_kl_with_weight(
        student_logits,
        teacher_logits,
        temperature=temperature,
        mu=mu,
        where=where,
        path=path,
        row_block=row_block,
        weight_temperature=weight_temperature,
    )[0]


def wsld(
    student_logits: Array,
    teacher_logits: Array,
    labels: Array,
    *,
    temperature: float = 2.0,
    where: Array | None = None,
) -> Array:
    """Weighted soft-label distillation (WSLD, BKDSNN's logit term) per example: [..., C] -> [...].

    tau^2 * w * s with s = -sum_k p_k log q_k at temperature tau (the cross-entropy form of FKL:
    it differs from KL(p || q) by the teacher's entropy, so its student gradient is FKL's) and the
    gradient-free weight w = 1 - exp(-max(CE_s / (CE_t + 1e-7), 0)), CE_s and CE_t the student's
    and teacher's hard-label cross-entropies at temperature 1: examples the student already fits
    better than the teacher get little soft-label weight. The teacher receives no gradient.
    """
    _check_kd_inputs(student_logits, teacher_logits, temperature, where)
    s = _mask_logits(student_logits, where)
    t = _mask_logits(jax.lax.stop_gradient(teacher_logits), where)
    tau = jnp.asarray(temperature, s.dtype)
    log_q = jax.nn.log_softmax(s / tau, axis=-1)
    p = jax.nn.softmax(t / tau, axis=-1)
    soft_ce = -jnp.sum(p * jnp.where(p > 0, log_q, 0.0), axis=-1)  # 0 log 0 = 0, NaN-free grads
    ce_s = cross_entropy(jax.lax.stop_gradient(s), labels)
    ce_t = cross_entropy(t, labels)
    weight = 1.0 - jnp.exp(-jnp.maximum(ce_s / (ce_t + 1e-7), 0.0))
    return _apply_where(tau**2 * weight * soft_ce, where)


# --------------------------------------------------------------------------- per-row statistics
#
# Every KD loss's gradient with respect to the student logits is elementwise once a few per-row
# numbers are known (see `_kd_rows_bwd`), so it can be taken class block by class block. This is
# what a caller that never holds whole rows of logits needs (fused.py's vocabulary sweep): one
# pass over whole rows for the statistics, then the gradient of any block of classes.

KD_METHODS = tuple(m for m in METHODS if m != "ce")  # the KL family: FKL, RKL, their mixtures


class RowStats(NamedTuple):
    """A KD loss's per-row statistics, each [...] (the logits' leading shape)."""

    value: Array  # the loss: tau^2 * (w_fkl * FKL + w_rkl * RKL), 0 outside `where`
    w_fkl: Array  # the FKL weight (HTA-KL: w_head)
    w_rkl: Array  # the RKL weight (HTA-KL: w_tail)
    lse_s: Array  # logsumexp of student logits / tau (of masked logits: 0 outside `where`)
    lse_t: Array  # logsumexp of teacher logits / tau
    rkl: Array  # KL(q || p) at tau (0 for a method without the RKL term)


def _check_method(method: str) -> None:
    if method not in KD_METHODS:
        raise ValueError(f"unknown KD method {method!r}; expected one of {KD_METHODS}")


def row_statistics(
    student_logits: Array,
    teacher_logits: Array,
    *,
    method: str,
    temperature: float = 1.0,
    mu: float = 0.5,
    head_ratio: float | None = None,
    weight_temperature: float | None = None,
    path: str = "auto",
    where: Array | None = None,
    row_block: int | str | None = "auto",
) -> RowStats:
    """The forward of a KD loss with what its gradient needs: [..., C] -> RowStats of [...].

    `method` is one of KD_METHODS; the other arguments as in the method's function
    (:func:`hta_kl`, :func:`fixed_ratio_kl`, ...), whose value `.value` equals. Gradient-free
    (differentiate the losses themselves); see :func:`student_logit_grad` for the gradient.
    """
    _check_method(method)
    weights = _fixed_weights(method, head_ratio)
    head = None if weights is not None else _head_args(mu, weight_temperature, path)
    student_logits = jax.lax.stop_gradient(student_logits)
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    r = _as_rows(student_logits, teacher_logits, temperature, where, row_block, weights, head)
    out = _all_rows_forward(r.spec, r.s, r.t, r.tau, r.weights, r.head, r.where)
    loss, w_fkl, w_rkl, lse_s, lse_t, _, rkl = (x.reshape(r.lead) for x in out)
    value = _apply_where(r.tau**2 * loss, where)
    return RowStats(value, w_fkl, w_rkl, lse_s, lse_t, rkl)


def student_logit_grad(
    student_logits: Array,
    teacher_logits: Array,
    stats: RowStats,
    cotangent: Array,
    *,
    method: str,
    temperature: float = 1.0,
    head_ratio: float | None = None,
    where: Array | None = None,
) -> Array:
    """d(sum of cotangent * stats.value) / d(student logits) on a block of classes: [..., K].

    `student_logits` and `teacher_logits` [..., K] hold any K of the C classes `stats` came
    from (:func:`row_statistics` on the whole rows, same method and temperature), e.g. one
    vocabulary block; cotangent [...]. The gradient is elementwise given the statistics, so the
    blocks' gradients put together equal the loss's gradient (its VJP on whole rows). Rows
    outside `where` give 0 (their logits may hold anything).
    """
    _check_method(method)
    _check_pair(student_logits, teacher_logits)
    weights = _fixed_weights(method, head_ratio)
    terms = (True, True) if weights is None else _terms(weights)
    shape = jnp.shape(student_logits)
    s = student_logits.astype(_compute_dtype(student_logits)).reshape(-1, shape[-1])
    t = teacher_logits.astype(s.dtype).reshape(s.shape)
    flat = jax.tree.map(lambda x: jnp.reshape(x, (-1,)).astype(s.dtype), stats)
    tau = jnp.asarray(temperature, s.dtype)
    g = tau**2 * jnp.reshape(cotangent, (-1,)).astype(s.dtype)  # the values' tau^2
    g_f, g_r = g * flat.w_fkl, g * flat.w_rkl
    ds = _student_grad(terms, s, t, tau, flat.lse_s, flat.lse_t, g_f, g_r, flat.rkl)
    ds = ds.reshape(shape)
    return ds if where is None else jnp.where(jnp.asarray(where, bool)[..., None], ds, 0.0)


# --------------------------------------------------------------------------- total objective

# The fixed-weight methods as their FKL weight r (loss r * FKL + (1 - r) * RKL).
_FIXED_RATIOS = {"fkl": 1.0, "rkl": 0.0, "symmetric": 0.5}


def _masked_mean(values: Array, where: Array | None) -> Array:
    if where is None:
        return jnp.mean(values)
    where = jnp.asarray(where, bool)
    return jnp.sum(jnp.where(where, values, 0.0)) / jnp.maximum(jnp.sum(where), 1)


def cross_entropy(logits: Array, labels: Array, *, where: Array | None = None) -> Array:
    """Softmax cross-entropy with integer labels, per example: [..., C], [...] -> [...]."""
    if jnp.shape(labels) != jnp.shape(logits)[:-1]:
        raise ValueError(
            f"labels shape {jnp.shape(labels)} must equal the logits' leading shape "
            f"{jnp.shape(logits)[:-1]} (logits {jnp.shape(logits)})"
        )
    _check_where(where, jnp.shape(labels))
    x = _mask_logits(logits, where)
    # logsumexp - label logit rather than log_softmax: the gradient (softmax - one-hot) then
    # needs no [..., C] log-probabilities kept from the forward.
    label_logit = jnp.take_along_axis(x, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(x, axis=-1) - label_logit
    return _apply_where(nll, where)


def _time_mean(student_logits: Array, teacher_logits: Array) -> Array:
    """Student logits [T, B..., C] averaged over T (float32 at least), or [B..., C] as given."""
    s_ndim, t_ndim = jnp.ndim(student_logits), jnp.ndim(teacher_logits)
    if s_ndim == t_ndim + 1:
        return jnp.mean(student_logits.astype(_compute_dtype(student_logits)), axis=0)
    if s_ndim != t_ndim:
        raise ValueError(
            f"student logits {jnp.shape(student_logits)} must be [T, B..., C] or [B..., C] for "
            f"teacher logits {jnp.shape(teacher_logits)}"
        )
    return student_logits


def _fixed_weights(method: str, head_ratio: Any) -> tuple[Any, Any] | None:
    """(w_fkl, w_rkl) of a fixed-weight KD method (validated), None for "hta_kl"."""
    if method == "hta_kl":
        return None
    ratio = _FIXED_RATIOS.get(method, head_ratio)
    _check_head_ratio(ratio)
    return ratio, 1.0 - ratio


def _kd_term(
    method: str,
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: Any,
    mu: Any,
    head_ratio: Any,
    where: Array | None,
    weight_temperature: Any = None,
) -> tuple[Array, Array]:
    """Per-example KD loss [B...] of `method` and its (mean) head weight."""
    weights = _fixed_weights(method, head_ratio)
    if weights is None:
        kd, w_head = hta_kl_with_weight(
            student_logits,
            teacher_logits,
            temperature=temperature,
            mu=mu,
            where=where,
            weight_temperature=weight_temperature,
        )
        return kd, _masked_mean(w_head, where)
    kd = _weighted_kl(student_logits, teacher_logits, *weights, temperature, where)
    return kd, jnp.asarray(weights[0], _compute_dtype(student_logits))


def distillation_loss(
    student_logits: Array,
    teacher_logits: Array,
    labels: Array,
    *,
    method: str,
    alpha: float,
    temperature: float,
    mu: float = 0.5,
    head_ratio: float | None = None,
    where: Array | None = None,
    weight_temperature: float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Training objective L = (1 - alpha) * CE + alpha * KD, averaged over valid examples.

    Args:
      student_logits: [T, B..., C] per-timestep SNN logits (averaged over T first, as the paper
        does) or [B..., C].
      teacher_logits: [B..., C].
      labels: integer class ids [B...].
      method: one of METHODS: "ce" (no distillation: L = CE, alpha ignored), "fkl", "rkl",
        "symmetric", "fixed_ratio" (needs head_ratio), "hta_kl" (uses mu).
      alpha: weight of the KD term in [0, 1].
      temperature: KD temperature tau (> 0); CE always uses temperature 1.
      weight_temperature: hta_kl only: the temperature of the distributions its head/tail
        weights come from (None: `temperature`; see :func:`hta_kl`).
      where: optional bool [B...] mask of valid examples/positions.

    Returns:
      (scalar loss, metrics) with metrics "loss", "ce", "kd" and the mean head/tail weights
      "w_head", "w_tail" (the adaptive ones for hta_kl, the constant ones for the other methods,
      0/0 for "ce").
    """
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; expected one of {METHODS}")
    if _is_concrete_number(alpha) and not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
    student_logits = _time_mean(student_logits, teacher_logits)
    _check_pair(student_logits, teacher_logits)
    ce = _masked_mean(cross_entropy(student_logits, labels, where=where), where)
    if method == "ce":
        zero = jnp.zeros((), _compute_dtype(student_logits))
        return ce, {"loss": ce, "ce": ce, "kd": zero, "w_head": zero, "w_tail": zero}
    kd, w_head = _kd_term(
        method,
        student_logits,
        teacher_logits,
        temperature=temperature,
        mu=mu,
        head_ratio=head_ratio,
        where=where,
        weight_temperature=weight_temperature,
    )
    kd = _masked_mean(kd, where)
    loss = (1.0 - alpha) * ce + alpha * kd
    return loss, {"loss": loss, "ce": ce, "kd": kd, "w_head": w_head, "w_tail": 1.0 - w_head}
