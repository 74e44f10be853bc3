"""Tests for htakl_jax.models: shapes, ANN/SNN parameter parity, BN modes, direct encoding, grads,
timesteps override, features, spike-count intermediates, cross-device BatchNorm, block remat.

Shape and tree tests only trace (jax.eval_shape); real forward passes use one tiny ResNet-19
(width 1/16, 8x8 images, batch 2, T=2) whose jitted functions are shared.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from htakl_jax import defaults, layers, neurons, parallel
from htakl_jax.layers import BN_MOMENTUM
from htakl_jax.models import MODELS, get_model

NAMES = sorted(MODELS)
WIDTH = 0.0625
T = 2
B = 2
C = 5
# LIF layers per topology, counted by hand from the definitions:
# resnet19: stem + 8 blocks x 2 + fc1; resnet20: 3 stem convs + 8 blocks x 2; vgg16: 13 convs + 2
# hidden FCs; SEW: stem + blocks x 2 + one per downsampling shortcut (3).
NUM_LIF = {"resnet19": 18, "resnet20": 19, "vgg16": 15, "sew_resnet18": 20, "sew_resnet34": 36}
FEATURES = {
    "resnet19": 256,
    "resnet20": 512,
    "vgg16": 512,
    "sew_resnet18": 512,
    "sew_resnet34": 512,
}


def tiny(name, spiking, **kw):
    return get_model(name, num_classes=C, spiking=spiking, timesteps=T, width_mult=WIDTH, **kw)


@functools.cache
def traced(name, spiking, hw, **kw):
    """Abstract ``init_with_output(..., return_features=True)``: ((logits, features), variables);
    ``mutable=True`` so that the variables include the sown 'intermediates'."""
    model = tiny(name, spiking, **kw)
    x = jax.ShapeDtypeStruct((B, hw, hw, 3), jnp.float32)
    return jax.eval_shape(
        lambda x: model.init_with_output(
            jax.random.key(0), x, train=False, return_features=True, mutable=True
        ),
        x,
    )


def variable_shapes(name, spiking, hw):
    _, variables = traced(name, spiking, hw)
    return {
        k: jax.tree.map(lambda a: (a.shape, a.dtype), variables[k])
        for k in ("params", "batch_stats")
    }


@pytest.mark.parametrize("hw", [8, 32, 64])
@pytest.mark.parametrize("name", NAMES)
def test_output_and_feature_shapes(name, hw):
    d = layers.scale_width(FEATURES[name], WIDTH)
    for spiking, lead in ((False, (B,)), (True, (T, B))):
        (logits, feats), _ = traced(name, spiking, hw)
        assert logits.shape == lead + (C,) and logits.dtype == jnp.float32
        assert feats.shape == lead + (d,)


@pytest.mark.parametrize("name", NAMES)
def test_ann_and_snn_have_identical_variable_trees(name):
    ann = variable_shapes(name, False, 8)
    assert ann == variable_shapes(name, True, 8)
    # and at another resolution the tree is the same (global pooling, no flatten)
    assert ann == variable_shapes(name, False, 64) == variable_shapes(name, True, 64)


@pytest.mark.parametrize("name", NAMES)
def test_intermediates_have_a_spike_count_per_lif(name):
    _, snn_vars = traced(name, True, 8)
    counts = jax.tree_util.tree_leaves_with_path(snn_vars["intermediates"])
    assert sum(p[-2].key == "spike_count" for p, _ in counts) == NUM_LIF[name]
    _, ann_vars = traced(name, False, 8)
    assert "intermediates" not in ann_vars
    assert set(ann_vars) == {"params", "batch_stats"}


def test_full_width_resnet19_classifier_shapes():
    variables = jax.eval_shape(
        lambda: get_model("resnet19", num_classes=100, spiking=True).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )
    )
    params = variables["params"]
    assert params["stem"]["conv"]["kernel"].shape == (3, 3, 3, 128)
    assert params["fc1"]["kernel"].shape == (512, 256)
    assert params["head"]["kernel"].shape == (256, 100)
    assert "bias" not in params["stage2_block0"]["conv1"]
    assert params["stage2_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 128, 256)


def test_get_model_validates_arguments():
    with pytest.raises(ValueError, match="valid names.*resnet19"):
        get_model("resnet18", num_classes=10, spiking=False)
    with pytest.raises(ValueError, match="unknown neuron kwargs"):
        get_model("resnet20", num_classes=10, spiking=True, threshold=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet20", num_classes=0, spiking=True)
    with pytest.raises(ValueError, match="timesteps"):
        get_model("resnet20", num_classes=10, spiking=True, timesteps=0)
    model = tiny("resnet20", True)
    with pytest.raises(ValueError, match="x_BHWC"):
        model.init(jax.random.key(0), jnp.zeros((8, 8, 3)), train=False)


# ---- real computation (tiny widths, 8x8, T=2), compiled functions shared ----------------------
# Variables are filled with NumPy (He-normal kernels, unit BN) instead of compiling model.init: on
# CPU the compile of threefry initialisers costs far more than the model itself. v_threshold=0.5 (a
# forwarded neuron kwarg) and dense kernels at twice the He scale (the classifier LIFs have no BN)
# keep every LIF of these tiny untrained nets firing, so no layer is trivially silent.
V_TH = 0.5


def numpy_variables(model, x, seed=0):
    abstract = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, a):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(a.shape[:-1])) * (2.0 if a.ndim == 2 else 1.0)
            return jnp.asarray(rng.normal(size=a.shape) * std, a.dtype)
        return (jnp.ones if name in ("scale", "var") else jnp.zeros)(a.shape, a.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def conv3x3(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.fixture(scope="module")
def snn():
    """Tiny spiking ResNet-19 and two jitted entry points (eval with everything, train)."""
    model = tiny("resnet19", True, v_threshold=V_TH)
    x = jax.random.normal(jax.random.key(1), (B, 8, 8, 3))
    x_other = x.at[1].set(jax.random.normal(jax.random.key(2), (8, 8, 3)))  # example 0 unchanged
    variables = numpy_variables(model, x)

    @functools.partial(jax.jit, static_argnames="timesteps")
    def evaluate(variables, x, timesteps=None):
        (logits, feats), state = model.apply(
            variables,
            x,
            train=False,
            timesteps=timesteps,
            return_features=True,
            mutable=["intermediates"],
        )
        return logits, feats, state["intermediates"]

    labels = jnp.arange(B) % C

    @jax.jit
    def train(variables, x):
        """(logits, {'batch_stats': ...}) and the gradient of a CE loss w.r.t. the params."""

        def loss(params):
            logits, state = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return cross_entropy(logits, labels), (logits, state)

        grads, out = jax.grad(loss, has_aux=True)(variables["params"])
        return out, grads

    # running averages set to this batch's statistics, so eval mode sees well-scaled inputs (with
    # the initial mean 0 / var 1 the tiny net is silent in eval mode)
    (_, state), _ = train(variables, x)
    stats = jax.tree.map(
        lambda new, old: (new - BN_MOMENTUM * old) / (1 - BN_MOMENTUM),
        state["batch_stats"],
        variables["batch_stats"],
    )
    calibrated = {"params": variables["params"], "batch_stats": stats}
    return model, x, x_other, variables, calibrated, evaluate, train


def test_train_mode_updates_batch_stats_and_eval_mode_uses_them(snn):
    _, x, x_other, variables, calibrated, evaluate, train = snn
    (logits, state), _ = train(variables, x)
    assert logits.shape == (T, B, C)
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))
    # stem BN: new running stats = 0.9 * (0, 1) + 0.1 * batch (mean, biased var) of the stem conv
    stem_conv = np.asarray(conv3x3(x, variables["params"]["stem"]["conv"]["kernel"]), np.float64)
    stem_stats = state["batch_stats"]["stem"]["bn"]
    want_mean = 0.1 * stem_conv.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(stem_stats["mean"], want_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        stem_stats["var"], 0.9 + 0.1 * stem_conv.var(axis=(0, 1, 2)), rtol=1e-4
    )
    # eval mode normalises with running averages: example 0 ignores the rest of the batch ...
    y = evaluate(calibrated, x)[0]
    np.testing.assert_array_equal(y[:, 0], evaluate(calibrated, x_other)[0][:, 0])
    assert np.any(y[:, 0] != 0)
    # ... train mode uses batch statistics: changing example 1 changes example 0's logits
    assert not np.allclose(train(variables, x_other)[0][0][:, 0], logits[:, 0], atol=1e-4)


def test_direct_encoding_equals_feeding_the_image_every_step(snn):
    """Swap the stem for the naive path (image repeated T times, folded, conv+BN on T*B rows)."""
    model, x, _, variables, calibrated, evaluate, train = snn

    def naive_stem(next_fun, args, kwargs, context):
        if not isinstance(context.module, layers.DirectEncoder):
            return next_fun(*args, **kwargs)
        p = context.module.variables["params"]
        x_rep = jnp.concatenate([args[0]] * kwargs["timesteps"])  # [T*B, H, W, 3]
        y = conv3x3(x_rep, p["conv"]["kernel"])
        if kwargs["train"]:
            mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
        else:
            stats = context.module.variables["batch_stats"]["bn"]
            mean, var = stats["mean"], stats["var"]
        return (y - mean) / jnp.sqrt(var + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]

    @jax.jit
    def naive(variables, x):
        with nn.intercept_methods(naive_stem):
            train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return train_logits, model.apply(variables, x, train=False)

    naive_train, naive_eval = naive(calibrated, x)
    np.testing.assert_allclose(train(calibrated, x)[0][0], naive_train, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(evaluate(calibrated, x)[0], naive_eval, rtol=1e-5, atol=1e-5)
    assert np.any(naive_train != 0) and np.any(naive_eval != 0)


def test_timesteps_override_is_causal(snn):
    model, x, _, _, calibrated, evaluate, _ = snn
    y2, y3 = evaluate(calibrated, x)[0], evaluate(calibrated, x, timesteps=3)[0]
    assert y2.shape == (2, B, C) and y3.shape == (3, B, C)
    # eval BN is per element and the LIF is causal: the first 2 steps of a T=3 run are the T=2 run
    np.testing.assert_allclose(y3[:2], y2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(y3[2], y3[1])
    with pytest.raises(ValueError, match="timesteps"):
        model.apply(calibrated, x, train=False, timesteps=0)


def test_features_feed_the_head_and_spike_counts_match(snn):
    _, x, _, _, calibrated, evaluate, _ = snn
    logits, feats, inter = evaluate(calibrated, x)
    assert feats.shape == (T, B, layers.scale_width(256, WIDTH))
    # resnet19's features are the spikes of the fc1 LIF; the head is applied per timestep
    assert set(np.unique(np.asarray(feats))) == {0.0, 1.0}
    head = calibrated["params"]["head"]
    np.testing.assert_allclose(logits, feats @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    assert inter["fc1_act"]["spike_count"] == (jnp.sum(feats),)
    assert inter["stem_act"]["neuron_count"] == (T * B * 8 * 8 * layers.scale_width(128, WIDTH),)
    counts = [c for p, c in jax.tree_util.tree_leaves_with_path(inter) if "spike_count" in str(p)]
    assert len(counts) == NUM_LIF["resnet19"] and all(c > 0 for c in counts)


def cross_entropy(logits_TBC, labels):
    """CE of the time-averaged logits (the student's prediction)."""
    log_p = jax.nn.log_softmax(logits_TBC.mean(axis=0))
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))


def assert_all_nonzero(grads):
    nonzero = {
        jax.tree_util.keystr(p): bool(jnp.any(g != 0))
        for p, g in jax.tree_util.tree_leaves_with_path(grads)
    }
    assert all(nonzero.values()), [k for k, v in nonzero.items() if not v]


def test_gradient_reaches_every_parameter_resnet19(snn):
    _, x, _, variables, _, _, train = snn
    assert_all_nonzero(train(variables, x)[1])


def test_bf16_compute_keeps_float32_params_and_logits():
    (logits, feats), variables = traced("resnet20", True, 8, dtype=jnp.bfloat16)
    params_and_stats = [variables["params"], variables["batch_stats"]]
    assert {a.dtype for a in jax.tree.leaves(params_and_stats)} == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32 and feats.dtype == jnp.bfloat16


def test_sharded_batch_norm_equals_single_device():
    """Under shard_map with bn_axis_name, BN statistics are those of the global batch."""
    n_dev = 4
    mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("data",))
    local = tiny("resnet20", True, v_threshold=V_TH)
    sharded = tiny("resnet20", True, v_threshold=V_TH, bn_axis_name="data")
    x = jax.random.normal(jax.random.key(5), (n_dev, 8, 8, 3))
    variables = numpy_variables(local, x, seed=2)

    def step(model, v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])

    want_logits, want_state = jax.jit(functools.partial(step, local))(variables, x)
    got_logits, got_state = jax.jit(
        jax.shard_map(
            functools.partial(step, sharded),
            mesh=mesh,
            in_specs=(P(), P("data")),
            out_specs=(P(None, "data"), P()),
        )
    )(variables, x)
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got_state, want_state
    )
    # without the axis name each device would normalise its own example: different logits
    assert np.any(want_logits != 0)


# ---- block rematerialisation ------------------------------------------------------------------
# remat='block' recomputes each block in the backward (htakl_jax.models.remat): same variable tree,
# outputs, gradients, BN statistics and sown spike counts as the plain model.


@pytest.mark.parametrize("name", NAMES)
def test_remat_keeps_the_variable_tree(name):
    for spiking in (False, True):
        _, plain = traced(name, spiking, 8)
        _, block = traced(name, spiking, 8, remat="block")
        shapes = functools.partial(jax.tree.map, lambda a: (a.shape, a.dtype))
        assert shapes(block) == shapes(plain)  # params, batch_stats and (SNN) intermediates


def test_remat_modes():
    assert tiny("resnet20", True).remat_blocks is False
    block = tiny("resnet20", True, remat="block")
    assert block.remat_blocks and "remat" not in dict(block.neuron_kwargs)
    neuron = tiny("resnet20", True, remat="neuron")
    assert not neuron.remat_blocks and dict(neuron.neuron_kwargs)["remat"] is True
    for bad in ("blocks", True):
        with pytest.raises(ValueError, match="remat must be one of"):
            tiny("resnet20", True, remat=bad)


def test_config_remat_key_drives_the_model():
    from htakl_jax.runs import build_model
    from htakl_jax.steps import step_compiler_options

    config = defaults.get_config()
    assert config.model.remat == "none"
    assert not build_model(config, num_classes=C, spiking=True).remat_blocks
    assert step_compiler_options(config) == parallel.cpu_compiler_options()
    config.model.remat = "neuron"
    assert dict(build_model(config, num_classes=C, spiking=True).neuron_kwargs)["remat"] is True
    memory = parallel.cpu_compiler_options(memory_schedule=True)
    assert step_compiler_options(config) == memory  # the student rematerialises
    config.model.remat = "block"
    assert build_model(config, num_classes=C, spiking=True).remat_blocks
    assert build_model(config, num_classes=C, spiking=False).remat_blocks
    # With remat on, the CPU steps use the memory-optimised schedule (test_parallel checks it).
    options = step_compiler_options(config)
    assert options == memory
    assert options.items() >= parallel.XLA_CPU_MEMORY_SCHEDULER.items()


# resnet20 covers the BasicBlock (shared with resnet19) and the stand-alone stem conv units,
# sew_resnet18 the SEW ADD blocks with spiking downsample shortcuts, vgg16 the conv units with max
# pooling and a deep MLP head. The plain model's gradient must also reach every parameter.
@pytest.mark.parametrize("name", ["resnet20", "sew_resnet18", "vgg16"])
def test_block_remat_equals_plain_model_and_gradient_reaches_every_parameter(name):
    x = jax.random.normal(jax.random.key(3), (B, 8, 8, 3))
    labels = jnp.arange(B) % C
    results = []
    for remat in ("none", "block"):
        model = tiny(name, True, v_threshold=V_TH, remat=remat)
        variables = numpy_variables(model, x)

        @jax.jit
        def step(params, model=model, stats=variables["batch_stats"]):
            def loss(params):
                logits, state = model.apply(
                    {"params": params, "batch_stats": stats},
                    x,
                    train=True,
                    mutable=["batch_stats", "intermediates"],
                )
                return cross_entropy(logits, labels), (logits, state)

            return jax.grad(loss, has_aux=True)(params)

        results.append(step(variables["params"]))
    (g_plain, (y_plain, s_plain)), (g_block, (y_block, s_block)) = results
    assert_all_nonzero(g_plain)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    close(y_block, y_plain)
    jax.tree.map(close, g_block, g_plain)
    assert jax.tree.structure(s_block) == jax.tree.structure(s_plain)
    jax.tree.map(close, s_block["batch_stats"], s_plain["batch_stats"])
    # the forward is the same computation, so every LIF fires the same spikes
    chex.assert_trees_all_equal(s_block["intermediates"], s_plain["intermediates"])


# On CPU, convs over at most layers.IM2COL_MAX_PIXELS pixels with at least IM2COL_MIN_CHANNELS
# channels run as matmuls: at width 1/4 and 16x16 input, ResNet-20's last stage (128 channels at
# 1x1 after the stem pool) and VGG-16's last blocks do. BatchNorm in eval mode: batch statistics
# over 2 images at 1x1 would amplify float rounding.
@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
def test_matmul_convolutions_equal_xla_convolutions_in_the_model(name):
    x = jax.random.normal(jax.random.key(4), (B, 16, 16, 3))
    labels = jnp.arange(B) % C
    for spiking in (False, True):
        results = []
        for max_pixels in (layers.IM2COL_MAX_PIXELS, 0):
            model = get_model(
                name, num_classes=C, spiking=spiking, timesteps=T, width_mult=0.25, v_threshold=V_TH
            ).clone(im2col_max_pixels=max_pixels)
            variables = numpy_variables(model, x)

            def loss(params, model=model, stats=variables["batch_stats"], spiking=spiking):
                logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
                logits = logits if spiking else logits[None]  # [T, B, C]
                return cross_entropy(logits, labels), logits

            results.append(jax.jit(jax.grad(loss, has_aux=True))(variables["params"]))
        (g_matmul, y_matmul), (g_conv, y_conv) = results
        close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
        close(y_matmul, y_conv)
        jax.tree.map(close, g_matmul, g_conv)


# ---- stage taps (the features of the feature-distillation methods) ----------------------------
# apply(..., features=KIND, mutable=["features"]) sows every stage's output; the default forward
# pass is unchanged. At 32x32: ResNet-19 3 stages, ResNet-20 / SEW-ResNet 4, VGG-16 5 conv blocks.
STAGES = {"resnet19": 3, "resnet20": 4, "sew_resnet18": 4, "sew_resnet34": 4, "vgg16": 5}


def _taps(model, variables, x, kind, **kw):
    logits, state = model.apply(
        variables, x, train=False, features=kind, mutable=["features"], **kw
    )
    return logits, layers.stage_features(state["features"])


@pytest.mark.parametrize("name", NAMES)
def test_stage_taps_shapes_and_default_pass(name):
    x = jax.random.normal(jax.random.key(5), (B, 16, 16, 3))
    for spiking in (False, True):
        model = tiny(name, spiking)
        variables = model.init(jax.random.key(0), x, train=False)
        plain = model.apply(variables, x, train=False)
        logits, feats = _taps(model, variables, x, "rate")
        np.testing.assert_array_equal(np.asarray(logits), np.asarray(plain))
        assert len(feats) == STAGES[name]
        assert all(f.shape[0] == B and f.ndim == 4 for f in feats)
        assert feats[-1].shape[-1] == model.width(512)  # the last stage: 512 channels at full width
        if spiking and not name.startswith("sew"):
            assert all(float(f.min()) >= 0 and float(f.max()) <= 1 for f in feats)  # rates
        elif not spiking:
            assert all(float(f.min()) >= 0 for f in feats)  # post-ReLU
    with pytest.raises(ValueError, match="features must be one of"):
        _taps(model, variables, x, "spikes")


def test_student_tap_kinds():
    x = jax.random.normal(jax.random.key(6), (B, 8, 8, 3))
    model = tiny("resnet20", True)
    variables = model.init(jax.random.key(0), x, train=False)
    # T = 1: the rate is the single step's spikes; h = v_reset + (x - v_reset) / tau = x / tau.
    _, rate = _taps(model, variables, x, "rate", timesteps=1)
    _, pre = _taps(model, variables, x, "preact", timesteps=1)
    _, mem = _taps(model, variables, x, "membrane", timesteps=1)
    tau = dict(model.neuron_kwargs).get("tau", 2.0)
    for r, p, m in zip(rate, pre, mem, strict=True):
        assert set(np.unique(np.asarray(r))) <= {0.0, 1.0}
        np.testing.assert_array_equal(
            np.asarray(r), (np.asarray(p) / tau >= 1.0).astype(np.float32)
        )
        np.testing.assert_allclose(np.asarray(m), np.asarray(p) / tau, rtol=1e-6, atol=1e-7)
    # The teacher records its ReLU output whatever the kind.
    ann = tiny("resnet20", False)
    ann_vars = ann.init(jax.random.key(0), x, train=False)
    a, b = _taps(ann, ann_vars, x, "rate")[1], _taps(ann, ann_vars, x, "membrane")[1]
    chex.assert_trees_all_equal(a, b)


def test_membrane_tap_equals_a_float64_loop():
    # One LIF (T = 3, hard reset): the mean over time of h[t] = v[t-1] + (x[t] - v[t-1]) / tau.
    x = np.random.default_rng(0).normal(0.8, 0.6, (3, 2, 4)).astype(np.float32)
    _, state = neurons.LIF(tap="stage1", tap_kind="membrane").apply(
        {}, jnp.asarray(x), mutable=["features"]
    )
    v, hs = np.zeros((2, 4)), []
    for t in range(3):
        h = v + (x[t] - v) / 2.0
        hs.append(h)
        v = np.where(h >= 1.0, 0.0, h)
    np.testing.assert_allclose(state["features"]["stage1"][0], np.mean(hs, 0), rtol=1e-6)


def test_student_taps_carry_gradients():
    x = jax.random.normal(jax.random.key(7), (B, 8, 8, 3))
    # A lower threshold and the full input charge keep this tiny network firing: a silent one
    # passes zero spikes forward, so its weights would get exactly zero gradient.
    model = tiny("resnet20", True, v_threshold=V_TH, decay_input=False)
    variables = model.init(jax.random.key(0), x, train=False)
    for kind in neurons.TAP_KINDS:

        def loss(params, kind=kind):
            _, feats = _taps(model, {**variables, "params": params}, x, kind)
            return sum(jnp.sum(f) for f in feats)

        grads = jax.grad(loss)(variables["params"])
        for block in ("stage1_block0", "stage2_block1", "stage3_block0"):
            assert float(jnp.abs(grads[block]["conv1"]["kernel"]).sum()) > 0, (kind, block)
        assert not jnp.any(grads["head"]["kernel"] != 0)  # the features do not reach the head
