"""Config validation (each error), and the CLI end to end in subprocesses."""

import functools
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import pytest

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import config_validation as cv
from htakl_jax import runs
from htakl_jax.steps import TrainState

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "configs" / "quickstart.py")


def _config():
    return runpy.run_path(QUICKSTART)["get_config"]()


def _validate(config, tmp_path, mode="all", num_devices=4):
    cv.validate(config, mode=mode, workdir=str(tmp_path / "work"), num_devices=num_devices)


def test_valid_configs_pass_and_write_nothing(tmp_path):
    _validate(_config(), tmp_path)
    for name, arg in [
        ("cifar.py", "cifar100,vgg16,2"),
        ("tiny_imagenet.py", "resnet20,1"),
        ("gpu_cifar10.py", "gpu"),
        ("gpu_cifar10.py", "cpu"),
        ("gpu_cifar10.py", "smoke"),
    ]:
        config = runpy.run_path(str(ROOT / "configs" / name))["get_config"](arg)
        cv.check_keys_and_types(config)
        cv.check_values(config, num_devices=8)
    for arg in ("cifar10", "tiny_imagenet"):
        config = runpy.run_path(str(ROOT / "configs" / "reduced.py"))["get_config"](arg)
        cv.check_keys_and_types(config)
        cv.check_values(config, num_devices=4)
    powered = runpy.run_path(str(ROOT / "configs" / "powered.py"))["get_config"]
    for config in (
        powered("base"),
        powered().base,
        powered("restart_base"),
        powered("restart").base,
        powered("t2_base"),
        powered("t2").base,
        powered("t2_long").base,
    ):
        cv.check_keys_and_types(config)
        cv.check_values(config, num_devices=4)
    restart = powered("restart_base")
    assert (restart.data.train_examples, restart.student.epochs) == (10000, 8)
    t2 = powered("t2")
    assert (t2.base.student.timesteps, t2.base.eval.timesteps, t2.grid.timesteps) == (2, (2,), (2,))
    assert (t2.ablation.head_ratios, t2.ablation.weight_temperatures) == ((), ())
    long = powered("t2_long")
    assert (long.base.student.epochs, long.base.student.timesteps, long.grid.seeds) == (
        8,
        2,
        (0, 1, 2, 3),
    )
    assert (long.base.data.train_examples, long.base.student.lr) == (20000, 0.1)
    assert (long.ablation.head_ratios, long.ablation.weight_temperatures) == ((), ())
    # The extension reuses t2_long's cells: the same training config, more seeds.
    ext = powered("t2_long_ext")
    assert ext.base.to_dict() == powered("t2_long_base").to_dict() == long.base.to_dict()
    assert (ext.grid.seeds, ext.grid.methods) == (tuple(range(8)), long.grid.methods)
    # The replication is the T = 2 protocol at seeds 0-3 (its teacher is run.sh's to link).
    rep = powered("t2_rep")
    assert rep.base.to_dict() == powered("t2_rep_base").to_dict() == t2.base.to_dict()
    assert (rep.grid.seeds, rep.grid.methods) == ((0, 1, 2, 3), t2.grid.methods)
    # Teacher seeds: the T = 2 protocol but for the teacher's root seed (students set their own).
    for k in range(1, 13):
        grid = powered(f"t2_teacher{k}")
        assert grid.base.to_dict() == t2.base.to_dict() | {"seed": k}
        assert powered(f"t2_teacher{k}_base").to_dict() == grid.base.to_dict()
        assert grid.grid.seeds == ((0, 1, 2, 3) if k <= 2 else (0, 1))
    # No distillation: the T = 2 protocol's students, CE alone, at seeds 0-7.
    ce = powered("t2_ce")
    assert ce.base.to_dict() == powered("t2_ce_base").to_dict() == t2.base.to_dict()
    assert (ce.grid.methods, ce.grid.seeds) == (("ce",), tuple(range(8)))
    with pytest.raises(ValueError, match="argument must be one of"):
        powered("restart_grid")
    # A best checkpoint may be selected on held-out training images.
    config = _config()
    config.data.validation_examples, config.data.eval_on_validation = 100, True
    config.checkpoint.select = "best"
    _validate(config, tmp_path)
    assert runs.selection_label(config).startswith("best eval accuracy on the 100 held-out")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("student.timesteps", 0, r"config.student.timesteps \(T\) must be >= 1"),
        ("eval.timesteps", (0, 2), "config.eval.timesteps must all be >= 1"),
        ("student.mu", 0.0, r"config.student.mu must be in \(0, 1\]"),
        ("student.mu", 1.5, r"config.student.mu must be in \(0, 1\]"),
        ("student.temperature", 0.0, "config.student.temperature must be > 0"),
        ("student.alpha", -0.1, r"config.student.alpha must be in \[0, 1\]"),
        ("student.alpha", 1.1, r"config.student.alpha must be in \[0, 1\]"),
        ("student.method", "kl", "config.student.method must be one of"),
        ("student.method", "fixed_ratio", "config.student.head_ratio must be set for method fixed"),
        ("student.batch_size", 30, "config.student.batch_size must be divisible by the device"),
        ("teacher.batch_size", 6, "config.teacher.batch_size must be divisible by the device"),
        ("eval.batch_size", 10, "config.eval.batch_size must be divisible by the device"),
        ("model.name", "resnet50", "config.model.name must be one of"),
        ("model.remat", "blocks", "config.model.remat must be one of"),
        ("data.name", "mnist", "config.data.name must be one of"),
        ("teacher.epochs", 0, "config.teacher.epochs must be >= 1"),
        ("student.grad_clip_norm", 0.0, "config.student.grad_clip_norm must be > 0 or None"),
        # The neuron's own rules (neurons.neuron_config), named by their config key:
        ("model.neuron.tau", 0.5, r"config.model.neuron.tau must be >= 1"),
        ("model.neuron.v_reset", 1.5, r"config.model.neuron.v_reset \(1.5\) must be below"),
        ("model.neuron.surrogate", "relu", "config.model.neuron.surrogate .*unknown surrogate"),
        ("model.neuron.surrogate_alpha", -1.0, "surrogate_alpha: .*alpha must be a finite"),
        ("distributed.initialize", "maybe", "config.distributed.initialize must be one of"),
        ("checkpoint.select", "last", "config.checkpoint.select must be one of"),
        # Selecting on the test split is refused: only a hold-out may select a checkpoint.
        ("checkpoint.select", "best", r"config.checkpoint.select 'best' would select .*'test'"),
        ("student.weight_temperature", 0.0, "config.student.weight_temperature must be > 0"),
        ("data.teacher_train_examples", -1, "config.data.teacher_train_examples must be >= 0"),
    ],
)
def test_each_bad_value_is_named(tmp_path, key, value, message):
    config = _config()
    *sections, name = key.split(".")
    parent = config
    for section in sections:
        parent = parent[section]
    parent[name] = value
    with pytest.raises(ValueError, match=message):
        _validate(config, tmp_path)
    assert not (tmp_path / "work").exists()


def test_unknown_keys_and_wrong_types(tmp_path):
    config = _config()
    config.student.bogus = 1
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['student.bogus'\]"):
        _validate(config, tmp_path)
    config = _config()
    with config.ignore_type():
        config.student.timesteps = "4"
    with pytest.raises(ValueError, match="config.student.timesteps must be of type int, got '4'"):
        _validate(config, tmp_path)
    config = _config()
    del config.teacher["lr"]
    with pytest.raises(ValueError, match=r"missing config key\(s\) \['teacher.lr'\]"):
        _validate(config, tmp_path)
    with pytest.raises(ValueError, match="--mode must be one of"):
        _validate(_config(), tmp_path, mode="train")


def test_dataset_path_missing_or_wrong_layout(tmp_path):
    config = _config()
    config.data.name = "image_folder"
    config.data.data_dir = str(tmp_path / "nowhere")
    with pytest.raises((ValueError, FileNotFoundError), match="nowhere"):
        _validate(config, tmp_path)
    (tmp_path / "imgs" / "val" / "cat").mkdir(parents=True)  # no train/ or test/ split folder
    config.data.data_dir = str(tmp_path / "imgs")
    with pytest.raises((ValueError, FileNotFoundError), match="imgs"):
        _validate(config, tmp_path)
    # Unset: the error names the key to set.
    config.data.data_dir = ""
    with pytest.raises(ValueError, match=r"set config\.data\.data_dir, e\.g\. --config\.data"):
        _validate(config, tmp_path)
    # A relative path that is not there: the error says relative to what, and where the
    # shipped configs look.
    config.data.data_dir = "data/no-such-dataset"
    with pytest.raises(FileNotFoundError, match="relative to the current directory.*data/ of"):
        _validate(config, tmp_path)
    # Only the tfds sources can download.
    config = _config()
    config.data.download = True
    with pytest.raises(ValueError, match="cannot download"):
        _validate(config, tmp_path)
    assert not (tmp_path / "work").exists()


def _fake_checkpoint(phase_dir, **model):
    state = TrainState(
        step=jnp.asarray(3, jnp.int32),
        params={"w": jnp.ones(2)},
        batch_stats={},
        opt_state=(),
    )
    ck = ckpt_lib.PhaseCheckpoints(str(phase_dir), async_save=False)
    ck.save(state, {"epoch": 1, "finished": True, "model": model}, best=True)
    ck.close()


def test_teacher_checkpoint_missing_or_mismatched(tmp_path):
    config = _config()
    with pytest.raises(FileNotFoundError, match="no teacher checkpoint in .*teacher"):
        _validate(config, tmp_path, mode="distill")
    with pytest.raises(FileNotFoundError, match="no teacher checkpoint"):
        _validate(config, tmp_path, mode="eval")

    teacher = tmp_path / "work" / "teacher"
    width = config.model.width_mult
    _fake_checkpoint(teacher, name="vgg16", width_mult=width, num_classes=10)
    with pytest.raises(
        ValueError, match=r"checkpoint .*teacher.*best.*3.* name: checkpoint has 'vgg16'"
    ):
        _validate(config, tmp_path, mode="distill")
    _fake_checkpoint(tmp_path / "t2", name="resnet20", width_mult=width, num_classes=100)
    config.student.teacher_checkpoint = str(tmp_path / "t2")
    _validate(config, tmp_path, mode="distill")  # architecture matches; classes need the data
    with pytest.raises(ValueError, match="num_classes: checkpoint has 100, expected 10"):
        cv.check_existing_checkpoints(config, 10, mode="distill", workdir=str(tmp_path / "work"))
    with pytest.raises(FileNotFoundError, match="no student checkpoint"):
        _validate(config, tmp_path, mode="eval")


# ----------------------------------------------------------------------------- CLI


def _env(cache_dir):
    env = dict(os.environ)
    # Compiled programs are shared between the CLI runs of this module.
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _cli(workdir, *flags, env, timeout=600, config=QUICKSTART, cwd=ROOT):
    cmd = [sys.executable, "-m", "htakl_jax.main", f"--config={config}", f"--workdir={workdir}"]
    return subprocess.run(
        cmd + list(flags), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package as a user gets it: a wheel built from a copy of the source, installed
    (not editable) into its own folder, plus a copy of the quickstart config outside the
    repository. Returns (env additions, config path, a working folder outside the repository)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(
        ROOT / "htakl_jax", src / "htakl_jax", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True)
    run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)])
    (wheel,) = (tmp / "dist").glob("htakl_jax-*.whl")
    run(pip + ["install", "--no-deps", "--target", str(tmp / "site"), str(wheel)])
    shutil.copy(QUICKSTART, tmp / "my_config.py")
    return {"PYTHONPATH": str(tmp / "site")}, str(tmp / "my_config.py"), tmp


TINY = (
    "--config.model.width_mult=0.0625",
    "--config.teacher.epochs=1",
    "--config.student.epochs=1",
    "--config.eval.timesteps=(1,2)",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def test_cli_invalid_config_exits_nonzero_and_touches_nothing(tmp_path, cache_dir):
    workdir = tmp_path / "work"
    r = _cli(workdir, "--config.student.mu=1.5", env=_env(cache_dir))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "config.student.mu must be in (0, 1]" in r.stderr
    r = _cli(workdir, "--config.student.bogus=1", env=_env(cache_dir))
    assert r.returncode != 0 and "bogus" in r.stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_cli_mode_all_end_to_end_then_reuses_teacher(tmp_path, cache_dir, installed):
    # Run as a user of the built wheel: from outside the repository, with the package imported
    # from the wheel's install folder and the defaults read from inside the package.
    site_env, config, outside = installed
    env = _env(cache_dir) | site_env
    where = subprocess.run(
        [sys.executable, "-c", "import htakl_jax; print(htakl_jax.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(site_env["PYTHONPATH"]), where.stdout
    cli = functools.partial(_cli, config=config, cwd=outside, env=env)
    workdir = tmp_path / "work"
    r = cli(workdir, *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert set(results) >= {"teacher_accuracy", "student_accuracy", "student_timesteps", "config"}
    assert set(results["student_accuracy"]) == {"1", "2"}
    assert 0.0 <= results["teacher_accuracy"] <= 1.0
    assert all(0.0 <= a <= 1.0 for a in results["student_accuracy"].values())
    assert results["config"]["model"]["width_mult"] == 0.0625
    assert results["config"]["student"]["method"] == "hta_kl"
    # The final checkpoint is reported, by default (never one selected on the test split).
    assert results["checkpoint_selection"].startswith("final") and results["student_epoch"] == 1
    assert results["eval_split"] == "test"
    for phase in ("teacher", "student"):
        lines = (workdir / phase / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1 and "eval_accuracy" in json.loads(lines[0])
    teacher_steps = os.listdir(workdir / "teacher" / ckpt_lib.LATEST_DIR)

    # Same workdir, more student epochs: the finished teacher is reused, the student resumes.
    r = cli(workdir, *TINY[:-2], "--config.student.epochs=2", "--mode=distill")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "student: resumed from step 22" in r.stderr
    assert os.listdir(workdir / "teacher" / ckpt_lib.LATEST_DIR) == teacher_steps
    assert len((workdir / "student" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_cli_sigterm_saves_and_resume_continues(tmp_path, cache_dir):
    workdir = tmp_path / "work"
    flags = (
        "--config.model.width_mult=0.0625",
        "--config.teacher.epochs=500",
        "--config.checkpoint.every_epochs=1000",
        "--config.eval.every_epochs=1000",
        "--mode=teacher",
    )
    cmd = [sys.executable, "-m", "htakl_jax.main", f"--config={QUICKSTART}", f"--workdir={workdir}"]
    proc = subprocess.Popen(
        cmd + list(flags), cwd=ROOT, env=_env(cache_dir), stderr=subprocess.PIPE, text=True
    )
    metrics = workdir / "teacher" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None:
        assert time.monotonic() < deadline, "no epoch finished within 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    steps = [int(s) for s in os.listdir(workdir / "teacher" / ckpt_lib.LATEST_DIR)]
    assert len(steps) == 1 and steps[0] >= 22  # only the SIGTERM save; at least one epoch done
    stopped = steps[0]

    epochs = stopped // 22 + 2  # finish within two more epochs
    resume_flags = [
        f"--config.teacher.epochs={epochs}" if "teacher.epochs" in f else f for f in flags
    ]
    r = _cli(workdir, *resume_flags, env=_env(cache_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"teacher: resumed from step {stopped}" in r.stderr
    _, meta = ckpt_lib.read_meta(str(workdir / "teacher"), prefer_best=False)
    assert meta["finished"] and meta["step"] == epochs * 22
