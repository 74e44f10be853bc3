"""Config checks that run before anything is compiled or written.

`validate(config, mode=..., workdir=..., num_devices=...)` raises one ValueError (or
FileNotFoundError for missing paths) whose message names the offending key or path. It checks the
key set and value types against `htakl_jax.defaults`, value ranges, batch divisibility by the
device count, the dataset folder layout, and, for modes that need them, the teacher/student
checkpoints and the teacher's class count and architecture.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import data as data_lib
from htakl_jax import defaults, methods, neurons, runs, surrogate
from htakl_jax.models import DTYPES, MODELS, REMAT_MODES
from htakl_jax.parallel import INIT_MODES

# Keys whose value may be None (placeholders in the default config), with the type otherwise.
_NULLABLE = {
    "model.neuron.v_reset": float,
    "teacher.grad_clip_norm": float,
    "student.grad_clip_norm": float,
    "student.head_ratio": float,
    "student.weight_temperature": float,
    "data.teacher_train_examples": int,
    "lasnn.beta": float,
}


def default_config() -> ml_collections.ConfigDict:
    """`htakl_jax.defaults.get_config()`: the reference key set and types."""
    return defaults.get_config()


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
    """Unknown keys, missing keys and wrong value types, compared with htakl_jax/defaults.py."""
    ref = _flatten(default_config())
    got = _flatten(config)
    unknown = sorted(set(got) - set(ref))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; htakl_jax/defaults.py lists the keys")
    missing = sorted(set(ref) - set(got))
    if missing:
        raise ValueError(f"missing config key(s) {missing}; start from htakl_jax/defaults.py")
    for key, value in got.items():
        if not _type_ok(value, ref[key], _NULLABLE.get(key)):
            want = (_NULLABLE.get(key) or type(ref[key])).__name__
            raise ValueError(f"config.{key} must be of type {want}, got {value!r}")


def _require(cond: bool, key: str, what: str, value: Any) -> None:
    if not cond:
        raise ValueError(f"config.{key} {what}, got {value!r}")


def _check_data_and_model(c: ml_collections.ConfigDict) -> None:
    names = sorted(data_lib.SOURCES)
    _require(c.data.name in data_lib.SOURCES, "data.name", f"must be one of {names}", c.data.name)
    _require(c.data.pad >= 0, "data.pad", "must be >= 0", c.data.pad)
    for key in ("train_examples", "validation_examples"):
        _require(c.data[key] >= 0, f"data.{key}", "must be >= 0 (0 = off)", c.data[key])
    teacher_n = c.data.teacher_train_examples
    if teacher_n is not None:
        _require(teacher_n >= 0, "data.teacher_train_examples", "must be >= 0 or None", teacher_n)
    _require(
        c.data.validation_examples > 0 or not c.data.eval_on_validation,
        "data.eval_on_validation",
        "needs data.validation_examples > 0",
        c.data.eval_on_validation,
    )
    m = c.model
    _require(m.name in MODELS, "model.name", f"must be one of {sorted(MODELS)}", m.name)
    _require(m.width_mult > 0, "model.width_mult", "must be > 0", m.width_mult)
    _require(m.dtype in DTYPES, "model.dtype", f"must be one of {tuple(DTYPES)}", m.dtype)
    _require(m.remat in REMAT_MODES, "model.remat", f"must be one of {REMAT_MODES}", m.remat)


def _check_neuron(n: ml_collections.ConfigDict) -> None:
    """The neuron's own rules (`neurons.neuron_config`, `surrogate.get`), named by config key."""
    _require(n.v_threshold > 0, "model.neuron.v_threshold", "must be > 0", n.v_threshold)
    try:
        spike = surrogate.get(n.surrogate, n.surrogate_alpha)
    except ValueError as e:
        raise ValueError(f"config.model.neuron.surrogate / surrogate_alpha: {e}") from e
    try:
        neurons.neuron_config(
            tau=n.tau,
            v_threshold=n.v_threshold,
            v_reset=n.v_reset,
            decay_input=n.decay_input,
            detach_reset=n.detach_reset,
            surrogate_fn=spike,
        )
    except ValueError as e:  # its messages start with the argument's name
        raise ValueError(f"config.model.neuron.{e}") from e


def _check_student(s: ml_collections.ConfigDict) -> None:
    _require(s.timesteps >= 1, "student.timesteps", "(T) must be >= 1", s.timesteps)
    names = sorted(methods.NAMES)
    _require(s.method in methods.NAMES, "student.method", f"must be one of {names}", s.method)
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
    if s.weight_temperature is not None:
        w = s.weight_temperature
        _require(w > 0, "student.weight_temperature", "must be > 0 (or None)", w)


def _one_of(c: ml_collections.ConfigDict, key: str, allowed: tuple) -> None:
    value = c[key.split(".")[0]][key.split(".")[1]]
    _require(value in allowed, key, f"must be one of {allowed}", value)


def _check_methods(c: ml_collections.ConfigDict) -> None:
    """The comparison methods' blocks (htakl_jax.methods), whichever method is selected."""
    for key in ("kdsnn.beta", "bkdsnn.alpha", "bkdsnn.wsld_weight", "lasnn.warmup_epochs"):
        value = c[key.split(".")[0]][key.split(".")[1]]
        _require(value >= 0, key, "must be >= 0", value)
    beta = c.lasnn.beta
    _require(beta is None or beta >= 0, "lasnn.beta", "must be >= 0 (or None)", beta)
    _require(
        0 <= c.bkdsnn.mask_ratio <= 1, "bkdsnn.mask_ratio", "must be in [0, 1]", c.bkdsnn.mask_ratio
    )
    _require(c.bkdsnn.temperature > 0, "bkdsnn.temperature", "must be > 0", c.bkdsnn.temperature)
    _one_of(c, "kdsnn.adapter", ("always", "if_needed"))
    _one_of(c, "lasnn.distance", ("attention", "mse"))
    _one_of(c, "lasnn.schedule", ("joint", "progressive"))
    _one_of(c, "bkdsnn.logit", ("wsld", "fkl"))
    for block in methods.FEATURE_METHODS:
        _one_of(c, f"{block}.features", neurons.TAP_KINDS)
    if c.student.method in methods.FEATURE_METHODS:
        _require(
            c.model.remat != "block",
            "model.remat",
            f"must be 'none' or 'neuron' for method {c.student.method} (block remat passes no "
            "gradient through the stage features)",
            c.model.remat,
        )


def _check_phase(c: ml_collections.ConfigDict, phase: str, num_devices: int) -> None:
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
    clip = p.grad_clip_norm
    _require(clip is None or clip > 0, f"{phase}.grad_clip_norm", "must be > 0 or None", clip)


def _check_eval_and_run(c: ml_collections.ConfigDict, num_devices: int) -> None:
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
    _one_of(c, "checkpoint.select", runs.SELECTIONS)
    _require(
        c.checkpoint.select != "best" or c.data.eval_on_validation,
        "checkpoint.select",
        f"'best' would select by accuracy on the {c.data.eval_split!r} split; set "
        "data.eval_on_validation=True (select on held-out train images) or use 'final'",
        c.checkpoint.select,
    )
    k = c.checkpoint
    _require(k.every_epochs >= 1, "checkpoint.every_epochs", "must be >= 1", k.every_epochs)
    _require(k.keep >= 1, "checkpoint.keep", "must be >= 1", k.keep)
    _require(c.log_every_steps >= 1, "log_every_steps", "must be >= 1", c.log_every_steps)
    mode = c.distributed.initialize
    _require(mode in INIT_MODES, "distributed.initialize", f"must be one of {INIT_MODES}", mode)


def check_values(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Value ranges and cross-key constraints."""
    _check_data_and_model(config)
    _check_neuron(config.model.neuron)
    _check_student(config.student)
    _check_methods(config)
    for phase in runs.PHASES:
        _check_phase(config, phase, num_devices)
    _check_eval_and_run(config, num_devices)


def check_data(config: ml_collections.ConfigDict) -> None:
    """Dataset source, path and folder layout of both splits (no image is decoded)."""
    data_dir = config.data.data_dir or None
    for key in ("train_split", "eval_split"):
        split = config.data[key]
        try:
            data_lib.check_split(
                config.data.name, split, data_dir=data_dir, download=config.data.download
            )
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(
                f"config.data ({config.data.name}, {key}={split!r}, data_dir={data_dir!r}): {e}"
                + _data_dir_hint(data_dir)
            ) from e


def _data_dir_hint(data_dir: str | None) -> str:
    """What to set when the data is missing: the key, and where the shipped configs look."""
    if data_dir is None:
        return "; set config.data.data_dir, e.g. --config.data.data_dir=/path/to/dataset"
    if not os.path.isabs(data_dir) and not os.path.exists(data_dir):
        return (
            f"; {data_dir!r} is relative to the current directory {os.getcwd()!r} (the shipped "
            "configs look in data/ of the repository: link or copy the data there, or set "
            "--config.data.data_dir)"
        )
    return ""


def check_checkpoints(config: ml_collections.ConfigDict, *, mode: str, workdir: str) -> None:
    """The teacher (modes distill/eval, or an external student.teacher_checkpoint) and the student
    (mode eval) must exist, and the teacher must be the configured architecture."""
    t_dir = runs.teacher_dir(config, workdir)
    needs_teacher = mode == "eval" or (mode == "distill" and config.student.method != "ce")
    needs_teacher |= mode == "all" and bool(config.student.teacher_checkpoint)
    if needs_teacher:
        if not ckpt_lib.has_checkpoint(t_dir):
            key = "student.teacher_checkpoint" if config.student.teacher_checkpoint else "--workdir"
            raise FileNotFoundError(
                f"no teacher checkpoint in {t_dir!r} (from {key}); train one with --mode teacher "
                "or point config.student.teacher_checkpoint at a teacher phase directory"
            )
        ckpt_lib.check_model_meta(*ckpt_lib.read_meta(t_dir), runs.expected_model(config))
    if mode == "eval":
        s_dir = runs.phase_dir(workdir, "student")
        if not ckpt_lib.has_checkpoint(s_dir):
            raise FileNotFoundError(f"no student checkpoint in {s_dir!r}; run --mode distill first")


def check_existing_checkpoints(
    config: ml_collections.ConfigDict, num_classes: int, *, mode: str, workdir: str
) -> None:
    """Checkpoints this run would restore must match the configured model and the dataset's class
    count (teacher/student class count mismatch, architecture change between runs)."""
    dirs = [runs.teacher_dir(config, workdir)]
    if mode != "teacher":
        dirs.append(runs.phase_dir(workdir, "student"))
    for d in dirs:
        if ckpt_lib.has_checkpoint(d):
            ckpt_lib.check_model_meta(
                *ckpt_lib.read_meta(d), runs.expected_model(config, num_classes)
            )


def validate(
    config: ml_collections.ConfigDict, *, mode: str, workdir: str, num_devices: int
) -> None:
    """All checks that need no decoded data; raises ValueError/FileNotFoundError on the first."""
    if mode not in runs.MODES:
        raise ValueError(f"--mode must be one of {runs.MODES}, got {mode!r}")
    if not workdir:
        raise ValueError("--workdir must be set")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir!r} exists and is not a directory")
    check_keys_and_types(config)
    check_values(config, num_devices=num_devices)
    check_data(config)
    check_checkpoints(config, mode=mode, workdir=workdir)
