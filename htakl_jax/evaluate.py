"""Accuracy of trained models over a whole split: during training and for WORKDIR/results.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging

from htakl_jax import data as data_lib
from htakl_jax import parallel, runs, steps


def evaluate(
    eval_fn: Callable[..., jax.Array],
    variables: Any,
    ds: runs.Dataset,
    *,
    mesh: jax.sharding.Mesh,
    batch_size: int,
) -> float:
    """Accuracy of `eval_fn` (a compiled `steps.eval_step`) over every example of `ds` exactly
    once (the last batch padded and masked)."""
    correct = 0
    for idx, mask in data_lib.eval_batches(len(ds), batch_size):
        local_idx, local_mask = parallel.local_rows(idx), parallel.local_rows(mask)
        batch = parallel.global_batch(
            (ds.images[local_idx], ds.labels[local_idx], local_mask), mesh
        )
        correct += int(eval_fn(variables, *batch))
    return correct / len(ds)


def evaluate_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh,
    eval_ds: runs.Dataset,
    info: Any,
    teacher: steps.PhaseProgram,
    student: steps.PhaseProgram,
) -> dict[str, Any]:
    """The results.json record: teacher accuracy and student accuracy at each config.eval.timesteps
    (the checkpoints `runs.checkpoint_selection` picks). The phases' programs evaluate at their
    own T; other T compile here."""
    t_vars, _, t_path = runs.restore_for_eval(
        runs.teacher_dir(config, workdir), teacher.model, config, info, mesh, spiking=False
    )
    s_vars, s_meta, s_path = runs.restore_for_eval(
        runs.phase_dir(workdir, "student"), student.model, config, info, mesh, spiking=True
    )
    bs = config.eval.batch_size
    teacher_acc = evaluate(teacher.eval_fn, t_vars, eval_ds, mesh=mesh, batch_size=bs)
    student_acc = {}
    for t in config.eval.timesteps:
        t = int(t)
        if t == config.student.timesteps:
            fn = student.eval_fn
        else:
            fn = steps.compile_eval_step(student.model, mesh, info, timesteps=t)
        student_acc[str(t)] = evaluate(fn, s_vars, eval_ds, mesh=mesh, batch_size=bs)
        logging.info("student accuracy at T=%d: %.4f", t, student_acc[str(t)])
    logging.info("teacher accuracy: %.4f", teacher_acc)
    return {
        "dataset": config.data.name,
        "model": config.model.name,
        "method": config.student.method,
        "num_eval_examples": len(eval_ds),
        "teacher_accuracy": teacher_acc,
        "student_timesteps": int(config.student.timesteps),
        "student_accuracy": student_acc,
        "student_epoch": s_meta.get("epoch"),
        "checkpoint_selection": runs.selection_label(config),
        "eval_split": "validation" if config.data.eval_on_validation else config.data.eval_split,
        "checkpoints": {"teacher": t_path, "student": s_path},
        "config": json.loads(config.to_json()),
    }
