"""HTA-KL's head set and its weights, exactly, at any vocabulary size (docs/method.md §4).

Teacher classes ranked by probability p (ties: the lower class index ranks first) form a "head",
the prefix whose cumulative teacher mass stays <= mu plus always the top-1 class, and a "tail",
the rest. With g_head and g_tail the summed gaps |p - q| over each side,
w_head = g_head / (g_head + g_tail) and w_tail = 1 - w_head (0.5 / 0.5 when every gap is zero).
:func:`head_tail_from_probs` is the one home of these weights.

The head set depends only on which classes are heavy, not on their order, so it can be found
without sorting. Three paths, all giving the sort's result up to the rounding of cumulative sums:
- "sort": a full stable sort per row; the reference, and the default up to `sort_max_classes()`
  classes (SORT_MAX_CLASSES_CPU on the CPU backend, SORT_MAX_CLASSES elsewhere).
- "threshold" (the default above): a search for the probability where the head ends, from a
  few fused passes over p, then lax.top_k on a reduced set of the classes in the final bracket (see
  :func:`head_gap_threshold`). No sort, whatever the head length.
- "top_k": lax.top_k(p, TOP_K) candidates; when any valid row's head is longer, the whole
  batch falls back to the sort (the previous default; kept for comparison).

Like the rest of :mod:`htakl_jax.losses`, this module imports only jax and numpy. Shapes: p and q
are probabilities [..., C] (the threshold internals take rows [R, C]); results are per row [...].
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

Array = jax.Array

# Head-set paths accepted by :func:`head_tail_from_probs` ("auto": see `sort_max_classes`).
PATHS = ("auto", "sort", "threshold", "top_k")

# Up to this many classes "auto" sorts; above it, it uses the threshold search. On XLA:CPU the
# HTA-KL gradient by the search (row-blocked as kd's "auto") took 0.07-0.14x the sort's time at
# 1,000 classes, 0.33-0.50x at 100, 0.78-1.14x at 24-64; at 10 classes 1.03-1.29x and at 16
# 0.95-1.31x (`python benchmarks/loss.py --crossover`, 256 and 4,096 rows, two teachers). Other
# backends keep the earlier limit, unmeasured there: on a GPU the search's while loop and
# branches may each wait for a predicate on the host, which would favour the sort at small sizes.
SORT_MAX_CLASSES_CPU = 16
SORT_MAX_CLASSES = 1024
# Candidates per row for the top-k path.
TOP_K = 64
# Threshold path: the search stops once its bracket holds at most this many classes, and
# lax.top_k ranks the (at most this many) classes in the bracket it ends with.
CANDIDATES = 64
# Bound on search passes; every later pass cuts the bracket (in float bit patterns) at least 3x,
# so < 2^31 bit patterns take at most 20 passes (64 covers float64). NaN rows may hit the bound.
_MAX_PASSES = 64
# Probe positions, in units of the estimated spacing that puts about _FILL * CANDIDATES / 2
# classes between neighbouring probes: the first pass (8 probes around a log-normal guess), and
# later passes (6 probes around an interpolated guess, plus 2 at thirds of the bracket, which
# bound the number of passes when the guesses are poor).
_FIRST_PROBES = np.array([-7, -5, -3, -1, 1, 3, 5, 7], np.float32)
_LATER_PROBES = np.array([-5, -3, -1, 1, 3, 5], np.float32)
_THIRDS = np.array([1 / 3, 2 / 3], np.float32)
_FILL = 0.65
# First-pass probe spacing at most this many standard deviations of log p (sparse heads).
_MAX_FIRST_SPACING = 0.1


def head_gap_sorted(p: Array, q: Array, mu: Any) -> Array:
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


def head_gap_top_k(p: Array, q: Array, mu: Any, k: int) -> tuple[Array, Array]:
    """Head gap from the k most probable teacher classes only, [..., C] -> ([...], [...] bool).

    The head is a prefix of the ranking, so when the cumulative mass of the k candidates exceeds
    mu the head ends among them and the result equals `head_gap_sorted` (lax.top_k also ranks
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


def _sort_all_branch(g_head: Array, p: Array, q: Array, mu: Any) -> Array:
    del g_head
    return head_gap_sorted(p, q, mu)


# ----- threshold path: float bit patterns and exact threshold sums


def _to_bits(x: Array) -> Array:
    """Bit pattern of non-negative floats: an integer that increases with x (+1 = next float)."""
    return jax.lax.bitcast_convert_type(x, jnp.int32 if x.dtype == jnp.float32 else jnp.int64)


def _from_bits(bits: Array, dtype: jnp.dtype) -> Array:
    return jax.lax.bitcast_convert_type(bits, dtype)


def _floor(dtype: jnp.dtype) -> np.ndarray:
    """The smallest threshold the search uses: tiny * 2^(nmant + 2), far above the subnormals
    (whose flush to zero would make p >= t depend on the CPU's mode)."""
    info = jnp.finfo(dtype)
    return np.asarray(float(info.tiny) * 2.0 ** (info.nmant + 2), dtype)


def _sum_at_least(p: Array, t_bits: Array, weight: Array) -> Array:
    """sum over classes with p >= t of `weight`, for thresholds [R, J] -> [R, J].

    p [R, C]; t_bits [R, J] bit patterns of the thresholds; weight broadcastable to [R, J, C].
    One fused reduction per pass (XLA:CPU vectorises this compare-and-select; with JAX 0.10 it
    ran 2x faster than the min/max arithmetic used before).
    """
    t = _from_bits(t_bits, p.dtype)
    return jnp.sum(jnp.where(p[:, None, :] >= t[..., None], weight, 0.0), axis=-1)


def _within(p: Array, lo: Array, hi: Array) -> Array:
    """p where lo <= p < hi, else -1, for one bracket per row (bits lo, hi [R]); p [R, ...]."""
    shape = lo.shape + (1,) * (p.ndim - 1)
    t_lo, t_hi = (_from_bits(b, p.dtype).reshape(shape) for b in (lo, hi))
    return jnp.where((p >= t_lo) & (p < t_hi), p, -1.0)


# ----- threshold path: the search


def _first_guess(p: Array, total: Array, mu: Any, log_p: Array | None) -> tuple[Array, Array]:
    """Threshold guess [R] and first-pass probe spacing [R] (in bit patterns), from one pass.

    Treats log p, weighted by p, as normal (exact for softmax of normal logits) up to its
    skewness g: the head ends near log t = m + s * z with m, s the weighted mean and deviation
    and z = Phi^-1(1 - mu) corrected for g by the Cornish-Fisher term (z^2 - 1) * g / 6 (for
    rank^-a teachers the weighted log p is far from symmetric: at a = 0.375, mu = 0.5, this
    moves the guess from 0.3 s away to within 0.01 s), and about total * phi(z) / (s * t)
    classes lie per unit of log p there. `log_p` [R, C], when given (e.g. t / tau - logsumexp
    from the logits), replaces a logarithm per class; any value works, as the guess only places
    the probes.
    """
    floor = _floor(p.dtype)
    if log_p is None:
        log_p = jnp.log(jnp.maximum(p, floor))
    x = jnp.maximum(log_p, float(np.log(floor)))[:, None, :]
    # The three weighted sums as one [R, 3, C] select and one reduction: as separate sums,
    # XLA:CPU hands each product to a YNNPACK reduction that evaluates it op by op (2x slower).
    power = jnp.arange(3)[:, None]
    px = p[:, None, :] * x
    terms = jnp.where(power == 0, px, jnp.where(power == 1, px * x, px * x * x))
    moments = jnp.sum(terms, axis=-1) / total[:, None]
    mean = moments[:, 0]
    var = jnp.maximum(moments[:, 1] - mean * mean, 0.0)
    std = jnp.sqrt(var)
    third = moments[:, 2] - 3.0 * mean * var - mean**3
    # Raw moments cancel in float32 when s << |m|: then (or for any wild value) no correction.
    trusted = std > 1e-2 * jnp.abs(mean)
    skew = jnp.where(trusted, jnp.clip(third / jnp.maximum(std, 1e-30) ** 3, -2.0, 2.0), 0.0)
    z0 = ndtri(jnp.clip(1.0 - mu, 1e-6, 1.0 - 1e-6)).astype(p.dtype)
    z = z0 + (z0 * z0 - 1.0) * skew / 6.0
    guess = jnp.clip(jnp.exp(mean + std * z), floor, 1.0)
    classes_per_log = total * jnp.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * std * guess)
    spacing = jnp.minimum(_FILL * CANDIDATES / 2 / classes_per_log, _MAX_FIRST_SPACING * std)
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
    done when its bracket holds one float value or at most CANDIDATES classes: every class in
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
    few = s_lo - s_hi <= (CANDIDATES - 0.5) * _from_bits(lo, p.dtype)
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
    spacing = _FILL * CANDIDATES / 2 / classes_per_log * _bits_per_log(guess)
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


def refine_all(p: Array, total: Array, mu: Array, bracket: tuple) -> tuple:
    """Later passes over the whole batch until every row is done."""
    return jax.lax.while_loop(_search_continues, _search_step, (1, p, total, mu, bracket))[-1]


def refine_open_rows(size: int, p: Array, total: Array, mu: Array, bracket: tuple) -> tuple:
    """Later passes over the (at most `size`) rows still open only, gathered.

    Padding entries repeat row 0; a row that appears twice gets the same result twice.
    """
    (rows,) = jnp.nonzero(~bracket[-1], size=size, fill_value=0)
    sub = tuple(x[rows] for x in bracket)
    sub = refine_all(p[rows], total[rows], mu, sub)
    return tuple(x.at[rows].set(y) for x, y in zip(bracket, sub, strict=True))


def _refine_fraction(divisor: int, p: Array, total: Array, mu: Array, bracket: tuple) -> tuple:
    return refine_open_rows(max(1, p.shape[0] // divisor), p, total, mu, bracket)


# The later passes gather the open rows into the smallest of these fractions of the rows that
# holds them all (1/16, 1/4, 1/2), or run on every row.
_REFINE_DIVISORS = (16, 4, 2)
_REFINE_BRANCHES = tuple(functools.partial(_refine_fraction, d) for d in _REFINE_DIVISORS) + (
    refine_all,
)


def first_pass(p: Array, total: Array, mu: Any, done: Array, log_p: Array | None = None) -> tuple:
    """The bracket (lo, hi, s_lo, s_hi, done) [R] after the first pass (rows p [R, C]; `log_p`
    as in `_first_guess`)."""
    floor = _floor(p.dtype)
    # Classes below t hold less than C * t mass, so S(t) > mu * total below this bound; p <= 1.
    lo0 = jnp.maximum(0.9 * (1.0 - jnp.minimum(mu, 1.0)) * total / p.shape[-1], floor)
    lo, hi = _to_bits(lo0.astype(p.dtype)), _to_bits(jnp.ones_like(total)) + 1
    guess, spacing = _first_guess(p, total, mu, log_p)
    centre = jnp.maximum(_to_bits(guess) - lo, 0).astype(p.dtype)
    probes = _place_probes(lo, hi, centre, spacing, _FIRST_PROBES)
    return _search_pass(p, total, mu, probes, (lo, hi, total, jnp.zeros_like(total), done))


def _search_threshold(p: Array, total: Array, mu: Any, done: Array, log_p: Array | None) -> tuple:
    """(lo, hi, s_lo, s_hi) bit patterns and sums [R] of the final brackets (rows [R, C])."""
    bracket = first_pass(p, total, mu, done, log_p)
    mu = jnp.asarray(mu, p.dtype)
    # Later passes on the open rows only, gathered, when they are few: the first pass usually
    # settles nearly all rows, so these cost a fraction of a pass over the batch.
    n_open = jnp.sum(~bracket[-1])
    sizes = jnp.asarray([max(1, p.shape[0] // d) for d in _REFINE_DIVISORS])
    branch = jnp.sum(n_open > sizes)
    # Module-level branches with explicit operands, so eager calls hit the compilation cache.
    bracket = jax.lax.switch(branch, _REFINE_BRANCHES, p, total, mu, bracket)
    return bracket[:4]


# ----- threshold path: resolving the boundary


def group_width(num_classes: int, k: int) -> int:
    """A divisor w of C near sqrt(C / k), or 1 (then no grouping: C is small or prime-like)."""
    target = math.sqrt(num_classes / k)
    best = 1
    for w in range(2, int(2 * target) + 1):
        if num_classes % w == 0 and abs(math.log(w / target)) < abs(math.log(best / target)):
            best = w
    return best


def _top_within(p: Array, lo: Array, hi: Array, k: int) -> tuple[Array, Array]:
    """The k largest p in [lo, hi) (bits [R]) per row: (values, class indices) [R, k].

    Values come in descending order (-1 where fewer than k classes lie in the bracket); among
    equal values the order, and which ones make the cut at the k-th, are unspecified.
    lax.top_k on XLA:CPU costs about ten reductions per element (half that when most entries
    are the -1 filler), so it runs on a reduced set: split the classes into n = C / w groups
    {g, g + n, g + 2n, ...}, keep the k groups with the largest maxima, then the k largest of
    their k * w members. Every class whose value exceeds the k-th largest is kept: else k groups
    would each hold a larger value.
    """
    num_rows, num_classes = p.shape
    w = group_width(num_classes, k)
    if w < 2 or num_classes // w < k:
        return jax.lax.top_k(_within(p, lo, hi), k)
    n = num_classes // w
    grouped = p.reshape(num_rows, w, n)
    # max over the middle axis, so XLA vectorises it along the contiguous group axis
    _, groups = jax.lax.top_k(jnp.max(_within(grouped, lo, hi), axis=1), k)
    members = jnp.take_along_axis(grouped, groups[:, None, :], axis=2)  # [R, w, k]
    values, pos = jax.lax.top_k(_within(members, lo, hi).reshape(num_rows, w * k), k)
    group = jnp.take_along_axis(groups, pos % k, axis=-1)
    return values, (pos // k) * n + group


def _lowest_indices(member: Array, idx: Array, j: Array) -> Array:
    """The j members [R, k] with the smallest class indices, as a mask.

    A member is kept when fewer than j members have a smaller index (the candidates' class
    indices are distinct): one [R, k, k] comparison, where a bisection on the index took about
    sixty tiny operations per call.
    """
    smaller = member[:, None, :] & (idx[:, None, :] < idx[:, :, None])  # [r, m, m']: m' before m
    return member & (jnp.sum(smaller, axis=-1) < j[:, None])


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
    return jnp.where(redo, head_gap_sorted(p, q, mu), g_head)


def head_gap_threshold_parts(
    p: Array, q: Array, mu: Any, valid: Array | None, log_p: Array | None = None
) -> tuple:
    """The threshold path on rows [R, C] without its slow branches: (g_head, ends, tie, rest).

    g_head [R] is final except on rows `tie` [R] (the head ends inside a tie group that the
    candidates may not fully cover: `_tie_gap_branch` with `ends`) and `rest` [R] (not settled
    for another reason: float rounding at the stopping test, NaN; the sort).
    """
    total = jnp.sum(p, axis=-1)
    closed = jnp.broadcast_to(jnp.asarray(mu >= 1), total.shape)  # mu >= 1: every class is head
    if valid is not None:
        closed = closed | ~valid
    lo, hi, _, s_hi = _search_threshold(p, total, mu, closed, log_p)
    cand, idx = _top_within(p, lo, hi, min(CANDIDATES, p.shape[-1]))
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
    in_head = above | _lowest_indices(at_v, idx, j)
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


def head_gap_threshold(
    p: Array, q: Array, mu: Any, valid: Array | None = None, log_p: Array | None = None
) -> Array:
    """Summed |p - q| over the head by a threshold search, [..., C] -> [...], no sort.

    The head is a rank prefix, and {p >= t} is a rank prefix for every threshold t, so with
    S(t) = sum_{p >= t} p the head holds every class with p >= hi whenever S(hi) / total <= mu.
    `_search_threshold` finds per row a bracket [lo, hi) with S(lo) / total > mu >= S(hi) / total
    holding at most ~CANDIDATES classes: a log-normal first guess and one fused pass over p
    with 8 thresholds around it settle most rows; the rest get interpolating passes, gathered
    when they are few. The classes in [lo, hi), ranked by value (ties: lower index first, as
    the sort does), then complete the head by their cumulative mass after S(hi). Rows where the
    head ends in a tie group the candidates may not cover (e.g. all-equal logits) are counted in
    a lax.cond branch, anything else unsettled (rounding at the stopping test, NaN) is sorted.
    Rows outside `valid` never take a branch. `log_p` [..., C] (optional, any values) only
    places the first probes: see `_first_guess`. Equal to `head_gap_sorted` up to the rounding of
    the cumulative sums.
    """
    lead, num_classes = p.shape[:-1], p.shape[-1]
    p, q = p.reshape(-1, num_classes), q.reshape(-1, num_classes)
    if log_p is not None:
        log_p = log_p.reshape(-1, num_classes)
    if valid is not None:
        valid = jnp.asarray(valid, bool).reshape(-1)
    g_head, ends, tie, rest = head_gap_threshold_parts(p, q, mu, valid, log_p)
    # Module-level branches with explicit operands, so eager calls hit the compilation cache.
    g_head = jax.lax.cond(jnp.any(tie), _tie_gap_branch, _keep_gap, g_head, p, q, mu, ends, tie)
    g_head = jax.lax.cond(jnp.any(rest), _sort_gap_branch, _keep_gap, g_head, p, q, mu, rest)
    return g_head.reshape(lead)


def check_path(path: str) -> None:
    """ValueError unless `path` is one of PATHS."""
    if path not in PATHS:
        raise ValueError(f"unknown head-set path {path!r}; expected one of {PATHS}")


def sort_max_classes(backend: str | None = None) -> int:
    """Up to this many classes "auto" sorts: SORT_MAX_CLASSES_CPU on the CPU backend,
    SORT_MAX_CLASSES on others (`backend`: a JAX platform name; None, the default backend)."""
    backend = jax.default_backend() if backend is None else backend
    return SORT_MAX_CLASSES_CPU if backend == "cpu" else SORT_MAX_CLASSES


def resolve_path(path: str, num_classes: int) -> str:
    """The head-set path that `path` (one of PATHS) runs for `num_classes`: "auto" is "sort" up
    to `sort_max_classes()` and "threshold" above. ValueError for an unknown path."""
    check_path(path)
    if path == "auto":
        return "sort" if num_classes <= sort_max_classes() else "threshold"
    return path


def head_tail_from_probs(
    p: Array,
    q: Array,
    mu: Any,
    valid: Array | None = None,
    path: str = "auto",
    log_p: Array | None = None,
) -> tuple[Array, Array]:
    """HTA-KL weights (w_head, w_tail) from teacher probs p and student probs q, [..., C] ->
    ([...], [...]); call it on gradient-free inputs.

    `path` (one of PATHS) picks how the head set is found, all exact (see the module docstring):
    "auto" sorts for C <= `sort_max_classes()` and searches a threshold above. `valid` [...] marks
    rows whose weights matter; padded rows never trigger a slow branch. `log_p` [..., C], the
    teacher's log-probabilities where the caller has them (from the logits: no logarithm per
    class), speeds up the threshold path's first guess and changes no result.
    """
    num_classes = p.shape[-1]
    path = resolve_path(path, num_classes)
    if path == "sort":
        g_head = head_gap_sorted(p, q, mu)
    elif path == "threshold":
        g_head = head_gap_threshold(p, q, mu, valid, log_p)
    else:
        g_head, exact = head_gap_top_k(p, q, mu, min(num_classes, TOP_K))
        if valid is not None:
            exact = exact | ~jnp.asarray(valid, bool)
        # Module-level branches with explicit operands, so eager calls hit the compilation cache.
        g_head = jax.lax.cond(jnp.all(exact), _keep_gap, _sort_all_branch, g_head, p, q, mu)
    g_total = jnp.sum(jnp.abs(p - q), axis=-1)
    safe_total = jnp.where(g_total > 0, g_total, 1.0)
    w_head = jnp.where(g_total > 0, jnp.minimum(g_head / safe_total, 1.0), 0.5)
    return w_head, 1.0 - w_head
