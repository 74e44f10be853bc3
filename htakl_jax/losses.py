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
- Reverse-mode gradients (jax.grad, jax.vjp) flow to both logits and the temperature through a
  hand-written VJP (see `_kl_pair`); forward-mode (jax.jvp, jax.jacfwd) is not supported.

HTA-KL (head-tail-aware KL): teacher classes sorted by probability form a "head" (the prefix whose
cumulative teacher mass stays <= mu, and always the top-1 class) and a "tail" (the rest). The summed
|p - q| gaps on each side set the weights of forward KL (head-seeking) and reverse KL
(tail-covering): HTA-KL = w_head * FKL + w_tail * RKL. Ties in teacher probability are broken by
class index (the lower index ranks first), so the head set is deterministic. Up to 1024 classes the
head comes from a sort; above, from a sort-free threshold search with the same result (see the
"head-set paths" section).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

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
    s, t, tau, lse = _normalized(student_logits, teacher_logits, temperature, where)
    q, p, _ = _kl_terms(s, t, tau, *lse)
    return p, q


# ----- the KL pair with a hand-written backward
#
# Every KD loss here is w_fkl * KL(p || q) + w_rkl * KL(q || p) with weights that carry no
# gradient into the logits. Autodiff through log_softmax saves and re-reads several [..., C]
# arrays; this VJP keeps only the logits (alive anyway) and per-row scalars, and rebuilds p and q
# in one elementwise pass. With z = logits / tau, d = log p - log q (0 log 0 = 0 on masked
# classes):
#   dKL(p||q)/dz_s = q - p            dKL(q||p)/dz_s = q * (-d - KL(q||p))
#   dKL(p||q)/dz_t = p * (d - KL(p||q))   dKL(q||p)/dz_t = p - q
# and dL/dtau = -(1 / tau) * sum(dL/ds * s + dL/dt * t). Forward-mode autodiff (jax.jvp) does
# not pass through it (a custom_vjp limitation).


def _log_normalizers(s: Array, t: Array, temperature: Array) -> tuple[Array, Array]:
    """logsumexp of s / tau and t / tau over classes, [..., 1] each."""
    lse = functools.partial(jax.nn.logsumexp, axis=-1, keepdims=True)
    return lse(s / temperature), lse(t / temperature)


def _kl_terms(s: Array, t: Array, temperature: Array, lse_s: Array, lse_t: Array) -> tuple:
    """Per-class q, p and d = log p - log q (0 where both vanish), [..., C] each."""
    log_q, log_p = s / temperature - lse_s, t / temperature - lse_t
    q, p = jnp.exp(log_q), jnp.exp(log_p)
    # The inner `where`s keep -inf - -inf = NaN out of d on classes masked in both.
    d = jnp.where(p > 0, log_p, 0.0) - jnp.where(q > 0, log_q, 0.0)
    return q, p, d


def _kl_pair_fwd(terms, s, t, w_fkl, w_rkl, temperature, lse_s, lse_t):
    q, p, d = _kl_terms(s, t, temperature, lse_s, lse_t)
    zero = jnp.zeros(s.shape[:-1], s.dtype)
    fkl = jnp.sum(jnp.where(p > 0, p * d, 0.0), axis=-1) if terms[0] else zero
    rkl = jnp.sum(jnp.where(q > 0, -q * d, 0.0), axis=-1) if terms[1] else zero
    out = w_fkl * fkl + w_rkl * rkl
    return out, (s, t, w_fkl, w_rkl, temperature, lse_s, lse_t, fkl, rkl)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _kl_pair(
    terms: tuple[bool, bool],
    s: Array,
    t: Array,
    w_fkl: Array,
    w_rkl: Array,
    temperature: Array,
    lse_s: Array,
    lse_t: Array,
) -> Array:
    """w_fkl * KL(p || q) + w_rkl * KL(q || p) per row: logits [..., C], weights [...] -> [...].

    `terms` (static) says which of (FKL, RKL) to compute; a term left out counts as 0.
    lse_s, lse_t [..., 1] are `_log_normalizers(s, t, temperature)`, passed in so a caller that
    also needs p and q computes them once; they get a zero cotangent, the VJP of s and t
    already covers them.
    """
    return _kl_pair_fwd(terms, s, t, w_fkl, w_rkl, temperature, lse_s, lse_t)[0]


def _kl_pair_bwd(terms, residuals, g):
    s, t, w_fkl, w_rkl, temperature, lse_s, lse_t, fkl, rkl = residuals
    q, p, d = _kl_terms(s, t, temperature, lse_s, lse_t)
    dz_s, dz_t = 0.0, 0.0
    if terms[0]:
        g_f = (g * w_fkl)[..., None]
        dz_s = dz_s + g_f * (q - p)
        dz_t = dz_t + g_f * jnp.where(p > 0, p * (d - fkl[..., None]), 0.0)
    if terms[1]:
        g_r = (g * w_rkl)[..., None]
        dz_s = dz_s + g_r * jnp.where(q > 0, q * (-d - rkl[..., None]), 0.0)
        dz_t = dz_t + g_r * (p - q)
    ds, dt = dz_s / temperature, dz_t / temperature
    d_temperature = -(_finite_dot(ds, s) + _finite_dot(dt, t)) / temperature
    d_temperature = d_temperature.astype(temperature.dtype)
    zero_lse = (jnp.zeros_like(lse_s), jnp.zeros_like(lse_t))
    return (ds, dt, g * fkl, g * rkl, d_temperature, *zero_lse)


_kl_pair.defvjp(_kl_pair_fwd, _kl_pair_bwd)


def _finite_dot(cotangent: Array, logits: Array) -> Array:
    """sum(cotangent * logits) over finite logits: -inf (masked) classes add 0, not NaN."""
    return jnp.sum(jnp.where(jnp.isfinite(logits), cotangent * logits, 0.0))


def _weighted_kl(
    student_logits: Array,
    teacher_logits: Array,
    w_fkl: Any,
    w_rkl: Any,
    temperature: Any,
    where: Array | None,
) -> Array:
    """tau^2 * (w_fkl * FKL + w_rkl * RKL) per example, 0 on rows outside `where`; [...]."""
    s, t, tau, lse = _normalized(student_logits, teacher_logits, temperature, where)
    return _apply_where(_kl_pair_scaled(s, t, w_fkl, w_rkl, tau, lse), where)


def _normalized(
    student_logits: Array, teacher_logits: Array, temperature: Any, where: Array | None
) -> tuple[Array, Array, Array, tuple[Array, Array]]:
    """Validated logits s, t [..., C] (float32 or wider, padded rows zeroed), tau as an array,
    and their gradient-free log-normalisers."""
    _check_kd_inputs(student_logits, teacher_logits, temperature, where)
    s, t = _mask_logits(student_logits, where), _mask_logits(teacher_logits, where)
    tau = jnp.asarray(temperature, s.dtype)
    lse = jax.lax.stop_gradient(_log_normalizers(s, t, tau))
    return s, t, tau, lse


def _kl_pair_scaled(
    s: Array, t: Array, w_fkl: Any, w_rkl: Any, tau: Array, lse: tuple[Array, Array]
) -> Array:
    """tau^2 * `_kl_pair`; a weight that is the Python number 0 drops its term."""
    terms = tuple(not (_is_concrete_number(w) and w == 0) for w in (w_fkl, w_rkl))
    rows = s.shape[:-1]
    w_fkl, w_rkl = (jnp.broadcast_to(jnp.asarray(w, s.dtype), rows) for w in (w_fkl, w_rkl))
    return tau**2 * _kl_pair(terms, s, t, w_fkl, w_rkl, tau, *lse)


# --------------------------------------------------------------------------- public losses


def forward_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    where: Array | None = None,
) -> Array:
    """Standard KD: tau^2 * KL(p_teacher || q_student) per example. [..., C] -> [...]."""
    return _weighted_kl(student_logits, teacher_logits, 1.0, 0.0, temperature, where)


def reverse_kl(
    student_logits: Array,
    teacher_logits: Array,
    *,
    temperature: float = 1.0,
    where: Array | None = None,
) -> Array:
    """Reverse KD: tau^2 * KL(q_student || p_teacher) per example. [..., C] -> [...]."""
    return _weighted_kl(student_logits, teacher_logits, 0.0, 1.0, temperature, where)


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
    return _weighted_kl(
        student_logits, teacher_logits, head_ratio, 1.0 - head_ratio, temperature, where
    )


# --------------------------------------------------------------------------- head-set paths
#
# Three ways to find g_head (the summed |p - q| over the head), all giving the sort's result up
# to the rounding of cumulative sums:
# - "sort": full stable sort per row; the reference, and the default up to _SORT_MAX_CLASSES.
# - "threshold" (the default above): a search for the probability where the head ends, from a
#   few fused passes over p, then lax.top_k on a reduced set of the classes just below it (see
#   `_head_gap_threshold`). No sort, whatever the head length.
# - "top_k": lax.top_k(p, _TOP_K) candidates; when any valid row's head is longer, the whole
#   batch falls back to the sort (the previous default; kept for comparison).

# Up to this many classes "auto" sorts; above it, it uses the threshold search.
_SORT_MAX_CLASSES = 1024
# Candidates per row for the top-k path.
_TOP_K = 64
# Threshold path: the search stops once its bracket holds at most this many classes, and
# lax.top_k ranks this many classes just below the threshold it ends with.
_CANDIDATES = 64
# Bound on search passes; every later pass cuts the bracket (in float bit patterns) at least 3x,
# so < 2^31 bit patterns take at most 20 passes (64 covers float64). NaN rows may hit the bound.
_MAX_PASSES = 64
# Probe positions, in units of the estimated spacing that puts about _FILL * _CANDIDATES / 2
# classes between neighbouring probes: the first pass (8 probes around a log-normal guess), and
# later passes (6 probes around an interpolated guess, plus 2 at thirds of the bracket, which
# bound the number of passes when the guesses are poor).
_FIRST_PROBES = np.array([-7, -5, -3, -1, 1, 3, 5, 7], np.float32)
_LATER_PROBES = np.array([-5, -3, -1, 1, 3, 5], np.float32)
_THIRDS = np.array([1 / 3, 2 / 3], np.float32)
_FILL = 0.65
# First-pass probe spacing at most this many standard deviations of log p (sparse heads).
_MAX_FIRST_SPACING = 0.1


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


def _keep_gap(g_head: Array, *operands: Any) -> Array:
    del operands
    return g_head


def _head_gap_sorted_branch(g_head: Array, p: Array, q: Array, mu: Any) -> Array:
    del g_head
    return _head_gap_sorted(p, q, mu)


# ----- threshold path: float bit patterns and exact threshold sums


def _to_bits(x: Array) -> Array:
    """Bit pattern of non-negative floats: an integer that increases with x (+1 = next float)."""
    return jax.lax.bitcast_convert_type(x, jnp.int32 if x.dtype == jnp.float32 else jnp.int64)


def _from_bits(bits: Array, dtype: jnp.dtype) -> Array:
    return jax.lax.bitcast_convert_type(bits, dtype)


def _exact_scale(dtype: jnp.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale, floor): 1 / smallest normal, and the smallest threshold the search uses.

    For thresholds t >= floor = tiny * 2^(nmant + 2), p - prev(t) is either <= 0 (p < t) or at
    least tiny (p >= t), so (p - prev(t)) * scale is <= 0 or >= 1: min/max arithmetic then tells
    the two apart exactly, with or without flush-to-zero.
    """
    info = jnp.finfo(dtype)
    scale = np.asarray(1.0 / float(info.tiny), dtype)
    floor = np.asarray(float(info.tiny) * 2.0 ** (info.nmant + 2), dtype)
    return scale, floor


def _sum_at_least(p: Array, t_bits: Array, weight: Array) -> Array:
    """sum over classes with p >= t of `weight`, for thresholds [R, J] -> [R, J].

    p [R, C] in [0, 1]; t_bits [R, J] bit patterns of thresholds >= the floor of `_exact_scale`;
    weight broadcastable to [R, J, C] with 0 <= weight <= 1. Written as
    clip((p - prev(t)) * scale, 0, weight), which is `weight` when p >= t and 0 otherwise
    (see `_exact_scale`), because XLA:CPU fuses this min/max form into one vectorised reduction
    per pass, while a compare-and-select costs several times more.
    """
    scale, _ = _exact_scale(p.dtype)
    below_t = _from_bits(t_bits - 1, p.dtype)
    # (p - prev(t)) * scale, not p * scale - ...: XLA would store the shared p * scale.
    indicator_ish = (p[:, None, :] - below_t[..., None]) * scale
    return jnp.sum(jnp.clip(indicator_ish, 0.0, weight), axis=-1)


def _below(p: Array, hi: Array) -> Array:
    """p where p < t, else <= 0, for one threshold per row (bits hi [R]); p [R, ...]."""
    scale, _ = _exact_scale(p.dtype)
    t = _from_bits(hi, p.dtype).reshape(hi.shape + (1,) * (p.ndim - 1))
    return jnp.minimum(p, (t - p) * scale)


# ----- threshold path: the search


def _first_guess(p: Array, total: Array, mu: Any) -> tuple[Array, Array]:
    """Threshold guess [R] and first-pass probe spacing [R] (in bit patterns), from one pass.

    Treats log p, weighted by p, as normal (exact for softmax of normal logits): the head ends
    at log t = m + s * Phi^-1(1 - mu) with m, s the weighted mean and deviation, and about
    total * phi / (s * t) classes lie per unit of log p there.
    """
    _, floor = _exact_scale(p.dtype)
    log_p = jnp.log(jnp.maximum(p, floor))
    # A second, differently clamped log keeps XLA from fusing both sums into one multi-output
    # loop, which XLA:CPU runs several times slower than two separate vectorised reductions.
    log_p2 = jnp.log(jnp.maximum(p, 2 * floor))
    mean = jnp.sum(p * log_p, axis=-1) / total
    var = jnp.sum(p * log_p2 * log_p2, axis=-1) / total - mean * mean
    std = jnp.sqrt(jnp.maximum(var, 0.0))
    z = ndtri(jnp.clip(1.0 - mu, 1e-6, 1.0 - 1e-6)).astype(p.dtype)
    guess = jnp.clip(jnp.exp(mean + std * z), floor, 1.0)
    classes_per_log = total * jnp.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * std * guess)
    spacing = jnp.minimum(_FILL * _CANDIDATES / 2 / classes_per_log, _MAX_FIRST_SPACING * std)
    return guess, jnp.maximum(spacing * _bits_per_log(guess), 1.0)


def _bits_per_log(t: Array) -> Array:
    """d bits(t) / d log t = t / ulp(t): between 2^nmant and 2^(nmant + 1), by the mantissa."""
    return t / (_from_bits(_to_bits(t) + 1, t.dtype) - t)


def _place_probes(lo: Array, hi: Array, centre: Array, spacing: Array, offsets: Any) -> Array:
    """Probe bit patterns [R, J] inside (lo, hi): centre + spacing * offsets, clipped.

    `centre` and `spacing` are floats measured from lo in bit patterns.
    """
    width = (hi - lo).astype(centre.dtype)
    x = centre[:, None] + spacing[:, None] * offsets
    x = jnp.clip(x, 1.0, jnp.maximum(width - 1.0, 1.0)[:, None])
    probes = lo[:, None] + jnp.round(x).astype(lo.dtype)
    return jnp.clip(probes, (lo + 1)[:, None], jnp.maximum(hi - 1, lo + 1)[:, None])


def _search_pass(p: Array, total: Array, mu: Any, probes: Array, bracket: tuple) -> tuple:
    """One fused pass: S at every probe, then the tightest bracket per row that is not done.

    bracket = (lo, hi, s_lo, s_hi, done), [R] each, with S(t) = sum_{p >= t} p and, for rows not
    done, S(lo) > mu * total >= S(hi) (as S(t) / total <= mu, the sort path's test). A row is
    done when its bracket holds one float value or at most _CANDIDATES classes: every class in
    [lo, hi) has p >= lo, so there are at most (S(lo) - S(hi)) / lo of them (the 0.5 margin
    absorbs the rounding of the sums).
    """
    lo, hi, s_lo, s_hi, done = bracket
    s = _sum_at_least(p, probes, p[:, None, :])
    above = s / total[:, None] > mu
    new_lo = jnp.max(jnp.where(above, probes, lo[:, None]), axis=-1)
    new_s_lo = jnp.min(jnp.where(above, s, s_lo[:, None]), axis=-1)
    new_hi = jnp.min(jnp.where(above, hi[:, None], probes), axis=-1)
    new_s_hi = jnp.max(jnp.where(above, s_hi[:, None], s), axis=-1)
    lo, hi = jnp.where(done, lo, new_lo), jnp.where(done, hi, new_hi)
    s_lo, s_hi = jnp.where(done, s_lo, new_s_lo), jnp.where(done, s_hi, new_s_hi)
    few = s_lo - s_hi <= (_CANDIDATES - 0.5) * _from_bits(lo, p.dtype)
    return lo, hi, s_lo, s_hi, done | few | (hi - lo <= 1)


def _search_continues(carry: tuple) -> Array:
    n_pass, bracket = carry[0], carry[-1]
    return (n_pass < _MAX_PASSES) & ~jnp.all(bracket[-1])


def _search_step(carry: tuple) -> tuple:
    """A later pass: probes around the guess from interpolating the probit of S / total.

    For log-normal p, Phi^-1(S(t) / total) is linear in log t, so interpolating it in log t
    between the bracket ends is accurate once the bracket is small.
    """
    n_pass, p, total, mu, bracket = carry
    lo, hi, s_lo, s_hi, _ = bracket
    width = (hi - lo).astype(p.dtype)
    log_lo, log_hi = jnp.log(_from_bits(lo, p.dtype)), jnp.log(_from_bits(hi, p.dtype))
    z_target = ndtri(jnp.clip(mu, 1e-6, 1.0 - 1e-6)).astype(p.dtype)
    z_lo = ndtri(jnp.clip(s_lo / total, 1e-7, 1.0 - 1e-7))
    z_hi = ndtri(jnp.clip(s_hi / total, 1e-7, 1.0 - 1e-7))
    frac = jnp.clip((z_lo - z_target) / jnp.maximum(z_lo - z_hi, 1e-6), 0.0, 1.0)
    guess = jnp.exp(log_lo + frac * (log_hi - log_lo))
    # classes per unit of log t at the guess: dS/dlog t / t under the same model
    slope = total * jnp.exp(-0.5 * z_target * z_target) / np.sqrt(2 * np.pi) * (z_lo - z_hi)
    classes_per_log = slope / jnp.maximum(log_hi - log_lo, 1e-30) / guess
    spacing = _FILL * _CANDIDATES / 2 / classes_per_log * _bits_per_log(guess)
    spacing = jnp.clip(spacing, 1.0, width / 16)
    centre = jnp.clip(_to_bits(guess) - lo, 0, hi - lo).astype(p.dtype)
    probes = jnp.concatenate(
        [
            _place_probes(lo, hi, centre, spacing, _LATER_PROBES),
            _place_probes(lo, hi, jnp.zeros_like(width), width, _THIRDS),
        ],
        axis=-1,
    )
    return n_pass + 1, p, total, mu, _search_pass(p, total, mu, probes, bracket)


def _refine_all(p: Array, total: Array, mu: Array, bracket: tuple) -> tuple:
    """Later passes over the whole batch until every row is done."""
    return jax.lax.while_loop(_search_continues, _search_step, (1, p, total, mu, bracket))[-1]


def _refine_rows(size: int, p: Array, total: Array, mu: Array, bracket: tuple) -> tuple:
    """Later passes over the (at most `size`) rows still open only, gathered.

    Padding entries repeat row 0; a row that appears twice gets the same result twice.
    """
    (rows,) = jnp.nonzero(~bracket[-1], size=size, fill_value=0)
    sub = tuple(x[rows] for x in bracket)
    sub = _refine_all(p[rows], total[rows], mu, sub)
    return tuple(x.at[rows].set(y) for x, y in zip(bracket, sub, strict=True))


def _refine_sixteenth(p: Array, total: Array, mu: Array, bracket: tuple) -> tuple:
    return _refine_rows(max(1, p.shape[0] // 16), p, total, mu, bracket)


def _refine_quarter(p: Array, total: Array, mu: Array, bracket: tuple) -> tuple:
    return _refine_rows(max(1, p.shape[0] // 4), p, total, mu, bracket)


def _first_pass(p: Array, total: Array, mu: Any, done: Array) -> tuple:
    """The bracket (lo, hi, s_lo, s_hi, done) [R] after the first pass (rows p [R, C])."""
    _, floor = _exact_scale(p.dtype)
    # Classes below t hold less than C * t mass, so S(t) > mu * total below this bound; p <= 1.
    lo0 = jnp.maximum(0.9 * (1.0 - jnp.minimum(mu, 1.0)) * total / p.shape[-1], floor)
    lo, hi = _to_bits(lo0.astype(p.dtype)), _to_bits(jnp.ones_like(total)) + 1
    guess, spacing = _first_guess(p, total, mu)
    centre = jnp.maximum(_to_bits(guess) - lo, 0).astype(p.dtype)
    probes = _place_probes(lo, hi, centre, spacing, _FIRST_PROBES)
    return _search_pass(p, total, mu, probes, (lo, hi, total, jnp.zeros_like(total), done))


def _search_threshold(p: Array, total: Array, mu: Any, done: Array) -> tuple:
    """(lo, hi, s_lo, s_hi) bit patterns and sums [R] of the final brackets (rows [R, C])."""
    bracket = _first_pass(p, total, mu, done)
    mu = jnp.asarray(mu, p.dtype)
    # Later passes on the open rows only, gathered, when they are few: the first pass usually
    # settles nearly all rows, so these cost a fraction of a pass over the batch.
    n_open = jnp.sum(~bracket[-1])
    branch = (n_open > p.shape[0] // 16).astype(jnp.int32) + (n_open > p.shape[0] // 4)
    # Module-level branches with explicit operands, so eager calls hit the compilation cache.
    refine = (_refine_sixteenth, _refine_quarter, _refine_all)
    bracket = jax.lax.switch(branch, refine, p, total, mu, bracket)
    return bracket[:4]


# ----- threshold path: resolving the boundary


def _group_width(num_classes: int, k: int) -> int:
    """A divisor w of C near sqrt(C / k), or 1 (then no grouping: C is small or prime-like)."""
    target = math.sqrt(num_classes / k)
    best = 1
    for w in range(2, int(2 * target) + 1):
        if num_classes % w == 0 and abs(math.log(w / target)) < abs(math.log(best / target)):
            best = w
    return best


def _top_below(p: Array, hi: Array, k: int) -> tuple[Array, Array]:
    """The k largest p below the threshold hi (bits [R]) per row: (values, class indices) [R, k].

    Values come in descending order (<= 0 where fewer than k classes lie below hi); among equal
    values the order, and which ones make the cut at the k-th, are unspecified. lax.top_k on
    XLA:CPU costs about ten reductions per element, so it runs on a reduced set: split the
    classes into n = C / w groups {g, g + n, g + 2n, ...}, keep the k groups with the largest
    maxima, then the k largest of their k * w members. Every class whose value exceeds the k-th
    largest is kept: else k groups would each hold a larger value.
    """
    num_rows, num_classes = p.shape
    w = _group_width(num_classes, k)
    if w < 2 or num_classes // w < k:
        return jax.lax.top_k(_below(p, hi), k)
    n = num_classes // w
    grouped = p.reshape(num_rows, w, n)
    # max over the middle axis, so XLA vectorises it along the contiguous group axis
    _, groups = jax.lax.top_k(jnp.max(_below(grouped, hi), axis=1), k)
    members = jnp.take_along_axis(grouped, groups[:, None, :], axis=2)  # [R, w, k]
    values, pos = jax.lax.top_k(_below(members, hi).reshape(num_rows, w * k), k)
    group = jnp.take_along_axis(groups, pos % k, axis=-1)
    return values, (pos // k) * n + group


def _lowest_indices(member: Array, idx: Array, j: Array, num_classes: int) -> Array:
    """The j members [R, k] with the smallest class indices, as a mask, by bisection on the index.

    Finds the largest bound b with #{members with index < b} < j (that is the j-th smallest
    index) bit by bit, then keeps the members with index <= b.
    """
    bound = jnp.zeros_like(j)
    for bit in reversed(range(max(1, (num_classes - 1).bit_length()))):
        trial = bound + (1 << bit)
        count = jnp.sum(member & (idx < trial[:, None]), axis=-1)
        bound = jnp.where(count < j, trial, bound)
    return member & (idx <= bound[:, None]) & (j > 0)[:, None]


def _tie_gap_branch(g_head: Array, p: Array, q: Array, mu: Any, ends: tuple, redo: Array) -> Array:
    """Rows in `redo`: the head ends inside a tie group, which the candidates may not cover.

    For those rows ends = (v, S_above, G_above, total): the head takes every class with p > v
    (mass S_above, gap G_above) and the first j classes (by index) with p == v, j the largest
    with (S_above + j * v) / total <= mu (at least 1 when nothing lies above v).
    """
    v, s_above, g_above, total = ends
    tie = p == v[:, None]
    rank = jnp.cumsum(tie, axis=-1)  # 1-based position among the tie members, by class index
    n_tie = rank[:, -1]
    room = jnp.clip((mu * total - s_above) / v, 0.0, p.shape[-1])  # clipped before the int cast
    tries = jnp.floor(room).astype(rank.dtype)[:, None] + jnp.arange(-2, 3, dtype=rank.dtype)
    tries = jnp.clip(tries, 0, n_tie[:, None])
    fits = (s_above[:, None] + tries * v[:, None]) / total[:, None] <= mu
    j = jnp.max(jnp.where(fits, tries, 0), axis=-1)
    j = jnp.where(s_above == 0, jnp.maximum(j, 1), j)
    in_head = tie & (rank <= j[:, None])
    g_tie = g_above + jnp.sum(jnp.where(in_head, jnp.abs(p - q), 0.0), axis=-1)
    return jnp.where(redo, g_tie, g_head)


def _sort_gap_branch(g_head: Array, p: Array, q: Array, mu: Any, redo: Array) -> Array:
    return jnp.where(redo, _head_gap_sorted(p, q, mu), g_head)


def _threshold_head_gap(p: Array, q: Array, mu: Any, valid: Array | None) -> tuple:
    """The threshold path on rows [R, C] without its slow branches: (g_head, ends, tie, rest).

    g_head [R] is final except on rows `tie` [R] (the head ends inside a tie group that the
    candidates may not fully cover: `_tie_gap_branch` with `ends`) and `rest` [R] (not settled
    for another reason: float rounding at the stopping test, NaN; the sort).
    """
    total = jnp.sum(p, axis=-1)
    closed = jnp.broadcast_to(jnp.asarray(mu >= 1), total.shape)  # mu >= 1: every class is head
    if valid is not None:
        closed = closed | ~valid
    lo, hi, _, s_hi = _search_threshold(p, total, mu, closed)
    cand, idx = _top_below(p, hi, min(_CANDIDATES, p.shape[-1]))
    member = cand > 0
    cand = jnp.where(member, cand, 0.0)
    cand_gap = jnp.where(member, jnp.abs(cand - jnp.take_along_axis(q, idx, axis=-1)), 0.0)
    cum = (s_hi[:, None] + jnp.cumsum(cand, axis=-1)) / total[:, None]
    n_in = jnp.sum(member & (cum <= mu), axis=-1)
    n_in = jnp.where(s_hi == 0, jnp.maximum(n_in, 1), n_in)  # the top-1 class is always head
    # v: value of the last head candidate. Candidates above v are all head; of the tie group at
    # v (equal values, in unspecified order) the ones with the lowest class indices are.
    v = jnp.take_along_axis(cand, jnp.maximum(n_in - 1, 0)[:, None], axis=-1)[:, 0]
    v = jnp.where(n_in > 0, v, jnp.inf)
    above = member & (cand > v[:, None])
    at_v = member & (cand == v[:, None])
    j = n_in - jnp.sum(above, axis=-1)
    in_head = above | _lowest_indices(at_v, idx, j, p.shape[-1])
    g_hi = _sum_at_least(p, hi[:, None], jnp.abs(p - q)[:, None, :])[:, 0]
    g_head = g_hi + jnp.sum(jnp.where(in_head, cand_gap, 0.0), axis=-1)
    g_head = jnp.where(mu >= 1, jnp.sum(jnp.abs(p - q), axis=-1), g_head)
    # Settled when the head ends among the candidates (cumulative mass passes mu), unless its
    # tie group reaches the last candidate: members of it may lie beyond or be swapped at the cut.
    settled = closed | (cum[:, -1] > mu)
    single = hi - lo <= 1  # the bracket holds one float value: then the head ends in its group
    tie = ~closed & at_v[:, -1] & (settled | single)
    rest = ~settled & ~single
    s_above = s_hi + jnp.sum(jnp.where(above, cand, 0.0), axis=-1)
    g_above = g_hi + jnp.sum(jnp.where(above, cand_gap, 0.0), axis=-1)
    return g_head, (v, s_above, g_above, total), tie, rest


def _head_gap_threshold(p: Array, q: Array, mu: Any, valid: Array | None = None) -> Array:
    """Summed |p - q| over the head by a threshold search, [..., C] -> [...], no sort.

    The head is a rank prefix, and {p >= t} is a rank prefix for every threshold t, so with
    S(t) = sum_{p >= t} p the head holds every class with p >= hi whenever S(hi) / total <= mu.
    `_search_threshold` finds per row a bracket [lo, hi) with S(lo) / total > mu >= S(hi) / total
    holding at most ~_CANDIDATES classes: a log-normal first guess and one fused pass over p
    with 8 thresholds around it settle most rows; the rest get interpolating passes, gathered
    when they are few. The classes just below hi, ranked by value (ties: lower index first, as
    the sort does), then complete the head by their cumulative mass after S(hi). Rows where the
    head ends in a tie group the candidates may not cover (e.g. all-equal logits) are counted in
    a lax.cond branch, anything else unsettled (rounding at the stopping test, NaN) is sorted.
    Rows outside `valid` never take a branch. Equal to `_head_gap_sorted` up to the rounding of
    the cumulative sums.
    """
    lead, num_classes = p.shape[:-1], p.shape[-1]
    p, q = p.reshape(-1, num_classes), q.reshape(-1, num_classes)
    if valid is not None:
        valid = jnp.asarray(valid, bool).reshape(-1)
    g_head, ends, tie, rest = _threshold_head_gap(p, q, mu, valid)
    # Module-level branches with explicit operands, so eager calls hit the compilation cache.
    g_head = jax.lax.cond(jnp.any(tie), _tie_gap_branch, _keep_gap, g_head, p, q, mu, ends, tie)
    g_head = jax.lax.cond(jnp.any(rest), _sort_gap_branch, _keep_gap, g_head, p, q, mu, rest)
    return g_head.reshape(lead)


def _head_tail_from_probs(
    p: Array, q: Array, mu: Any, valid: Array | None = None, path: str = "auto"
) -> tuple[Array, Array]:
    """Adaptive weights from teacher probs p and student probs q, [..., C] -> ([...], [...]).

    `path` picks how the head set is found (all exact, see the section comment above): "sort",
    "threshold", "top_k", or "auto" (sort for C <= _SORT_MAX_CLASSES, else threshold). `valid`
    marks rows whose weights matter; padded rows never trigger a slow branch.
    """
    num_classes = p.shape[-1]
    if path == "auto":
        path = "sort" if num_classes <= _SORT_MAX_CLASSES else "threshold"
    if path == "sort":
        g_head = _head_gap_sorted(p, q, mu)
    elif path == "threshold":
        g_head = _head_gap_threshold(p, q, mu, valid)
    elif path == "top_k":
        g_head, exact = _head_gap_top_k(p, q, mu, min(num_classes, _TOP_K))
        if valid is not None:
            exact = exact | ~jnp.asarray(valid, bool)
        # Module-level branches with explicit operands, so eager calls hit the compilation cache.
        g_head = jax.lax.cond(jnp.all(exact), _keep_gap, _head_gap_sorted_branch, g_head, p, q, mu)
    else:
        raise ValueError(
            f"unknown head-set path {path!r}; expected 'auto', 'sort', 'threshold' or 'top_k'"
        )
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
    p, q = _probs(
        jax.lax.stop_gradient(student_logits),
        jax.lax.stop_gradient(teacher_logits),
        temperature,
        None,
    )
    return _head_tail_from_probs(p, q, mu)


# Row blocks (CPU): above 2 * _BLOCK_ELEMENTS elements per input, HTA-KL runs over blocks of
# about _BLOCK_ELEMENTS elements (whole rows) with lax.map. Its threshold search, weights and KL
# pair keep about eight [rows, C] temporaries; per block they stay small (at [4096, 32000]:
# 71 MiB of temporaries instead of 4 GiB), and XLA:CPU, which allocates and page-faults its
# temporary buffer afresh at every call, ran the gradient 1.45-1.7x faster. Not used on other
# backends: there a loop of blocks adds per-block kernel launches and loop-condition round trips,
# and it has not been measured.
_BLOCK_ELEMENTS = 1 << 21


def _row_block(num_rows: int, num_classes: int) -> int | None:
    """Rows per block for [num_rows, num_classes] (a divisor of num_rows), or None for one block.

    None also when no divisor lies within 4x below the target (e.g. a prime number of rows) or
    the only one is all rows.
    """
    if num_rows * num_classes <= 2 * _BLOCK_ELEMENTS:
        return None
    target = max(1, _BLOCK_ELEMENTS // num_classes)
    sizes = range(min(target, num_rows - 1), -(-target // 4) - 1, -1)
    return next((b for b in sizes if num_rows % b == 0), None)


def _hta_kl_and_weight(
    student_logits: Array,
    teacher_logits: Array,
    temperature: Any,
    mu: Any,
    where: Array | None,
    path: str = "auto",
) -> tuple[Array, Array]:
    """Per-example HTA-KL [...] and its head weight [...], by row blocks when large.

    `path` is the head-set path of `_head_tail_from_probs` (benchmarks compare them).
    """
    _check_mu(mu)
    _check_kd_inputs(student_logits, teacher_logits, temperature, where)
    lead, num_classes = jnp.shape(teacher_logits)[:-1], jnp.shape(teacher_logits)[-1]
    num_rows = math.prod(lead)
    block = _row_block(num_rows, num_classes) if jax.default_backend() == "cpu" else None
    if block is None:
        return _hta_kl_rows(student_logits, teacher_logits, temperature, mu, where, path)

    def blocks(x: Array) -> Array:
        return jnp.reshape(x, (num_rows // block, block) + jnp.shape(x)[len(lead) :])

    def one_block(operands: tuple) -> tuple[Array, Array]:
        s_block, t_block, where_block = operands
        return _hta_kl_rows(s_block, t_block, temperature, mu, where_block, path)

    where_blocks = None if where is None else blocks(jnp.asarray(where, bool))
    operands = (blocks(student_logits), blocks(teacher_logits), where_blocks)
    kl, w_head = jax.lax.map(one_block, operands)
    return kl.reshape(lead), w_head.reshape(lead)


def _hta_kl_rows(
    student_logits: Array,
    teacher_logits: Array,
    temperature: Any,
    mu: Any,
    where: Array | None,
    path: str,
) -> tuple[Array, Array]:
    """`_hta_kl_and_weight` on all rows at once."""
    s, t, tau, lse = _normalized(student_logits, teacher_logits, temperature, where)
    # p and q from the same log-normalisers as the KL pair, so XLA computes them once.
    q, p, _ = _kl_terms(*jax.lax.stop_gradient((s, t)), tau, *lse)
    w_head, w_tail = _head_tail_from_probs(p, q, mu, valid=where, path=path)
    return _apply_where(_kl_pair_scaled(s, t, w_head, w_tail, tau, lse), where), w_head


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
