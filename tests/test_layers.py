"""Tests for htakl_jax.layers: time folding, direct encoding, BN conventions, ANN/SNN activation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import layers
from htakl_jax.neurons import lif


def conv_ref(x_NHWC, k_HWIO, stride, pad):
    """float64 loop reference of a bias-free 2-D convolution with symmetric zero padding."""
    x = np.pad(np.asarray(x_NHWC, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = np.asarray(k_HWIO, np.float64)
    kh, kw, _, f = k.shape
    n, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, ho, wo, f))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwcf->nf", patch, k)
    return out


def test_fold_unfold_roundtrip_and_order():
    x = jnp.arange(3 * 2 * 5).reshape(3, 2, 5)
    f = layers.fold_time(x)
    assert f.shape == (6, 5)
    # time-major: row t * B + b holds x[t, b]
    np.testing.assert_array_equal(f[1 * 2 + 1], x[1, 1])
    np.testing.assert_array_equal(layers.unfold_time(f, 3), x)


def test_fold_unfold_errors():
    with pytest.raises(ValueError, match="timesteps=4"):
        layers.unfold_time(jnp.zeros((6, 2)), 4)
    with pytest.raises(ValueError, match="rank"):
        layers.fold_time(jnp.zeros((3,)))
    with pytest.raises(ValueError, match="timesteps"):
        layers.repeat_over_time(jnp.zeros((2, 3)), 0)


def test_repeat_over_time_equals_stacked_copies():
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(layers.repeat_over_time(x, 3), jnp.concatenate([x, x, x]))


def test_scale_width():
    assert layers.scale_width(128, 0.0625) == 8
    assert layers.scale_width(64, 0.001) == 1
    assert layers.scale_width(512, 1.0) == 512


def test_pools_keep_tiny_maps_valid_and_exclude_padding():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    # 'SAME' 2x2/2 on 3x3: windows {0,1,3,4}, {2,5}, {6,7}, {8}; padding excluded from the mean.
    np.testing.assert_allclose(layers.avg_pool2(x)[0, :, :, 0], [[2.0, 3.5], [6.5, 8.0]])
    np.testing.assert_allclose(layers.max_pool2(x)[0, :, :, 0], [[4.0, 5.0], [7.0, 8.0]])
    one = jnp.full((2, 1, 1, 3), 0.5)
    np.testing.assert_array_equal(layers.avg_pool2(one), one)
    np.testing.assert_array_equal(layers.max_pool2(one), one)
    np.testing.assert_array_equal(layers.global_avg_pool(x), [[4.0]])


def test_invalid_neuron_kwargs_raise():
    with pytest.raises(ValueError, match="unknown neuron kwargs"):
        layers.LayerFactory(spiking=True, neuron_kwargs=(("taus", 2.0),))


class _Conv(nn.Module):
    ops: layers.LayerFactory
    strides: int

    @nn.compact
    def __call__(self, x):
        return self.ops.conv(3, 3, self.strides)(x)


@pytest.mark.parametrize("strides", [1, 2])
def test_conv_is_symmetric_padded_and_bias_free(strides):
    x = jax.random.normal(jax.random.key(1), (2, 5, 6, 2))
    mod = _Conv(layers.LayerFactory(spiking=False), strides)
    # abstract init for the tree (compiling random initialisers is slow on CPU), NumPy values
    abstract = jax.eval_shape(mod.init, jax.random.key(2), x)
    assert jax.tree.map(lambda a: a.shape, abstract) == {
        "params": {"Conv_0": {"kernel": (3, 3, 2, 3)}}
    }
    kernel = np.random.default_rng(strides).normal(size=(3, 3, 2, 3)).astype(np.float32)
    variables = {"params": {"Conv_0": {"kernel": kernel}}}
    y = mod.apply(variables, x)
    ref = conv_ref(x, variables["params"]["Conv_0"]["kernel"], strides, 1)
    assert y.shape == ref.shape == (2, -(-5 // strides), -(-6 // strides), 3)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def _bn_ref(y, mean, var, scale, bias):
    return (y - mean) / np.sqrt(var + layers.BN_EPSILON) * scale + bias


@pytest.fixture(scope="module")
def encoder_case():
    x = np.asarray(jax.random.normal(jax.random.key(3), (2, 4, 4, 3)))
    enc_ann = layers.DirectEncoder(layers.LayerFactory(spiking=False), features=4)
    enc_snn = layers.DirectEncoder(layers.LayerFactory(spiking=True), features=4)
    abstract = jax.eval_shape(lambda: enc_ann.init(jax.random.key(4), x, train=False, timesteps=1))
    assert abstract["params"]["conv"]["kernel"].shape == (3, 3, 3, 4)
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32)
    # non-trivial affine and running stats so eval mode is distinguishable from train mode
    variables = {
        "params": {
            "conv": {"kernel": kernel},
            "bn": {"scale": jnp.full(4, 1.5), "bias": jnp.full(4, 0.25)},
        },
        "batch_stats": {"bn": {"mean": jnp.arange(4.0) / 10, "var": jnp.arange(1.0, 5.0)}},
    }
    return x, enc_ann, enc_snn, variables


def test_encoder_train_mode_hand_computation(encoder_case):
    x, enc, _, variables = encoder_case
    y, state = enc.apply(variables, x, train=True, timesteps=1, mutable=["batch_stats"])
    conv = conv_ref(x, variables["params"]["conv"]["kernel"], 1, 1)
    mean, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, _bn_ref(conv, mean, var, 1.5, 0.25), rtol=1e-4, atol=1e-4)
    old = variables["batch_stats"]["bn"]
    new = state["batch_stats"]["bn"]
    np.testing.assert_allclose(new["mean"], 0.9 * np.asarray(old["mean"]) + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * np.asarray(old["var"]) + 0.1 * var, rtol=1e-5)


def test_encoder_eval_mode_uses_running_averages(encoder_case):
    x, enc, _, variables = encoder_case
    y = enc.apply(variables, x, train=False, timesteps=1)
    conv = conv_ref(x, variables["params"]["conv"]["kernel"], 1, 1)
    bs = variables["batch_stats"]["bn"]
    ref = _bn_ref(conv, np.asarray(bs["mean"]), np.asarray(bs["var"]), 1.5, 0.25)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # eval output of one example does not depend on the rest of the batch
    np.testing.assert_allclose(
        enc.apply(variables, x[:1], train=False, timesteps=1), y[:1], rtol=1e-6
    )


@pytest.mark.parametrize("train", [True, False])
def test_direct_encoding_equals_folded_conv_on_repeated_image(encoder_case, train):
    """Conv+BN once and repeat == conv+BN on T copies folded into the batch (outputs and stats)."""
    x, enc_ann, enc_snn, variables = encoder_case
    t = 3
    y_snn, s_snn = enc_snn.apply(variables, x, train=train, timesteps=t, mutable=["batch_stats"])
    # naive path: the ANN encoder (no repetition) fed the image T times, time folded
    x_rep = np.concatenate([x] * t)
    y_naive, s_naive = enc_ann.apply(
        variables, x_rep, train=train, timesteps=1, mutable=["batch_stats"]
    )
    assert y_snn.shape == (t * 2, 4, 4, 4)
    np.testing.assert_allclose(y_snn, y_naive, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s_snn, s_naive
    )


class _Act(nn.Module):
    ops: layers.LayerFactory

    @nn.compact
    def __call__(self, x, timesteps):
        return self.ops.act(x, timesteps, "my_act")


def test_act_is_relu_for_ann_and_lif_over_time_for_snn():
    t, b = 3, 2
    # ~1.6 input: a tau=3 LIF first spikes at t=2 (a tau=2 one at t=1, a per-row T=1 one never)
    x_TB = 1.6 + 0.05 * jax.random.normal(jax.random.key(5), (t, b, 4))
    x_N = layers.fold_time(x_TB)
    ann = _Act(layers.LayerFactory(spiking=False))
    np.testing.assert_array_equal(ann.apply({}, x_N, t), np.maximum(x_N, 0))

    snn = _Act(layers.LayerFactory(spiking=True, neuron_kwargs=(("tau", 3.0),)))
    y, state = snn.apply({}, x_N, t, mutable=["intermediates"])
    expected = lif(x_TB, tau=3.0)
    np.testing.assert_array_equal(layers.unfold_time(y, t), expected)
    # the LIF is scanned over time, not over the folded batch: differs from a T=1 LIF per row
    assert not np.array_equal(y, layers.fold_time(lif(x_N[None], tau=3.0)))
    (count,) = state["intermediates"]["my_act"]["spike_count"]
    assert count == float(np.sum(expected)) > 0


# ---- convolutions as matmuls on small images ---------------------------------------------------
# On the CPU backend, convs over at most layers.IM2COL_MAX_PIXELS pixels with at least
# IM2COL_MIN_CHANNELS channels run as one matmul over im2col patches (XLA:CPU's own kernels for
# some of their gradients ran at ~2 GFLOP/s).

CONV_CASES = [  # (H, W, kernel, stride, pad)
    (2, 2, 3, 1, 1),
    (4, 4, 3, 2, 1),
    (3, 5, 3, 1, 1),
    (4, 4, 1, 2, 0),
    (4, 4, 3, 1, 0),
]


@pytest.mark.parametrize("h, w, k, stride, pad", CONV_CASES)
def test_im2col_conv_matches_the_float64_loop_and_xla_gradients(h, w, k, stride, pad):
    rng = np.random.default_rng(h * 10 + w + k + stride)
    x = jnp.asarray(rng.normal(size=(3, h, w, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 4, 5)), jnp.float32)
    padding = ((pad, pad), (pad, pad))
    y = layers.im2col_conv(x, kernel, (stride, stride), padding)
    np.testing.assert_allclose(y, conv_ref(x, kernel, stride, pad), rtol=1e-5, atol=1e-5)

    def xla(x, kernel):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), padding, dimension_numbers=dims
        )

    cotangent = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    grads = jax.vjp(lambda *a: layers.im2col_conv(*a, (stride, stride), padding), x, kernel)[1]
    for ours, theirs in zip(grads(cotangent), jax.vjp(xla, x, kernel)[1](cotangent), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_im2col_conv_keeps_half_precision_and_accumulates_in_float32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 2, 2, 64)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 64, 8)), jnp.bfloat16)
    y = layers.im2col_conv(x, kernel, (1, 1), ((1, 1), (1, 1)))
    assert y.dtype == jnp.bfloat16
    ref = conv_ref(np.asarray(x, np.float32), np.asarray(kernel, np.float32), 1, 1)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=1e-2, atol=1e-1)


def _primitives(fn, *args) -> set[str]:
    return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).eqns}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the matmul form is CPU-only")
def test_small_images_convolve_as_matmuls_on_cpu_and_larger_ones_as_convolutions():
    channels = layers.IM2COL_MIN_CHANNELS
    cases = [(4, channels, True), (5, channels, False), (4, channels - 1, False)]
    for size, channels, matmul in cases:  # 16 pixels: matmul; 25 or fewer channels: XLA conv
        kernel = jnp.zeros((3, 3, channels, 3))
        x = jnp.zeros((2, size, size, channels))
        for max_pixels, expect in ((layers.IM2COL_MAX_PIXELS, matmul), (0, False)):
            mod = _Conv(layers.LayerFactory(spiking=False, im2col_max_pixels=max_pixels), 1)
            names = _primitives(
                functools.partial(mod.apply, {"params": {"Conv_0": {"kernel": kernel}}}), x
            )
            assert ("conv_general_dilated" not in names) == expect, (size, max_pixels, names)
            assert ("dot_general" in names) == expect, (size, max_pixels, names)


def test_remat_policy_saves_matmul_convolution_outputs(capsys):
    from htakl_jax.models import remat

    x, kernel = jnp.ones((2, 2, 2, 3)), jnp.ones((3, 3, 3, 4))

    def unit(x, kernel):
        return jnp.sum(nn.relu(layers.im2col_conv(x, kernel, (1, 1), ((1, 1), (1, 1)))))

    for policy, saved in ((remat.save_conv_outputs, True), (None, False)):
        jax.ad_checkpoint.print_saved_residuals(jax.checkpoint(unit, policy=policy), x, kernel)
        residuals = capsys.readouterr().out
        assert ("f32[2,2,2,4] named 'conv_output'" in residuals) == saved, residuals
