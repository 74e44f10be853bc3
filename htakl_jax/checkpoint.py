"""Orbax checkpoints of a training phase: the latest few (for resuming) and the best (for use).

Layout of a phase directory (e.g. WORKDIR/teacher):
  checkpoints/<step>/  the latest `keep` states, saved every N epochs, at the end and on SIGTERM
  best/<step>/         the single state with the highest eval accuracy so far
Each checkpoint holds three items:
  variables  {'params', 'batch_stats'}  (all a user of the trained model needs)
  train      {'step', 'opt_state'} and, for a distillation method with trainable parts,
             'method' (their variables and optimizer state): what resuming needs in addition
  meta       JSON: epoch, eval accuracy, best accuracy, whether the phase finished, the model
             description (name, width_mult, num_classes, spiking, timesteps) checked on restore,
             and config.seed, which a resume must share (`train`).
The RNG is not stored: every random stream derives from (config.seed, step).

Damaged checkpoints: Orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames on success, so a
save killed midway leaves no digit-named folder and is ignored. A digit-named checkpoint that fails
to restore while an older one restores is treated as corrupt: a warning names it, it is renamed to
`<step>.corrupt-<time>` (kept for inspection, never deleted) and the older one is used.
"""

from __future__ import annotations

import contextlib
import errno
import logging as std_logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
# Meta keys that must agree between a stored teacher and the model it is restored into.
MODEL_KEYS = ("name", "width_mult", "num_classes")


def quiet_orbax_logging() -> None:
    """Keeps only Orbax's warnings and errors on the console (it logs every action at INFO)."""

    def keep(record: std_logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        # Restores open managers read-only on purpose; Orbax warns about that at every restore.
        message = record.getMessage()
        read_only = "read only" in message or "read_only=True" in message
        return record.levelno >= std_logging.WARNING and not read_only

    logging.get_absl_handler().addFilter(keep)
    # absl's Python logger too: before absl.app starts, records reach Python's own handlers.
    std_logging.getLogger("absl").addFilter(keep)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """ShapeDtypeStructs of `tree` (with `sharding`), the restore target Orbax needs."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _manager(directory: str, *, keep: int, async_save: bool) -> ocp.CheckpointManager:
    # Each manager its own barrier names: latest/ and best/ often save the same step at once, and
    # with several processes their async commits would otherwise wait at one barrier key
    # ("_async_write_complete.<step>"), which the coordination service refuses or times out.
    prefix = os.path.basename(os.path.normpath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=True,
        # A save cut short (killed, disk full) leaves a temporary folder: removed at start.
        cleanup_tmp_directories=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix),
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def has_checkpoint(phase_dir: str) -> bool:
    """Whether `phase_dir` holds a finished save in its latest/ or best/ subfolder."""
    return any(_steps(os.path.join(phase_dir, d)) for d in (LATEST_DIR, BEST_DIR))


def _steps(directory: str) -> list[int]:
    # Orbax writes into a temporary name and renames on success, so digit-named folders are
    # complete checkpoints.
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _set_aside(path: str) -> str:
    """Renames a damaged checkpoint folder out of Orbax's view (process 0); returns the new name."""
    target = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
    if jax.process_index() == 0 and os.path.isdir(path):
        os.replace(path, target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"set_aside:{path}")
    return target


def _restore_newest_good(directory: str, restore: Callable[[int], Any]) -> Any:
    """`restore(step)` for the newest step of `directory` that restores without error.

    Steps newer than the one that restores are warned about and set aside; if no step restores,
    the newest step's error is raised (then the cause is not damage but, e.g., a model change).
    """
    steps = _steps(directory)
    failures: list[tuple[int, Exception]] = []
    for step in reversed(steps):
        try:
            result = restore(step)
        except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types on bad files
            failures.append((step, e))
            continue
        for bad, err in failures:
            path = os.path.join(directory, str(bad))
            target = _set_aside(path)
            message = (
                f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
                f"moved it to {target} and resumed from step {step} instead"
            )
            logging.warning("%s", message)
            warnings.warn(message, stacklevel=3)
        return result
    step, err = failures[0]
    raise ValueError(
        f"checkpoint {os.path.join(directory, str(step))} cannot be restored "
        f"({type(err).__name__}: {err}), nor can any older one in {directory}"
    ) from err


class DiskFull(OSError):
    """A checkpoint write ran out of space; earlier checkpoints are intact."""


def _is_disk_full(error: BaseException) -> bool:
    """Whether `error` or an exception it was raised from is ENOSPC (Orbax and TensorStore wrap
    the OSError, sometimes only its message)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _state_bytes(state: Any) -> int:
    return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))


@contextlib.contextmanager
def _disk_full_as_error(directory: str, needed_bytes: int | None) -> Iterator[None]:
    """Turns ENOSPC raised while writing checkpoints into `directory` into a one-line DiskFull."""
    try:
        yield
    except Exception as e:
        if not _is_disk_full(e):
            raise
        free = shutil.disk_usage(directory).free if os.path.isdir(directory) else None
        need = "" if needed_bytes is None else f"about {needed_bytes:,} bytes needed, "
        raise DiskFull(
            errno.ENOSPC,
            f"no space left on device writing a checkpoint into {directory} ({need}"
            f"{'unknown' if free is None else f'{free:,}'} bytes free); earlier checkpoints are "
            "intact: free space and rerun the same command to resume",
        ) from e


class PhaseCheckpoints:
    """Latest-N and best-by-accuracy checkpoint managers for one phase directory."""

    def __init__(self, phase_dir: str, *, keep: int = 2, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
        self.phase_dir = phase_dir
        self._latest = _manager(
            os.path.join(phase_dir, LATEST_DIR), keep=keep, async_save=async_save
        )
        self._best = _manager(os.path.join(phase_dir, BEST_DIR), keep=1, async_save=async_save)

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(self, state: Any, meta: dict, *, best: bool = False) -> None:
        """Saves `state` (a TrainState) at its step into latest/ (and best/ when `best`)."""
        step = int(jax.device_get(state.step))
        managers = [self._latest] + ([self._best] if best else [])
        for manager in managers:
            if manager.latest_step() == step:
                continue  # already saved at this step (e.g. end of epoch, then final save)
            # An async save's failure surfaces at the next save: both are covered.
            with _disk_full_as_error(str(manager.directory), _state_bytes(state)):
                manager.save(step, args=_save_args(state, meta), force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the newest readable state into the structure/shardings of `abstract_state`.

        A newer checkpoint that fails to restore is set aside (see the module docstring) when an
        older one restores; if none restores, the newest one's error is raised.
        """
        directory = os.path.join(self.phase_dir, LATEST_DIR)
        if not _steps(directory):
            raise FileNotFoundError(f"no checkpoint in {self._latest.directory}")
        args = ocp.args.Composite(
            variables=ocp.args.StandardRestore(
                {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
            ),
            train=ocp.args.StandardRestore(_train_item(abstract_state)),
            meta=ocp.args.JsonRestore(),
        )
        restored = _restore_newest_good(directory, lambda s: self._latest.restore(s, args=args))
        self._latest.reload()
        state = abstract_state.replace(
            step=restored.train["step"],
            opt_state=restored.train["opt_state"],
            params=restored.variables["params"],
            batch_stats=restored.variables["batch_stats"],
            method=restored.train.get("method", {}),
        )
        return state, dict(restored.meta)

    def wait(self) -> None:
        """Blocks until background saves are on disk."""
        for manager in (self._latest, self._best):
            with _disk_full_as_error(str(manager.directory), None):
                manager.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _train_item(state: Any) -> dict:
    """What resuming needs besides the variables: the step, the optimizer state and, for a
    distillation method with trainable parts, their variables and optimizer state."""
    item = {"step": state.step, "opt_state": state.opt_state}
    return item | ({"method": state.method} if state.method else {})


def _save_args(state: Any, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(
        variables=ocp.args.StandardSave({"params": state.params, "batch_stats": state.batch_stats}),
        train=ocp.args.StandardSave(_train_item(state)),
        meta=ocp.args.JsonSave(meta),
    )


def _candidates(phase_dir: str, prefer_best: bool) -> list[str]:
    """Checkpoint folders of `phase_dir`, best-first (or latest-first), newest step first."""
    order = (BEST_DIR, LATEST_DIR) if prefer_best else (LATEST_DIR, BEST_DIR)
    return [
        os.path.join(phase_dir, sub, str(step))
        for sub in order
        for step in reversed(_steps(os.path.join(phase_dir, sub)))
    ]


def _restore_read_only(path: str, **items: Any) -> Any:
    directory, step = os.path.split(path)
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(os.path.abspath(directory), options=options) as manager:
        return manager.restore(int(step), args=ocp.args.Composite(**items))


def _warn_skipped(path: str, err: Exception) -> None:
    message = f"skipping unreadable checkpoint {path} ({type(err).__name__}: {err})"
    logging.warning("%s", message)
    warnings.warn(message, stacklevel=3)


def read_meta(phase_dir: str, *, prefer_best: bool = True) -> tuple[str, dict]:
    """Returns (checkpoint folder, meta) of the best (or latest) checkpoint in `phase_dir`.

    A checkpoint whose meta cannot be read is skipped with a warning naming it (nothing is
    changed on disk).
    """
    skipped = []
    for path in _candidates(phase_dir, prefer_best):
        try:
            meta = _restore_read_only(path, meta=ocp.args.JsonRestore()).meta
            if not isinstance(meta, dict):
                raise ValueError(f"meta is {type(meta).__name__}, not a JSON object")
        except Exception as e:  # noqa: BLE001 - damaged files raise many types
            _warn_skipped(path, e)
            skipped.append(path)
            continue
        return path, dict(meta)
    unreadable = f"; unreadable: {', '.join(skipped)}" if skipped else ""
    raise FileNotFoundError(
        f"no checkpoint found in {phase_dir!r} (expected a readable {LATEST_DIR}/<step> or "
        f"{BEST_DIR}/<step>{unreadable})"
    )


def check_model_meta(path: str, meta: dict, expected: dict) -> None:
    """Raises ValueError naming `path` if the stored model differs from `expected` on MODEL_KEYS."""
    stored = meta.get("model", {})
    diffs = [
        f"{k}: checkpoint has {stored.get(k)!r}, expected {expected[k]!r}"
        for k in MODEL_KEYS
        if k in expected and stored.get(k) != expected[k]
    ]
    if diffs:
        raise ValueError(
            f"checkpoint {path} does not match the configured model: " + "; ".join(diffs)
        )


def restore_variables(
    phase_dir: str, abstract_variables: Any, *, expected_model: dict, prefer_best: bool = True
) -> tuple[Any, dict, str]:
    """Restores {'params', 'batch_stats'} of the best (or latest) checkpoint in `phase_dir`.

    Returns (variables, meta, path of the checkpoint folder used).

    `abstract_variables` gives the target structure and shardings; `expected_model` (name,
    width_mult, num_classes) is checked against the stored meta first, so an architecture or class
    count mismatch fails with a message naming the checkpoint path. A damaged checkpoint is skipped
    with a warning in favour of the next one (best, then latest, newest first).
    """
    first_error: Exception | None = None
    for path in _candidates(phase_dir, prefer_best):
        try:
            meta = _restore_read_only(path, meta=ocp.args.JsonRestore()).meta
        except Exception as e:  # noqa: BLE001
            _warn_skipped(path, e)
            first_error = first_error or e
            continue
        check_model_meta(path, dict(meta), expected_model)
        try:
            restored = _restore_read_only(
                path, variables=ocp.args.StandardRestore(abstract_variables)
            )
        except Exception as e:  # noqa: BLE001
            _warn_skipped(path, e)
            first_error = first_error or ValueError(
                f"checkpoint {path} does not fit the configured model or is damaged: {e}"
            )
            continue
        return restored.variables, dict(meta), path
    if first_error is not None:
        raise ValueError(f"no usable checkpoint in {phase_dir!r}: {first_error}") from first_error
    raise FileNotFoundError(f"no checkpoint found in {phase_dir!r}")
