"""The comparison methods KDSNN, LaSNN and BKDSNN (htakl_jax.methods) against docs/method.md §7's
properties: finite losses and the right gradients, hand values, reduction to CE, trainable parts
kept out of the student, exact resume."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import data, energy, feature_losses, losses, methods, parallel, runs, steps, train
from htakl_jax.analysis import tables

ROOT = Path(__file__).resolve().parent.parent
B, K = 4, 5


def _config(method: str, **overrides):
    config = runpy.run_path(str(ROOT / "configs" / "quickstart.py"))["get_config"]()
    config.student.method = method
    for key, value in overrides.items():
        block, name = key.split(".")
        config[block][name] = value
    return config


def _inputs(seed: int = 0, *, t: int = 2):
    ks = jax.random.split(jax.random.key(seed), 6)
    s_maps = [
        jax.random.uniform(ks[i], (B, 4 // (i + 1), 4 // (i + 1), 3 * (i + 1))) for i in (0, 1)
    ]
    t_maps = [jax.nn.relu(2 * jax.random.normal(ks[2 + i], m.shape)) for i, m in enumerate(s_maps)]
    logits = jax.random.normal(ks[4], (t, B, K))
    teacher = 3 * jax.random.normal(ks[5], (B, K))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(9), i))(jnp.arange(B))
    return methods.Inputs(logits, teacher, jnp.arange(B) % K, s_maps, t_maps, keys)


def _loss(method: methods.Method, variables: dict, inputs: methods.Inputs, step: int = 0):
    return method.loss(variables, inputs, jnp.asarray(step))


@pytest.mark.parametrize("name", methods.FEATURE_METHODS)
def test_losses_are_finite_and_gradients_reach_only_the_student_side(name):
    inputs = _inputs()
    method = methods.get(_config(name), bn_axis_name=None)
    variables = method.init(jax.random.key(1), inputs.student_features, inputs.teacher_features)

    def total(logits, s_feats, t_logits, t_feats, params):
        x = methods.Inputs(
            logits, t_logits, inputs.labels_B, s_feats, t_feats, inputs.example_keys_B
        )
        v = {"params": params, "batch_stats": variables.get("batch_stats")} if variables else {}
        return _loss(method, v, x)[0]

    args = (
        inputs.logits_TBC,
        inputs.student_features,
        inputs.teacher_logits_BC,
        inputs.teacher_features,
        variables.get("params", {}),
    )
    value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2, 3, 4)))(*args)
    assert np.isfinite(float(value))
    g_logits, g_s, g_tl, g_tf, g_params = grads
    assert np.any(np.asarray(g_logits) != 0) and np.any(np.asarray(g_s[-1]) != 0)
    assert all(not np.any(np.asarray(g) != 0) for g in jax.tree.leaves((g_tl, g_tf)))
    for leaf in jax.tree.leaves(g_params):  # the adapter / restoration block learns
        assert np.any(np.asarray(leaf) != 0)
    assert (method.parts is not None) == (name in ("kdsnn", "bkdsnn"))


@pytest.mark.parametrize(
    "name, zeros",
    [
        ("kdsnn", {"student.alpha": 0.0, "kdsnn.beta": 0.0}),
        ("lasnn", {"student.alpha": 0.0, "lasnn.beta": 0.0}),
        ("bkdsnn", {"bkdsnn.alpha": 0.0, "bkdsnn.wsld_weight": 0.0}),
    ],
)
def test_with_every_weight_zero_a_method_is_plain_cross_entropy(name, zeros):
    inputs = _inputs(1)
    method = methods.get(_config(name, **zeros), bn_axis_name=None)
    variables = method.init(jax.random.key(1), inputs.student_features, inputs.teacher_features)
    loss, parts, _ = _loss(method, variables, inputs)
    ce = jnp.mean(losses.cross_entropy(jnp.mean(inputs.logits_TBC, 0), inputs.labels_B))
    assert float(loss) == pytest.approx(float(ce), rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(float(ce), rel=1e-6)


def test_bkdsnn_loss_by_hand():
    # One example, 2x2 map, 3 channels; G with identity-like fixed weights; the mask keeps
    # channels 0 and 2 (drawn from the key, checked below).
    f_s = jnp.arange(12.0).reshape(1, 2, 2, 3) / 12.0
    f_t = jnp.ones((1, 2, 2, 3))
    config = _config("bkdsnn", **{"bkdsnn.alpha": 0.5, "bkdsnn.wsld_weight": 0.0})
    method = methods.get(config)
    variables = method.init(jax.random.key(0), [f_s], [f_t])
    center = np.zeros((3, 3, 3, 3), np.float32)
    center[1, 1] = np.eye(3)
    params = {"Conv_0": {"kernel": center, "bias": np.zeros(3, np.float32)}}
    params["Conv_1"] = {"kernel": 2 * center, "bias": np.full(3, 0.5, np.float32)}
    variables = {"params": jax.tree.map(jnp.asarray, params), "batch_stats": {}}
    keys = jax.random.key(3)[None]
    mask = np.asarray(feature_losses.channel_mask(keys[0], (1, 2, 2, 3), config.bkdsnn.mask_ratio))[
        0, 0, 0
    ]
    logits = jnp.zeros((1, 1, K))
    inputs = methods.Inputs(logits, jnp.zeros((1, K)), jnp.zeros(1, jnp.int32), [f_s], [f_t], keys)
    _, parts, _ = _loss(method, variables, inputs)
    # G(x) = 2 * relu(x) + 0.5 per channel (the 3x3 kernels only have their centre)
    restored = 2 * np.maximum(np.asarray(f_s) * mask, 0) + 0.5
    want = 0.5 * np.sum((restored - 1.0) ** 2) / 1
    assert float(parts["feat"]) == pytest.approx(want, rel=1e-6)


def test_lasnn_progressive_schedule_enables_stages_in_turn():
    config = _config("lasnn", **{"lasnn.schedule": "progressive", "lasnn.warmup_epochs": 4})
    weights = [methods.lasnn_stage_weights(config, 2, jnp.asarray(s), 10) for s in (0, 19, 20)]
    np.testing.assert_array_equal(np.stack(weights), [[1, 0], [1, 0], [1, 1]])


def test_method_labels_and_names():
    assert [tables.method_label(m) for m in methods.FEATURE_METHODS] == ["KDSNN", "LaSNN", "BKDSNN"]
    assert set(methods.NAMES) == set(losses.METHODS) | {"kdsnn", "lasnn", "bkdsnn"}
    with pytest.raises(ValueError, match="unknown distillation method 'kd'"):
        methods.get(_config("kd"))


# ----------------------------------------------------------------------------- in training


def _tiny(method: str):
    config = _config(method)
    config.model.width_mult = 0.0625
    config.student.epochs, config.student.batch_size = 2, 16
    config.eval.batch_size, config.log_every_steps = 32, 3
    images, labels, info = data.load_split("digits", "train")
    train_ds = runs.Dataset(images[:64], labels[:64])  # 4 steps per epoch
    eval_ds = runs.Dataset(images[64:96], labels[64:96])
    mesh = parallel.make_mesh()
    program = steps.phase_program("student", config, mesh=mesh, info=info, num_train=64)
    teacher = runs.build_model(config, num_classes=info.num_classes, spiking=False)
    t_vars = teacher.init(jax.random.key(5), jnp.zeros((1, 8, 8, 3)), train=False)
    t_vars = jax.device_put(t_vars, parallel.replicated(mesh))
    return config, program, train_ds, eval_ds, mesh, t_vars


def _final(program, mesh, workdir):
    abstract = jax.eval_shape(program.init_fn, jax.random.key(0))
    ck = ckpt_lib.PhaseCheckpoints(os.path.join(workdir, "student"))
    try:
        return ck.restore_latest(ckpt_lib.abstract_like(abstract, parallel.replicated(mesh)))[0]
    finally:
        ck.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kdsnn", "bkdsnn"])
def test_trainable_parts_resume_exactly_and_stay_out_of_the_student(name, tmp_path):
    config, program, train_ds, eval_ds, mesh, t_vars = _tiny(name)
    kw = dict(mesh=mesh, train_ds=train_ds, eval_ds=eval_ds, teacher_variables=t_vars)
    train.train_phase(program, config, str(tmp_path / "straight"), **kw)
    with pytest.raises(train.Preempted, match="step 5"):
        train.train_phase(program, config, str(tmp_path / "resumed"), stop_after_steps=5, **kw)
    train.train_phase(program, config, str(tmp_path / "resumed"), **kw)
    a = _final(program, mesh, str(tmp_path / "straight"))
    b = _final(program, mesh, str(tmp_path / "resumed"))
    assert int(a.step) == int(b.step) == 8 and a.method["params"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The adapter / restoration block trained, and is not part of the student's variables.
    initial = program.init_fn(jax.random.key(config.seed)).method["params"]
    moved = [
        bool(jnp.any(p != q))
        for p, q in zip(jax.tree.leaves(a.method["params"]), jax.tree.leaves(initial), strict=True)
    ]
    assert all(moved)
    student_vars, _, _ = runs.restore_for_eval(
        str(tmp_path / "straight" / "student"),
        program.model,
        config,
        data.load_split("digits", "test")[2],
        mesh,
        spiking=True,
    )
    assert jax.tree.structure(student_vars["params"]) == jax.tree.structure(a.params)
    # MACs count the student network alone, which every method builds alike.
    plain = runs.build_model(config.copy_and_resolve_references(), num_classes=10, spiking=True)
    assert energy.count_macs(program.model, (8, 8, 3)) == energy.count_macs(plain, (8, 8, 3))
