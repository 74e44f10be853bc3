"""A run as training, evaluation and analysis share it: its models, data and workdir.

One home for what every entry point derives from a config: the teacher or student module
(`build_model`), the train and eval splits (`load_data`), the workdir layout (`phase_dir`,
`teacher_dir`) and the restore of trained variables (`restore_for_eval`, `load_trained`).
Nothing here trains; `htakl_jax.train` (the loop) and `htakl_jax.analysis` both build on it.

Workdir layout:
  WORKDIR/config.json                the config the run was started with
  WORKDIR/teacher/, WORKDIR/student/ phase directories (checkpoints, see htakl_jax.checkpoint,
                                     metrics.jsonl, one JSON object per epoch, and the same
                                     scalars in TensorBoard event files events.out.tfevents.*,
                                     see htakl_jax.metrics)
  WORKDIR/results.json               the evaluation (teacher accuracy, student accuracy per T)
The teacher lives elsewhere when config.student.teacher_checkpoint names its phase directory.

Files are written whole or not at all (`atomic_write`, `write_json`): a run killed midway leaves
the previous file or none, never a torn one. `read_results` tells a whole results.json from a
missing or damaged one (a grid redoes a cell whose results.json it returns None for).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import IO, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import data as data_lib
from htakl_jax import parallel, surrogate
from htakl_jax.models import DTYPES, get_model
from htakl_jax.parallel import DATA_AXIS

PHASES = ("teacher", "student")
# What a command runs: teacher, then student, then eval ('all'), or one of them.
MODES = ("all", "teacher", "distill", "eval")
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A split in host memory: images uint8 [N, H, W, 3], labels int32 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ----------------------------------------------------------------------------- models


def build_model(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    spiking: bool,
    bn_axis_name: str | None = DATA_AXIS,
) -> nn.Module:
    """The configured teacher (spiking=False) or student (spiking=True) Flax module.

    `bn_axis_name`: the mesh axis of cross-device BatchNorm statistics (None outside shard_map).
    """
    kwargs: dict[str, Any] = {}
    if spiking:
        n = config.model.neuron
        kwargs = dict(
            tau=n.tau,
            v_threshold=n.v_threshold,
            v_reset=n.v_reset,
            decay_input=n.decay_input,
            detach_reset=n.detach_reset,
            surrogate=surrogate.get(n.surrogate, n.surrogate_alpha),
        )
    return get_model(
        config.model.name,
        num_classes=num_classes,
        spiking=spiking,
        timesteps=config.student.timesteps,
        width_mult=config.model.width_mult,
        dtype=DTYPES[config.model.dtype],
        bn_axis_name=bn_axis_name,
        remat=config.model.remat,
        **kwargs,
    )


def expected_model(config: ml_collections.ConfigDict, num_classes: int | None = None) -> dict:
    """What a stored checkpoint's model must match (`checkpoint.check_model_meta`): name and
    width, and the class count when it is known."""
    expected: dict[str, Any] = {
        "name": config.model.name,
        "width_mult": float(config.model.width_mult),
    }
    if num_classes is not None:
        expected["num_classes"] = int(num_classes)
    return expected


def model_meta(config: ml_collections.ConfigDict, *, num_classes: int, spiking: bool) -> dict:
    """Description stored with checkpoints and checked when a teacher is restored."""
    return expected_model(config, num_classes) | {
        "spiking": spiking,
        "timesteps": int(config.student.timesteps) if spiking else None,
    }


# ----------------------------------------------------------------------------- data


def load_data(
    config: ml_collections.ConfigDict, *, phase: str = "student"
) -> tuple[Dataset, Dataset, Any]:
    """(train, eval, DatasetInfo of the train split) from config.data for `phase`.

    mean/std come from the whole train split. data.train_examples > 0 trains on a class-balanced
    subset (the teacher on data.teacher_train_examples instead, when that is set);
    data.validation_examples > 0 holds that many train examples out of training, and
    data.eval_on_validation evaluates on them instead of data.eval_split (for tuning). All
    subsets are drawn with data.subset_seed (see htakl_jax.data.subsets), so the hold-out is the
    same for both phases.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    d = config.data
    train_examples, key = d.train_examples, "train_examples"
    if phase == "teacher" and d.teacher_train_examples is not None:
        train_examples, key = d.teacher_train_examples, "teacher_train_examples"
    kwargs = dict(data_dir=d.data_dir or None, cache_dir=d.cache_dir or None, download=d.download)
    tr_images, tr_labels, info = data_lib.load_split(d.name, d.train_split, **kwargs)
    try:
        train_idx, val_idx = data_lib.balanced_split(
            tr_labels,
            info.num_classes,
            train_examples=train_examples,
            validation_examples=d.validation_examples,
            seed=d.subset_seed,
        )
    except ValueError as e:
        raise ValueError(f"config.data.{key} / validation_examples: {e}") from e
    if d.eval_on_validation:
        eval_ds = Dataset(tr_images[val_idx], tr_labels[val_idx])
    else:
        ev_images, ev_labels, ev_info = data_lib.load_split(d.name, d.eval_split, **kwargs)
        if ev_info.num_classes != info.num_classes:
            raise ValueError(
                f"data: split {d.eval_split!r} has {ev_info.num_classes} classes but "
                f"{d.train_split!r} has {info.num_classes}"
            )
        eval_ds = Dataset(ev_images, ev_labels)
    if train_examples or d.validation_examples:
        train_ds = Dataset(tr_images[train_idx], tr_labels[train_idx])
    else:
        train_ds = Dataset(tr_images, tr_labels)
    return train_ds, eval_ds, info


# ----------------------------------------------------------------------------- workdir


def phase_dir(workdir: str, phase: str) -> str:
    """WORKDIR/<phase>: where a phase trained in `workdir` keeps its checkpoints and metrics."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return os.path.join(workdir, phase)


def teacher_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The teacher a run distils from: student.teacher_checkpoint, or WORKDIR/teacher."""
    return config.student.teacher_checkpoint or phase_dir(workdir, "teacher")


def teacher_finished(path: str) -> bool:
    """Whether `path` holds a teacher checkpoint marked finished (all epochs done)."""
    if not ckpt_lib.has_checkpoint(path):
        return False
    return bool(ckpt_lib.read_meta(path, prefer_best=False)[1].get("finished"))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Opens ``PATH.tmp`` for writing (``open`` with `mode` and `kwargs`) and, once the block
    ends without an exception, renames it onto `path` (``os.replace``, atomic on POSIX): a
    process killed at any moment leaves the old file or the new one, never a torn one. On an
    exception the temporary file is removed. No fsync: this guards against a killed process, not
    a power cut (a file torn by one is caught by readers such as `read_results`)."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON atomically (`atomic_write`); NumPy scalars and arrays
    become numbers and lists."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`, or None when the file is missing, unreadable, not valid JSON
    (e.g. cut short) or not an object."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def read_results(path: str | os.PathLike) -> dict | None:
    """A run's results.json (`RESULTS_FILE`) when it is whole: a JSON object with a numeric
    ``teacher_accuracy`` and a non-empty ``student_accuracy`` mapping T (str) to numbers. None
    when it is missing or damaged (not JSON, cut short, keys missing or of the wrong type)."""
    results = read_json_object(path)
    if results is None or not _is_number(results.get("teacher_accuracy")):
        return None
    accuracy = results.get("student_accuracy")
    if not isinstance(accuracy, dict) or not accuracy:
        return None
    return results if all(_is_number(a) for a in accuracy.values()) else None


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (WORKDIR/config.json)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_for_eval(
    phase_dir: str,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    info: Any,
    mesh: jax.sharding.Mesh,
    *,
    spiking: bool,
) -> tuple[Any, dict, str]:
    """Variables of a phase's checkpoint picked by `checkpoint_selection(config)` (the final one,
    or the best on the hold-out), placed replicated on `mesh`; also (meta, path)."""
    shape = (1, *info.image_size, 3)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False)
    )
    abstract = ckpt_lib.abstract_like(abstract, parallel.replicated(mesh))
    expected = model_meta(config, num_classes=info.num_classes, spiking=spiking)
    return ckpt_lib.restore_variables(
        phase_dir,
        abstract,
        expected_model=expected,
        prefer_best=checkpoint_selection(config) == "best",
    )


SELECTIONS = ("final", "best")


def checkpoint_selection(config: ml_collections.ConfigDict) -> str:
    """Which checkpoint of a phase is used and reported: config.checkpoint.select ("best" for a
    workdir trained before the key existed, which is what those runs reported)."""
    return config.checkpoint.get("select", "best")


def selection_label(config: ml_collections.ConfigDict) -> str:
    """How results.json's checkpoints were chosen, in words."""
    if checkpoint_selection(config) == "final":
        return "final (after the last epoch)"
    if config.data.get("eval_on_validation", False):
        return f"best eval accuracy on the {config.data.validation_examples} held-out train images"
    return f"best eval accuracy on the {config.data.eval_split!r} split (selected on it)"


# ----------------------------------------------------------------------------- trained runs


@dataclasses.dataclass
class TrainedRun:
    """A restored run: models (no cross-device BN axis), best variables, uint8 eval split."""

    workdir: str
    config: ml_collections.ConfigDict
    info: Any
    teacher: nn.Module
    teacher_variables: Any
    student: nn.Module
    student_variables: Any
    eval_images: np.ndarray
    eval_labels: np.ndarray


def load_trained(
    workdir: str,
    *,
    eval_data: tuple[Dataset, Any] | None = None,
) -> TrainedRun:
    """Restores the best teacher and student of `workdir` on one device, with its eval split.

    `eval_data`: an already loaded `(eval Dataset, DatasetInfo)` of the same data, to share it
    between runs (a grid's cells).
    """
    config = load_config(workdir)
    if eval_data is None:
        _, eval_ds, info = load_data(config)
    else:
        eval_ds, info = eval_data
    mesh = parallel.make_mesh(jax.devices()[:1])
    restored = {}
    for phase, spiking in (("teacher", False), ("student", True)):
        model = build_model(
            config, num_classes=info.num_classes, spiking=spiking, bn_axis_name=None
        )
        path = teacher_dir(config, workdir) if phase == "teacher" else phase_dir(workdir, phase)
        variables, _, _ = restore_for_eval(path, model, config, info, mesh, spiking=spiking)
        restored[phase] = (model, variables)
    return TrainedRun(
        workdir,
        config,
        info,
        *restored["teacher"],
        *restored["student"],
        eval_images=eval_ds.images,
        eval_labels=eval_ds.labels,
    )
