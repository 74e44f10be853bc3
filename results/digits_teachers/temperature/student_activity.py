"""Descriptive, added after the temperature readings: how active the students are at the end,
on the 355 test digits -> student_activity.{md,json} here:

  python results/digits_teachers/temperature/student_activity.py [WORKDIR=runs/digits_teachers]

For each temperature grid (WORKDIR/tau/teacherK_tauX) and the follow-up's temperature 4 cells
(WORKDIR/teacherK), per method over seeds 0-3: test accuracy, the firing rate over all LIF
neurons, the lowest layer's rate, how many students have a layer that never fires, and the SD
of the student's logits per image. A student whose loss never fell (RKL under teacher 1 at
temperature 8) is either silent (no spikes reach the classifier) or firing but untrained; this
tells which. Tests nothing.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import numpy as np

from htakl_jax import data as data_lib
from htakl_jax import runs
from htakl_jax.analysis import endpoints, firing, tables

HERE = Path(__file__).resolve().parent
CONFIG = runpy.run_path(str(HERE.parents[2] / "configs" / "digits_teachers.py"))
METHODS = ("fkl", "rkl", "hta_kl")


def student_activity(cell: str, eval_data: tuple) -> dict:
    """One trained cell's final student on the eval split: accuracy, firing rates, logit SD."""
    run = runs.load_trained(cell, eval_data=eval_data)
    info = run.info
    x = data_lib.normalize(run.eval_images, tuple(info.mean), tuple(info.std))
    rates = firing.spike_stats(run.student, run.student_variables, x).layer_rates()
    logits = endpoints.model_logits(run.student, run.student_variables, x)
    return {
        "accuracy": float(np.mean(logits.argmax(-1) == run.eval_labels)),
        "firing_rate": float(np.mean(list(rates.values()))),
        "lowest_layer_rate": float(min(rates.values())),
        "silent_layers": int(sum(r == 0.0 for r in rates.values())),
        "logit_sd": float(logits.std(-1).mean()),
    }


def grids(workdir: str) -> list[tuple[int, float, str]]:
    """(teacher, KD temperature, grid workdir) of every planned grid, temperature 4 first."""
    found = []
    for k in CONFIG["TEMPERATURE_TEACHERS"]:
        found.append((k, 4.0, os.path.join(workdir, f"teacher{k}")))
        for tau in CONFIG["TEMPERATURES"]:
            found.append((k, tau, os.path.join(workdir, "tau", f"teacher{k}_tau{tau:g}")))
    return found


def main(workdir: str = "runs/digits_teachers") -> None:
    first = os.path.join(workdir, f"teacher{CONFIG['TEMPERATURE_TEACHERS'][0]}", "cells")
    _, eval_ds, info = runs.load_data(runs.load_config(os.path.join(first, "fkl_T2_s0")))
    rows, records = [], []
    for k, tau, grid in grids(workdir):
        for method in METHODS:
            cells = [os.path.join(grid, "cells", f"{method}_T2_s{s}") for s in (0, 1, 2, 3)]
            if not all(os.path.isdir(c) for c in cells):
                continue
            found = [student_activity(c, (eval_ds, info)) for c in cells]
            mean = {key: float(np.mean([f[key] for f in found])) for key in found[0]}
            silent = sum(f["silent_layers"] > 0 for f in found)
            records.append({"teacher": k, "temperature": tau, "method": method, "cells": found})
            rows.append(
                [k, f"{tau:g}", method, f"{100 * mean['accuracy']:.2f}"]
                + [f"{100 * mean[key]:.2f}" for key in ("firing_rate", "lowest_layer_rate")]
                + [f"{silent} of 4", f"{mean['logit_sd']:.2f}"]
            )
    headers = ["teacher", "temperature", "method", "accuracy (%)", "firing rate (%)"]
    headers += ["lowest layer's rate (%)", "students with a silent layer", "logit SD"]
    text = [
        "# The temperature grids' students at the end: activity on the test digits",
        "",
        "Written by `python results/digits_teachers/temperature/student_activity.py WORKDIR`; "
        "means over student seeds 0-3.",
        "",
        tables.markdown_table(headers, rows),
    ]
    runs.write_json(HERE / "student_activity.json", records)
    (HERE / "student_activity.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main(*sys.argv[1:2])
