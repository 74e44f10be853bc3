"""Training loop: exact resume, NaN stop, optimizer and schedule."""

import json
import os
import runpy
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import data, defaults, parallel, runs, steps, train
from tests.test_metrics import assert_events_match_metrics

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, BATCH = 64, 16  # 4 steps per epoch, 4 examples per device


@pytest.fixture(scope="module")
def setup():
    config = runpy.run_path(str(ROOT / "configs" / "quickstart.py"))["get_config"]()
    config.model.width_mult = 0.0625
    config.teacher.epochs = 2
    config.teacher.batch_size = BATCH
    config.eval.batch_size = 32
    config.log_every_steps = 3
    images, labels, info = data.load_split("digits", "train")
    test_images, test_labels, _ = data.load_split("digits", "test")
    train_ds = runs.Dataset(images[:N_TRAIN], labels[:N_TRAIN])
    eval_ds = runs.Dataset(test_images[:40], test_labels[:40])  # 40: a padded last eval batch
    mesh = parallel.make_mesh()
    # Built once and shared by every run below, as one training run shares it between phases.
    program = steps.phase_program("teacher", config, mesh=mesh, info=info, num_train=N_TRAIN)
    return config, program, train_ds, eval_ds, mesh


def _teacher(setup, workdir, **kw):
    config, program, train_ds, eval_ds, mesh = setup
    return train.train_phase(
        program, config, str(workdir), mesh=mesh, train_ds=train_ds, eval_ds=eval_ds, **kw
    )


def _latest(setup, workdir):
    _, program, _, _, mesh = setup
    abstract = ckpt_lib.abstract_like(
        jax.eval_shape(program.init_fn, jax.random.key(0)), parallel.replicated(mesh)
    )
    ck = ckpt_lib.PhaseCheckpoints(os.path.join(workdir, "teacher"))
    try:
        return ck.restore_latest(abstract)
    finally:
        ck.close()


def _metrics(workdir):
    with open(os.path.join(workdir, "teacher", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    meta = _teacher(setup, workdir)
    return workdir, meta


@pytest.mark.parametrize("stop_after", [4, 6], ids=["epoch_boundary", "mid_epoch"])
def test_resume_equals_uninterrupted_bitwise(setup, uninterrupted, tmp_path, stop_after):
    straight_dir, straight_meta = uninterrupted
    with pytest.raises(train.Preempted, match=f"step {stop_after}"):
        _teacher(setup, tmp_path, stop_after_steps=stop_after)
    state_stop, _ = _latest(setup, tmp_path)
    assert int(state_stop.step) == stop_after
    meta = _teacher(setup, tmp_path)  # rerun with the same workdir: resumes and finishes

    assert meta["finished"] and straight_meta["finished"]
    a, meta_a = _latest(setup, straight_dir)
    b, meta_b = _latest(setup, tmp_path)
    assert int(a.step) == int(b.step) == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert meta_a["eval_accuracy"] == meta_b["eval_accuracy"]
    # The interrupted run still logged its final epoch with the same eval accuracy.
    assert _metrics(tmp_path)[-1]["eval_accuracy"] == _metrics(straight_dir)[-1]["eval_accuracy"]
    # The resumed run's TensorBoard scalars: each epoch once, as in its metrics.jsonl.
    events = assert_events_match_metrics(tmp_path / "teacher")
    assert [step for step, _ in events["train/loss"]] == [4, 8]


def test_metrics_and_checkpoints_of_a_finished_phase(uninterrupted):
    workdir, meta = uninterrupted
    records = _metrics(workdir)
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_accuracy", "eval_accuracy", "steps_per_s", "images_per_s"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert records[-1]["step"] == 8 and records[-1]["eta_s"] == 0.0
    assert meta["best_accuracy"] == max(r["eval_accuracy"] for r in records)
    _, best_meta = ckpt_lib.read_meta(os.path.join(workdir, "teacher"))
    assert best_meta["eval_accuracy"] == meta["best_accuracy"]
    assert best_meta["model"]["num_classes"] == 10 and best_meta["model"]["spiking"] is False


def test_tensorboard_events_of_a_finished_phase(uninterrupted):
    workdir, _ = uninterrupted
    events = assert_events_match_metrics(workdir / "teacher")
    for tag in ("train/loss", "train/accuracy", "eval/accuracy", "lr", "perf/images_per_s"):
        assert [step for step, _ in events[tag]] == [4, 8], tag


def test_nan_loss_stops_and_keeps_last_good_checkpoint(setup, tmp_path, monkeypatch):
    with pytest.raises(train.Preempted):
        _teacher(setup, tmp_path, stop_after_steps=4)
    original = ckpt_lib.PhaseCheckpoints.restore_latest

    def poisoned(self, abstract):
        state, meta = original(self, abstract)
        params = jax.tree.map(lambda p: p * jnp.nan, state.params)
        return state.replace(params=params), meta

    monkeypatch.setattr(ckpt_lib.PhaseCheckpoints, "restore_latest", poisoned)
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss nan at training step 5 \(epoch 2\)"
    ):
        _teacher(setup, tmp_path)
    monkeypatch.undo()
    state, _ = _latest(setup, tmp_path)
    assert int(state.step) == 4
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))
    assert sorted(os.listdir(tmp_path / "teacher" / ckpt_lib.LATEST_DIR)) == ["4"]


def test_disk_full_stops_with_one_error_and_the_rerun_resumes(setup, tmp_path, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    real_save = ocp.CheckpointManager.save

    def full_after_step_4(self, step, *args, **kwargs):
        if step > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_after_step_4)
    with pytest.raises(ckpt_lib.DiskFull, match=r"no space left on device writing a checkpoint"):
        _teacher(setup, tmp_path)
    monkeypatch.undo()
    state, meta = _latest(setup, tmp_path)
    assert int(state.step) == 4 and meta["epoch"] == 1  # the last checkpoint before the full disk
    meta = _teacher(setup, tmp_path)  # space freed: the same call resumes and finishes
    assert meta["finished"] and int(_latest(setup, tmp_path)[0].step) == 8


def test_a_resume_with_another_seed_is_refused(setup, uninterrupted, tmp_path):
    """The random streams derive from (config.seed, step): a finished or interrupted run of one
    seed is not continued under another; the same seed resumes as before."""
    config = setup[0]
    workdir, _ = uninterrupted
    other = (config.copy_and_resolve_references(), *setup[1:])
    other[0].seed = config.seed + 1
    with pytest.raises(ValueError, match=rf"holds a run of seed {config.seed}, not config.seed"):
        _teacher(other, workdir)
    assert _latest(setup, workdir)[1]["seed"] == config.seed
    assert _teacher(setup, workdir)["finished"]  # its own seed: restored, nothing to train


def test_train_phase_rejects_bad_arguments(setup, tmp_path):
    config, program, train_ds, eval_ds, mesh = setup
    with pytest.raises(ValueError, match="phase must be one of"):
        steps.phase_program("pupil", config, mesh=mesh, info=None, num_train=N_TRAIN)
    small = runs.Dataset(train_ds.images[:8], train_ds.labels[:8])
    with pytest.raises(ValueError, match="teacher.batch_size 16 exceeds the 8 training images"):
        train.train_phase(
            program, config, str(tmp_path), mesh=mesh, train_ds=small, eval_ds=eval_ds
        )
    assert not os.path.exists(tmp_path / "teacher")


def test_a_wrong_batch_fails_at_trace_time_with_its_shapes():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    steps.check_batch(images, np.zeros(4, np.int32), np.ones(4, bool))
    with pytest.raises(AssertionError, match=r"shape \(3,\) but expected \(4\)"):
        steps.check_batch(images, np.zeros(3, np.int32))
    with pytest.raises(AssertionError, match="rank"):
        steps.check_batch(images[0], np.zeros(8, np.int32))
    with pytest.raises(AssertionError, match="uint8"):
        steps.check_batch(images.astype(np.float32), np.zeros(4, np.int32))


def test_optimizer_decays_only_kernels_and_follows_cosine():
    cfg = defaults.get_config().teacher
    cfg.lr, cfg.weight_decay, cfg.epochs, cfg.momentum = 0.5, 0.1, 2, 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no optax warning about a 0-step warmup
        tx, schedule = steps.make_optimizer(cfg, steps_per_epoch=5)
    params = {
        "conv": {"kernel": jnp.full((2, 2), 2.0)},
        "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
    }
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.5 * 0.1 * 2.0)
    np.testing.assert_array_equal(updates["bn"]["scale"], 0.0)
    np.testing.assert_array_equal(updates["bn"]["bias"], 0.0)
    # Cosine from lr to 0 over epochs * steps_per_epoch = 10 steps.
    np.testing.assert_allclose(
        [schedule(0), schedule(5), schedule(10)], [0.5, 0.25, 0.0], atol=1e-7
    )

    cfg.warmup_epochs = 1
    _, warm = steps.make_optimizer(cfg, steps_per_epoch=5)
    np.testing.assert_allclose([warm(0), warm(5), warm(10)], [0.0, 0.5, 0.0], atol=1e-7)
    # Momentum: the second update with a constant gradient g is -lr_1 * (1 + 0.9) * g.
    cfg.weight_decay, cfg.warmup_epochs = 0.0, 0
    tx, schedule = steps.make_optimizer(cfg, steps_per_epoch=5)
    g = {"w": jnp.ones(())}
    state = tx.init(g)
    _, state = tx.update(g, state, g)
    u, _ = tx.update(g, state, g)
    np.testing.assert_allclose(u["w"], -float(schedule(1)) * 1.9, rtol=1e-6)
    assert isinstance(tx, optax.GradientTransformation)


def test_gradient_clipping_scales_the_loss_gradient_to_the_norm_before_decay():
    cfg = defaults.get_config().student
    cfg.lr, cfg.weight_decay, cfg.epochs, cfg.momentum = 0.5, 0.1, 1, 0.0
    cfg.grad_clip_norm = 1.0
    tx, schedule = steps.make_optimizer(cfg, steps_per_epoch=4)
    params = {"conv": {"kernel": jnp.full((2,), 2.0)}, "bn": {"bias": jnp.zeros(2)}}
    # Global norm of g: sqrt(3^2 + 4^2 + 0 + 0) = 5 -> g / 5; then + 0.1 * 2 on the kernel.
    g = {"conv": {"kernel": jnp.array([3.0, 4.0])}, "bn": {"bias": jnp.zeros(2)}}
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["conv"]["kernel"], [-0.5 * (0.6 + 0.2), -0.5 * (0.8 + 0.2)])
    small = jax.tree.map(lambda x: x / 10, g)  # norm 0.5 <= 1: left as it is
    u, _ = tx.update(small, tx.init(params), params)
    np.testing.assert_allclose(u["conv"]["kernel"], [-0.5 * (0.3 + 0.2), -0.5 * (0.4 + 0.2)])
    cfg.grad_clip_norm = None  # off: plain SGD on the whole gradient
    tx, _ = steps.make_optimizer(cfg, steps_per_epoch=4)
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["conv"]["kernel"], [-0.5 * 3.2, -0.5 * 4.2])
    assert float(schedule(0)) == 0.5
