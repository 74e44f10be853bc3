"""Descriptive: what each digits teacher gives its students, on the 1,442 training digits the
students distil from (no augmentation) -> teacher_outputs.{md,json} here:

  python results/digits_teachers/teacher_outputs.py [WORKDIR=runs/digits_teachers]

Per teacher and softmax temperature (1, and the KD temperatures 2, 4 and 8): the mean per-row
SD of the logits, the mean top probability and entropy (nats), log p of the least likely class
(mean over images, and the smallest anywhere), and the size of the KD gradient that a student
which has learnt nothing yet (equal logits, q uniform over C classes) receives per image: the
norm over classes of d(tau^2 KL)/d(student logits), mean over images and the largest. For FKL
that is tau (q - p), at most tau sqrt(2); for RKL tau q (log q - log p - RKL), which at a
uniform q is (mean_j log p_j - log p) tau / C = (centred teacher logits) / C at every tau: it
grows with the teacher's raw logit spread, and no temperature bounds it. Added after the T = 2
readings (the gradient norms and temperatures 2 and 8 after the temperature readings), to
describe them; tests nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from htakl_jax import data as data_lib
from htakl_jax import runs
from htakl_jax.analysis import endpoints, tables

HERE = Path(__file__).resolve().parent
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def teacher_logits(workdir: str, data: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's logits [N, C] on the training images of the grid cell `workdir`, and the
    labels [N]; `data` is `runs.load_data`'s (train, eval, info) for its config."""
    train_ds, eval_ds, info = data
    run = runs.load_trained(workdir, eval_data=(eval_ds, info))
    x = data_lib.normalize(train_ds.images, tuple(info.mean), tuple(info.std))
    return endpoints.model_logits(run.teacher, run.teacher_variables, x), train_ds.labels


def describe(logits_NC: np.ndarray, labels_N: np.ndarray, temperature: float) -> dict:
    """The summary of one teacher's logits at one temperature (see the module docstring)."""
    logp = log_softmax(logits_NC / temperature, axis=-1)
    p = np.exp(logp)
    c = logits_NC.shape[-1]
    fkl = temperature * np.linalg.norm(1 / c - p, axis=-1)
    rkl = temperature / c * np.linalg.norm(logp.mean(-1, keepdims=True) - logp, axis=-1)
    return {
        "temperature": temperature,
        "accuracy": float(np.mean(logits_NC.argmax(-1) == labels_N)),
        "logit_sd": float(logits_NC.std(-1).mean()),
        "top_p": float(p.max(-1).mean()),
        "entropy": float(-(p * logp).sum(-1).mean()),
        "min_logp_mean": float(logp.min(-1).mean()),
        "min_logp": float(logp.min()),
        "fkl_grad_mean": float(fkl.mean()),
        "fkl_grad_max": float(fkl.max()),
        "rkl_grad_mean": float(rkl.mean()),
        "rkl_grad_max": float(rkl.max()),
    }


def main(workdir: str = "runs/digits_teachers") -> None:
    teachers = sorted(d for d in os.listdir(workdir) if d.startswith("teacher"))
    cells = [os.path.join(workdir, name, "cells", "fkl_T2_s0") for name in teachers]
    data = runs.load_data(runs.load_config(cells[0]))  # the same digits split for every teacher
    found = {}
    for name, cell in zip(teachers, cells, strict=True):
        logits, labels = teacher_logits(cell, data)
        found[name] = [describe(logits, labels, t) for t in TEMPERATURES]
    headers = [
        "teacher",
        "tau",
        "train accuracy (%)",
        "logit SD",
        "top p",
        "entropy",
        "min log p (mean)",
        "min log p (all)",
        "FKL grad at a uniform student (mean, max)",
        "RKL grad (mean, max)",
    ]
    rows = [
        [
            name,
            f"{r['temperature']:g}",
            f"{100 * r['accuracy']:.2f}",
            f"{r['logit_sd']:.2f}",
            f"{r['top_p']:.3f}",
            f"{r['entropy']:.3f}",
            f"{r['min_logp_mean']:.2f}",
            f"{r['min_logp']:.1f}",
            f"{r['fkl_grad_mean']:.2f}, {r['fkl_grad_max']:.2f}",
            f"{r['rkl_grad_mean']:.2f}, {r['rkl_grad_max']:.2f}",
        ]
        for name, rs in found.items()
        for r in rs
    ]
    text = "# The digits teachers' outputs on the training digits\n\n"
    text += "Written by `python results/digits_teachers/teacher_outputs.py WORKDIR`.\n\n"
    text += tables.markdown_table(headers, rows)
    runs.write_json(HERE / "teacher_outputs.json", found)
    (HERE / "teacher_outputs.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(*sys.argv[1:])
