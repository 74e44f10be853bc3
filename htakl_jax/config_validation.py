"""Config checks that run before anything is compiled or written.

`validate(config, mode=..., workdir=..., num_devices=...)` raises one ValueError (or
FileNotFoundError for missing paths) whose message names the offending key or path. It checks the
key set and value types against configs/default.py, value ranges, batch divisibility by the device
count, the dataset folder layout, and, for modes that need them, the teacher/student checkpoints
and the teacher's class count and architecture.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

import ml_collections

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import data as data_lib
from htakl_jax import losses
from htakl_jax.models import MODELS, REMAT_MODES

MODES = ("all", "teacher", "distill", "eval")
DTYPES = ("float32", "bfloat16")
SURROGATES = ("sigmoid", "atan", "rectangle", "triangle", "superspike")
_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.py"
# Keys whose value may be None (placeholders in the default config), with the type otherwise.
_NULLABLE = {"model.neuron.v_reset": float, "student.head_ratio": float}


def default_config() -> ml_collections.ConfigDict:
    """configs/default.py's get_config() (the reference key set and types)."""
    if not _DEFAULT_CONFIG.is_file():
        raise FileNotFoundError(f"default config not found at {_DEFAULT_CONFIG}")
    return runpy.run_path(str(_DEFAULT_CONFIG))["get_config"]()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict | dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _type_ok(value: Any, reference: Any, nullable: type | None) -> bool:
    if value is None:
        return nullable is not None
    expected = nullable if reference is None else type(reference)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected in (tuple, list):
        return isinstance(value, tuple | list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def check_keys_and_types(config: ml_collections.ConfigDict) -> None:
    """Unknown keys, missing keys and wrong value types, compared with configs/default.py."""
    ref = _flatten(default_config())
    got = _flatten(config)
    unknown = sorted(set(got) - set(ref))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; see configs/default.py for valid keys")
    missing = sorted(set(ref) - set(got))
    if missing:
        raise ValueError(f"missing config key(s) {missing}; start from configs/default.py")
    for key, value in got.items():
        if not _type_ok(value, ref[key], _NULLABLE.get(key)):
            want = (_NULLABLE.get(key) or type(ref[key])).__name__
            raise ValueError(f"config.{key} must be of type {want}, got {value!r}")


def _require(cond: bool, key: str, what: str, value: Any) -> None:
    if not cond:
        raise ValueError(f"config.{key} {what}, got {value!r}")


def check_values(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Value ranges and cross-key constraints."""
    c = config
    _require(
        c.data.name in data_lib.SOURCES,
        "data.name",
        f"must be one of {sorted(data_lib.SOURCES)}",
        c.data.name,
    )
    _require(c.data.pad >= 0, "data.pad", "must be >= 0", c.data.pad)
    for key in ("train_examples", "validation_examples"):
        _require(c.data[key] >= 0, f"data.{key}", "must be >= 0 (0 = off)", c.data[key])
    _require(
        c.data.validation_examples > 0 or not c.data.eval_on_validation,
        "data.eval_on_validation",
        "needs data.validation_examples > 0",
        c.data.eval_on_validation,
    )
    _require(c.model.name in MODELS, "model.name", f"must be one of {sorted(MODELS)}", c.model.name)
    _require(c.model.width_mult > 0, "model.width_mult", "must be > 0", c.model.width_mult)
    _require(c.model.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}", c.model.dtype)
    _require(
        c.model.remat in REMAT_MODES, "model.remat", f"must be one of {REMAT_MODES}", c.model.remat
    )
    n = c.model.neuron
    _require(n.tau > 1.0, "model.neuron.tau", "must be > 1 (membrane time constant)", n.tau)
    _require(n.v_threshold > 0, "model.neuron.v_threshold", "must be > 0", n.v_threshold)
    _require(
        n.surrogate in SURROGATES,
        "model.neuron.surrogate",
        f"must be one of {SURROGATES}",
        n.surrogate,
    )
    _require(
        n.surrogate_alpha > 0, "model.neuron.surrogate_alpha", "must be > 0", n.surrogate_alpha
    )

    s = c.student
    _require(s.timesteps >= 1, "student.timesteps", "(T) must be >= 1", s.timesteps)
    _require(
        s.method in losses.METHODS,
        "student.method",
        f"must be one of {sorted(losses.METHODS)}",
        s.method,
    )
    _require(0.0 <= s.alpha <= 1.0, "student.alpha", "must be in [0, 1]", s.alpha)
    _require(s.temperature > 0, "student.temperature", "must be > 0", s.temperature)
    _require(0.0 < s.mu <= 1.0, "student.mu", "must be in (0, 1]", s.mu)
    if s.method == "fixed_ratio":
        _require(
            s.head_ratio is not None,
            "student.head_ratio",
            "must be set for method fixed_ratio",
            s.head_ratio,
        )
    if s.head_ratio is not None:
        _require(
            0.0 <= s.head_ratio <= 1.0, "student.head_ratio", "must be in [0, 1]", s.head_ratio
        )

    for phase in ("teacher", "student"):
        p = c[phase]
        _require(p.epochs >= 1, f"{phase}.epochs", "must be >= 1", p.epochs)
        _require(p.batch_size >= 1, f"{phase}.batch_size", "must be >= 1", p.batch_size)
        _require(
            p.batch_size % num_devices == 0,
            f"{phase}.batch_size",
            f"must be divisible by the device count {num_devices}",
            p.batch_size,
        )
        _require(p.lr > 0, f"{phase}.lr", "must be > 0", p.lr)
        _require(p.warmup_epochs >= 0, f"{phase}.warmup_epochs", "must be >= 0", p.warmup_epochs)
        _require(0.0 <= p.momentum < 1.0, f"{phase}.momentum", "must be in [0, 1)", p.momentum)
        _require(p.weight_decay >= 0, f"{phase}.weight_decay", "must be >= 0", p.weight_decay)

    e = c.eval
    _require(len(e.timesteps) >= 1, "eval.timesteps", "must list at least one T", e.timesteps)
    _require(all(t >= 1 for t in e.timesteps), "eval.timesteps", "must all be >= 1", e.timesteps)
    _require(e.batch_size >= 1, "eval.batch_size", "must be >= 1", e.batch_size)
    _require(
        e.batch_size % num_devices == 0,
        "eval.batch_size",
        f"must be divisible by the device count {num_devices}",
        e.batch_size,
    )
    _require(e.every_epochs >= 1, "eval.every_epochs", "must be >= 1", e.every_epochs)
    _require(
        c.checkpoint.every_epochs >= 1,
        "checkpoint.every_epochs",
        "must be >= 1",
        c.checkpoint.every_epochs,
    )
    _require(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1", c.checkpoint.keep)
    _require(c.log_every_steps >= 1, "log_every_steps", "must be >= 1", c.log_every_steps)
    _require(
        c.distributed.initialize in ("auto", "yes", "no"),
        "distributed.initialize",
        "must be 'auto', 'yes' or 'no'",
        c.distributed.initialize,
    )


def check_data(config: ml_collections.ConfigDict) -> None:
    """Dataset source, path and folder layout of both splits (no image is decoded)."""
    data_dir = config.data.data_dir or None
    for key in ("train_split", "eval_split"):
        split = config.data[key]
        try:
            data_lib.check_split(config.data.name, split, data_dir=data_dir)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(
                f"config.data ({config.data.name}, {key}={split!r}, data_dir={data_dir!r}): {e}"
            ) from e


def check_checkpoints(config: ml_collections.ConfigDict, *, mode: str, workdir: str) -> None:
    """The teacher (modes distill/eval, or an external student.teacher_checkpoint) and the student
    (mode eval) must exist, and the teacher must be the configured architecture."""
    t_dir = config.student.teacher_checkpoint or os.path.join(workdir, "teacher")
    needs_teacher = mode == "eval" or (mode == "distill" and config.student.method != "ce")
    needs_teacher |= mode == "all" and bool(config.student.teacher_checkpoint)
    if needs_teacher:
        if not ckpt_lib.has_checkpoint(t_dir):
            key = "student.teacher_checkpoint" if config.student.teacher_checkpoint else "--workdir"
            raise FileNotFoundError(
                f"no teacher checkpoint in {t_dir!r} (from {key}); train one with --mode teacher "
                "or point config.student.teacher_checkpoint at a teacher phase directory"
            )
        path, meta = ckpt_lib.read_meta(t_dir)
        expected = {"name": config.model.name, "width_mult": float(config.model.width_mult)}
        ckpt_lib.check_model_meta(path, meta, expected)
    if mode == "eval":
        s_dir = os.path.join(workdir, "student")
        if not ckpt_lib.has_checkpoint(s_dir):
            raise FileNotFoundError(f"no student checkpoint in {s_dir!r}; run --mode distill first")


def check_existing_checkpoints(
    config: ml_collections.ConfigDict, num_classes: int, *, mode: str, workdir: str
) -> None:
    """Checkpoints this run would restore must match the configured model and the dataset's class
    count (teacher/student class count mismatch, architecture change between runs)."""
    dirs = [config.student.teacher_checkpoint or os.path.join(workdir, "teacher")]
    if mode != "teacher":
        dirs.append(os.path.join(workdir, "student"))
    expected = {
        "name": config.model.name,
        "width_mult": float(config.model.width_mult),
        "num_classes": int(num_classes),
    }
    for d in dirs:
        if ckpt_lib.has_checkpoint(d):
            path, meta = ckpt_lib.read_meta(d)
            ckpt_lib.check_model_meta(path, meta, expected)


def validate(
    config: ml_collections.ConfigDict, *, mode: str, workdir: str, num_devices: int
) -> None:
    """All checks that need no decoded data; raises ValueError/FileNotFoundError on the first."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    if not workdir:
        raise ValueError("--workdir must be set")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir!r} exists and is not a directory")
    check_keys_and_types(config)
    check_values(config, num_devices=num_devices)
    check_data(config)
    check_checkpoints(config, mode=mode, workdir=workdir)
