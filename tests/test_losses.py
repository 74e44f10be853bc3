"""Tests for htakl_jax.losses against independent float64 NumPy references (docs/method.md §4).

The references below are written from the spec alone, with explicit per-row loops and an explicit
stable sort, so that they share no code (and no vectorisation tricks) with the implementation.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import losses

TEMPERATURES = (1.0, 2.0, 4.0)
MUS = (0.1, 0.5, 0.9, 1.0)
SHAPES = ((3, 4, 7), (5, 10))
KINDS = ("random", "peaked", "flat", "tied", "masked")
# float32 cumulative sums may land on the other side of mu when C_k is this close to it: the
# reference then accepts every head set inside the window (the head is a prefix of the order).
MU_WINDOW = 2e-6
RTOL = 1e-5
ATOL = 1e-6


# ----------------------------------------------------------------------------------------------
# float64 references (one row = one distribution over C classes)
# ----------------------------------------------------------------------------------------------


def _ref_log_softmax_row(z_C: np.ndarray, tau: float) -> list[float]:
    """log softmax(z / tau) in float64; -inf logits give -inf (probability exactly 0)."""
    scaled = [float(v) / tau for v in z_C]
    finite = [v for v in scaled if math.isfinite(v)]
    m = max(finite)
    total = 0.0
    for v in scaled:
        if math.isfinite(v):
            total += math.exp(v - m)
    log_total = math.log(total)
    return [(v - m - log_total) if math.isfinite(v) else -math.inf for v in scaled]


def _ref_kl_row(logp: list[float], logq: list[float]) -> float:
    """sum_c p_c (log p_c - log q_c) with 0 log 0 = 0."""
    out = 0.0
    for lp, lq in zip(logp, logq, strict=True):
        if lp == -math.inf:
            continue
        out += math.exp(lp) * (lp - lq)
    return out


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(-1, x.shape[-1])


def ref_fkl(s: np.ndarray, t: np.ndarray, tau: float) -> np.ndarray:
    out = []
    for s_row, t_row in zip(_rows(s), _rows(t), strict=True):
        logp, logq = _ref_log_softmax_row(t_row, tau), _ref_log_softmax_row(s_row, tau)
        out.append(tau**2 * _ref_kl_row(logp, logq))
    return np.array(out).reshape(np.shape(s)[:-1])


def ref_rkl(s: np.ndarray, t: np.ndarray, tau: float) -> np.ndarray:
    out = []
    for s_row, t_row in zip(_rows(s), _rows(t), strict=True):
        logp, logq = _ref_log_softmax_row(t_row, tau), _ref_log_softmax_row(s_row, tau)
        out.append(tau**2 * _ref_kl_row(logq, logp))
    return np.array(out).reshape(np.shape(s)[:-1])


def _ref_weight_candidates_row(
    s_row: np.ndarray, t_row: np.ndarray, tau: float, mu: float, window: float
) -> list[tuple[float, float]]:
    """All (w_head, w_tail) allowed for one row; one unless some C_k is within `window` of mu."""
    p = [math.exp(v) for v in _ref_log_softmax_row(t_row, tau)]
    q = [math.exp(v) for v in _ref_log_softmax_row(s_row, tau)]
    num_classes = len(p)
    # Explicit stable sort on -p: ties keep the lower class index first.
    order = sorted(range(num_classes), key=lambda c: (-p[c], c))
    gaps = [abs(p[c] - q[c]) for c in order]
    cumulative = []
    acc = 0.0
    for c in order:
        acc += p[c]
        cumulative.append(acc)

    def weights(head_len: int) -> tuple[float, float]:
        g_head = sum(gaps[:head_len])
        g_tail = sum(gaps[head_len:])
        if g_head + g_tail == 0.0:
            return 0.5, 0.5
        return g_head / (g_head + g_tail), g_tail / (g_head + g_tail)

    # C_k is non-decreasing, so {k : C_k <= mu} is a prefix; the top-1 class is always head.
    lo = max(1, sum(1 for c_k in cumulative if c_k <= mu - window))
    hi = max(1, sum(1 for c_k in cumulative if c_k <= mu + window))
    return [weights(k) for k in range(lo, hi + 1)]


def ref_weight_candidates(s, t, tau, mu, window=MU_WINDOW) -> list[list[tuple[float, float]]]:
    return [
        _ref_weight_candidates_row(s_row, t_row, tau, mu, window)
        for s_row, t_row in zip(_rows(s), _rows(t), strict=True)
    ]


def ref_weights_exact(s, t, tau, mu) -> tuple[np.ndarray, np.ndarray]:
    """float64 weights with no ambiguity window (asserts the inputs are unambiguous)."""
    cands = ref_weight_candidates(s, t, tau, mu)
    assert all(len(c) == 1 for c in cands), "test input has C_k too close to mu"
    shape = np.shape(s)[:-1]
    w_head = np.array([c[0][0] for c in cands]).reshape(shape)
    w_tail = np.array([c[0][1] for c in cands]).reshape(shape)
    return w_head, w_tail


def ref_ce(s_BC: np.ndarray, labels_B: np.ndarray) -> np.ndarray:
    out = []
    for row, y in zip(_rows(s_BC), labels_B, strict=True):
        out.append(-_ref_log_softmax_row(row, 1.0)[int(y)])
    return np.array(out)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def make_inputs(kind: str, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(student, teacher) float32 logits of `shape` for one input family."""
    rng = np.random.default_rng(seed)
    num_classes = shape[-1]
    student = (3.0 * rng.standard_normal(shape)).astype(np.float32)
    teacher = (3.0 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "random":
        pass
    elif kind == "peaked":
        top = rng.integers(0, num_classes, size=shape[:-1])
        np.put_along_axis(teacher, top[..., None], 20.0, axis=-1)
    elif kind == "flat":
        student = np.full(shape, 0.7, np.float32)
        teacher = np.full(shape, 0.7, np.float32)
    elif kind == "tied":
        # Small integers: many exactly equal teacher probabilities, so the tie rule matters.
        teacher = rng.integers(-1, 3, size=shape).astype(np.float32)
    elif kind == "masked":
        # Same -inf mask on both (masked vocabulary); at least two classes stay finite.
        mask = rng.random(shape) < 0.35
        mask[..., :2] = False
        perm = rng.permuted(np.broadcast_to(np.arange(num_classes), shape), axis=-1)
        mask = np.take_along_axis(mask, np.argsort(perm, axis=-1), axis=-1)
        student = np.where(mask, -np.inf, student).astype(np.float32)
        teacher = np.where(mask, -np.inf, teacher).astype(np.float32)
    else:
        raise ValueError(kind)
    return student, teacher


def _assert_close(actual, expected, *, rtol=RTOL, atol=ATOL, err_msg=""):
    actual = np.asarray(actual, np.float64)
    assert actual.shape == np.shape(expected), (actual.shape, np.shape(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=err_msg)


def _assert_weights_match(w_head, w_tail, candidates, *, label=""):
    """Each row's implementation weights match one reference candidate (to float32 accuracy)."""
    w_head = np.asarray(w_head, np.float64).reshape(-1)
    w_tail = np.asarray(w_tail, np.float64).reshape(-1)
    for i, cands in enumerate(candidates):
        ok = any(
            abs(w_head[i] - h) <= ATOL + RTOL * abs(h)
            and abs(w_tail[i] - t) <= ATOL + RTOL * abs(t)
            for h, t in cands
        )
        assert ok, f"{label} row {i}: got ({w_head[i]}, {w_tail[i]}), reference {cands}"


# ----------------------------------------------------------------------------------------------
# values against the references
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("kind", KINDS)
def test_fkl_rkl_symmetric_fixed_ratio_match_reference(kind, tau, shape):
    s, t = make_inputs(kind, shape)
    fkl, rkl = ref_fkl(s, t, tau), ref_rkl(s, t, tau)
    assert np.all(np.isfinite(fkl)) and np.all(np.isfinite(rkl))
    _assert_close(losses.forward_kl(s, t, temperature=tau), fkl, err_msg="fkl")
    _assert_close(losses.reverse_kl(s, t, temperature=tau), rkl, err_msg="rkl")
    _assert_close(losses.symmetric_kl(s, t, temperature=tau), (fkl + rkl) / 2, err_msg="sym")
    for r in (0.0, 0.25, 0.5, 0.8, 1.0):
        got = losses.fixed_ratio_kl(s, t, head_ratio=r, temperature=tau)
        _assert_close(got, r * fkl + (1 - r) * rkl, err_msg=f"fixed_ratio r={r}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mu", MUS)
@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("kind", KINDS)
def test_head_tail_weights_and_hta_kl_match_reference(kind, tau, mu, shape):
    s, t = make_inputs(kind, shape)
    w_head, w_tail = losses.head_tail_weights(s, t, temperature=tau, mu=mu)
    assert w_head.shape == shape[:-1] and w_tail.shape == shape[:-1]
    assert np.all(np.isfinite(w_head)) and np.all(np.isfinite(w_tail))
    candidates = ref_weight_candidates(s, t, tau, mu)
    _assert_weights_match(w_head, w_tail, candidates, label=f"{kind} tau={tau} mu={mu}")

    fkl, rkl = ref_fkl(s, t, tau).reshape(-1), ref_rkl(s, t, tau).reshape(-1)
    got = np.asarray(losses.hta_kl(s, t, temperature=tau, mu=mu), np.float64)
    assert got.shape == shape[:-1]
    got = got.reshape(-1)
    for i, cands in enumerate(candidates):
        refs = [h * fkl[i] + w * rkl[i] for h, w in cands]
        assert any(abs(got[i] - r) <= ATOL + RTOL * abs(r) for r in refs), (i, got[i], refs)


@pytest.mark.parametrize("row_block", [None, 2], ids=["one_block", "row_blocks"])
@pytest.mark.parametrize("kind", ("random", "peaked", "masked"))
def test_weight_temperature_decouples_weights_from_kd_temperature(kind, row_block):
    """Weights from the tau_w distributions, KL terms at the KD temperature (float64 reference)."""
    s, t = make_inputs(kind, (4, 10), seed=3)
    tau, tau_w, mu = 4.0, 1.0, 0.5
    candidates = ref_weight_candidates(s, t, tau_w, mu)
    w_head, w_tail = losses.head_tail_weights(
        s, t, temperature=tau, mu=mu, weight_temperature=tau_w
    )
    _assert_weights_match(w_head, w_tail, candidates, label=f"{kind} tau_w={tau_w}")
    fkl, rkl = ref_fkl(s, t, tau), ref_rkl(s, t, tau)
    got, got_w = losses.hta_kl_with_weight(
        s, t, temperature=tau, mu=mu, weight_temperature=tau_w, row_block=row_block
    )
    np.testing.assert_allclose(got_w, w_head, rtol=1e-6, atol=1e-7)
    _assert_close(got, w_head * fkl + w_tail * rkl)
    # None is the KD temperature: identical to passing it explicitly.
    default = losses.hta_kl(s, t, temperature=tau, mu=mu)
    explicit = losses.hta_kl(s, t, temperature=tau, mu=mu, weight_temperature=tau)
    np.testing.assert_allclose(default, explicit, rtol=1e-6, atol=1e-7)


def test_weight_temperature_changes_the_weights_and_no_gradient_flows_through_them():
    s, t = make_inputs("random", (6, 10), seed=5)
    w4 = losses.head_tail_weights(s, t, temperature=4.0)[0]
    w1 = losses.head_tail_weights(s, t, temperature=4.0, weight_temperature=1.0)[0]
    assert np.max(np.abs(np.asarray(w4) - np.asarray(w1))) > 0.05
    s64, t64 = np.asarray(s, np.float64), np.asarray(t, np.float64)
    w_head, w_tail = ref_weights_exact(s64, t64, 1.0, 0.5)
    fkl_grad = jax.grad(lambda x: jnp.sum(w_head * losses.forward_kl(x, t, temperature=4.0)))(s)
    rkl_grad = jax.grad(lambda x: jnp.sum(w_tail * losses.reverse_kl(x, t, temperature=4.0)))(s)
    got = jax.grad(lambda x: jnp.sum(losses.hta_kl(x, t, temperature=4.0, weight_temperature=1.0)))(
        s
    )
    np.testing.assert_allclose(got, fkl_grad + rkl_grad, rtol=1e-5, atol=1e-6)


def test_distillation_loss_passes_weight_temperature(snn_batch):
    s_TBC, t_BC, labels = snn_batch
    s_mean = s_TBC.astype(np.float64).mean(0)
    w_head, w_tail = ref_weights_exact(s_mean, t_BC, 1.0, 0.5)
    fkl, rkl = ref_fkl(s_mean, t_BC, 2.0), ref_rkl(s_mean, t_BC, 2.0)
    kw = dict(method="hta_kl", alpha=1.0, temperature=2.0, mu=0.5, weight_temperature=1.0)
    loss, metrics = losses.distillation_loss(s_TBC, t_BC, labels, **kw)
    _assert_close(loss, np.mean(w_head * fkl + w_tail * rkl))
    _assert_close(metrics["w_head"], np.mean(w_head))


@pytest.mark.parametrize("tau_w", [0.0, -1.0])
def test_weight_temperature_not_positive(tau_w):
    s, t = make_inputs("random", (2, 5))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.hta_kl(s, t, weight_temperature=tau_w)


def test_flat_inputs_give_half_half_without_nan():
    s, t = make_inputs("flat", (5, 10))
    for mu in MUS:
        w_head, w_tail = losses.head_tail_weights(s, t, mu=mu)
        np.testing.assert_array_equal(np.asarray(w_head), 0.5)
        np.testing.assert_array_equal(np.asarray(w_tail), 0.5)
        np.testing.assert_array_equal(np.asarray(losses.hta_kl(s, t, mu=mu)), 0.0)


def test_tie_rule_hand_computed():
    """Teacher [0, 1, 1, 0]: classes 1 and 2 tie; the lower index (1) is the top-1 head class."""
    e = math.e
    p = [1 / (2 + 2 * e), e / (2 + 2 * e), e / (2 + 2 * e), 1 / (2 + 2 * e)]
    e3 = math.exp(3.0)
    q = [1 / (3 + e3), e3 / (3 + e3), 1 / (3 + e3), 1 / (3 + e3)]
    gaps = [abs(a - b) for a, b in zip(p, q, strict=True)]
    # Order 1, 2, 0, 3; C = 0.37, 0.73, 0.87, 1.0: mu = 0.5 keeps only class 1 in the head.
    expected_head = gaps[1] / sum(gaps)
    wrong_tie_head = gaps[2] / sum(gaps)
    assert abs(expected_head - wrong_tie_head) > 0.1  # the case does discriminate the tie rule
    s = np.array([0.0, 3.0, 0.0, 0.0], np.float32)
    t = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
    w_head, w_tail = losses.head_tail_weights(s, t, mu=0.5)
    np.testing.assert_allclose(float(w_head), expected_head, rtol=1e-6)
    np.testing.assert_allclose(float(w_tail), 1 - expected_head, rtol=1e-6)
    # mu = 0.8 (between C_2 = 0.73 and C_3 = 0.87): both tied classes are head.
    w_head, _ = losses.head_tail_weights(s, t, mu=0.8)
    np.testing.assert_allclose(float(w_head), (gaps[1] + gaps[2]) / sum(gaps), rtol=1e-6)


def test_tie_rule_with_tied_top1():
    """All-equal teacher: the top-1 (only head class for a tiny mu) is class 0, the lowest index."""
    s = np.array([[2.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 2.0]], np.float32)
    t = np.zeros((2, 5), np.float32)
    w_head, _ = losses.head_tail_weights(s, t, mu=0.1)
    ref_head, _ = ref_weights_exact(s, t, 1.0, 0.1)
    _assert_close(w_head, ref_head)
    # Row 0: class 0 carries about half the total gap; row 1: little (class 4 would give ~0.01).
    assert ref_head[0] > 0.4 and ref_head[1] < 0.2


# ----------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_properties(kind):
    shape = (5, 10)
    for seed in range(3):
        s, t = make_inputs(kind, shape, seed=seed)
        for tau in TEMPERATURES:
            fkl = np.asarray(losses.forward_kl(s, t, temperature=tau))
            rkl = np.asarray(losses.reverse_kl(s, t, temperature=tau))
            assert np.all(fkl >= -ATOL) and np.all(rkl >= -ATOL)
            # Equal inputs: zero divergence, zero gaps.
            np.testing.assert_allclose(
                np.asarray(losses.forward_kl(t, t, temperature=tau)), 0, atol=ATOL
            )
            np.testing.assert_allclose(
                np.asarray(losses.reverse_kl(t, t, temperature=tau)), 0, atol=ATOL
            )
            np.testing.assert_allclose(
                np.asarray(losses.hta_kl(t, t, temperature=tau)), 0, atol=ATOL
            )
            for mu in MUS:
                w_head, w_tail = (
                    np.asarray(w) for w in losses.head_tail_weights(s, t, temperature=tau, mu=mu)
                )
                assert np.all((w_head >= 0) & (w_head <= 1) & (w_tail >= 0) & (w_tail <= 1))
                np.testing.assert_allclose(w_head + w_tail, 1.0, atol=1e-6)
                hta = np.asarray(losses.hta_kl(s, t, temperature=tau, mu=mu))
                lo, hi = np.minimum(fkl, rkl), np.maximum(fkl, rkl)
                slack = 1e-5 * np.maximum(1.0, hi)
                assert np.all(hta >= lo - slack) and np.all(hta <= hi + slack)


def test_top1_always_head_for_tiny_mu():
    s, t = make_inputs("random", (5, 10), seed=3)
    p = np.exp(t - t.max(-1, keepdims=True), dtype=np.float64)
    p /= p.sum(-1, keepdims=True)
    q = np.exp(s - s.max(-1, keepdims=True), dtype=np.float64)
    q /= q.sum(-1, keepdims=True)
    assert np.all(p.max(-1) > 1e-3)  # mu = 1e-3 lies below every top-1 mass
    w_head, _ = losses.head_tail_weights(s, t, mu=1e-3)
    # Vectorised reference, independent of the loop one: head = {top-1} only.
    gaps = np.abs(p - q)
    expected = gaps[np.arange(5), np.argmax(p, axis=-1)] / gaps.sum(-1)
    _assert_close(w_head, expected)
    assert np.all(np.asarray(w_head) > 0)


def test_mu_one_puts_every_class_in_the_head():
    """mu = 1: every C_k <= 1, so w_head = 1 and HTA-KL = FKL (float32 sums may not drop any)."""
    for kind in ("random", "peaked", "tied", "masked"):
        for seed in range(4):
            s, t = make_inputs(kind, (5, 10), seed=seed)
            w_head, w_tail = losses.head_tail_weights(s, t, mu=1.0)
            np.testing.assert_allclose(np.asarray(w_head), 1.0, atol=1e-6, err_msg=kind)
            np.testing.assert_allclose(np.asarray(w_tail), 0.0, atol=1e-6, err_msg=kind)
            _assert_close(losses.hta_kl(s, t, mu=1.0), ref_fkl(s, t, 1.0), err_msg=kind)


# Above ~1k classes the implementation may find the head from top-k candidates instead of a full
# sort; these sizes exercise that path, including rows whose head is longer than the candidates.
LARGE_C = 1500
# One compilation for every mu (traced): eager calls would recompile per call at this size.
_weights_jit = jax.jit(lambda s, t, mu: losses.head_tail_weights(s, t, mu=mu))
_hta_jit = jax.jit(lambda s, t, mu: losses.hta_kl(s, t, mu=mu))


def test_large_vocab_matches_reference():
    long_heads = short_heads = 0
    for kind in ("random", "peaked", "tied", "masked"):
        s, t = make_inputs(kind, (4, LARGE_C), seed=9)
        fkl, rkl = ref_fkl(s, t, 1.0).reshape(-1), ref_rkl(s, t, 1.0).reshape(-1)
        for mu in (0.1, 0.5, 0.9, 1.0):
            cands = ref_weight_candidates(s, t, 1.0, mu)
            w_head, w_tail = _weights_jit(s, t, mu)
            _assert_weights_match(w_head, w_tail, cands, label=f"{kind} mu={mu}")
            hta = np.asarray(_hta_jit(s, t, mu), np.float64)
            for i, row in enumerate(cands):
                refs = [h * fkl[i] + w * rkl[i] for h, w in row]
                assert any(abs(hta[i] - r) <= ATOL + RTOL * abs(r) for r in refs), (kind, mu, i)
            lengths = _ref_head_lengths(t, mu)
            long_heads += int(np.sum(lengths > 64))
            short_heads += int(np.sum(lengths <= 64))
    assert long_heads > 0 and short_heads > 0  # both regimes were covered


def _ref_head_lengths(t: np.ndarray, mu: float) -> np.ndarray:
    p = np.exp(t.astype(np.float64) - t.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    cum = np.cumsum(-np.sort(-p, axis=-1), axis=-1)
    return np.maximum(np.sum(cum <= mu, axis=-1), 1)


def test_large_vocab_where_with_long_head_in_padding():
    """A padded row whose head is long must not change the valid rows' results."""
    s_short, t_short = make_inputs("random", (3, LARGE_C), seed=9)
    s_long, t_long = make_inputs("tied", (1, LARGE_C), seed=9)
    s = np.concatenate([s_short, s_long])
    t = np.concatenate([t_short, t_long])
    valid = np.array([True, True, True, False])
    assert _ref_head_lengths(t_long, 0.5)[0] > 64
    hta = jax.jit(lambda a, b, w: losses.hta_kl(a, b, mu=0.5, where=w))
    got = np.asarray(hta(s, t, valid), np.float64)
    assert got[3] == 0.0
    w_head, w_tail = ref_weights_exact(s_short, t_short, 1.0, 0.5)
    expected = w_head * ref_fkl(s_short, t_short, 1.0) + w_tail * ref_rkl(s_short, t_short, 1.0)
    _assert_close(got[:3], expected)
    # And the same long row, valid this time, in a batch with short ones.
    got = np.asarray(hta(s, t, np.ones(4, bool)), np.float64)
    w_head, w_tail = ref_weights_exact(s, t, 1.0, 0.5)
    _assert_close(got, w_head * ref_fkl(s, t, 1.0) + w_tail * ref_rkl(s, t, 1.0))


def test_row_block_sizes():
    assert losses.row_block_size(4096, 32000) == 8  # 8 rows x 32000 classes ~ BLOCK_ELEMENTS
    assert losses.row_block_size(4096, 32000, block_elements=1 << 21) == 64
    assert losses.row_block_size(4099, 32000) is None  # prime: no divisor near the target
    assert losses.row_block_size(128, 100) is None  # small: one block
    assert losses.row_block_size(3, 3_000_000) == 1  # one row already exceeds the target
    assert losses.row_block_size(24, 50, block_elements=128) == 2
    head_set_block = losses.HEAD_SET_BLOCK_ELEMENTS
    assert losses.row_block_size(4096, 32000, head_set_block, min_rows=2) == 4
    assert losses.row_block_size(1024, 128256, head_set_block, min_rows=2) == 2  # not 1 row
    assert losses.row_block_size(3, 3_000_000, head_set_block, min_rows=2) == 1  # 3 rows: not 2
    # At most max_rows rows per block, even where the elements alone would allow one block.
    assert losses.row_block_size(4096, 40, head_set_block, 2, max_rows=512) == 512
    assert losses.row_block_size(4096, 1000, head_set_block, 2, max_rows=512) == 128
    assert losses.row_block_size(512, 40, head_set_block, 2, max_rows=512) is None
    assert losses.row_block_size(1000, 40, head_set_block, 2, max_rows=512) == 500


def test_row_block_argument_is_checked():
    s = jnp.zeros((6, 5))
    for bad in (0, 4, True, "big"):
        with pytest.raises(ValueError, match="row_block"):
            losses.hta_kl(s, s, row_block=bad)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' blocks on the CPU backend")
def test_auto_row_blocks_above_the_size_on_cpu():
    """'auto' maps over row blocks (a scan, one step per block, inside the loss's custom VJP)
    only above 2 * HEAD_SET_BLOCK_ELEMENTS elements or HEAD_SET_BLOCK_ROWS rows for the threshold
    search (BLOCK_ELEMENTS by the sort path); None never."""

    def scans(jaxpr, num_classes):
        """Lengths of the scans over row blocks [blocks, rows, C] of the logits."""
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan" and any(
                v.aval.shape[-1:] == (num_classes,) and v.aval.ndim == 3 for v in eqn.invars
            ):
                yield eqn.params["length"]
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    yield from scans(inner, num_classes)

    def blocks(shape, row_block, path="auto"):
        x = jax.ShapeDtypeStruct(shape, jnp.float32)  # traced only: no [4096, 32000] arrays
        loss = functools.partial(losses.hta_kl, row_block=row_block, path=path)
        return list(scans(jax.make_jaxpr(loss)(x, x).jaxpr, shape[-1]))

    assert blocks((4096, 32000), "auto") == [4096 // 4]  # HTA-KL: HEAD_SET_BLOCK_ELEMENTS
    assert blocks((16, 32000), "auto") == [16 // 4]
    assert blocks((4096, 32000), None) == [] and blocks((8, 32000), "auto") == []
    assert blocks((4096, 32000), "auto", path="sort") == [4096 // 8]  # BLOCK_ELEMENTS
    assert blocks((4096, 40), "auto") == [4096 // 512]  # HEAD_SET_BLOCK_ROWS
    assert blocks((4096, 40), "auto", path="sort") == []  # the sort's limit is elements only
    assert blocks((512, 40), "auto") == []


def test_row_blocks_match_one_block_and_reference():
    """HTA-KL by row blocks (lax.map) gives the one-block values, weights and gradients."""
    s, t = make_inputs("random", (4, 6, 50), seed=11)
    where = np.ones((4, 6), bool)
    where[1, 2:] = False

    def run(row_block):
        def loss(s, t, tau):
            kl, w_head = losses.hta_kl_with_weight(
                s, t, temperature=tau, mu=0.5, where=where, row_block=row_block
            )
            return jnp.sum(kl), (kl, w_head)

        grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        (_, (kl, w_head)), grads = grad_fn(s, t, 2.0)
        return jax.tree.map(np.asarray, (kl, w_head, grads))

    one = run(None)
    blocked = run(2)  # 12 blocks of 2 rows
    # Equal up to float32 summation order (the temperature gradient sums over blocks).
    chex.assert_trees_all_close(blocked, one, rtol=1e-5, atol=1e-9)
    kl = blocked[0]
    w_head, w_tail = ref_weights_exact(s[where], t[where], 2.0, 0.5)
    expected = w_head * ref_fkl(s[where], t[where], 2.0) + w_tail * ref_rkl(s[where], t[where], 2.0)
    _assert_close(kl[where], expected)
    assert np.all(kl[~where] == 0.0)


@pytest.mark.parametrize("method", ["fkl", "rkl", "symmetric", "fixed_ratio"])
def test_fixed_weight_losses_by_row_blocks_match_one_block(method):
    """The fixed-weight losses by row blocks give the one-block values and gradients (student,
    teacher, temperature), and the float64 reference."""
    s, t = make_inputs("random", (4, 6, 50), seed=12)
    where = np.ones((4, 6), bool)
    where[2, :3] = False
    ratio = {"fkl": 1.0, "rkl": 0.0, "symmetric": 0.5, "fixed_ratio": 0.3}[method]
    fn = {
        "fkl": losses.forward_kl,
        "rkl": losses.reverse_kl,
        "symmetric": losses.symmetric_kl,
        "fixed_ratio": functools.partial(losses.fixed_ratio_kl, head_ratio=0.3),
    }[method]

    def run(row_block):
        def loss(s, t, tau):
            values = fn(s, t, temperature=tau, where=where, row_block=row_block)
            return jnp.sum(values), values

        grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        (_, values), grads = grad_fn(s, t, 2.0)
        return jax.tree.map(np.asarray, (values, grads))

    one, blocked = run(None), run(3)  # 8 blocks of 3 rows
    # The blocks sum each row in another order: the per-row statistics the backward reuses
    # differ by float32 rounding, which the gradient's -d - KL cancellation lifts to ~2e-8 here
    # (each is ~1e-6 from the float64 gradient).
    chex.assert_trees_all_close(blocked, one, rtol=1e-5, atol=1e-7)
    sv, tv = s[where], t[where]
    expected = ratio * ref_fkl(sv, tv, 2.0) + (1 - ratio) * ref_rkl(sv, tv, 2.0)
    _assert_close(blocked[0][where], expected)
    assert np.all(blocked[0][~where] == 0.0)


# ----------------------------------------------------------------------------------------------
# gradients (float64)
# ----------------------------------------------------------------------------------------------


def _central_diff(fn, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """d sum(fn(x)) / dx by central differences in float64, skipping non-finite entries."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        if not np.isfinite(x[idx]):
            continue
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (np.sum(fn(xp)) - np.sum(fn(xm))) / (2 * h)
    return grad


@pytest.mark.parametrize("kind", ("random", "peaked", "tied", "masked"))
def test_gradients_match_finite_differences_float64(kind):
    tau, mu = 2.0, 0.5
    s32, t32 = make_inputs(kind, (2, 6), seed=1)
    s, t = s32.astype(np.float64), t32.astype(np.float64)
    w_head_ref, w_tail_ref = ref_weights_exact(s, t, tau, mu)
    fd_fkl = _central_diff(lambda x: ref_fkl(x, t, tau), s)
    fd_rkl = _central_diff(lambda x: ref_rkl(x, t, tau), s)
    # HTA-KL gradient treats the weights as constants evaluated at the point.
    fd_hta = w_head_ref[:, None] * fd_fkl + w_tail_ref[:, None] * fd_rkl
    with jax.enable_x64(True):
        s_j, t_j = jnp.asarray(s), jnp.asarray(t)
        out = losses.hta_kl(s_j, t_j, temperature=tau, mu=mu)
        assert out.dtype == jnp.float64, "float64 inputs must be computed in float64"
        grads = {
            "fkl": jax.grad(lambda x: losses.forward_kl(x, t_j, temperature=tau).sum())(s_j),
            "rkl": jax.grad(lambda x: losses.reverse_kl(x, t_j, temperature=tau).sum())(s_j),
            "hta": jax.grad(lambda x: losses.hta_kl(x, t_j, temperature=tau, mu=mu).sum())(s_j),
        }
        w_head, w_tail = losses.head_tail_weights(s_j, t_j, temperature=tau, mu=mu)
        grads = {k: np.asarray(v) for k, v in grads.items()}
        w_head, w_tail = np.asarray(w_head), np.asarray(w_tail)
    np.testing.assert_allclose(w_head, w_head_ref, rtol=1e-9)
    for name, fd in (("fkl", fd_fkl), ("rkl", fd_rkl), ("hta", fd_hta)):
        g = grads[name]
        assert np.all(np.isfinite(g)), name
        # -inf classes carry no probability, so they get zero gradient.
        np.testing.assert_array_equal(g[~np.isfinite(s)], 0.0, err_msg=name)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8, err_msg=name)
    np.testing.assert_allclose(
        grads["hta"], w_head[:, None] * grads["fkl"] + w_tail[:, None] * grads["rkl"], rtol=1e-10
    )


@pytest.mark.parametrize("tau", (1.0, 3.0))
def test_teacher_probabilities_that_underflow_keep_their_log(tau):
    # Teacher classes 110-140 logits below the top have p = 0 in float32 (exp(-110) is below
    # the smallest subnormal) but a finite log p, where the student puts mass: RKL, its
    # gradient and HTA-KL must count q * (log q - log p) with that log p, as float64 does.
    s = np.array([[1.0, 0.5, -1.0, 0.0, 2.0, 0.3], [0.0, 1.0, 2.0, -0.5, 0.0, 1.5]], np.float32)
    t = np.array([[4.0, -106.0, 0.0, 3.0, 1.0, -136.0], [-110.0, 3.0, -120.0, 2.0, 0.5, 1.0]])
    t = (tau * t).astype(np.float32)
    assert np.any(np.asarray(jax.nn.softmax(jnp.asarray(t) / tau)) == 0.0)
    s64, t64 = s.astype(np.float64), t.astype(np.float64)
    fkl, rkl = ref_fkl(s64, t64, tau), ref_rkl(s64, t64, tau)
    w_head, w_tail = ref_weights_exact(s64, t64, tau, 0.5)
    _assert_close(losses.forward_kl(s, t, temperature=tau), fkl, err_msg="fkl")
    _assert_close(losses.reverse_kl(s, t, temperature=tau), rkl, err_msg="rkl")
    _assert_close(losses.hta_kl(s, t, temperature=tau), w_head * fkl + w_tail * rkl)
    fd_rkl = _central_diff(lambda x: ref_rkl(x, t64, tau), s64)
    fd_hta = w_head[:, None] * _central_diff(lambda x: ref_fkl(x, t64, tau), s64)
    fd_hta = fd_hta + w_tail[:, None] * fd_rkl
    rkl_loss = lambda x: losses.reverse_kl(x, t, temperature=tau).sum()  # noqa: E731
    hta_loss = lambda x: losses.hta_kl(x, t, temperature=tau).sum()  # noqa: E731
    np.testing.assert_allclose(jax.grad(rkl_loss)(s), fd_rkl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.grad(hta_loss)(s), fd_hta, rtol=1e-5, atol=1e-5)


def test_a_class_masked_on_one_side_only_makes_that_kl_infinite():
    # The package docstring's convention: -inf on both sides is a masked class (contributes 0);
    # -inf on one side only gives that KL its true value, +inf, and the other KL stays finite.
    inf = np.inf
    s = np.array([[1.0, 0.5, 0.0, -inf], [2.0, -inf, 0.3, 1.0]], np.float32)
    t = np.array([[2.0, -inf, 0.0, -inf], [0.0, 1.0, 2.0, 1.0]], np.float32)
    fkl, rkl = ref_fkl(s, t, 2.0), ref_rkl(s, t, 2.0)
    assert np.isfinite(fkl[0]) and np.isinf(rkl[0]) and np.isinf(fkl[1]) and np.isfinite(rkl[1])
    _assert_close(losses.forward_kl(s, t, temperature=2.0), fkl, err_msg="fkl")
    _assert_close(losses.reverse_kl(s, t, temperature=2.0), rkl, err_msg="rkl")


@pytest.mark.parametrize("kind", ("random", "peaked", "masked"))
def test_teacher_and_temperature_gradients_match_finite_differences_float64(kind):
    # The KL losses have a hand-written VJP: check the cotangents of the teacher logits and of
    # the temperature too (distilling into a trainable teacher, a learned temperature). The
    # references include the tau^2 factor.
    tau = 2.0
    s32, t32 = make_inputs(kind, (2, 6), seed=3)
    s, t = s32.astype(np.float64), t32.astype(np.float64)
    refs = {
        "fkl": ref_fkl,
        "rkl": ref_rkl,
        "fixed": lambda a, b, c: 0.3 * ref_fkl(a, b, c) + 0.7 * ref_rkl(a, b, c),
    }
    ours = {
        "fkl": lambda a, b, c: losses.forward_kl(a, b, temperature=c),
        "rkl": lambda a, b, c: losses.reverse_kl(a, b, temperature=c),
        "fixed": lambda a, b, c: losses.fixed_ratio_kl(a, b, head_ratio=0.3, temperature=c),
    }
    for name, ref in refs.items():
        fd_t = _central_diff(lambda x, ref=ref: ref(s, x, tau), t)
        fd_tau = _central_diff(lambda x, ref=ref: ref(s, t, x[0]), np.array([tau]))[0]
        with jax.enable_x64(True):
            loss = lambda a, b, c, name=name: ours[name](a, b, c).sum()  # noqa: E731
            g_t, g_tau = jax.grad(loss, argnums=(1, 2))(jnp.asarray(s), jnp.asarray(t), tau)
        g_t = np.asarray(g_t)
        np.testing.assert_array_equal(g_t[~np.isfinite(t)], 0.0, err_msg=name)
        np.testing.assert_allclose(g_t, fd_t, rtol=1e-6, atol=1e-8, err_msg=name)
        np.testing.assert_allclose(float(g_tau), fd_tau, rtol=1e-6, err_msg=name)


def test_no_gradient_through_head_tail_weights():
    s, t = make_inputs("random", (4, 6), seed=2)
    for which in (0, 1):
        g = jax.grad(lambda x, i=which: losses.head_tail_weights(x, t, mu=0.5)[i].sum())(s)
        np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.parametrize("row_block", (None, 2))
def test_temperature_gradient_of_hta_kl_holds_the_weights_fixed(row_block):
    # d/dtau of HTA-KL is that of the fixed mix w_head FKL + w_tail RKL at the same weights: the
    # weights depend on tau (through p and q) but pass no gradient, to tau as to the logits.
    s, t = make_inputs("random", (4, 7), seed=5)
    _, w_head = losses.hta_kl_with_weight(s, t, temperature=2.0)

    def hta(tau):
        return losses.hta_kl(s, t, temperature=tau, row_block=row_block).sum()

    def mix(tau):
        fkl = losses.forward_kl(s, t, temperature=tau)
        return (w_head * fkl + (1 - w_head) * losses.reverse_kl(s, t, temperature=tau)).sum()

    np.testing.assert_allclose(jax.grad(hta)(2.0), jax.grad(mix)(2.0), rtol=1e-5)
    g = jax.grad(lambda tau: losses.head_tail_weights(s, t, temperature=tau)[0].sum())(2.0)
    assert float(g) == 0.0


def test_jit_vmap_grad_of_hta_kl():
    s, t = make_inputs("masked", (3, 4, 7), seed=4)
    per_row = jax.jit(jax.vmap(jax.grad(lambda a, b: losses.hta_kl(a, b).sum())))
    g = np.asarray(per_row(s, t))
    assert g.shape == s.shape and np.all(np.isfinite(g))
    g_full = np.asarray(jax.grad(lambda a: losses.hta_kl(a, t).sum())(s))
    np.testing.assert_allclose(g, g_full, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# reduced precision
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", (jnp.bfloat16, jnp.float16), ids=("bf16", "fp16"))
@pytest.mark.parametrize("kind", ("random", "peaked", "tied", "masked"))
def test_half_precision_inputs_are_float32_accurate(dtype, kind):
    tau, mu = 2.0, 0.5
    s32, t32 = make_inputs(kind, (5, 10), seed=5)
    s, t = jnp.asarray(s32, dtype), jnp.asarray(t32, dtype)
    # Reference on the rounded values.
    s64, t64 = np.asarray(s, np.float64), np.asarray(t, np.float64)
    fkl, rkl = ref_fkl(s64, t64, tau), ref_rkl(s64, t64, tau)
    cands = ref_weight_candidates(s64, t64, tau, mu)
    outs = {
        "fkl": (losses.forward_kl(s, t, temperature=tau), fkl),
        "rkl": (losses.reverse_kl(s, t, temperature=tau), rkl),
        "sym": (losses.symmetric_kl(s, t, temperature=tau), (fkl + rkl) / 2),
        "fixed": (
            losses.fixed_ratio_kl(s, t, head_ratio=0.3, temperature=tau),
            0.3 * fkl + 0.7 * rkl,
        ),
    }
    for name, (got, ref) in outs.items():
        assert got.dtype == jnp.float32, (name, got.dtype)
        _assert_close(got, ref, err_msg=name)
    w_head, w_tail = losses.head_tail_weights(s, t, temperature=tau, mu=mu)
    assert w_head.dtype == jnp.float32 and w_tail.dtype == jnp.float32
    _assert_weights_match(w_head, w_tail, cands, label=str(dtype))
    hta = losses.hta_kl(s, t, temperature=tau, mu=mu)
    assert hta.dtype == jnp.float32
    assert all(len(c) == 1 for c in cands)
    w_h = np.array([c[0][0] for c in cands])
    w_t = np.array([c[0][1] for c in cands])
    _assert_close(hta, w_h * fkl + w_t * rkl, err_msg="hta")


# ----------------------------------------------------------------------------------------------
# where masking ([batch, length, vocab] with a padding mask)
# ----------------------------------------------------------------------------------------------

_WHERE_FNS = {
    "fkl": lambda s, t, **kw: losses.forward_kl(s, t, temperature=2.0, **kw),
    "rkl": lambda s, t, **kw: losses.reverse_kl(s, t, temperature=2.0, **kw),
    "sym": lambda s, t, **kw: losses.symmetric_kl(s, t, temperature=2.0, **kw),
    "fixed": lambda s, t, **kw: losses.fixed_ratio_kl(s, t, head_ratio=0.3, temperature=2.0, **kw),
    "hta": lambda s, t, **kw: losses.hta_kl(s, t, temperature=2.0, mu=0.5, **kw),
}


def _padded_batch(garbage: str):
    """[batch 2, length 5, vocab 7] logits with lengths (5, 3); padding filled with `garbage`."""
    s, t = make_inputs("random", (2, 5, 7), seed=6)
    valid_BL = np.arange(5)[None, :] < np.array([5, 3])[:, None]
    fill = {"finite": None, "-inf": -np.inf, "nan": np.nan}[garbage]
    if fill is not None:
        s = np.where(valid_BL[..., None], s, fill).astype(np.float32)
        t = np.where(valid_BL[..., None], t, fill).astype(np.float32)
    return s, t, valid_BL


@pytest.mark.parametrize("garbage", ("finite", "-inf", "nan"))
@pytest.mark.parametrize("name", sorted(_WHERE_FNS))
def test_where_masks_padding_positions(name, garbage):
    fn = _WHERE_FNS[name]
    s, t, valid = _padded_batch(garbage)
    clean_s, clean_t, _ = _padded_batch("finite")
    out = np.asarray(fn(s, t, where=valid))
    assert out.shape == valid.shape
    np.testing.assert_array_equal(out[~valid], 0.0)
    unmasked = np.asarray(fn(clean_s, clean_t))
    _assert_close(out[valid], unmasked[valid])
    grad = np.asarray(jax.grad(lambda x: fn(x, t, where=valid).sum())(s))
    assert np.all(np.isfinite(grad)), "masked positions must not leak NaN/inf into gradients"
    np.testing.assert_array_equal(grad[~valid], 0.0)
    grad_clean = np.asarray(jax.grad(lambda x: fn(x, clean_t).sum())(clean_s))
    np.testing.assert_allclose(grad[valid], grad_clean[valid], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# distillation_loss
# ----------------------------------------------------------------------------------------------

METHODS = ("ce", "fkl", "rkl", "symmetric", "fixed_ratio", "hta_kl")


def _ref_kd(method, s, t, tau, mu, r):
    fkl, rkl = ref_fkl(s, t, tau), ref_rkl(s, t, tau)
    if method == "fkl":
        return fkl, 1.0, 0.0
    if method == "rkl":
        return rkl, 0.0, 1.0
    if method == "symmetric":
        return (fkl + rkl) / 2, 0.5, 0.5
    if method == "fixed_ratio":
        return r * fkl + (1 - r) * rkl, r, 1 - r
    w_head, w_tail = ref_weights_exact(s, t, tau, mu)
    return w_head * fkl + w_tail * rkl, w_head, w_tail


@pytest.fixture(scope="module")
def snn_batch():
    rng = np.random.default_rng(7)
    s_TBC = (3.0 * rng.standard_normal((3, 4, 5))).astype(np.float32)
    t_BC = (3.0 * rng.standard_normal((4, 5))).astype(np.float32)
    labels = np.array([0, 3, 1, 4], np.int32)
    return s_TBC, t_BC, labels


@pytest.mark.parametrize("method", METHODS)
def test_distillation_loss_matches_reference(method, snn_batch):
    s_TBC, t_BC, labels = snn_batch
    alpha, tau, mu, r = 0.7, 2.0, 0.5, 0.3
    s_mean = s_TBC.astype(np.float64).mean(0)
    ce = ref_ce(s_mean, labels)
    kw = dict(method=method, alpha=alpha, temperature=tau, mu=mu)
    if method == "fixed_ratio":
        kw["head_ratio"] = r
    for student in (s_TBC, s_mean.astype(np.float32)):
        loss, metrics = losses.distillation_loss(student, t_BC, labels, **kw)
        assert np.shape(loss) == ()
        assert {"ce", "kd", "w_head", "w_tail"} <= set(metrics)
        _assert_close(metrics["ce"], ce.mean())
        if method == "ce":
            _assert_close(loss, ce.mean())
            continue
        kd, w_head, w_tail = _ref_kd(method, s_mean, t_BC, tau, mu, r)
        _assert_close(loss, (1 - alpha) * ce.mean() + alpha * kd.mean())
        _assert_close(metrics["kd"], kd.mean())
        _assert_close(metrics["w_head"], np.mean(w_head))
        _assert_close(metrics["w_tail"], np.mean(w_tail))


def test_distillation_loss_where_is_masked_mean(snn_batch):
    s_TBC, t_BC, labels = snn_batch
    where = np.array([True, False, True, True])
    # Invalid examples may hold anything.
    s_bad = s_TBC.copy()
    s_bad[:, 1] = np.nan
    s_mean = s_TBC.astype(np.float64).mean(0)[where]
    ce = ref_ce(s_mean, labels[where])
    kd, w_head, _ = _ref_kd("hta_kl", s_mean, t_BC[where], 2.0, 0.5, None)
    kw = dict(method="hta_kl", alpha=0.4, temperature=2.0, mu=0.5, where=where)
    loss, metrics = losses.distillation_loss(s_bad, t_BC, labels, **kw)
    _assert_close(loss, 0.6 * ce.mean() + 0.4 * kd.mean())
    _assert_close(metrics["kd"], kd.mean())
    _assert_close(metrics["ce"], ce.mean())
    _assert_close(metrics["w_head"], w_head.mean())
    loss_fn = lambda x: losses.distillation_loss(x, t_BC, labels, **kw)[0]
    grad = np.asarray(jax.jit(jax.grad(loss_fn))(s_bad))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, 1], 0.0)


def test_distillation_loss_sequence_where(snn_batch):
    """LLM-style [batch, length, vocab] logits with a padding mask: mean over valid tokens."""
    s, t, valid = _padded_batch("nan")
    labels = np.random.default_rng(8).integers(0, 7, size=(2, 5)).astype(np.int32)
    loss, metrics = losses.distillation_loss(
        s, t, labels, method="fkl", alpha=0.5, temperature=1.0, where=valid
    )
    ce = ref_ce(s[valid], labels[valid])
    kd = ref_fkl(s[valid], t[valid], 1.0)
    _assert_close(loss, 0.5 * ce.mean() + 0.5 * kd.mean())
    _assert_close(metrics["kd"], kd.mean())


def test_distillation_loss_is_jittable(snn_batch):
    s_TBC, t_BC, labels = snn_batch
    fn = jax.jit(
        jax.value_and_grad(
            lambda x: losses.distillation_loss(
                x, t_BC, labels, method="hta_kl", alpha=0.5, temperature=4.0
            )[0]
        )
    )
    loss, grad = fn(s_TBC)
    eager, _ = losses.distillation_loss(
        s_TBC, t_BC, labels, method="hta_kl", alpha=0.5, temperature=4.0
    )
    _assert_close(loss, float(eager))
    assert grad.shape == s_TBC.shape and np.all(np.isfinite(np.asarray(grad)))


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

_S = np.zeros((4, 5), np.float32)
_T = np.zeros((4, 5), np.float32)
_Y = np.zeros((4,), np.int32)


@pytest.mark.parametrize(
    "call",
    (
        lambda s, t: losses.forward_kl(s, t),
        lambda s, t: losses.reverse_kl(s, t),
        lambda s, t: losses.symmetric_kl(s, t),
        lambda s, t: losses.fixed_ratio_kl(s, t, head_ratio=0.5),
        lambda s, t: losses.hta_kl(s, t),
        lambda s, t: losses.head_tail_weights(s, t),
        lambda s, t: losses.distillation_loss(s, t, _Y, method="fkl", alpha=0.5, temperature=1.0),
    ),
    ids=("fkl", "rkl", "sym", "fixed", "hta", "weights", "distill"),
)
def test_shape_mismatch_names_both_shapes(call):
    with pytest.raises(ValueError) as exc:
        call(np.zeros((4, 6), np.float32), _T)
    assert "(4, 6)" in str(exc.value) and "(4, 5)" in str(exc.value), str(exc.value)


def test_where_shape_mismatch():
    with pytest.raises(ValueError):
        losses.forward_kl(_S, _T, where=np.ones((5,), bool))


@pytest.mark.parametrize("mu", (0.0, -0.1, 1.5))
def test_mu_out_of_range(mu):
    with pytest.raises(ValueError, match="mu"):
        losses.hta_kl(_S, _T, mu=mu)
    with pytest.raises(ValueError, match="mu"):
        losses.head_tail_weights(_S, _T, mu=mu)
    with pytest.raises(ValueError, match="mu"):
        losses.distillation_loss(_S, _T, _Y, method="hta_kl", alpha=0.5, temperature=1.0, mu=mu)


@pytest.mark.parametrize("tau", (0.0, -1.0))
def test_temperature_not_positive(tau):
    for call in (
        lambda: losses.forward_kl(_S, _T, temperature=tau),
        lambda: losses.reverse_kl(_S, _T, temperature=tau),
        lambda: losses.hta_kl(_S, _T, temperature=tau),
        lambda: losses.head_tail_weights(_S, _T, temperature=tau),
        lambda: losses.distillation_loss(_S, _T, _Y, method="fkl", alpha=0.5, temperature=tau),
    ):
        with pytest.raises(ValueError, match="temperature"):
            call()


# ----------------------------------------------------------------------------------------------
# per-row statistics and the gradient by blocks of classes (what the fused loss is built from)
# ----------------------------------------------------------------------------------------------

BLOCK_METHODS = {
    "fkl": ({}, losses.forward_kl),
    "rkl": ({}, losses.reverse_kl),
    "symmetric": ({}, losses.symmetric_kl),
    "fixed_ratio": ({"head_ratio": 0.3}, functools.partial(losses.fixed_ratio_kl, head_ratio=0.3)),
    "hta_kl": ({}, functools.partial(losses.hta_kl, mu=0.5)),
}


@pytest.mark.parametrize("method", sorted(BLOCK_METHODS))
def test_row_statistics_and_block_gradients_equal_the_loss(method):
    kwargs, loss = BLOCK_METHODS[method]
    rng = np.random.default_rng(21)
    s = jnp.asarray(2 * rng.standard_normal((3, 4, 23)), jnp.float32)
    t = jnp.asarray(3 * rng.standard_normal((3, 4, 23)), jnp.float32)
    where = jnp.asarray(rng.random((3, 4)) > 0.3)
    # padding may hold anything: the statistics and gradients of valid rows must not see it
    s_pad = jnp.where(where[..., None], s, jnp.nan)
    t_pad = jnp.where(where[..., None], t, jnp.nan)
    ct = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    value, vjp = jax.vjp(lambda x: loss(x, t, temperature=2.0, where=where), s)
    (grad_ref,) = vjp(ct)
    stats = losses.row_statistics(
        s_pad, t_pad, method=method, temperature=2.0, where=where, **kwargs
    )
    np.testing.assert_allclose(stats.value, value, rtol=RTOL, atol=ATOL)
    s64, t64 = np.asarray(s, np.float64), np.asarray(t, np.float64)
    valid = np.asarray(where)
    lse = np.log(np.sum(np.exp(s64 / 2.0), axis=-1))
    np.testing.assert_allclose(np.asarray(stats.lse_s)[valid], lse[valid], rtol=RTOL)
    if method != "fkl":  # (FKL alone has no RKL term: its statistic is 0)
        rkl = ref_rkl(s64.reshape(-1, 23), t64.reshape(-1, 23), 2.0).reshape(3, 4) / 2.0**2
        np.testing.assert_allclose(np.asarray(stats.rkl)[valid], rkl[valid], rtol=RTOL)
    np.testing.assert_allclose(stats.w_fkl + stats.w_rkl, 1.0, rtol=RTOL)
    blocks = [
        losses.student_logit_grad(
            s_pad[..., a:b],
            t_pad[..., a:b],
            stats,
            ct,
            method=method,
            temperature=2.0,
            where=where,
            head_ratio=kwargs.get("head_ratio"),
        )
        for a, b in ((0, 1), (1, 9), (9, 23))
    ]
    grad = jnp.concatenate(blocks, axis=-1)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(grad, grad_ref, rtol=RTOL, atol=ATOL)


def test_row_statistics_errors():
    s = jnp.zeros((2, 5))
    with pytest.raises(ValueError, match="unknown KD method"):
        losses.row_statistics(s, s, method="ce")
    with pytest.raises(ValueError, match="head_ratio"):
        losses.row_statistics(s, s, method="fixed_ratio")
    stats = losses.row_statistics(s, s, method="fkl")
    with pytest.raises(ValueError, match="same shape"):
        losses.student_logit_grad(s, s[:, :3], stats, jnp.ones(2), method="fkl")


def test_method_and_head_ratio_errors():
    with pytest.raises(ValueError, match="method"):
        losses.distillation_loss(_S, _T, _Y, method="jsd", alpha=0.5, temperature=1.0)
    with pytest.raises(ValueError, match="head_ratio"):
        losses.distillation_loss(_S, _T, _Y, method="fixed_ratio", alpha=0.5, temperature=1.0)
    for r in (-0.1, 1.1):
        with pytest.raises(ValueError, match="head_ratio"):
            losses.fixed_ratio_kl(_S, _T, head_ratio=r)
        with pytest.raises(ValueError, match="head_ratio"):
            losses.distillation_loss(
                _S, _T, _Y, method="fixed_ratio", alpha=0.5, temperature=1.0, head_ratio=r
            )


@pytest.mark.parametrize("alpha", (-0.1, 1.5))
def test_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match="alpha"):
        losses.distillation_loss(_S, _T, _Y, method="fkl", alpha=alpha, temperature=1.0)


# ----------------------------------------------------------------------------------------------
# standalone import
# ----------------------------------------------------------------------------------------------


def test_import_is_lightweight():
    code = (
        "import sys, htakl_jax.losses\n"
        "heavy = [m for m in ('flax', 'optax', 'tensorflow', 'tensorflow_datasets') "
        "if m in sys.modules]\n"
        "assert 'jax' in sys.modules and 'numpy' in sys.modules\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"
