"""LIF / IF neurons against an independent float64 NumPy loop (forward and hand BPTT)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import neurons, surrogate
from htakl_jax.neurons import lif_autodiff, neuron_config

SHAPE = (4, 3, 5)  # [T, B, N]; T <= neurons.MAX_UNROLLED_T: the fully unrolled scans
LOOP_SHAPE = (neurons.MAX_UNROLLED_T + 3, 3, 5)  # long enough to run as lax.scan loops
SURROGATES = {
    "sigmoid": surrogate.sigmoid(4.0),
    "atan": surrogate.atan(2.0),
    "rectangle": surrogate.rectangle(1.0),
    "triangle": surrogate.triangle(1.0),
    "superspike": surrogate.superspike(10.0),
}
RESETS = {"hard0": 0.0, "hard_neg": -0.3, "soft": None}
V_TH = 1.0
# Offsets from threshold where some surrogate derivative is discontinuous or kinked (0 is the spike
# itself); inputs are nudged away from these so float32 and float64 make the same decisions.
_SENSITIVE = np.array([0.0, 0.25, -0.25, 0.5, -0.5, 1.0, -1.0])
_MARGIN = 2e-3


# ----------------------------------------------------------------------------------------------
# Independent float64 reference.


def _charge(v, x, tau, v_reset, decay_input):
    vr = 0.0 if v_reset is None else v_reset
    if tau is None:
        return v + x
    if decay_input:
        return v + (x - (v - vr)) / tau
    return v - (v - vr) / tau + x


def ref_forward(x, *, tau, v_reset, decay_input):
    """float64 loop: returns spikes, post-reset v, pre-spike h, each [T, ...]."""
    x = np.asarray(x, np.float64)
    v = np.full(x.shape[1:], 0.0 if v_reset is None else v_reset)
    s_all, v_all, h_all = [], [], []
    for t in range(x.shape[0]):
        h = _charge(v, x[t], tau, v_reset, decay_input)
        s = (h >= V_TH).astype(np.float64)
        v = h - V_TH * s if v_reset is None else h * (1 - s) + v_reset * s
        s_all.append(s)
        v_all.append(v)
        h_all.append(h)
    return np.stack(s_all), np.stack(v_all), np.stack(h_all)


def ref_input_grad(h, gs, gv, *, tau, v_reset, decay_input, detach_reset, sg):
    """Hand BPTT in float64: dL/dx for L = sum(gs * s) + sum(gv * v); sg(u) = surrogate'(u)."""
    # dh[t]/dv[t-1] and dh[t]/dx[t] for each charge equation.
    if tau is None:
        dh_dv, dh_dx = 1.0, 1.0
    else:
        dh_dv, dh_dx = 1.0 - 1.0 / tau, (1.0 / tau if decay_input else 1.0)
    gx = np.zeros_like(h)
    dv_from_future = np.zeros(h.shape[1:])
    for t in reversed(range(h.shape[0])):
        s = (h[t] >= V_TH).astype(np.float64)
        d_spike = sg(h[t] - V_TH)
        dL_dv = gv[t] + dv_from_future
        if v_reset is None:  # v = h - V_TH * s
            dv_dh_direct, dv_ds = 1.0, -V_TH
        else:  # v = h * (1 - s) + v_reset * s
            dv_dh_direct, dv_ds = 1.0 - s, v_reset - h[t]
        dL_ds = gs[t] + (0.0 if detach_reset else dL_dv * dv_ds)
        dL_dh = dL_dv * dv_dh_direct + dL_ds * d_spike
        gx[t] = dL_dh * dh_dx
        dv_from_future = dL_dh * dh_dv
    return gx


# Surrogate derivatives written out again in NumPy float64 (docs/method.md §2).
NP_SURROGATE_GRADS = {
    "sigmoid": lambda u: 4.0 / (1 + np.exp(-4.0 * u)) * (1 - 1 / (1 + np.exp(-4.0 * u))),
    "atan": lambda u: 1.0 / (1 + (np.pi / 2 * 2.0 * u) ** 2),
    "rectangle": lambda u: (np.abs(u) < 0.5).astype(np.float64),
    "triangle": lambda u: np.maximum(0.0, 1.0 - np.abs(u)),
    "superspike": lambda u: 1.0 / (1 + 10.0 * np.abs(u)) ** 2,
}


def make_inputs(seed, *, tau, v_reset, decay_input, shape=SHAPE):
    """float32 x [T, B, N] whose float64 pre-spike membranes stay _MARGIN away from _SENSITIVE."""
    rng = np.random.default_rng(seed)
    scale = 1.0 if (decay_input and tau is not None) else 0.6
    x = rng.normal(0.9 * scale * (2 if decay_input and tau else 1), scale, shape)
    x = x.astype(np.float32)
    dh_dx = 1.0 / tau if (tau is not None and decay_input) else 1.0
    for t in range(shape[0]):
        for _ in range(20):
            _, _, h = ref_forward(x[: t + 1], tau=tau, v_reset=v_reset, decay_input=decay_input)
            close = np.min(np.abs(h[t][..., None] - V_TH - _SENSITIVE), axis=-1) < _MARGIN
            if not close.any():
                break
            x[t] = np.where(close, x[t] + np.float32(3 * _MARGIN / dh_dx), x[t])
        else:
            raise AssertionError("could not move inputs away from the threshold")
    return x


# ----------------------------------------------------------------------------------------------
# Compiled functions shared across parametrizations (one compile per neuron configuration).


def _fused_and_autodiff(tau, v_reset, decay_input, detach_reset, spike, remat):
    """Outputs and input VJPs of the fused path (with/without membrane) and the autodiff path."""
    kw = dict(v_reset=v_reset, detach_reset=detach_reset, surrogate_fn=spike, remat=remat)
    if tau is None:
        fused = functools.partial(neurons.if_neuron, **kw)
    else:
        fused = functools.partial(neurons.lif, tau=tau, decay_input=decay_input, **kw)
    cfg = neuron_config(
        tau=tau,
        v_threshold=V_TH,
        v_reset=v_reset,
        decay_input=decay_input,
        detach_reset=detach_reset,
        surrogate_fn=spike,
    )

    def run(x, gs, gv):
        (s, v), vjp_m = jax.vjp(lambda x: fused(x, return_membrane=True), x)
        s_only, vjp_s = jax.vjp(fused, x)
        (s_a, v_a), vjp_a = jax.vjp(
            lambda x: lif_autodiff(cfg, x, with_membrane=True, remat=remat), x
        )
        return dict(
            s=s,
            v=v,
            s_only=s_only,
            g_membrane=vjp_m((gs, gv))[0],
            g_spikes=vjp_s(gs)[0],
            s_auto=s_a,
            v_auto=v_a,
            g_auto=vjp_a((gs, gv))[0],
        )

    return run


@functools.cache
def _outputs(tau, v_reset, decay_input, detach_reset, seed, remat=False, shape=SHAPE):
    """Inputs, cotangents and per-surrogate outputs; one compile for all surrogates (2 cores)."""
    x = make_inputs(seed, tau=tau, v_reset=v_reset, decay_input=decay_input, shape=shape)
    rng = np.random.default_rng(seed + 100)
    gs = rng.normal(size=shape).astype(np.float32)
    gv = rng.normal(size=shape).astype(np.float32)
    runs = {
        name: _fused_and_autodiff(tau, v_reset, decay_input, detach_reset, spike, remat)
        for name, spike in SURROGATES.items()
    }
    out = jax.jit(lambda *a: {name: run(*a) for name, run in runs.items()})(x, gs, gv)
    return x, gs, gv, jax.tree.map(np.asarray, out)


def _check_against_reference(
    tau, v_reset, decay_input, detach_reset, surrogate_name, seed=0, shape=SHAPE
):
    x, gs, gv, all_out = _outputs(tau, v_reset, decay_input, detach_reset, seed, shape=shape)
    out = all_out[surrogate_name]
    s_ref, v_ref, h_ref = ref_forward(x, tau=tau, v_reset=v_reset, decay_input=decay_input)
    # The inputs must exercise both branches for the comparison to mean anything.
    assert 0 < s_ref.mean() < 1, s_ref.mean()
    assert out["s"].dtype == jnp.float32
    np.testing.assert_array_equal(out["s"], s_ref)
    np.testing.assert_array_equal(out["s_only"], s_ref)
    np.testing.assert_allclose(out["v"], v_ref, rtol=1e-6, atol=1e-6)

    ref_kw = dict(
        tau=tau,
        v_reset=v_reset,
        decay_input=decay_input,
        detach_reset=detach_reset,
        sg=NP_SURROGATE_GRADS[surrogate_name],
    )
    g_ref_m = ref_input_grad(h_ref, gs, gv, **ref_kw)
    g_ref_s = ref_input_grad(h_ref, gs, np.zeros_like(gv), **ref_kw)
    scale_m, scale_s = np.abs(g_ref_m).max(), np.abs(g_ref_s).max()
    np.testing.assert_allclose(out["g_membrane"], g_ref_m, rtol=1e-5, atol=1e-6 * scale_m)
    np.testing.assert_allclose(out["g_spikes"], g_ref_s, rtol=1e-5, atol=1e-6 * scale_s)

    # Fused custom_vjp == autodiff through the scan.
    np.testing.assert_array_equal(out["s_auto"], out["s"])
    np.testing.assert_array_equal(out["v_auto"], out["v"])
    np.testing.assert_allclose(out["g_auto"], out["g_membrane"], rtol=1e-5, atol=1e-6 * scale_m)


@pytest.mark.parametrize("surrogate_name", list(SURROGATES))
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("reset", list(RESETS))
@pytest.mark.parametrize("decay_input", [True, False], ids=["decay_input", "no_decay_input"])
def test_lif_matches_float64_reference(decay_input, reset, detach_reset, surrogate_name):
    _check_against_reference(2.0, RESETS[reset], decay_input, detach_reset, surrogate_name)


@pytest.mark.parametrize("surrogate_name", list(SURROGATES))
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("reset", list(RESETS))
def test_if_matches_float64_reference(reset, detach_reset, surrogate_name):
    _check_against_reference(None, RESETS[reset], True, detach_reset, surrogate_name, seed=1)


@pytest.mark.parametrize("surrogate_name", ["sigmoid", "rectangle"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("reset", list(RESETS))
def test_scan_loop_path_matches_float64_reference(reset, detach_reset, surrogate_name):
    """Sequences longer than MAX_UNROLLED_T run as scan loops, not the unrolled fused pass."""
    v_reset = RESETS[reset]
    _check_against_reference(
        2.0, v_reset, True, detach_reset, surrogate_name, seed=3, shape=LOOP_SHAPE
    )


def test_unrolled_and_loop_paths_are_both_taken():
    def lowered(shape):
        grad = jax.jit(jax.grad(lambda x: jnp.sum(neurons.lif(x))))
        return grad.lower(jnp.ones(shape)).as_text()

    assert "while" not in lowered(SHAPE)
    assert "while" in lowered(LOOP_SHAPE)


def test_lif_other_tau_matches_reference():
    _check_against_reference(4.0, 0.0, True, False, "sigmoid", seed=2)


def test_remat_gives_equal_gradients():
    v_reset = RESETS["hard_neg"]
    plain = _outputs(2.0, v_reset, True, False, seed=0)[3]
    remat = _outputs(2.0, v_reset, True, False, seed=0, remat=True)[3]
    for name in SURROGATES:
        for key in plain[name]:
            # Recomputation may fuse differently: gradients equal to float32 rounding.
            tol = dict(rtol=1e-6, atol=1e-7) if key.startswith("g_") else dict(rtol=0, atol=0)
            np.testing.assert_allclose(remat[name][key], plain[name][key], err_msg=key, **tol)


def test_saved_residual_is_one_sequence_array():
    x = jnp.asarray(make_inputs(4, tau=2.0, v_reset=0.0, decay_input=True))
    h_ref = ref_forward(x, tau=2.0, v_reset=0.0, decay_input=True)[2]
    for remat, expected in [(False, h_ref), (True, np.asarray(x))]:
        _, vjp_fn = jax.vjp(lambda x, remat=remat: neurons.lif(x, remat=remat), x)
        leaves = [leaf for leaf in jax.tree.leaves(vjp_fn) if hasattr(leaf, "shape")]
        assert len(leaves) == 1, [leaf.shape for leaf in leaves]
        assert leaves[0].shape == SHAPE and leaves[0].dtype == jnp.float32
        # Non-remat saves the pre-spike membrane h; remat saves only (a reference to) x.
        np.testing.assert_allclose(leaves[0], expected, rtol=1e-6, atol=1e-6)


def test_jit_vmap_grad_compose():
    x = jnp.asarray(make_inputs(5, tau=2.0, v_reset=0.0, decay_input=True))
    w = jax.random.normal(jax.random.key(0), SHAPE)
    loss = lambda x: jnp.sum(neurons.lif(x) * w)
    g_full = jax.jit(jax.grad(loss))(x)
    # vmap over the batch axis (1) of per-example losses must give the same gradient.
    per_example = jax.vmap(
        jax.grad(lambda xb, wb: jnp.sum(neurons.lif(xb) * wb)), in_axes=(1, 1), out_axes=1
    )
    np.testing.assert_allclose(jax.jit(per_example)(x, w), g_full, rtol=1e-6, atol=1e-7)
    assert np.any(np.asarray(g_full) != 0)


@pytest.mark.parametrize("remat", [False, True])
def test_inside_shard_map_matches_single_device(remat):
    # The scan carries must take x's varying-axes type under shard_map (checked vma).
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    n = len(jax.devices())
    x = jax.random.normal(jax.random.key(0), (4, 2 * n, 3)) + 1.0
    w = jnp.arange(3.0)
    loss = lambda x: jnp.sum(neurons.lif(x, v_reset=None, remat=remat, return_membrane=True)[1] * w)
    mesh = jax.make_mesh((n,), ("data",))
    sharded = jax.shard_map(
        jax.grad(loss), mesh=mesh, in_specs=P(None, "data"), out_specs=P(None, "data")
    )
    x_sharded = jax.device_put(x, NamedSharding(mesh, P(None, "data")))
    np.testing.assert_allclose(jax.jit(sharded)(x_sharded), jax.grad(loss)(x), rtol=1e-6)


def test_bf16_and_one_dim_inputs():
    x = jnp.linspace(0.0, 3.0, 8).reshape(4, 2)
    s = neurons.lif(x.astype(jnp.bfloat16))
    assert s.dtype == jnp.bfloat16 and s.shape == (4, 2)
    g = jax.grad(lambda x: jnp.sum(neurons.lif(x)))(x.astype(jnp.bfloat16))
    assert g.dtype == jnp.bfloat16
    s1 = neurons.lif(jnp.asarray([0.5, 1.5, 2.5]))  # [T] only
    np.testing.assert_array_equal(
        s1,
        ref_forward(np.array([[0.5], [1.5], [2.5]]), tau=2.0, v_reset=0.0, decay_input=True)[0][
            :, 0
        ],
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tau=0.5), "tau"),
        (dict(tau=float("nan")), "tau"),
        (dict(v_reset=1.0), "v_reset"),
        (dict(v_threshold=float("inf")), "v_threshold"),
        (dict(surrogate_fn=3), "surrogate_fn"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        neurons.lif(jnp.ones((2, 3)), **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="x_seq"):
        neurons.lif(jnp.float32(1.0))
    with pytest.raises(ValueError, match="x_seq"):
        neurons.lif(jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match="floating"):
        neurons.lif(jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="tau"):
        jax.jit(lambda x, tau: neurons.lif(x, tau=tau))(jnp.ones((2, 3)), 2.0)


# ----------------------------------------------------------------------------------------------
# Flax modules.


@pytest.mark.parametrize("module_cls", [neurons.LIF, neurons.IF])
def test_module_matches_function_and_sows_counts(module_cls):
    x = jnp.asarray(make_inputs(6, tau=2.0, v_reset=None, decay_input=True)).reshape(4, 3, 5, 1)
    kwargs = dict(v_reset=None, surrogate=surrogate.superspike(), detach_reset=True)
    module = module_cls(**kwargs)
    variables = module.init(jax.random.key(0), x)
    assert jax.tree.leaves(variables) == []  # no parameters or state

    fn = neurons.lif if module_cls is neurons.LIF else neurons.if_neuron
    expected = fn(x, v_reset=None, surrogate_fn=surrogate.superspike(), detach_reset=True)
    np.testing.assert_array_equal(module.apply(variables, x), expected)

    spikes, state = module.apply(variables, x, mutable=["intermediates"])
    inter = state["intermediates"]
    np.testing.assert_array_equal(spikes, expected)
    (spike_count,) = inter["spike_count"]
    (neuron_count,) = inter["neuron_count"]
    (num_neurons,) = inter["num_neurons"]
    assert float(spike_count) == float(np.sum(np.asarray(expected)))
    assert float(neuron_count) == 4 * 3 * 5 * 1
    assert num_neurons == 5
    assert 0 < float(spike_count) / float(neuron_count) < 1


def test_module_inside_model_gradients_and_counts():
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x_TBD):
            y = nn.Dense(6)(x_TBD)
            y = neurons.LIF(tau=2.0, remat=True)(y)
            return neurons.LIF(v_reset=None)(nn.Dense(4)(y))

    x = jax.random.normal(jax.random.key(1), (2, 3, 5)) * 2 + 1
    model = Tiny()
    params = model.init(jax.random.key(2), x)["params"]
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) * 0.5)))(params)
    assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))
    out, state = jax.jit(lambda p: model.apply({"params": p}, x, mutable=["intermediates"]))(params)
    inter = state["intermediates"]
    assert set(inter) == {"LIF_0", "LIF_1"}
    assert float(inter["LIF_0"]["neuron_count"][0]) == 2 * 3 * 6
    assert int(inter["LIF_0"]["num_neurons"][0]) == 6
    assert float(inter["LIF_1"]["neuron_count"][0]) == 2 * 3 * 4
    assert float(inter["LIF_1"]["spike_count"][0]) == float(jnp.sum(out))


def test_module_rejects_inputs_without_batch_axis():
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        neurons.LIF().init(jax.random.key(0), jnp.ones((4,)))
