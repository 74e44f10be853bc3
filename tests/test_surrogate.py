"""Surrogate spike functions: Heaviside forward, formula backward, JAX transformations, hashing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import surrogate

FACTORIES = {
    "sigmoid": surrogate.sigmoid,
    "atan": surrogate.atan,
    "rectangle": surrogate.rectangle,
    "triangle": surrogate.triangle,
    "superspike": surrogate.superspike,
}

# (factory name, alpha, x, expected derivative): hand-computed from docs/method.md §2.
_SIG4 = 1 / (1 + math.exp(-2.0))  # sig(4 * 0.5)
HAND_VALUES = [
    ("sigmoid", 4.0, 0.0, 1.0),
    ("sigmoid", 4.0, 0.5, 4 * _SIG4 * (1 - _SIG4)),
    ("sigmoid", 4.0, -0.5, 4 * _SIG4 * (1 - _SIG4)),
    ("sigmoid", 1.0, 0.0, 0.25),
    ("atan", 2.0, 0.0, 1.0),
    ("atan", 2.0, 0.5, 1 / (1 + (math.pi / 2) ** 2)),
    ("atan", 1.0, -1.0, 0.5 / (1 + (math.pi / 2) ** 2)),
    ("rectangle", 1.0, 0.0, 1.0),
    ("rectangle", 1.0, 0.49, 1.0),
    ("rectangle", 1.0, -0.49, 1.0),
    ("rectangle", 1.0, 0.5, 0.0),
    ("rectangle", 1.0, 0.75, 0.0),
    ("rectangle", 0.5, 0.2, 2.0),
    ("rectangle", 0.5, 0.3, 0.0),
    ("triangle", 1.0, 0.0, 1.0),
    ("triangle", 1.0, 0.25, 0.75),
    ("triangle", 1.0, -0.25, 0.75),
    ("triangle", 1.0, 1.5, 0.0),
    ("triangle", 2.0, 1.0, 0.25),
    ("superspike", 10.0, 0.0, 1.0),
    ("superspike", 10.0, 0.1, 0.25),
    ("superspike", 10.0, -0.1, 0.25),
    ("superspike", 1.0, 1.0, 0.25),
]


@pytest.mark.parametrize("name,alpha,x,expected", HAND_VALUES)
def test_backward_matches_hand_values(name, alpha, x, expected):
    spike = FACTORIES[name](alpha)
    np.testing.assert_allclose(float(spike.grad(jnp.float32(x))), expected, rtol=1e-6, atol=1e-7)
    # The custom_vjp backward is the same derivative.
    g = jax.grad(lambda v: spike(v))(jnp.float32(x))
    np.testing.assert_allclose(float(g), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_forward_is_heaviside_with_h0_equal_1(name, dtype):
    spike = FACTORIES[name]()
    tiny = np.finfo(np.float32).tiny
    x = jnp.asarray([-3.0, -1e-6, -tiny, -0.0, 0.0, tiny, 1e-6, 2.0], dtype)
    y = spike(x)
    assert y.dtype == dtype
    assert y.shape == x.shape
    expected = (np.asarray(x, np.float32) >= 0).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(y, np.float32), expected)
    # -0.0 >= 0 is True in IEEE: both zeros spike.
    assert float(y[3]) == 1.0 and float(y[4]) == 1.0


@pytest.mark.parametrize("name", FACTORIES)
def test_grad_is_elementwise_surrogate_and_nonnegative(name):
    spike = FACTORIES[name]()
    x = jnp.linspace(-2.0, 2.0, 41)
    g = jax.grad(lambda v: jnp.sum(spike(v) * jnp.arange(41.0)))(x)
    np.testing.assert_allclose(g, spike.grad(x) * jnp.arange(41.0), rtol=1e-6)
    assert np.all(np.asarray(spike.grad(x)) >= 0)
    assert g.dtype == x.dtype


@pytest.mark.parametrize("name", FACTORIES)
def test_surrogate_area(name):
    # sigmoid/atan/rectangle/triangle are derivatives of a smooth 0 -> 1 step (unit area);
    # superspike is normalised to height 1 at 0 instead, so its area is 2 / alpha.
    spike = FACTORIES[name]()
    expected = 2 / spike.alpha if name == "superspike" else 1.0
    x = np.linspace(-2000.0, 2000.0, 4_000_001)  # far out: the atan/superspike tails are heavy
    area = np.trapezoid(np.asarray(spike.grad(jnp.asarray(x, jnp.float32)), np.float64), x)
    np.testing.assert_allclose(area, expected, atol=2e-3)


def test_sigmoid_finite_at_large_inputs():
    spike = surrogate.sigmoid(4.0)
    x = jnp.asarray([-1e4, 1e4, -1e30, 1e30], jnp.float32)
    g = jax.grad(lambda v: jnp.sum(spike(v)))(x)
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(g, 0.0)
    np.testing.assert_array_equal(spike(x), [0.0, 1.0, 0.0, 1.0])


def test_compose_with_jit_vmap_grad_scan():
    spike = surrogate.atan()
    x = jax.random.normal(jax.random.key(0), (3, 4))

    per_row = jax.vmap(jax.grad(lambda r: jnp.sum(spike(r) * r)))
    expected = spike(x) + x * spike.grad(x)  # product rule with the surrogate
    np.testing.assert_allclose(jax.jit(per_row)(x), expected, rtol=1e-6)

    def scanned(xs):
        def step(c, xi):
            s = spike(xi + c)
            return c + s, s

        return jnp.sum(jax.lax.scan(step, jnp.zeros(4), xs)[1])

    g = jax.jit(jax.grad(scanned))(x)
    # Hand reverse-mode for the scan: c_t = sum_{k<t} s_k, s_t = H(x_t + c_t).
    xn = np.asarray(x, np.float64)
    c = np.zeros(4)
    pre = []
    for t in range(3):
        pre.append(xn[t] + c)
        c = c + (pre[-1] >= 0)
    d = [np.asarray(spike.grad(jnp.asarray(p, jnp.float32)), np.float64) for p in pre]
    dc = np.zeros(4)  # dL/dc_{t+1}
    gx = np.zeros_like(xn)
    for t in reversed(range(3)):
        ds = 1.0 + dc  # s_t feeds the loss and c_{t+1}
        gx[t] = ds * d[t]
        dc = dc + gx[t]  # c_t feeds c_{t+1} directly and through x_t + c_t
    np.testing.assert_allclose(g, gx, rtol=1e-5)


def test_equal_surrogates_hash_equal_and_do_not_retrace():
    assert surrogate.sigmoid(4.0) == surrogate.sigmoid(4)
    assert hash(surrogate.sigmoid(4.0)) == hash(surrogate.sigmoid(4))
    assert surrogate.sigmoid(4.0) != surrogate.sigmoid(2.0)
    assert surrogate.sigmoid(1.0) != surrogate.rectangle(1.0)

    traces = []

    def f(spike, x):
        traces.append(spike)
        return jnp.sum(spike(x))

    jf = jax.jit(jax.grad(f, argnums=1), static_argnums=0)
    x = jnp.ones(3)
    jf(surrogate.triangle(1.0), x)
    jf(surrogate.triangle(1.0), x)
    assert len(traces) == 1
    jf(surrogate.triangle(2.0), x)
    assert len(traces) == 2


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_alpha_raises(name, alpha):
    with pytest.raises(ValueError, match="alpha"):
        FACTORIES[name](alpha)


def test_integer_input_raises():
    with pytest.raises(ValueError, match="floating"):
        surrogate.sigmoid()(jnp.arange(3))
