"""The sort-free head-set paths (threshold search, top-k) must give the sort path's weights."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import losses
from htakl_jax.losses import head_set

# float32 cumulative sums may land on either side of mu when a C_k is this close to it; the
# float64 reference then accepts every head length inside the window.
MU_WINDOW = 2e-6
ATOL = 1e-6


def _probs(kind: str, shape: tuple[int, ...], seed: int) -> tuple[jax.Array, jax.Array]:
    """(teacher p, student q) float32 probabilities [..., C] for one input family."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    t = rng.normal(size=shape).astype(np.float32)
    s = rng.normal(size=shape).astype(np.float32)
    if kind == "random":
        pass
    elif kind == "peaked":
        t[..., 7] += 12.0
    elif kind == "zipf":  # LLM-like: p ~ rank^-1.5 over a random class order
        ranks = np.argsort(rng.random(shape), axis=-1) + 1
        t = -1.5 * np.log(ranks).astype(np.float32) + 0.1 * t
    elif kind == "flat":  # head longer than the top-k candidates
        t *= 0.05
    elif kind == "equal":  # all-equal logits: one tie group of C classes
        t[:] = 0.0
    elif kind == "tied":  # a tie group of 40 at the top, straddling the head boundary
        t[..., :40] = 6.0
    elif kind == "tied_long":  # a tie group longer than the candidates, straddling it
        t[..., 100 : 100 + c // 3] = 0.3
    elif kind == "masked":  # -inf classes (probability 0) on both sides
        mask = rng.random(shape) < 0.35
        mask[..., :2] = False
        t[mask], s[mask] = -np.inf, -np.inf
    else:
        raise ValueError(kind)
    return jax.nn.softmax(jnp.asarray(t)), jax.nn.softmax(jnp.asarray(s))


def _ref_weight_range(p, q, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """float64 w_head bounds per row from the sort definition, written independently.

    Classes ranked by descending p (ties: lower index first), C_k = cumulative p / total, head =
    the first max(1, #{k : C_k <= mu}) ranks; inside MU_WINDOW both head lengths are allowed.
    Returns (smallest, largest) allowed w_head = g_head / g_total, shaped [...].
    """
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    lead, c = p.shape[:-1], p.shape[-1]
    p, q = p.reshape(-1, c), q.reshape(-1, c)
    lows, highs = [], []
    for p_row, q_row in zip(p, q, strict=True):
        order = np.lexsort((np.arange(c), -p_row))  # last key first: -p, then index
        cum = np.cumsum(p_row[order]) / np.sum(p_row)
        gaps = np.abs(p_row - q_row)[order]
        g_total = gaps.sum()
        bounds = []
        for m in (np.sum(cum <= mu - MU_WINDOW), np.sum(cum <= mu + MU_WINDOW)):
            m = max(1, int(m))
            bounds.append(gaps[:m].sum() / g_total if g_total > 0 else 0.5)
        lows.append(bounds[0])
        highs.append(bounds[1])
    return np.array(lows).reshape(lead), np.array(highs).reshape(lead)


PATHS = ("threshold", "sort", "top_k")


# One compilation per shape for every mu (traced); eager calls would compile per call.
@jax.jit
def _head_weights(p, q, mu):
    """w_head of every path in PATHS."""
    return tuple(head_set.head_tail_from_probs(p, q, mu, path=path)[0] for path in PATHS)


def _check_threshold_path(p, q, mu: float, label: str) -> None:
    w_thr, w_sort, _ = (np.asarray(w, np.float64) for w in _head_weights(p, q, mu))
    low, high = _ref_weight_range(p, q, mu)
    assert np.all(w_thr >= low - ATOL) and np.all(w_thr <= high + ATOL), label
    # Where the reference is unambiguous both float32 paths must agree with it and each other.
    clear = np.isclose(low, high, rtol=0.0, atol=1e-12)
    np.testing.assert_allclose(w_thr[clear], w_sort[clear], rtol=0.0, atol=ATOL, err_msg=label)
    np.testing.assert_allclose(w_thr[clear], low[clear], rtol=0.0, atol=ATOL, err_msg=label)


KINDS = ("random", "peaked", "zipf", "flat", "equal", "tied", "tied_long", "masked")


# 17-200: where "auto" searches on the CPU backend with at most CANDIDATES classes in all (every
# class a candidate) or just above; 1031-5000: grouped and ungrouped candidates.
@pytest.mark.parametrize("num_classes", [17, 40, 64, 65, 200, 1500, 5000])
def test_threshold_path_matches_sort_and_float64_reference(num_classes: int) -> None:
    for kind in KINDS:
        p, q = _probs(kind, (3, num_classes), seed=num_classes)
        for mu in (0.1, 0.5, 0.9, 1.0):
            _check_threshold_path(p, q, mu, f"{kind} C={num_classes} mu={mu}")


@jax.jit
def _threshold_weight_with_log_p(p, q, log_p):
    return head_set.head_tail_from_probs(p, q, 0.5, path="threshold", log_p=log_p)[0]


def test_a_given_log_p_only_places_the_first_probes() -> None:
    """The teacher's log-probabilities passed in (exact, -inf on masked classes, or wrong: they
    only place the first probes) leave the weights at the float64 reference's."""
    rng = np.random.default_rng(3)
    for kind in ("random", "zipf", "flat", "masked"):
        p, q = _probs(kind, (4, 1500), seed=4)
        low, high = _ref_weight_range(p, q, 0.5)
        for name, log_p in (
            ("exact", jnp.log(p)),
            ("zeros", jnp.zeros_like(p)),
            ("noise", jnp.asarray(10 * rng.standard_normal(p.shape), jnp.float32)),
        ):
            w_head = np.asarray(_threshold_weight_with_log_p(p, q, log_p), np.float64)
            label = f"{kind}, log_p {name}"
            assert np.all(w_head >= low - ATOL) and np.all(w_head <= high + ATOL), label


def test_threshold_path_with_ungrouped_candidates() -> None:
    # A prime class count has no divisor to group the candidates by: plain lax.top_k.
    assert head_set.group_width(1031, head_set.CANDIDATES) == 1
    for kind in ("random", "tied", "equal"):
        p, q = _probs(kind, (3, 1031), seed=6)
        _check_threshold_path(p, q, 0.5, f"{kind} C=1031")


def test_refining_the_open_rows_gathered_equals_refining_all_rows() -> None:
    # 31 log-normal rows, which the first pass settles, and one with a tie group of 40 at the top
    # (far from log-normal), which it does not.
    p_easy, _ = _probs("random", (32, 1500), seed=7)
    p_hard, _ = _probs("tied", (1, 1500), seed=7)
    p = p_easy.at[5].set(p_hard[0])
    total, mu = jnp.sum(p, axis=-1), jnp.float32(0.9)
    bracket = head_set.first_pass(p, total, mu, jnp.zeros(32, bool))
    assert 0 < int(jnp.sum(~bracket[-1])) <= 32 // 16
    gathered = jax.jit(functools.partial(head_set.refine_open_rows, 32 // 16))(
        p, total, mu, bracket
    )
    everywhere = jax.jit(head_set.refine_all)(p, total, mu, bracket)
    for a, b in zip(gathered, everywhere, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert bool(jnp.all(gathered[-1]))


def test_threshold_path_on_1d_and_sequence_shapes() -> None:
    weights = jax.jit(lambda p, q: head_set.head_tail_from_probs(p, q, 0.5, path="threshold")[0])
    for shape, kind in (((2, 3, 1500), "random"), ((1500,), "flat")):
        p, q = _probs(kind, shape, seed=1)
        w_head = np.asarray(weights(p, q), np.float64)
        assert w_head.shape == shape[:-1]
        low, high = _ref_weight_range(p, q, 0.5)
        assert np.all(w_head >= low - ATOL) and np.all(w_head <= high + ATOL), shape


def _exact_probs(groups: list[tuple[int, float]], num_classes: int) -> jax.Array:
    """[3, C] probabilities (3 equal rows) from (count, value) groups, exactly representable."""
    p = np.zeros(num_classes, np.float32)
    start = 0
    for count, value in groups:
        p[start : start + count] = value
        start += count
    assert p.sum() == 1.0
    return jnp.asarray(np.tile(p, (3, 1)))


@pytest.mark.parametrize(
    ("groups", "mu", "head_len"),
    [
        ([(4, 0.25)], 0.5, 2),  # C_2 = 0.5 exactly on mu: included
        ([(4, 0.25)], 0.74, 2),
        ([(4, 0.25)], 0.2, 1),  # no C_k <= mu: the top-1 class alone
        ([(1024, 1 / 1024)], 0.5, 512),  # one tie group far longer than the candidates
        ([(1024, 1 / 1024)], 0.1, 102),
        ([(8, 1 / 16), (256, 1 / 512)], 0.75, 8 + 128),  # long tie group below other classes
    ],
)
def test_exact_ties_take_lower_indices_first(groups, mu, head_len) -> None:
    # Dyadic p and q make every sum exact, so the weights must be equal, not just close.
    c = 1500
    p = _exact_probs(groups, c)
    q = jnp.zeros((3, c)).at[:, 3].set(0.5).at[:, c - 1].set(0.5)
    gaps = np.abs(np.asarray(p[0], np.float64) - np.asarray(q[0], np.float64))
    # head = the first head_len classes by index; both sums are exact in float32
    expected = np.float32(gaps[:head_len].sum()) / np.float32(gaps.sum())
    for path, w_head in zip(PATHS, _head_weights(p, q, mu), strict=True):
        assert np.all(np.asarray(w_head) == expected), (path, groups, mu)


def test_tie_branch_only_for_rows_that_need_it_and_never_for_padding() -> None:
    p_equal, q = _probs("equal", (3, 1500), seed=4)
    p_random, _ = _probs("random", (3, 1500), seed=4)
    p = jnp.concatenate([p_random[:2], p_equal[2:]])
    branches = jax.jit(lambda p, q, valid: head_set.head_gap_threshold_parts(p, q, 0.5, valid)[2:])
    tie, rest = branches(p, q, jnp.array([True, True, True]))
    assert np.asarray(tie).tolist() == [False, False, True] and not np.any(rest)
    # Padded positions hold all-equal probabilities (their logits are zeroed): no branch.
    tie, rest = branches(p, q, jnp.array([True, True, False]))
    assert not np.any(tie) and not np.any(rest)


def test_auto_uses_the_threshold_path_above_the_sort_limit(monkeypatch) -> None:
    calls = []

    def spy(p, q, mu, valid=None, log_p=None):
        calls.append(p.shape[-1])
        return jnp.zeros(p.shape[:-1])

    monkeypatch.setattr(head_set, "head_gap_threshold", spy)
    limit = head_set.sort_max_classes()
    for c in (limit, limit + 1):
        p = jnp.full((2, c), 1.0 / c)
        head_set.head_tail_from_probs(p, p, 0.5)
    assert calls == [limit + 1]


def test_sort_max_classes_per_backend() -> None:
    assert head_set.sort_max_classes("cpu") == head_set.SORT_MAX_CLASSES_CPU == 16
    assert head_set.sort_max_classes("gpu") == head_set.sort_max_classes("tpu") == 1024
    assert head_set.sort_max_classes() == head_set.sort_max_classes(jax.default_backend())
    # CIFAR-10's 10 classes sort everywhere; 100 and 1,000 classes search on the CPU backend.
    assert head_set.resolve_path("auto", 10) == "sort"
    expected = "threshold" if jax.default_backend() == "cpu" else "sort"
    assert head_set.resolve_path("auto", 100) == expected


def test_hta_kl_gradients_do_not_flow_through_the_weights() -> None:
    rng = np.random.default_rng(5)
    s = jnp.asarray(rng.normal(size=(3, 1500)).astype(np.float32))
    t = jnp.asarray(2.0 * rng.normal(size=(3, 1500)).astype(np.float32))
    tau, mu = 2.0, 0.5

    def fixed_weights(s_, t_):
        # Weights from the sort path, held constant: the gradient the threshold path must give.
        log_p = jax.nn.log_softmax(t_ / tau)
        log_q = jax.nn.log_softmax(s_ / tau)
        p, q = jnp.exp(log_p), jnp.exp(log_q)
        w_head, w_tail = head_set.head_tail_from_probs(
            jax.lax.stop_gradient(p), jax.lax.stop_gradient(q), mu, path="sort"
        )
        fkl = jnp.sum(p * (log_p - log_q), axis=-1)
        rkl = jnp.sum(q * (log_q - log_p), axis=-1)
        return jnp.sum(tau**2 * (w_head * fkl + w_tail * rkl))

    def ours(s_, t_):
        return jnp.sum(losses.hta_kl(s_, t_, temperature=tau, mu=mu))

    got = jax.jit(jax.grad(ours, argnums=(0, 1)))(s, t)
    want = jax.jit(jax.grad(fixed_weights, argnums=(0, 1)))(s, t)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["random", "peaked", "flat", "tied"])
@pytest.mark.parametrize("mu", [0.05, 0.5, 1.0])
def test_top_k_path_equals_sort_path(kind: str, mu: float) -> None:
    p, q = _probs(kind, (3, 1500), seed=3)
    _, w_sort, w_top = _head_weights(p, q, mu)
    np.testing.assert_allclose(np.asarray(w_top), np.asarray(w_sort), rtol=1e-6, atol=1e-7)


def test_tied_head_boundary_takes_lower_indices_first() -> None:
    # 40 tied classes of mass 1/40 each: mu = 0.26 puts exactly the 10 lowest-indexed in the head
    # (C_10 = 0.25, C_11 = 0.275; mu sits between them, away from float rounding).
    c = 1500
    t = jnp.full((3, c), -jnp.inf).at[:, :40].set(0.0)
    p = jax.nn.softmax(t)
    q = jnp.zeros((3, c)).at[:, 0].set(1.0)
    # head gaps: class 0: |1/40 - 1|, classes 1..9: 1/40 each; total: 39/40 + 39/40.
    expected = (39 / 40 + 9 / 40) / (2 * 39 / 40)
    for path, w_head in zip(PATHS, _head_weights(p, q, 0.26), strict=True):
        np.testing.assert_allclose(np.asarray(w_head), expected, rtol=1e-6, err_msg=path)


def test_padded_rows_are_zero_and_do_not_change_valid_rows() -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 4, 1100)).astype(np.float32)
    t[..., 3] += 15.0
    s = rng.normal(size=t.shape).astype(np.float32)
    where = np.array([[True, True, False, False], [True, False, False, False]])
    hta = jax.jit(lambda a, b, w: losses.hta_kl(a, b, where=w))
    out, full = hta(s, t, where), hta(s, t, np.ones_like(where))
    np.testing.assert_allclose(np.asarray(out)[where], np.asarray(full)[where], rtol=1e-6)
    assert np.all(np.asarray(out)[~where] == 0.0)


def test_unknown_path_is_rejected() -> None:
    p = jnp.ones((1, 3)) / 3
    with pytest.raises(ValueError, match="head-set path"):
        head_set.head_tail_from_probs(p, p, 0.5, path="bisect")
