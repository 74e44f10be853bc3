"""Bad inputs not covered by test_main/test_train/test_losses: each fails with one error naming the
offending item, a non-zero exit, and no change to an existing workdir."""

import runpy
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import losses, runs, steps, train

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "configs" / "quickstart.py")
TINY = ("--config.model.width_mult=0.0625",)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A workdir holding files of an earlier run, which a failing command must leave as they are."""
    w = tmp_path / "work"
    (w / "teacher").mkdir(parents=True)
    (w / "config.json").write_text('{"old": true}\n')
    (w / "teacher" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return w


def _image_folder(root: Path, *, truncate: str | None = None) -> Path:
    """root/{train,test}/{a,b}/{0,1}.png, 8x8 RGB; `truncate` = a relative path to cut short."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    if truncate:
        bad = root / truncate
        bad.write_bytes(bad.read_bytes()[:40])
    return root


def _cli(workdir: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "htakl_jax.main", f"--config={QUICKSTART}", f"--workdir={workdir}"]
    return subprocess.run(
        cmd + [*TINY, *flags], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("case", ["wrong_type", "empty_dataset", "corrupt_image"])
def test_cli_bad_input_is_named_exits_nonzero_and_leaves_workdir(tmp_path, workdir, case):
    data = ("--config.data.name=image_folder", f"--config.data.cache_dir={tmp_path / 'cache'}")
    if case == "wrong_type":
        flags, named = ("--config.student.timesteps=abc",), "student.timesteps"
    elif case == "empty_dataset":
        (tmp_path / "empty").mkdir()
        flags, named = (*data, f"--config.data.data_dir={tmp_path / 'empty'}"), "empty"
    else:
        root = _image_folder(tmp_path / "imgs", truncate="train/b/1.png")
        flags = (*data, f"--config.data.data_dir={root}", "--config.data.pad=0")
        named = str(root / "train" / "b" / "1.png")
    before = _snapshot(workdir)
    r = _cli(workdir, *flags)
    assert r.returncode != 0, r.stderr[-2000:]
    assert named in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert _snapshot(workdir) == before


def _quickstart():
    config = runpy.run_path(QUICKSTART)["get_config"]()
    config.model.width_mult = 0.0625
    return config


def _real_teacher(phase_dir: Path, config) -> Path:
    """A finished teacher checkpoint with the configured architecture (random weights)."""
    model = runs.build_model(config, num_classes=10, spiking=False, bn_axis_name=None)
    tx, _ = steps.make_optimizer(config.teacher, steps_per_epoch=1)
    state = jax.jit(lambda k: steps.init_state(model, tx, k, (8, 8, 3)))(jax.random.key(0))
    meta = {"epoch": 1, "finished": True}
    meta["model"] = runs.model_meta(config, num_classes=10, spiking=False)
    ck = ckpt_lib.PhaseCheckpoints(str(phase_dir), async_save=False)
    ck.save(state, meta, best=True)
    ck.close()
    return phase_dir


def _truncate_arrays(step_dir: Path) -> None:
    for path in (step_dir / "variables").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_corrupt_teacher_checkpoint_is_named_before_anything_is_written(tmp_path, workdir):
    config = _quickstart()
    teacher = _real_teacher(tmp_path / "teacher_run", config)
    for sub in (ckpt_lib.BEST_DIR, ckpt_lib.LATEST_DIR):
        _truncate_arrays(teacher / sub / "0")
    config.student.teacher_checkpoint = str(teacher)
    before = _snapshot(workdir)
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        # The final checkpoint (checkpoints/0) is the one tried first, then best/.
        match = r"no usable checkpoint in .*teacher_run.*checkpoints/0"
        with pytest.raises(ValueError, match=match):
            train.train_and_evaluate(config, str(workdir), mode="distill")
    assert _snapshot(workdir) == before
    assert not (workdir / "student").exists()


def test_teacher_checkpoint_with_unreadable_meta_is_named(tmp_path, workdir):
    from htakl_jax import config_validation as cv

    config = _quickstart()
    teacher = _real_teacher(tmp_path / "teacher_run", config)
    for sub in (ckpt_lib.BEST_DIR, ckpt_lib.LATEST_DIR):
        for f in (teacher / sub / "0" / "meta").iterdir():
            f.write_bytes(b"\x00garbage")
    config.student.teacher_checkpoint = str(teacher)
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        with pytest.raises(FileNotFoundError, match=r"unreadable: .*teacher_run/best/0"):
            cv.validate(config, mode="distill", workdir=str(workdir), num_devices=4)


def test_loss_shape_mismatch_fails_at_trace_time():
    student_TBC = jax.ShapeDtypeStruct((2, 3, 5), jnp.float32)
    labels_B = jax.ShapeDtypeStruct((3,), jnp.int32)

    def loss(s, t, y):
        return losses.distillation_loss(s, t, y, method="hta_kl", alpha=0.9, temperature=4.0)[0]

    traced = jax.jit(loss)
    with pytest.raises(ValueError, match=r"\(3, 6\)"):  # class count differs
        traced.lower(student_TBC, jax.ShapeDtypeStruct((3, 6), jnp.float32), labels_B)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):  # batch differs
        traced.lower(student_TBC, jax.ShapeDtypeStruct((4, 5), jnp.float32), labels_B)
    # The matching shapes trace fine (the check is not a blanket failure).
    traced.lower(student_TBC, jax.ShapeDtypeStruct((3, 5), jnp.float32), labels_B)
