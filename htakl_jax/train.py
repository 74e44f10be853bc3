"""The training loop: teacher training, HTA-KL distillation and the evaluation that follows.

`train_and_evaluate(config, workdir, mode=...)` wires the run: data and checkpoints are checked
before anything is written, every phase's program is built once (`steps.phase_program`), then
`train_phase` runs each phase as one flat loop over its remaining steps and `evaluate` writes
WORKDIR/results.json. The workdir layout is in `htakl_jax.runs`.

Exits of a phase: its end (all epochs done, the final state saved), `Preempted` (SIGTERM or
`stop_after_steps`: the state is saved first) and FloatingPointError (a non-finite loss: the last
good checkpoint is kept as it is).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import config_validation, evaluate, locking, parallel, runs, steps
from htakl_jax import data as data_lib
from htakl_jax import metrics as metrics_lib


class Preempted(Exception):
    """Raised after SIGTERM once the current state has been checkpointed."""


@contextlib.contextmanager
def sigterm_flag() -> Iterator[Callable[[], bool]]:
    """Within the block, SIGTERM only sets a flag (polled by the loop); restored afterwards."""
    received = []

    def handler(signum, frame):
        del frame
        logging.warning("received signal %d: saving a checkpoint, then exiting", signum)
        received.append(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler, never set
        yield lambda: False
        return
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _any_process(flag: bool) -> bool:
    """Whether `flag` is True on any process (a blocking host all-gather)."""
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _stop_requested(
    sigterm: Callable[[], bool], step: int, stop_after_steps: int | None, *, sync_point: bool
) -> bool:
    """Whether to stop after `step`: SIGTERM, or `stop_after_steps` reached.

    Processes receive SIGTERM at different moments; they must stop after the same step or the
    next collective hangs. So with several processes they agree at sync points only (one host
    round trip each), which every process reaches at the same steps.
    """
    local = sigterm() or (stop_after_steps is not None and step >= stop_after_steps)
    if jax.process_count() == 1:
        return local
    return sync_point and _any_process(local)


def _check_batch(config: ml_collections.ConfigDict, phase: str, num_train: int) -> None:
    if config[phase].batch_size > num_train:
        raise ValueError(
            f"{phase}.batch_size {config[phase].batch_size} exceeds the {num_train} training images"
        )


def _restore_or_init(
    program: steps.PhaseProgram,
    checkpoints: ckpt_lib.PhaseCheckpoints,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> tuple[steps.TrainState, dict[str, Any]]:
    """The latest checkpointed (state, meta) of the phase, or the initial state."""
    key = jax.random.key(config.seed)
    model = runs.model_meta(config, num_classes=program.model.num_classes, spiking=program.spiking)
    if checkpoints.latest_step() is None:
        meta = {"epoch": 0, "best_accuracy": -1.0, "eval_accuracy": None}
        return program.init_fn(key), meta | {"model": model, "seed": config.seed}
    abstract = jax.eval_shape(program.init_fn, key)
    state, meta = checkpoints.restore_latest(
        ckpt_lib.abstract_like(abstract, parallel.replicated(mesh))
    )
    # The RNG is not stored but derived from (config.seed, step): another seed would continue a
    # run on random streams it never had. Checkpoints from before the seed was stored pass.
    if meta.get("seed", config.seed) != config.seed:
        raise ValueError(
            f"{checkpoints.phase_dir} holds a run of seed {meta['seed']}, not config.seed "
            f"{config.seed}: use another workdir to train this seed"
        )
    logging.info(
        "%s: resumed from step %d (%s)", program.phase, int(state.step), checkpoints.phase_dir
    )
    return state, meta | {"model": model, "seed": config.seed}


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class _Phase:
    """What the loop of one phase does besides stepping: progress logs, end-of-epoch evaluation,
    checkpoints and the metrics file. Holds the phase's constants, its checkpoint manager, the
    metrics writer and the step-metrics meter; the loop passes state, meta and step explicitly."""

    def __init__(
        self,
        program: steps.PhaseProgram,
        config: ml_collections.ConfigDict,
        checkpoints: ckpt_lib.PhaseCheckpoints,
        *,
        mesh: jax.sharding.Mesh,
        eval_ds: runs.Dataset,
        meta: dict[str, Any],
        step: int,
    ):
        self.program, self.config, self.checkpoints = program, config, checkpoints
        self.mesh, self.eval_ds = mesh, eval_ds
        self.pcfg = config[program.phase]
        self.total_steps = self.pcfg.epochs * program.steps_per_epoch
        self.writer = metrics_lib.MetricsWriter(checkpoints.phase_dir, resumed_epoch=meta["epoch"])
        self.meter = metrics_lib.StepMetrics(step)
        logging.info(
            "%s: %d epochs x %d steps, global batch %d on %d devices (%d processes)",
            program.phase,
            self.pcfg.epochs,
            program.steps_per_epoch,
            self.pcfg.batch_size,
            mesh.size,
            jax.process_count(),
        )

    def batches(self, num_train: int, step: int) -> Iterator[tuple[int, np.ndarray]]:
        """(epoch, global rows) of every step after `step`."""
        return data_lib.step_batches(
            self.config.seed + steps.PHASE_STREAMS[self.program.phase],
            num_train,
            self.pcfg.batch_size,
            num_epochs=self.pcfg.epochs,
            start_step=step,
        )

    def log_window(self, epoch: int, step: int) -> None:
        """Fetches and logs the steps since the last log point (the NaN check included)."""
        window = self.meter.close_window(epoch)
        logging.info(
            "%s epoch %d step %d/%d: loss %.4f acc %.4f, %.2f steps/s, ETA %s",
            self.program.phase,
            epoch + 1,
            step,
            self.total_steps,
            window["loss"],
            window["accuracy"],
            window["steps_per_s"],
            _fmt_eta((self.total_steps - step) / window["steps_per_s"]),
        )

    def next_meta(
        self, meta: dict[str, Any], *, step: int, eval_accuracy: float | None, finished: bool
    ) -> tuple[dict[str, Any], bool]:
        """(meta of a save at `step`, whether `eval_accuracy` improved on the best so far)."""
        improved = eval_accuracy is not None and eval_accuracy > meta["best_accuracy"]
        meta = meta | {
            "epoch": step // self.program.steps_per_epoch,
            "eval_accuracy": eval_accuracy,
            "best_accuracy": eval_accuracy if improved else meta["best_accuracy"],
            "finished": finished,
            "step": step,
        }
        return meta, improved

    def save(
        self,
        state: steps.TrainState,
        meta: dict[str, Any],
        *,
        step: int,
        eval_accuracy: float | None,
        finished: bool,
    ) -> dict[str, Any]:
        """Saves `state` in latest/ (and best/ when `eval_accuracy` improved); returns its meta."""
        meta, improved = self.next_meta(
            meta, step=step, eval_accuracy=eval_accuracy, finished=finished
        )
        self.checkpoints.save(state, meta, best=improved)
        return meta

    def end_epoch(
        self, state: steps.TrainState, meta: dict[str, Any], *, step: int, epoch: int
    ) -> tuple[float | None, dict[str, Any]]:
        """Evaluation, checkpoint and metrics record of the epoch ending at `step`:
        (eval accuracy or None, meta of the latest save)."""
        config, pcfg, done = self.config, self.pcfg, epoch + 1
        timing, train_means = self.meter.epoch_summary(step, pcfg.batch_size)
        last = done == pcfg.epochs
        eval_accuracy = None
        if done % config.eval.every_epochs == 0 or last:
            eval_accuracy = evaluate.evaluate(
                self.program.eval_fn,
                state.variables,
                self.eval_ds,
                mesh=self.mesh,
                batch_size=config.eval.batch_size,
            )
        # Always save alongside an eval, so that best/ can hold it if it improved.
        save = done % config.checkpoint.every_epochs == 0 or last or eval_accuracy is not None
        saved_meta, improved = meta, False
        if save:
            saved_meta, improved = self.next_meta(
                meta, step=step, eval_accuracy=eval_accuracy, finished=last
            )
        # The record before the checkpoint: a run killed between the two resumes from the
        # previous checkpoint, drops this record and writes it again (MetricsWriter); the other
        # order could leave the epoch's checkpoint without its record, for good.
        self.writer.write(
            {
                "epoch": done,
                "step": step,
                "lr": float(self.program.schedule(step - 1)),
                "eval_accuracy": eval_accuracy,
                "best_accuracy": saved_meta["best_accuracy"],
                **timing,
                "eta_s": (pcfg.epochs - done) * timing["epoch_time_s"],
                **train_means,
            }
        )
        if save:
            self.checkpoints.save(state, saved_meta, best=improved)
        logging.info(
            "%s epoch %d/%d: train loss %.4f acc %.4f, eval acc %s, %.1f images/s",
            self.program.phase,
            done,
            pcfg.epochs,
            train_means["train_loss"],
            train_means["train_accuracy"],
            "-" if eval_accuracy is None else f"{eval_accuracy:.4f}",
            timing["images_per_s"],
        )
        self.meter.start_epoch(step)
        return eval_accuracy, saved_meta


def train_phase(
    program: steps.PhaseProgram,
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh,
    train_ds: runs.Dataset,
    eval_ds: runs.Dataset,
    teacher_variables: Any = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Trains `program`'s phase, resuming from WORKDIR/<phase> if it holds a checkpoint.

    `teacher_variables` (student phase): the frozen teacher's {'params', 'batch_stats'}, replicated.
    `stop_after_steps` behaves like a SIGTERM arriving after that global step (for tests and
    time-limited jobs). Returns the meta of the final state (epoch, eval accuracy, best accuracy,
    ...). Raises Preempted after SIGTERM (state saved) and FloatingPointError on a non-finite loss
    (the last good checkpoint is left as it is).
    """
    _check_batch(config, program.phase, len(train_ds))
    extra_args = (teacher_variables,) if program.spiking else ()
    checkpoints = ckpt_lib.PhaseCheckpoints(
        runs.phase_dir(workdir, program.phase),
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    try:
        state, meta = _restore_or_init(program, checkpoints, config, mesh)
        step = int(jax.device_get(state.step))
        phase = _Phase(
            program, config, checkpoints, mesh=mesh, eval_ds=eval_ds, meta=meta, step=step
        )
        with sigterm_flag() as sigterm:
            for epoch, global_rows in phase.batches(len(train_ds), step):
                rows = parallel.local_rows(global_rows)
                batch = parallel.global_batch((train_ds.images[rows], train_ds.labels[rows]), mesh)
                state, step_metrics = program.step_fn(state, *extra_args, *batch)
                step += 1
                phase.meter.add(step_metrics)
                epoch_end = step % program.steps_per_epoch == 0
                at_log = epoch_end or step % config.log_every_steps == 0
                stop = _stop_requested(sigterm, step, stop_after_steps, sync_point=at_log)
                if at_log or stop:
                    phase.log_window(epoch, step)
                eval_accuracy = None
                if epoch_end:
                    eval_accuracy, meta = phase.end_epoch(state, meta, step=step, epoch=epoch)
                if stop and step < phase.total_steps:
                    phase.save(state, meta, step=step, eval_accuracy=eval_accuracy, finished=False)
                    checkpoints.wait()
                    raise Preempted(f"{program.phase}: stopped at step {step}; checkpoint saved")
    finally:
        try:
            checkpoints.wait()
        finally:
            checkpoints.close()
    # Also when resuming a checkpoint saved after the last epoch but before it was marked finished.
    return meta | {"finished": bool(meta.get("finished")) or step >= phase.total_steps}


# ----------------------------------------------------------------------------- the run


class _Plan(NamedTuple):
    """What a mode does in a workdir: the phases it trains, and whether it evaluates."""

    phases: tuple[str, ...]
    needs_teacher: bool  # distillation reads a trained teacher
    evaluate: bool


def _plan(config: ml_collections.ConfigDict, workdir: str, mode: str) -> _Plan:
    if mode not in runs.MODES:
        raise ValueError(f"mode must be one of {runs.MODES}, got {mode!r}")
    train_teacher = mode == "teacher" or (
        mode == "all"
        and not config.student.teacher_checkpoint
        and not runs.teacher_finished(runs.teacher_dir(config, workdir))
    )
    distill = mode in ("all", "distill")
    phases = ("teacher",) * train_teacher + ("student",) * distill
    return _Plan(phases, distill and config.student.method != "ce", mode in ("all", "eval"))


def _restore_teacher(
    config: ml_collections.ConfigDict,
    workdir: str,
    program: steps.PhaseProgram,
    info: Any,
    mesh: jax.sharding.Mesh,
) -> Any:
    """The best teacher variables to distil from, replicated on `mesh`."""
    variables, _, path = runs.restore_for_eval(
        runs.teacher_dir(config, workdir), program.model, config, info, mesh, spiking=False
    )
    logging.info("distilling from teacher %s", path)
    return variables


def _load_phase_data(
    config: ml_collections.ConfigDict,
) -> tuple[dict[str, runs.Dataset], runs.Dataset, Any]:
    """({phase: training set}, eval set, DatasetInfo): the teacher's set differs from the
    student's only when data.teacher_train_examples is set."""
    train_ds, eval_ds, info = runs.load_data(config)
    train_sets = {"student": train_ds, "teacher": train_ds}
    if config.data.teacher_train_examples is not None:
        train_sets["teacher"] = runs.load_data(config, phase="teacher")[0]
    return train_sets, eval_ds, info


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, mode: str = "all"
) -> dict | None:
    """Runs `mode` (one of runs.MODES: all | teacher | distill | eval) in `workdir`.

    Data, checkpoints and batch sizes are checked before anything is written. 'all' = teacher
    (skipped if a finished teacher checkpoint exists, or if student.teacher_checkpoint points
    elsewhere), then student, then eval. Returns the results dict for modes that evaluate.
    """
    plan = _plan(config, workdir, mode)
    mesh = parallel.make_mesh()
    train_sets, eval_ds, info = _load_phase_data(config)
    config_validation.check_existing_checkpoints(
        config, info.num_classes, mode=mode, workdir=workdir
    )
    for phase in plan.phases:
        _check_batch(config, phase, len(train_sets[phase]))
    # Before any compile or write: a second run on this workdir stops here.
    with locking.workdir_lock(workdir, enabled=jax.process_index() == 0):
        return _run(config, workdir, plan, mode, mesh, train_sets, eval_ds, info)


def _run(
    config: ml_collections.ConfigDict,
    workdir: str,
    plan: _Plan,
    mode: str,
    mesh: jax.sharding.Mesh,
    train_sets: dict[str, runs.Dataset],
    eval_ds: runs.Dataset,
    info: Any,
) -> dict | None:
    """`train_and_evaluate` once its inputs are checked and the workdir is locked."""
    programs = {
        phase: steps.phase_program(
            phase, config, mesh=mesh, info=info, num_train=len(train_sets[phase])
        )
        for phase in runs.PHASES
    }
    # An existing teacher is restored before anything is written, so that a damaged or
    # mismatched one fails without touching the workdir.
    teacher_vars = None
    if plan.needs_teacher and "teacher" not in plan.phases:
        teacher_vars = _restore_teacher(config, workdir, programs["teacher"], info, mesh)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with runs.atomic_write(os.path.join(workdir, runs.CONFIG_FILE)) as f:
            f.write(config.to_json(indent=2))

    def train(phase: str, **kwargs: Any) -> None:
        data = dict(mesh=mesh, train_ds=train_sets[phase], eval_ds=eval_ds)
        train_phase(programs[phase], config, workdir, **data, **kwargs)

    if "teacher" in plan.phases:
        train("teacher")
        if plan.needs_teacher:
            teacher_vars = _restore_teacher(config, workdir, programs["teacher"], info, mesh)
    elif mode == "all":
        logging.info("reusing the finished teacher in %s", runs.teacher_dir(config, workdir))
    if "student" in plan.phases:
        train("student", teacher_variables=teacher_vars)
    if not plan.evaluate:
        return None
    results = evaluate.evaluate_run(
        config,
        workdir,
        mesh=mesh,
        eval_ds=eval_ds,
        info=info,
        teacher=programs["teacher"],
        student=programs["student"],
    )
    if jax.process_index() == 0:
        runs.write_json(os.path.join(workdir, runs.RESULTS_FILE), results)
    return results
