"""Knowledge-distillation losses: forward/reverse KL, HTA-KL and the ablations (SPEC section 4).

Standalone: this module imports only jax and numpy, so other JAX projects can use it without Flax,
optax or TensorFlow (`from htakl_jax.losses import hta_kl`).

Conventions shared by every function here:
- `student_logits` and `teacher_logits` are shaped [..., C]; the result is per example, shaped
  [...] (no reduction, like optax), with the temperature factor tau^2 already included.
- Computation is in float32 at least (bf16/fp16 logits are upcast; float64 stays float64).
- `-inf` logits mark classes with probability 0 (masked vocabulary). They contribute 0 to every
  sum (0 log 0 = 0) and give finite values and gradients as long as teacher and student mask the
  same classes. A class that only one side masks makes that KL +inf, which is its true value.
- `where` (bool, shaped [...]) marks valid positions, e.g. the padding mask of [batch, length,
  vocab] sequence logits. Invalid positions return 0 and receive zero gradient; their logits may
  hold anything, NaN included.
- Shapes are checked at trace time; mismatches raise ValueError naming both shapes.

HTA-KL (head-tail-aware KL): teacher classes sorted by probability form a "head" (the prefix whose
cumulative teacher mass stays <= mu, and always the top-1 class) and a "tail" (the rest). The summed
|p - q| gaps on each side set the weights of forward KL (head-seeking) and reverse KL
(tail-covering): HTA-KL = w_head * FKL + w_tail * RKL. Ties in teacher probability are broken by
class index (the lower index ranks first), so the head set is deterministic.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

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


def _log_probs(logits: Array, temperature: Any) -> tuple[Array, Array]:
    """Returns (log_softmax, softmax) of logits / temperature, [..., C] each."""
    log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
    return log_p, jnp.exp(log_p)


def _kl(log_a: Array, a: Array, log_b: Array) -> Array:
    """sum_c a_c (log a_c - log b_c) over the last axis, with 0 log 0 = 0 (masked classes)."""
    support = a > 0
    # The inner `where` keeps -inf - -inf = NaN out of the gradient of the outer one.
    diff = jnp.where(support, log_a - jnp.where(support, log_b, 0.0), 0.0)
    return jnp.sum(jnp.where(support, a * diff, 0.0), axis=-1)


def _prepare(
    student_logits: Array, teacher_logits: Array, temperature: Any, where: Array | None
) -> tuple[Array, Array, Array, Array]:
    _check_pair(student_logits, teacher_logits)
    _check_where(where, jnp.shape(teacher_logits)[:-1])
    _check_temperature(temperature)
    log_q, q = _log_probs(_mask_logits(student_logits, where), temperature)
    log_p, p = _log_probs(_mask_logits(teacher_logits, where), temperature)
    return log_p, p, log_q, q


# --------------------------------------------------------------------------- public losses


def forward_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    where: Array | None = None,
) -> Array:
    """Standard KD: tau^2 * KL(p_teacher || q_student) per example. [..., C] -> [...]."""
    log_p, p, log_q, _ = _prepare(student_logits, teacher_logits, temperature, where)
    return _apply_where(temperature**2 * _kl(log_p, p, log_q), where)


def reverse_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    where: Array | None = None,
) -> Array:
    """Reverse KD: tau^2 * KL(q_student || p_teacher) per example. [..., C] -> [...]."""
    log_p, _, log_q, q = _prepare(student_logits, teacher_logits, temperature, where)
    return _apply_where(temperature**2 * _kl(log_q, q, log_p), where)


def symmetric_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    where: Array | None = None,
) -> Array:
    """(FKL + RKL) / 2 per example. [..., C] -> [...]."""
    return fixed_ratio_kl(
        student_logits, teacher_logits, head_ratio=0.5, temperature=temperature, where=where
    )


def fixed_ratio_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    head_ratio: float,
    temperature: float = 1.0,
    where: Array | None = None,
) -> Array:
    """Ablation with constant weights: r * FKL + (1 - r) * RKL per example. [..., C] -> [...]."""
    _check_head_ratio(head_ratio)
    log_p, p, log_q, q = _prepare(student_logits, teacher_logits, temperature, where)
    fkl, rkl = _kl(log_p, p, log_q), _kl(log_q, q, log_p)
    return _apply_where(temperature**2 * (head_ratio * fkl + (1.0 - head_ratio) * rkl), where)


# Above this many classes the head set comes from lax.top_k candidates instead of a full sort.
_SORT_MAX_CLASSES = 1024
# Candidates per row for the top-k path; rows whose head extends past them fall back to the sort.
_TOP_K = 64


def _head_gap_sorted(p: Array, q: Array, mu: Any) -> Array:
    """Summed |p - q| over the head, [..., C] -> [...], by a full sort (the reference path).

    Rank classes by descending p (ties: lower index first, hence the stable argsort), take the
    cumulative teacher mass C_k in that order, and put rank k in the head when C_k <= mu or k is
    the top-1 class. C_k increases with k, so the head is the prefix of the first
    m = max(1, #{k : C_k <= mu}) ranks.
    """
    order = jnp.argsort(-p, axis=-1, stable=True)
    p_sorted = jnp.take_along_axis(p, order, axis=-1)
    gap_sorted = jnp.abs(p_sorted - jnp.take_along_axis(q, order, axis=-1))
    cum_sorted = jnp.cumsum(p_sorted, axis=-1)
    # Normalising by the computed total makes the last C_k exactly 1, so mu = 1 selects every
    # class even when float rounding leaves sum(p) a little above 1.
    cum_sorted = cum_sorted / cum_sorted[..., -1:]
    n_head = jnp.maximum(jnp.sum(cum_sorted <= mu, axis=-1), 1)
    in_head = jnp.arange(p.shape[-1]) < n_head[..., None]
    return jnp.sum(jnp.where(in_head, gap_sorted, 0.0), axis=-1)


def _head_gap_top_k(p: Array, q: Array, mu: Any, k: int) -> tuple[Array, Array]:
    """Head gap from the k most probable teacher classes only, [..., C] -> ([...], [...] bool).

    The head is a prefix of the ranking, so when the cumulative mass of the k candidates exceeds
    mu the head ends among them and the result equals `_head_gap_sorted` (lax.top_k also ranks
    ties by lower index). The second output says, per row, whether that holds.
    """
    p_top, idx = jax.lax.top_k(p, k)
    gap_top = jnp.abs(p_top - jnp.take_along_axis(q, idx, axis=-1))
    cum_top = jnp.cumsum(p_top, axis=-1) / jnp.sum(p, axis=-1, keepdims=True)
    n_head = jnp.maximum(jnp.sum(cum_top <= mu, axis=-1), 1)
    g_head = jnp.sum(jnp.where(jnp.arange(k) < n_head[..., None], gap_top, 0.0), axis=-1)
    exact = (cum_top[..., -1] > mu) | (k == p.shape[-1])
    return g_head, exact


def _keep_gap(g_head: Array, p: Array, q: Array, mu: Any) -> Array:
    del p, q, mu
    return g_head


def _head_gap_sorted_branch(g_head: Array, p: Array, q: Array, mu: Any) -> Array:
    del g_head
    return _head_gap_sorted(p, q, mu)


def _head_tail_from_probs(
    p: Array, q: Array, mu: Any, valid: Array | None = None, path: str = "auto"
) -> tuple[Array, Array]:
    """Adaptive weights from teacher probs p and student probs q, [..., C] -> ([...], [...]).

    `path` picks how the head set is found: "sort" (full stable sort, O(C log C) per row),
    "top_k" (lax.top_k candidates, a few passes over memory; rows whose head is longer than the
    candidates make the whole batch fall back to the sort, so the result is always exact), or
    "auto" (sort for C <= _SORT_MAX_CLASSES, else top_k). `valid` marks rows whose weights
    matter; padded rows never trigger the fallback.
    """
    num_classes = p.shape[-1]
    if path == "auto":
        path = "sort" if num_classes <= _SORT_MAX_CLASSES else "top_k"
    if path == "sort":
        g_head = _head_gap_sorted(p, q, mu)
    elif path == "top_k":
        g_head, exact = _head_gap_top_k(p, q, mu, min(num_classes, _TOP_K))
        if valid is not None:
            exact = exact | ~jnp.asarray(valid, bool)
        # Module-level branches with explicit operands, so eager calls hit the compilation cache.
        g_head = jax.lax.cond(jnp.all(exact), _keep_gap, _head_gap_sorted_branch, g_head, p, q, mu)
    else:
        raise ValueError(f"unknown head-set path {path!r}; expected 'auto', 'sort' or 'top_k'")
    g_total = jnp.sum(jnp.abs(p - q), axis=-1)
    safe_total = jnp.where(g_total > 0, g_total, 1.0)
    w_head = jnp.where(g_total > 0, jnp.minimum(g_head / safe_total, 1.0), 0.5)
    return w_head, 1.0 - w_head


def head_tail_weights(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    mu: float = 0.5,
) -> tuple[Array, Array]:
    """HTA-KL weights (w_head, w_tail), each [...], summing to 1; no gradient flows through them.

    w_head = g_head / (g_head + g_tail) with g the summed |p - q| gaps over head and tail classes;
    0.5 / 0.5 when the total gap is zero (student equals teacher).
    """
    _check_mu(mu)
    _, p, _, q = _prepare(
        jax.lax.stop_gradient(student_logits),
        jax.lax.stop_gradient(teacher_logits),
        temperature,
        None,
    )
    return _head_tail_from_probs(p, q, mu)


def _hta_kl_and_weight(
    student_logits: Array, teacher_logits: Array, temperature: Any, mu: Any, where: Array | None
) -> tuple[Array, Array]:
    """Per-example HTA-KL [...] and its head weight [...], sharing one softmax pass."""
    _check_mu(mu)
    log_p, p, log_q, q = _prepare(student_logits, teacher_logits, temperature, where)
    w_head, w_tail = _head_tail_from_probs(
        jax.lax.stop_gradient(p), jax.lax.stop_gradient(q), mu, valid=where
    )
    fkl, rkl = _kl(log_p, p, log_q), _kl(log_q, q, log_p)
    return _apply_where(temperature**2 * (w_head * fkl + w_tail * rkl), where), w_head


def hta_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    mu: float = 0.5,
    where: Array | None = None,
) -> Array:
    """HTA-KL per example: w_head * FKL + w_tail * RKL with adaptive, gradient-free weights.

    [..., C] -> [...]. `mu` in (0, 1] is the cumulative teacher mass that bounds the head.
    """
    return _hta_kl_and_weight(student_logits, teacher_logits, temperature, mu, where)[0]


# --------------------------------------------------------------------------- total objective


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
    log_q = jax.nn.log_softmax(_mask_logits(logits, where), axis=-1)
    nll = -jnp.take_along_axis(log_q, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
    return _apply_where(nll, where)


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
) -> tuple[Array, dict[str, Array]]:
    """Training objective L = (1 - alpha) * CE + alpha * KD, averaged over valid examples.

    Args:
      student_logits: [T, B..., C] per-timestep SNN logits (averaged over T first, as the paper
        does) or [B..., C].
      teacher_logits: [B..., C].
      labels: integer class ids [B...].
      method: one of "ce" (no distillation: L = CE, alpha ignored), "fkl", "rkl", "symmetric",
        "fixed_ratio" (needs head_ratio), "hta_kl" (uses mu).
      alpha: weight of the KD term in [0, 1].
      temperature: KD temperature tau (> 0); CE always uses temperature 1.
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
    s_ndim, t_ndim = jnp.ndim(student_logits), jnp.ndim(teacher_logits)
    if s_ndim == t_ndim + 1:
        student_logits = jnp.mean(student_logits.astype(_compute_dtype(student_logits)), axis=0)
    elif s_ndim != t_ndim:
        raise ValueError(
            f"student logits {jnp.shape(student_logits)} must be [T, B..., C] or [B..., C] for "
            f"teacher logits {jnp.shape(teacher_logits)}"
        )
    _check_pair(student_logits, teacher_logits)
    ce = _masked_mean(cross_entropy(student_logits, labels, where=where), where)

    zero = jnp.zeros((), _compute_dtype(student_logits))
    if method == "ce":
        metrics = {"loss": ce, "ce": ce, "kd": zero, "w_head": zero, "w_tail": zero}
        return ce, metrics

    kw = dict(temperature=temperature, where=where)
    if method == "hta_kl":
        kd, w_head = _hta_kl_and_weight(student_logits, teacher_logits, temperature, mu, where)
        w_head = _masked_mean(w_head, where)
    else:
        kd_fn = {"fkl": forward_kl, "rkl": reverse_kl, "symmetric": symmetric_kl}.get(method)
        ratio = {"fkl": 1.0, "rkl": 0.0, "symmetric": 0.5}.get(method, head_ratio)
        _check_head_ratio(ratio)
        if kd_fn is None:
            kd = fixed_ratio_kl(student_logits, teacher_logits, head_ratio=ratio, **kw)
        else:
            kd = kd_fn(student_logits, teacher_logits, **kw)
        w_head = jnp.asarray(ratio, zero.dtype)
    kd = _masked_mean(kd, where)
    loss = (1.0 - alpha) * ce + alpha * kd
    metrics = {"loss": loss, "ce": ce, "kd": kd, "w_head": w_head, "w_tail": 1.0 - w_head}
    return loss, metrics
