"""Faults: SIGKILL then resume (bitwise), damaged checkpoints skipped, determinism by seed."""

import importlib.util
import json
import os
import random
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import data, parallel, runs, steps, train
from htakl_jax.steps import TrainState

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"name": "resnet20", "width_mult": 0.0625, "num_classes": 10}

_spec = importlib.util.spec_from_file_location(
    "kill_resume", ROOT / "benchmarks" / "kill_resume.py"
)
kill_resume = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kill_resume)


# ----------------------------------------------------------------------------- SIGKILL, resume


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_equals_uninterrupted_bitwise(tmp_path):
    """Three SIGKILLs (two as a checkpoint write begins, one at a random moment), each followed
    by a restart in the same workdir; the finished run equals an uninterrupted one bit for bit
    (parameters, BN statistics, momentum, step, per-epoch eval accuracy)."""
    env = kill_resume.env_with_cache(tmp_path / "jax_cache")
    r = kill_resume.run_to_end(tmp_path / "straight", env)
    assert r.returncode == 0, r.stderr[-3000:]
    reference = kill_resume.final_state(tmp_path / "straight")
    assert reference["epochs"] == [1, 2, 3, 4, 5]

    workdir = tmp_path / "killed"
    rng = random.Random(0)
    events = [
        kill_resume.run_and_kill(workdir, env, moment=m, rng=rng)
        for m in ("write", "random", "write")
    ]
    assert sum(e.startswith("killed during write") for e in events) >= 1, events
    r = kill_resume.run_to_end(workdir, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kill_resume.differences(reference, kill_resume.final_state(workdir)) == [], events
    # Nothing was deleted because of a kill: the last `keep` checkpoints are all there.
    steps = sorted(int(n) for n in os.listdir(workdir / "teacher" / "checkpoints") if n.isdigit())
    per_epoch = reference["step"] // 5
    assert steps == [4 * per_epoch, 5 * per_epoch]


def test_differences_detects_a_one_ulp_change():
    a = {"step": 1, "epochs": [1], "eval_accuracy": [0.5], "arrays": {"w": np.ones(3, np.float32)}}
    b = {**a, "arrays": {"w": np.nextafter(np.ones(3, np.float32), 2)}}
    assert kill_resume.differences(a, a) == []
    assert len(kill_resume.differences(a, b)) == 1
    assert kill_resume.differences(a, {**a, "eval_accuracy": [0.6]})


# ----------------------------------------------------------------------------- damaged checkpoints


def _state(seed: int, step: int) -> TrainState:
    params = {"dense": {"kernel": jax.random.normal(jax.random.key(seed), (3, 4))}}
    tx = optax.sgd(0.1, momentum=0.9)
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        batch_stats={"bn": {"mean": jnp.arange(4.0) + seed}},
        opt_state=opt_state,
    )


def _save_steps(phase_dir: Path, steps, keep: int = 3) -> None:
    ck = ckpt_lib.PhaseCheckpoints(str(phase_dir), keep=keep, async_save=False)
    for s in steps:
        ck.save(_state(s, s), {"epoch": s, "model": dict(MODEL)}, best=True)
    ck.close()


def _truncate_arrays(step_dir: Path, item: str = "variables") -> None:
    for path in (step_dir / item).rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated_arrays", "missing_item", "garbage_meta"])
def test_damaged_latest_checkpoint_is_set_aside_with_a_warning(tmp_path, damage):
    phase = tmp_path / "teacher"
    _save_steps(phase, [10, 20, 30])
    latest = phase / ckpt_lib.LATEST_DIR
    bad = latest / "30"
    if damage == "truncated_arrays":
        _truncate_arrays(bad)
    elif damage == "missing_item":
        for f in sorted((bad / "train").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (bad / "train").rmdir()
    else:
        for f in (bad / "meta").iterdir():
            f.write_text("{not json")
    # A save killed midway: Orbax's temporary folder, never renamed.
    (latest / f"40{kill_resume.TMP_MARK}" / "variables").mkdir(parents=True)

    ck = ckpt_lib.PhaseCheckpoints(str(phase), keep=3, async_save=False)
    abstract = ckpt_lib.abstract_like(_state(0, 0))
    with pytest.warns(UserWarning, match=r"checkpoint .*checkpoints/30 is unreadable") as rec:
        state, meta = ck.restore_latest(abstract)
    assert len(rec) == 1
    assert int(state.step) == 20 and meta["epoch"] == 20
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(_state(20, 20)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Older checkpoints untouched; the damaged one renamed aside, not deleted.
    names = os.listdir(latest)
    assert {"10", "20"} <= set(names) and "30" not in names
    assert any(n.startswith("30.corrupt-") for n in names)
    assert ck.latest_step() == 20
    # Training goes on: the next save at step 30 is written (not skipped as "already saved").
    ck.save(_state(31, 30), {"epoch": 30, "model": dict(MODEL)})
    ck.wait()
    state, _ = ck.restore_latest(abstract)
    ck.close()
    np.testing.assert_array_equal(
        np.asarray(state.params["dense"]["kernel"]),
        np.asarray(_state(31, 30).params["dense"]["kernel"]),
    )


def test_no_restorable_checkpoint_raises_naming_it_and_moves_nothing(tmp_path):
    phase = tmp_path / "teacher"
    _save_steps(phase, [10])
    ck = ckpt_lib.PhaseCheckpoints(str(phase), async_save=False)
    wrong = ckpt_lib.abstract_like(_state(0, 0).replace(params={"other": jnp.zeros(2)}))
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoints/10 cannot be restored"):
        ck.restore_latest(wrong)
    ck.close()
    assert os.listdir(phase / ckpt_lib.LATEST_DIR) == ["10"]


def test_read_meta_and_restore_variables_skip_a_damaged_best(tmp_path):
    phase = tmp_path / "teacher"
    _save_steps(phase, [10, 20], keep=2)
    best = phase / ckpt_lib.BEST_DIR / "20"
    _truncate_arrays(best)
    target = ckpt_lib.abstract_like(
        {"params": _state(0, 0).params, "batch_stats": _state(0, 0).batch_stats}
    )
    with pytest.warns(UserWarning, match=r"skipping unreadable checkpoint .*best/20"):
        variables, meta, path = ckpt_lib.restore_variables(str(phase), target, expected_model=MODEL)
    assert path.endswith(os.path.join(ckpt_lib.LATEST_DIR, "20"))  # same state, latest copy
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["dense"]["kernel"]),
        np.asarray(_state(20, 20).params["dense"]["kernel"]),
    )
    for f in (best / "meta").iterdir():
        f.write_text("[1, 2")
    with pytest.warns(UserWarning, match=r"skipping unreadable checkpoint .*best/20"):
        path, meta = ckpt_lib.read_meta(str(phase))
    assert path.endswith(os.path.join(ckpt_lib.LATEST_DIR, "20")) and meta["epoch"] == 20
    assert (phase / ckpt_lib.BEST_DIR / "20").is_dir()  # readers never move anything


# ----------------------------------------------------------------------------- determinism


@pytest.fixture(scope="module")
def tiny():
    config = runpy.run_path(str(ROOT / "configs" / "quickstart.py"))["get_config"]()
    config.model.width_mult = 0.0625
    config.teacher.epochs = 1
    config.teacher.batch_size = 16
    config.eval.batch_size = 32
    config.log_every_steps = 2
    images, labels, info = data.load_split("digits", "train")
    train_ds = runs.Dataset(images[:64], labels[:64])
    eval_ds = runs.Dataset(images[64:96], labels[64:96])
    return config, info, train_ds, eval_ds, parallel.make_mesh()


def _train(tiny, workdir: Path, seed: int):
    config, info, train_ds, eval_ds, mesh = tiny
    config = config.copy_and_resolve_references()
    config.seed = seed
    # A program built afresh for every run: nothing carries over between runs but the config.
    program = steps.phase_program("teacher", config, mesh=mesh, info=info, num_train=len(train_ds))
    meta = train.train_phase(
        program, config, str(workdir), mesh=mesh, train_ds=train_ds, eval_ds=eval_ds
    )
    state = kill_resume.final_state(workdir)
    metrics = (workdir / "teacher" / "metrics.jsonl").read_text().splitlines()
    timing = ("epoch_time_s", "steps_per_s", "images_per_s", "eta_s")
    records = [json.loads(m) for m in metrics]
    return meta, state, [{k: v for k, v in r.items() if k not in timing} for r in records]


def test_same_seed_is_bitwise_reproducible_and_another_seed_differs(tiny, tmp_path):
    meta_a, a, metrics_a = _train(tiny, tmp_path / "a", seed=0)
    meta_b, b, metrics_b = _train(tiny, tmp_path / "b", seed=0)
    assert kill_resume.differences(a, b) == []
    assert metrics_a == metrics_b and meta_a["eval_accuracy"] == meta_b["eval_accuracy"]
    assert "train_loss" in metrics_a[0]
    _, c, metrics_c = _train(tiny, tmp_path / "c", seed=1)
    diffs = kill_resume.differences(a, c)
    assert any("variables/params" in d for d in diffs), diffs
    assert metrics_a[0]["train_loss"] != metrics_c[0]["train_loss"]


# ----------------------------------------------------------------------------- full disk


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    phase = tmp_path / "student"
    ck = ckpt_lib.PhaseCheckpoints(str(phase), keep=3, async_save=False)
    ck.save(_state(1, 10), {"epoch": 1, "model": dict(MODEL)})
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        # What a write cut short by ENOSPC leaves: a partial temporary folder, then the error.
        partial = Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1"
        partial.mkdir()
        (partial / "half").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(partial / "half"))

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    state_20 = _state(2, 20)
    with pytest.raises(ckpt_lib.DiskFull) as info:
        ck.save(state_20, {"epoch": 2, "model": dict(MODEL)})
    message = str(info.value)
    assert str(phase / ckpt_lib.LATEST_DIR) in message
    needed = sum(x.nbytes for x in jax.tree.leaves(state_20))
    assert f"about {needed:,} bytes needed" in message and "bytes free" in message
    assert "rerun the same command to resume" in message and "\n" not in message
    ck.close()

    # Space freed, the run restarted: the previous checkpoint restores, the partial one is gone,
    # and the next save succeeds.
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    ck = ckpt_lib.PhaseCheckpoints(str(phase), keep=3, async_save=False)
    restored, meta = ck.restore_latest(ckpt_lib.abstract_like(_state(0, 0)))
    assert int(restored.step) == 10 and meta["epoch"] == 1
    np.testing.assert_array_equal(
        restored.params["dense"]["kernel"], _state(1, 10).params["dense"]["kernel"]
    )
    assert not list((phase / ckpt_lib.LATEST_DIR).glob("*tmp*"))
    ck.save(state_20, {"epoch": 2, "model": dict(MODEL)})
    assert ck.latest_step() == 20
    ck.close()
