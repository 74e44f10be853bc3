"""Orbax checkpoint layer: exact round trip, retention, best tracking, model checks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax.steps import TrainState

MODEL = {"name": "resnet20", "width_mult": 0.0625, "num_classes": 10}


def _state(seed: int, step: int) -> TrainState:
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "dense": {"kernel": jax.random.normal(k1, (3, 4)), "bias": jax.random.normal(k2, (4,))}
    }
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.init(params)
    # A non-zero momentum buffer, so the test can tell it was stored.
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        batch_stats={"bn": {"mean": jnp.arange(4.0) + seed}},
        opt_state=opt_state,
    )


def _meta(acc, **kw):
    return {"epoch": 1, "eval_accuracy": acc, "model": dict(MODEL), **kw}


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path):
    ck = ckpt_lib.PhaseCheckpoints(str(tmp_path / "teacher"), keep=2)
    state = _state(0, 7)
    ck.save(state, _meta(0.5))
    ck.wait()
    restored, meta = ck.restore_latest(ckpt_lib.abstract_like(_state(1, 0)))
    ck.close()
    _assert_trees_equal(restored, state)
    assert int(restored.step) == 7
    assert meta["eval_accuracy"] == 0.5 and meta["model"] == MODEL


def test_keeps_latest_n_and_best_separately(tmp_path):
    phase = str(tmp_path / "student")
    ck = ckpt_lib.PhaseCheckpoints(phase, keep=2, async_save=False)
    accs = {10: 0.3, 20: 0.9, 30: 0.4, 40: 0.5}
    best = -1.0
    for step, acc in accs.items():
        ck.save(_state(step, step), _meta(acc), best=acc > best)
        best = max(best, acc)
    ck.wait()
    assert ck.latest_step() == 40
    ck.close()
    assert sorted(os.listdir(os.path.join(phase, ckpt_lib.LATEST_DIR))) == ["30", "40"]
    assert os.listdir(os.path.join(phase, ckpt_lib.BEST_DIR)) == ["20"]
    path, meta = ckpt_lib.read_meta(phase)
    assert path.endswith(os.path.join(ckpt_lib.BEST_DIR, "20")) and meta["eval_accuracy"] == 0.9
    path, meta = ckpt_lib.read_meta(phase, prefer_best=False)
    assert path.endswith(os.path.join(ckpt_lib.LATEST_DIR, "40")) and meta["eval_accuracy"] == 0.5


def test_restore_variables_only_and_model_check(tmp_path):
    phase = str(tmp_path / "teacher")
    ck = ckpt_lib.PhaseCheckpoints(phase, keep=1, async_save=False)
    state = _state(3, 5)
    ck.save(state, _meta(0.7), best=True)
    ck.close()
    target = ckpt_lib.abstract_like({"params": state.params, "batch_stats": state.batch_stats})
    variables, meta, _ = ckpt_lib.restore_variables(phase, target, expected_model=MODEL)
    assert set(variables) == {"params", "batch_stats"}
    _assert_trees_equal(variables["params"], state.params)
    _assert_trees_equal(variables["batch_stats"], state.batch_stats)

    with pytest.raises(ValueError, match=r"num_classes: checkpoint has 10, expected 100") as e:
        ckpt_lib.restore_variables(phase, target, expected_model={**MODEL, "num_classes": 100})
    assert os.path.join(phase, ckpt_lib.BEST_DIR, "5") in str(e.value)
    with pytest.raises(ValueError, match="name: checkpoint has 'resnet20', expected 'vgg16'"):
        ckpt_lib.restore_variables(phase, target, expected_model={**MODEL, "name": "vgg16"})


def test_missing_checkpoint_errors(tmp_path):
    assert not ckpt_lib.has_checkpoint(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="no checkpoint found in"):
        ckpt_lib.read_meta(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ckpt_lib.PhaseCheckpoints(str(tmp_path / "x"), keep=0)


def test_quiet_orbax_logging_drops_info_and_read_only_warnings():
    import logging as std_logging

    ckpt_lib.quiet_orbax_logging()
    logger = std_logging.getLogger("absl")

    def record(level, message, path="/site-packages/orbax/checkpoint/checkpoint_manager.py"):
        return std_logging.LogRecord("absl", level, path, 1, message, None, None)

    assert not logger.filter(record(std_logging.INFO, "Saving checkpoint"))
    assert not logger.filter(record(std_logging.WARNING, "Given directory is read only=/x"))
    assert not logger.filter(record(std_logging.WARNING, "Options.read_only=True, setting x"))
    assert logger.filter(record(std_logging.WARNING, "something else went wrong"))
    assert logger.filter(record(std_logging.INFO, "ours", path="/repo/htakl_jax/train.py"))
