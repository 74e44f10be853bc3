"""The baselines' losses (htakl_jax.feature_losses, losses.wsld) against docs/method.md §7
and NumPy / hand-computed references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import feature_losses as fl
from htakl_jax import losses


def _maps(seed: int, shape=(2, 3, 4, 5)) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(k1, shape), jax.nn.relu(jax.random.normal(k2, shape))


# ----------------------------------------------------------------------------- sum / B


def test_feature_mse_sum_matches_numpy_on_a_toy():
    s = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    t = np.array([[0.0, 2.0, 5.0], [1.0, 1.0, 0.5]])
    # sum of squares: (1 + 0 + 4) + (1 + 4 + 0) = 10, over B = 2
    assert float(fl.feature_mse_sum(jnp.asarray(s), jnp.asarray(t))) == pytest.approx(5.0)
    assert float(fl.feature_mse_sum(jnp.asarray(s), jnp.asarray(s))) == 0.0
    with pytest.raises(ValueError, match=r"student \(2, 3\) and teacher \(3, 2\)"):
        fl.feature_mse_sum(jnp.zeros((2, 3)), jnp.zeros((3, 2)))


def test_no_gradient_reaches_the_teacher():
    s, t = _maps(0)
    for loss in (fl.feature_mse_sum, fl.attention_transfer_loss):
        g_s, g_t = jax.grad(loss, argnums=(0, 1))(s, t)
        assert np.any(np.asarray(g_s) != 0) and np.all(np.asarray(g_t) == 0), loss.__name__


# ----------------------------------------------------------------------------- attention transfer


def _attention_reference(f: np.ndarray) -> np.ndarray:
    a = (f.astype(np.float64) ** 2).mean(-1).reshape(f.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def test_attention_transfer_properties():
    s, t = (np.asarray(x) for x in _maps(1))
    got = float(fl.attention_transfer_loss(jnp.asarray(s), jnp.asarray(t)))
    want = np.mean((_attention_reference(s) - _attention_reference(t)) ** 2)
    assert got == pytest.approx(want, rel=1e-5)
    assert float(fl.attention_transfer_loss(jnp.asarray(s), jnp.asarray(s))) == 0.0
    # invariant to scaling either map by c > 0
    assert float(fl.attention_transfer_loss(jnp.asarray(3.0 * s), jnp.asarray(0.1 * t))) == (
        pytest.approx(got, rel=1e-5)
    )
    # unit-norm rows differ by at most 2 in squared norm: mean over H*W positions <= 2 / (H*W)
    h, w = s.shape[1:3]
    one_hot_a = np.zeros_like(s)
    one_hot_a[:, 0, 0] = 1.0
    one_hot_b = np.zeros_like(s)
    one_hot_b[:, -1, -1] = 1.0
    worst = float(fl.attention_transfer_loss(jnp.asarray(one_hot_a), jnp.asarray(one_hot_b)))
    assert worst == pytest.approx(2.0 / (h * w)) and got <= 2.0 / (h * w)


def test_attention_map_of_a_silent_map_is_zero():
    assert np.all(np.asarray(fl.attention_map(jnp.zeros((1, 2, 2, 3)))) == 0.0)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        fl.attention_map(jnp.zeros((2, 3)))


# ----------------------------------------------------------------------------- BKDSNN mask


def test_channel_mask_properties():
    shape = (4, 3, 3, 8)
    key = jax.random.key(0)
    assert np.all(np.asarray(fl.channel_mask(key, shape, 0.0)) == 1.0)
    assert np.all(np.asarray(fl.channel_mask(key, shape, 1.0)) == 0.0)
    m = np.asarray(fl.channel_mask(key, shape, 0.15))
    assert m.shape == (4, 1, 1, 8) and set(np.unique(m)) <= {0.0, 1.0}  # constant over H, W
    big = np.asarray(fl.channel_mask(jax.random.key(1), (1000, 1, 1, 100), 0.15))
    assert abs((big == 0).mean() - 0.15) < 0.01  # 1e5 draws
    np.testing.assert_array_equal(
        np.asarray(fl.channel_mask(key, shape, 0.5)), np.asarray(fl.channel_mask(key, shape, 0.5))
    )
    assert not np.array_equal(
        np.asarray(fl.channel_mask(key, shape, 0.5)),
        np.asarray(fl.channel_mask(jax.random.key(2), shape, 0.5)),
    )
    with pytest.raises(ValueError, match="mask_ratio"):
        fl.channel_mask(key, shape, 1.5)


# ----------------------------------------------------------------------------- WSLD


def test_wsld_weight_value_and_gradient():
    s = jax.random.normal(jax.random.key(3), (6, 10))
    t = 2.0 * jax.random.normal(jax.random.key(4), (6, 10))
    y = jnp.arange(6) % 10
    tau = 2.0
    got = np.asarray(losses.wsld(s, t, y, temperature=tau), np.float64)
    # float64 reference
    s64, t64, y64 = (np.asarray(x, np.float64) for x in (s, t, y))

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p = np.exp(log_softmax(t64 / tau))
    soft = -(p * log_softmax(s64 / tau)).sum(-1)
    rows = np.arange(6)
    ce_s = -log_softmax(s64)[rows, y64.astype(int)]
    ce_t = -log_softmax(t64)[rows, y64.astype(int)]
    w = 1 - np.exp(-np.maximum(ce_s / (ce_t + 1e-7), 0))
    assert np.all((0 <= w) & (w < 1))
    np.testing.assert_allclose(got, tau**2 * w * soft, rtol=1e-5)
    # The gradient is w * the FKL gradient (the cross-entropy form differs by a constant).
    g = jax.grad(lambda z: jnp.sum(losses.wsld(z, t, y, temperature=tau)))(s)
    g_fkl = jax.grad(lambda z: jnp.sum(losses.forward_kl(z, t, temperature=tau) * w))(s)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_fkl), rtol=1e-4, atol=1e-7)
    assert np.all(np.asarray(jax.grad(lambda u: jnp.sum(losses.wsld(s, u, y)))(t)) == 0)


def test_wsld_weight_vanishes_when_the_student_fits_far_better():
    y = jnp.array([0])
    teacher = jnp.array([[0.0, 3.0, 0.0]])  # wrong: large hard-label CE
    student = jnp.array([[30.0, 0.0, 0.0]])  # right: CE ~ 0
    assert float(losses.wsld(student, teacher, y)[0]) < 1e-6
    assert float(losses.wsld(student, teacher, y, where=jnp.array([False]))[0]) == 0.0
