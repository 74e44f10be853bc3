"""Data parallelism: a 4-device sharded step equals a 1-device step and a plain jax.grad step."""

import functools
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from htakl_jax import data, losses, neurons, parallel, runs, steps

ROOT = Path(__file__).resolve().parent.parent
BATCH = 8  # global batch: 2 examples per device on the 4-device mesh


@pytest.fixture(scope="module")
def setup():
    config = runpy.run_path(str(ROOT / "configs" / "quickstart.py"))["get_config"]()
    config.model.width_mult = 0.0625
    config.student.timesteps = 2
    config.data.pad, config.data.flip = 0, False  # identity augmentation: plain reference below
    images, labels, info = data.load_split("digits", "train")
    batches = [
        (images[i * BATCH : (i + 1) * BATCH], labels[i * BATCH : (i + 1) * BATCH]) for i in (0, 1)
    ]
    config.student.lr = config.teacher.lr = 0.005
    tx, _ = steps.make_optimizer(config.teacher, steps_per_epoch=10)
    meshes = {n: parallel.make_mesh(jax.devices()[:n]) for n in (1, 4)}
    return config, info, batches, tx, meshes


def _assert_close(a, b):
    """Params and BN statistics to 1e-5; the momentum buffers (raw gradients, up to ~10 in this
    tiny batch-8 network) to 1e-4 of each leaf's largest magnitude (float32 reordering noise)."""
    _assert_trees_close(a.params, b.params, 1e-5)
    _assert_trees_close(a.batch_stats, b.batch_stats, 1e-5)
    for x, y in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state), strict=True):
        y = np.asarray(y)
        np.testing.assert_allclose(np.asarray(x), y, atol=1e-4 * max(np.abs(y).max(), 1.0))
    assert int(a.step) == int(b.step)


def _assert_trees_close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


def _init(model, tx, seed):
    init = functools.partial(steps.init_state, model, tx, image_shape=(8, 8, 3))
    return jax.jit(init)(jax.random.key(seed))


def _run(step_fn, state, extra, batches, mesh):
    # From host copies: the step donates the state, and callers reuse theirs for other meshes.
    state, extra = jax.device_put(jax.device_get((state, extra)), parallel.replicated(mesh))
    metrics = []
    for images, labels in batches:
        state, m = step_fn(state, *extra, *parallel.global_batch((images, labels), mesh))
        metrics.append(m)
    return jax.device_get(state), jax.device_get(metrics)


def _plain_step(model, tx, info, loss_fn):
    """Reference: one jit'd value_and_grad step on the whole batch, no shard_map, no axis names."""

    @jax.jit
    def step(state, images, labels):
        x = data.normalize(images, info.mean, info.std)

        def f(params):
            out, new = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return loss_fn(out, x, labels), new["batch_stats"]

        (loss, bs), grads = jax.value_and_grad(f, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = steps.TrainState(
            state.step + 1, optax.apply_updates(state.params, updates), bs, opt_state
        )
        grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        return new, (loss, grad_norm)

    return step


def test_teacher_step_sharded_equals_single_device_and_plain(setup):
    config, info, batches, tx, meshes = setup
    model = runs.build_model(config, num_classes=10, spiking=False)
    state0 = _init(model, tx, 0)
    results = {}
    for n, mesh in meshes.items():
        step = steps.compile_teacher_step(model, tx, mesh, config, info)
        results[n] = _run(step, state0, (), batches, mesh)

    ref_model = runs.build_model(config, num_classes=10, spiking=False, bn_axis_name=None)
    ref_step = _plain_step(
        ref_model, tx, info, lambda out, x, y: jnp.mean(losses.cross_entropy(out, y))
    )
    ref, ref_losses, ref_norms = state0, [], []
    for images, labels in batches:
        ref, (loss, grad_norm) = ref_step(ref, images, labels)
        ref_losses.append(float(loss))
        ref_norms.append(float(grad_norm))

    state1, _ = results[1]
    state4, m4 = results[4]
    assert int(state4.step) == 2
    _assert_close(state4, state1)
    _assert_close(state1, ref)
    np.testing.assert_allclose([m["loss"] for m in m4], ref_losses, rtol=1e-5)
    # The logged norm is the whole batch's gradient's, not one device's share.
    np.testing.assert_allclose([m["grad_norm"] for m in m4], ref_norms, rtol=1e-4)
    # The step really moved parameters and BN statistics.
    assert not np.allclose(state4.batch_stats["stem"]["bn"]["mean"], 0.0)
    assert (
        np.abs(jax.tree.leaves(state4.params)[0] - jax.tree.leaves(state0.params)[0]).max() > 1e-3
    )


def test_distill_step_sharded_equals_single_device(setup):
    config, info, batches, tx, meshes = setup
    student = runs.build_model(config, num_classes=10, spiking=True)
    teacher = runs.build_model(config, num_classes=10, spiking=False)
    state0 = _init(student, tx, 0)
    t_vars = _init(teacher, tx, 1).variables
    results = {}
    for n, mesh in meshes.items():
        step = steps.compile_distill_step(student, teacher, tx, mesh, config, info)
        results[n] = _run(step, state0, (t_vars,), batches, mesh)

    (state1, _), (state4, m4) = results[1], results[4]
    _assert_close(state4, state1)
    assert set(m4[0]) == {"loss", "accuracy", "ce", "kd", "w_head", "w_tail", "grad_norm"}
    np.testing.assert_allclose(m4[0]["grad_norm"], results[1][1][0]["grad_norm"], rtol=1e-4)
    np.testing.assert_allclose(m4[0]["w_head"] + m4[0]["w_tail"], 1.0, rtol=1e-5)


def test_bkdsnn_step_sharded_equals_single_device(setup):
    """BKDSNN's per-example masks and its restoration block: 4 devices give 1 device's update."""
    config, info, batches, _, meshes = setup
    config = config.copy_and_resolve_references()
    config.student.method = "bkdsnn"
    teacher = runs.build_model(config, num_classes=10, spiking=False)
    t_vars = teacher.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), train=False)
    results = {}
    for n, mesh in meshes.items():
        program = steps.phase_program("student", config, mesh=mesh, info=info, num_train=80)
        state0 = jax.device_get(program.init_fn(jax.random.key(0)))
        results[n] = _run(program.step_fn, state0, (t_vars,), batches, mesh)
    (state1, _), (state4, m4) = results[1], results[4]
    _assert_close(state4, state1)
    _assert_trees_close(state4.method["params"], state1.method["params"], 1e-5)
    assert "feat" in m4[0] and np.isfinite(m4[0]["feat"])


def test_augmentation_is_device_count_invariant_and_varies_per_step():
    images = np.random.default_rng(0).integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
    prep = functools.partial(
        steps.preprocess, seed=3, stream=0, pad=2, flip=True, mean=(0.0,) * 3, std=(1.0,) * 3
    )

    def outputs(n, step):
        mesh = parallel.make_mesh(jax.devices()[:n])
        fn = parallel.data_parallel(
            lambda s, x: jax.lax.all_gather(prep(x, step=s), "data", tiled=True),
            mesh,
            num_replicated=1,
            num_sharded=1,
            donate_first=False,
        )
        return np.asarray(fn(jnp.int32(step), parallel.global_batch(images, mesh)))

    a1, a4 = outputs(1, 0), outputs(4, 0)
    np.testing.assert_array_equal(a1, a4)
    assert not np.array_equal(a1, outputs(4, 1))
    # Each output is a shifted (and maybe mirrored) copy: pixel sums can only lose border pixels.
    assert np.all(
        a1.reshape(8, -1).sum(1) <= images.astype(float).reshape(8, -1).sum(1) / 255 + 1e-3
    )


def test_global_batch_and_mesh():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == (parallel.DATA_AXIS,) and mesh.size == jax.device_count() == 4
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    g = parallel.global_batch(x, mesh)
    assert g.shape == (8, 3) and g.sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(g), x)
    np.testing.assert_array_equal(parallel.local_rows(np.arange(8)), np.arange(8))  # 1 process
    with pytest.raises(ValueError, match="empty"):
        parallel.make_mesh([])


def test_psum_and_pmean_reduce_over_all_devices():
    mesh = parallel.make_mesh()
    fn = parallel.data_parallel(
        lambda w, x: (jax.lax.psum(jnp.sum(x * w), "data"), jax.lax.pmean(jnp.mean(x), "data")),
        mesh,
        num_replicated=1,
        num_sharded=1,
        donate_first=False,
    )
    x = np.arange(8, dtype=np.float32)
    total, mean = fn(jnp.float32(2.0), parallel.global_batch(x, mesh))
    assert float(total) == 2 * x.sum() and float(mean) == x.mean()


def test_maybe_initialize_distributed_off_without_environment(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    assert parallel.maybe_initialize_distributed("auto") is False
    assert parallel.maybe_initialize_distributed("no") is False
    with pytest.raises(ValueError, match=r"one of \('auto', 'yes', 'no'\)"):
        parallel.maybe_initialize_distributed("maybe")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU scheduler option")
def test_memory_scheduler_option_reaches_xla_and_lowers_peak_memory():
    # Six LIF layers on sequences long enough to run as scan loops: the default XLA:CPU schedule
    # keeps every scan's output buffer live from the start; the memory-optimised one must need
    # less temporary memory.
    def loss(w, x):
        for _ in range(6):
            x = neurons.lif(x) @ w
        return jnp.sum(x)

    def step(w, x):
        return jax.lax.pmean(jax.grad(loss)(w, x), "data")

    mesh = parallel.make_mesh(jax.devices()[:1])
    w, x = jnp.full((32, 32), 0.1), jnp.ones((neurons.MAX_UNROLLED_T + 2, 64, 32))
    temp = {}
    for name, options in (("default", None), ("memory", parallel.XLA_CPU_MEMORY_SCHEDULER)):
        fn = parallel.data_parallel(
            step,
            mesh,
            num_replicated=2,
            num_sharded=0,
            donate_first=False,
            compiler_options=options,
        )
        temp[name] = fn.lower(w, x).compile().memory_analysis().temp_size_in_bytes
    assert temp["memory"] < 0.75 * temp["default"], temp
