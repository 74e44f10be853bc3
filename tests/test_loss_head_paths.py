"""The sort-free (top-k) head-set path must give the weights of the sort-based reference path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import losses


def _probs(kind: str, shape: tuple[int, int], seed: int) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    t = rng.normal(size=shape).astype(np.float32)
    if kind == "peaked":
        t[:, 7] += 12.0
    elif kind == "flat":  # head longer than the top-k candidates: exercises the fallback
        t *= 0.05
    elif kind == "tied":  # ties that straddle the head boundary
        t[:, :40] = 6.0
    s = rng.normal(size=shape).astype(np.float32)
    return jax.nn.softmax(jnp.asarray(t)), jax.nn.softmax(jnp.asarray(s))


@pytest.mark.parametrize("kind", ["random", "peaked", "flat", "tied"])
@pytest.mark.parametrize("mu", [0.05, 0.5, 1.0])
def test_top_k_path_equals_sort_path(kind: str, mu: float) -> None:
    p, q = _probs(kind, (16, 1500), seed=3)
    w_sort, _ = losses._head_tail_from_probs(p, q, mu, path="sort")
    w_top, _ = losses._head_tail_from_probs(p, q, mu, path="top_k")
    np.testing.assert_allclose(np.asarray(w_top), np.asarray(w_sort), rtol=1e-6, atol=1e-7)


def test_tied_head_boundary_takes_lower_indices_first() -> None:
    # 40 tied classes of mass 1/40 each: mu = 0.26 puts exactly the 10 lowest-indexed in the head
    # (C_10 = 0.25, C_11 = 0.275; mu sits between them, away from float rounding).
    c = 1200
    t = jnp.full((1, c), -jnp.inf).at[0, :40].set(0.0)
    p = jax.nn.softmax(t)
    q = jnp.zeros((1, c)).at[0, 0].set(1.0)
    for path in ("sort", "top_k"):
        w_head, _ = losses._head_tail_from_probs(p, q, 0.26, path=path)
        # head gaps: class 0: |1/40 - 1|, classes 1..9: 1/40 each; total: 39/40 + 39/40.
        expected = (39 / 40 + 9 / 40) / (2 * 39 / 40)
        np.testing.assert_allclose(float(w_head[0]), expected, rtol=1e-6)


def test_padded_rows_do_not_force_the_fallback_and_are_zero() -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 4, 1100)).astype(np.float32)
    t[..., 3] += 15.0
    s = rng.normal(size=t.shape).astype(np.float32)
    where = np.array([[True, True, False, False], [True, False, False, False]])
    out = jax.jit(lambda a, b: losses.hta_kl(a, b, where=where))(s, t)
    full = losses.hta_kl(s, t)
    np.testing.assert_allclose(np.asarray(out)[where], np.asarray(full)[where], rtol=1e-6)
    assert np.all(np.asarray(out)[~where] == 0.0)


def test_unknown_path_is_rejected() -> None:
    p = jnp.ones((1, 3)) / 3
    with pytest.raises(ValueError, match="head-set path"):
        losses._head_tail_from_probs(p, p, 0.5, path="bisect")
