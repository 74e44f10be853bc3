"""Orbax checkpoints of a training phase: the latest few (for resuming) and the best (for use).

Layout of a phase directory (e.g. WORKDIR/teacher):
  checkpoints/<step>/  the latest `keep` states, saved every N epochs, at the end and on SIGTERM
  best/<step>/         the single state with the highest eval accuracy so far
Each checkpoint holds three items:
  variables  {'params', 'batch_stats'}  (all a user of the trained model needs)
  train      {'step', 'opt_state'}      (what resuming needs in addition)
  meta       JSON: epoch, eval accuracy, best accuracy, whether the phase finished, and the model
             description (name, width_mult, num_classes, spiking, timesteps) checked on restore.
The RNG is not stored: every random stream derives from (config.seed, step).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
# Meta keys that must agree between a stored teacher and the model it is restored into.
MODEL_KEYS = ("name", "width_mult", "num_classes")


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """ShapeDtypeStructs of `tree` (with `sharding`), the restore target Orbax needs."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _manager(directory: str, *, keep: int, async_save: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True
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
            manager.save(step, args=_save_args(state, meta), force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the newest state into the structure/shardings of `abstract_state`."""
        step = self._latest.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self._latest.directory}")
        restored = self._latest.restore(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(
                    {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
                ),
                train=ocp.args.StandardRestore(
                    {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
                ),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state = abstract_state.replace(
            step=restored.train["step"],
            opt_state=restored.train["opt_state"],
            params=restored.variables["params"],
            batch_stats=restored.variables["batch_stats"],
        )
        return state, dict(restored.meta)

    def wait(self) -> None:
        """Blocks until background saves are on disk."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _save_args(state: Any, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(
        variables=ocp.args.StandardSave({"params": state.params, "batch_stats": state.batch_stats}),
        train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        meta=ocp.args.JsonSave(meta),
    )


def read_meta(phase_dir: str, *, prefer_best: bool = True) -> tuple[str, dict]:
    """Returns (checkpoint folder, meta) of the best (or latest) checkpoint in `phase_dir`."""
    order = (BEST_DIR, LATEST_DIR) if prefer_best else (LATEST_DIR, BEST_DIR)
    for sub in order:
        steps = _steps(os.path.join(phase_dir, sub))
        if steps:
            directory = os.path.join(phase_dir, sub)
            with ocp.CheckpointManager(
                os.path.abspath(directory), options=ocp.CheckpointManagerOptions(read_only=True)
            ) as manager:
                meta = manager.restore(
                    steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )
            return os.path.join(directory, str(steps[-1])), dict(meta.meta)
    raise FileNotFoundError(
        f"no checkpoint found in {phase_dir!r} (expected {LATEST_DIR}/<step> or {BEST_DIR}/<step>)"
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
) -> tuple[Any, dict]:
    """Restores only {'params', 'batch_stats'} of the best (or latest) checkpoint in `phase_dir`.

    `abstract_variables` gives the target structure and shardings; `expected_model` (name,
    width_mult, num_classes) is checked against the stored meta first, so an architecture or class
    count mismatch fails with a message naming the checkpoint path.
    """
    path, meta = read_meta(phase_dir, prefer_best=prefer_best)
    check_model_meta(path, meta, expected_model)
    directory, step = os.path.split(path)
    with ocp.CheckpointManager(
        os.path.abspath(directory), options=ocp.CheckpointManagerOptions(read_only=True)
    ) as manager:
        try:
            restored = manager.restore(
                int(step),
                args=ocp.args.Composite(variables=ocp.args.StandardRestore(abstract_variables)),
            )
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {path} does not fit the configured model: {e}") from e
    return restored.variables, meta
