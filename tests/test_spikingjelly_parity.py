"""Parity with the peer implementation: SpikingJelly ``LIFNode`` / ``IFNode`` in multi-step mode.

Skipped unless SpikingJelly (and torch) are installed:
``pip install torch==2.13.0 loguru && pip install --no-deps spikingjelly``.

Surrogate correspondence (ours -> SpikingJelly 2.0), each checked below:

- ``sigmoid(a)``   == ``Sigmoid(alpha=a)``
- ``atan(a)``      == ``ATan(alpha=a)``
- ``rectangle(a)`` == ``Rect(alpha=1/a)`` (SpikingJelly parametrises by height, we by width)
- ``triangle(a)``  == ``PiecewiseQuadratic(alpha=1/a)`` (same: height vs half-width)
- ``superspike(a)`` = ``1 / (1 + a|x|)^2`` differs from SpikingJelly's ``SuperSpike(alpha)`` =
  ``alpha / (1 + |x|)^2``: they agree only at ``a = alpha = 1``. Ours equals SpikingJelly's
  ``SoftSign(alpha=a)`` times ``2 / a``, i.e. exactly ``SoftSign`` at ``a = 2``. Our default
  ``superspike(10)`` has no SpikingJelly counterpart, so it is checked against the NumPy
  reference in test_neurons.py only.
"""

import functools

import jax
import numpy as np
import pytest

from htakl_jax import neurons, surrogate
from tests.test_neurons import SHAPE, make_inputs

torch = pytest.importorskip("torch")
sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

# name -> (ours, SpikingJelly factory with the matching parameter)
PAIRS = {
    "sigmoid4": (surrogate.sigmoid(4.0), lambda: sj_surrogate.Sigmoid(alpha=4.0)),
    "atan2": (surrogate.atan(2.0), lambda: sj_surrogate.ATan(alpha=2.0)),
    "rectangle1": (surrogate.rectangle(1.0), lambda: sj_surrogate.Rect(alpha=1.0)),
    "rectangle0.5": (surrogate.rectangle(0.5), lambda: sj_surrogate.Rect(alpha=2.0)),
    "triangle1": (surrogate.triangle(1.0), lambda: sj_surrogate.PiecewiseQuadratic(alpha=1.0)),
    "triangle0.5": (
        surrogate.triangle(0.5),
        lambda: sj_surrogate.PiecewiseQuadratic(alpha=2.0),
    ),
    "superspike1": (surrogate.superspike(1.0), lambda: sj_surrogate.SuperSpike(alpha=1.0)),
    "superspike2": (surrogate.superspike(2.0), lambda: sj_surrogate.SoftSign(alpha=2.0)),
}
RESETS = {"hard0": 0.0, "hard_neg": -0.3, "soft": None}


@functools.cache
def _ours(tau, v_reset, decay_input, detach_reset, seed):
    """Inputs, cotangents and our (spikes, v, dx) for every surrogate: one compile per config."""
    x = make_inputs(seed, tau=tau, v_reset=v_reset, decay_input=decay_input)
    rng = np.random.default_rng(seed + 7)
    gs = rng.normal(size=SHAPE).astype(np.float32)
    gv = rng.normal(size=SHAPE).astype(np.float32)

    def run_one(spike, x, gs, gv):
        kw = dict(v_reset=v_reset, detach_reset=detach_reset, surrogate_fn=spike)
        if tau is None:
            fn = functools.partial(neurons.if_neuron, return_membrane=True, **kw)
        else:
            fn = functools.partial(
                neurons.lif, tau=tau, decay_input=decay_input, return_membrane=True, **kw
            )
        (s, v), vjp = jax.vjp(fn, x)
        return s, v, vjp((gs, gv))[0]

    run = jax.jit(lambda *a: {n: run_one(ours, *a) for n, (ours, _) in PAIRS.items()})
    return x, gs, gv, jax.tree.map(np.asarray, run(x, gs, gv))


def _theirs(x, gs, gv, tau, v_reset, decay_input, detach_reset, name):
    kw = dict(
        v_threshold=1.0,
        v_reset=v_reset,
        surrogate_function=PAIRS[name][1](),
        detach_reset=detach_reset,
        step_mode="m",
        store_v_seq=True,
    )
    if tau is None:
        node = sj_neuron.IFNode(**kw)
    else:
        node = sj_neuron.LIFNode(tau=tau, decay_input=decay_input, **kw)
    x_t = torch.tensor(x, requires_grad=True)
    s = node(x_t)
    loss = (s * torch.tensor(gs)).sum() + (node.v_seq * torch.tensor(gv)).sum()
    loss.backward()
    return s.detach().numpy(), node.v_seq.detach().numpy(), x_t.grad.numpy()


def _check(tau, reset, decay_input, detach_reset, name, seed):
    v_reset = RESETS[reset]
    x, gs, gv, ours = _ours(tau, v_reset, decay_input, detach_reset, seed)
    s, v, g = ours[name]
    s_sj, v_sj, g_sj = _theirs(x, gs, gv, tau, v_reset, decay_input, detach_reset, name)
    assert 0 < s_sj.mean() < 1
    np.testing.assert_array_equal(s, s_sj)
    np.testing.assert_allclose(v, v_sj, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g, g_sj, rtol=1e-5, atol=1e-6 * np.abs(g_sj).max())


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("reset", list(RESETS))
@pytest.mark.parametrize("decay_input", [True, False], ids=["decay_input", "no_decay_input"])
def test_lif_matches_spikingjelly(decay_input, reset, detach_reset, name):
    _check(2.0, reset, decay_input, detach_reset, name, seed=10)


@pytest.mark.parametrize("name", ["atan2", "rectangle1"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("reset", list(RESETS))
def test_if_matches_spikingjelly(reset, detach_reset, name):
    _check(None, reset, True, detach_reset, name, seed=11)


def test_lif_tau4_matches_spikingjelly():
    _check(4.0, "hard0", True, False, "sigmoid4", seed=12)
