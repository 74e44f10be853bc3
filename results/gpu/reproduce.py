"""The paper's CIFAR-10 ResNet-20 rows on one GPU, in one command, within a wall-time budget.

  bash results/gpu/run.sh PACKED_CIFAR10.npz OUT_DIR      # the GPU run (results/gpu/README.md)
  python results/gpu/reproduce.py --data FILE --out OUT [--work DIR] [--budget-s 540]
      [--setting gpu|cpu|smoke] [--smoke] [--student-seed N]

One process (configs/gpu_cifar10.py): the full-width ResNet-20 ANN teacher on all 50,000 training
images, then spiking students at T = 2 distilled from it with HTA-KL, FKL, CE (no KD) and, when
the budget allows, RKL. Each model is evaluated after its last epoch on the 10,000 test images,
the students at T = 1, 2 and 4 (no checkpoint is chosen on the test split). After every phase
OUT/results.md (table), OUT/results.json (accuracies, epochs, wall time, images/s, compile time
and pure step time per phase, library versions, device) and OUT/metrics.jsonl (every epoch of every
phase) are rewritten, so a run cut off at the time limit still returns its finished phases. A
phase ended by a non-finite loss is recorded as failed, with the metrics of its finished epochs,
and the next student still runs (a failed teacher ends the run); the exit status is then 1.
Checkpoints and caches stay in --work. --smoke (= --setting smoke) is the CPU rehearsal;
--setting cpu is the same recipe at width 1/4 in float32 for machines without a GPU
(configs/gpu_cifar10.py has both), with --budget-s sized to it (about 7,000 s on 2 cores).

Budget (one H200; one command may run 600 s; this script starts no phase it cannot finish by
--budget-s = 540 s after the command started). The README's GPU figures (H200, bf16, batch 64, full
width): the resnet20 student step at T = 4 takes 8.04 ms and equals 0.44 x four ANN steps, so an
ANN training step takes about 4.6 ms (14,000 images/s); a T = 2 distillation step (half the T = 4
student work plus the teacher's forward pass, about a third of an ANN step) about 5.5 ms
(11,600 images/s). Batch 256 fills the GPU better than 64, so these rates are lower bounds.
  fixed:    start, imports, ml-collections install, decoding 60,000 JPEGs        ~25 s
  teacher:  compile ~40 s + 30 epochs x 50,000 images / 14,000 images/s          ~147 s
  students: compile ~50 s + 15 epochs x 50,000 images / 11,600 images/s          ~115 s each
  total:    25 + 147 + 3 x 115 (HTA-KL, FKL, CE)                                 ~517 s
After the students, while the budget allows (prior ~30 s, then the measured time): each
student's firing rates and per-image ACs, MACs and energy on 1,000 test images (`spike_energy`).
RKL, fourth, runs only if the phases before it leave room: before each phase the script estimates
its duration from the last finished student (or, before there is one, from the figures above) and
skips it if it would end after the budget. Compiles are shared through JAX's persistent cache.
Timing per phase: the step's compile time is estimated as the first epoch's time minus the median
of the others; the time outside the epochs (initial state, compiling and running the evaluation,
checkpoints) is reported beside it. "Pure step" is the same compiled step timed on one batch
already on the device, against which the in-epoch step time (host feeding included) is reported.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import runpy
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from htakl_jax import checkpoint, evaluate, methods, parallel, runs, steps, train
from htakl_jax import energy as energy_lib
from htakl_jax import metrics as metrics_lib
from htakl_jax.analysis import report, tables

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("hta_kl", "fkl", "ce", "rkl")
# Paper, ResNet-20 on CIFAR-10 (docs/method.md §6): teacher, HTA-KL at T = 2, and KDSNN at T = 2.
PAPER = "teacher 95.72%, HTA-KL T = 2 93.38%, KDSNN T = 2 93.05%"
# Budget priors per setting (see the module docstring): training images/s and compile seconds per
# phase kind. The CPU ones: resnet20 at width 1/4, batch 128, float32 on a 2-core Intel Xeon
# (benchmarks/step.py): ANN step 192 ms (667 images/s), student at T = 2 538 ms (238 images/s),
# less host feeding and the teacher's forward pass.
_CPU_PRIORS = {"teacher": (550.0, 30.0), "student": (200.0, 60.0)}
PRIORS = {
    "gpu": {"teacher": (14_000.0, 40.0), "student": (11_600.0, 50.0)},
    "cpu": _CPU_PRIORS,
    "smoke": _CPU_PRIORS,
}
PURE_STEPS = {"gpu": 20, "cpu": 3, "smoke": 2}
# Firing rates and energy (`spike_energy`) on this many test images, after the students, and its
# prior duration in seconds (restore, one compile, the forward passes) before one was measured.
SPIKE_IMAGES = 1000
SPIKE_PRIOR_S = {"gpu": 30.0, "cpu": 60.0, "smoke": 30.0}
ENERGY_KEYS = ("ops", "acs", "macs", "energy_mj")  # per image, of `energy.EnergyEstimate`
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", required=True, help="packed CIFAR-10 (python -m htakl_jax.data.pack)"
    )
    parser.add_argument("--out", required=True, help="folder for results.md/json, metrics.jsonl")
    parser.add_argument("--work", default="/tmp/htakl_gpu_work", help="checkpoints and caches")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds from --start-time")
    parser.add_argument(
        "--start-time", type=float, default=None, help="epoch seconds (default now)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="students, in run order")
    parser.add_argument(
        "--setting", choices=tuple(PRIORS), default="gpu", help="configs/gpu_cifar10.py:SETTING"
    )
    parser.add_argument(
        "--student-seed",
        type=int,
        default=None,
        help="the students' config.seed (default: the teacher's), to repeat students from the "
        "same teacher",
    )
    parser.add_argument(
        "--smoke", action="store_const", const="smoke", dest="setting", help="--setting smoke"
    )
    args = parser.parse_args(argv)
    args.methods = tuple(m for m in args.methods.split(",") if m)
    bad = [m for m in args.methods if m not in methods.NAMES or m == "fixed_ratio"]
    if bad:
        parser.error(f"--methods: unknown {bad}")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data} is not a file")
    if args.setting == "gpu" and jax.default_backend() == "cpu":
        parser.error("no GPU: JAX runs on the CPU (--setting cpu or --smoke run there)")
    return args


def load_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    get_config = runpy.run_path(str(ROOT / "configs" / "gpu_cifar10.py"))["get_config"]
    config = get_config(args.setting)
    config.data.data_dir = str(Path(args.data).resolve())
    config.data.cache_dir = str(Path(args.work) / "data_cache")
    return config


def _commit() -> str | None:
    """HEAD of the checkout, or $HTAKL_COMMIT where the tree was copied without its .git."""
    try:
        git = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:  # no git on this machine
        git = None
    head = git.stdout.strip() if git is not None and git.returncode == 0 else ""
    return head or os.environ.get("HTAKL_COMMIT") or None


def environment() -> dict[str, Any]:
    """Library versions, devices and the commit (when run from a git checkout)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": " ".join(sys.argv),
        "commit": _commit(),
        "versions": versions,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
    }


class Budget:
    """Seconds left of the command's budget, counted from its start."""

    def __init__(self, start: float, total_s: float):
        self.start, self.total_s = start, total_s

    def elapsed(self) -> float:
        return time.time() - self.start

    def fits(self, estimate_s: float) -> bool:
        return self.elapsed() + estimate_s <= self.total_s


def prior_estimate(
    kind: str, config: ml_collections.ConfigDict, num_train: int, setting: str = "gpu"
) -> float:
    """Seconds a phase should take by the setting's figures (PRIORS, the module docstring)."""
    rate, compile_s = PRIORS[setting][kind]
    images = config[kind].epochs * (num_train // config[kind].batch_size) * config[kind].batch_size
    return compile_s + images / rate


def pure_step_ms(
    program: steps.PhaseProgram, batch_size: int, mesh, train_ds: runs.Dataset, extra: tuple, n: int
) -> float:
    """The compiled training step timed on one batch already on the device (no host feeding)."""
    rows = np.arange(batch_size)
    batch = parallel.global_batch((train_ds.images[rows], train_ds.labels[rows]), mesh)
    state = program.init_fn(jax.random.key(1))
    state, _ = program.step_fn(state, *extra, *batch)  # compiled during training
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(n):
        state, _ = program.step_fn(state, *extra, *batch)
    jax.block_until_ready(state)
    return 1e3 * (time.perf_counter() - start) / n


def phase_timing(records: list[dict], steps_per_epoch: int, batch_size: int) -> dict[str, Any]:
    """Epoch times of a phase's metrics records: the median epoch (the first one excluded when
    there are others: it compiles), images/s and step time within it, the compile estimate."""
    times = [r["epoch_time_s"] for r in records]
    steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {
        "epochs_run": len(records),
        "epoch_s_total": sum(times),
        "first_epoch_s": times[0],
        "median_epoch_s": steady,
        "step_compile_s_estimate": times[0] - steady if len(times) > 1 else None,
        "train_images_per_s": steps_per_epoch * batch_size / steady,
        "step_ms_in_epoch": 1e3 * steady / steps_per_epoch,
    }


def train_and_time(
    program: steps.PhaseProgram,
    config: ml_collections.ConfigDict,
    workdir: Path,
    *,
    mesh,
    train_ds: runs.Dataset,
    eval_ds: runs.Dataset,
    teacher_variables: Any,
    pure_steps: int,
) -> tuple[dict[str, Any], list[dict]]:
    """Trains one phase; returns its timing record and its per-epoch metrics records (the
    timing from the epochs this call ran: a phase resumed from WORK has earlier ones)."""
    path = Path(runs.phase_dir(str(workdir), program.phase)) / metrics_lib.METRICS_FILE
    restored = len(metrics_lib.read_metrics(path)) if path.exists() else 0
    start = time.perf_counter()
    train.train_phase(
        program,
        config,
        str(workdir),
        mesh=mesh,
        train_ds=train_ds,
        eval_ds=eval_ds,
        teacher_variables=teacher_variables,
    )
    train_s = time.perf_counter() - start
    records = metrics_lib.read_metrics(path)
    if len(records) == restored:  # finished before: restored, nothing to time
        return {"epochs_run": 0, "epochs_restored": restored, "train_s": train_s}, records
    batch_size = config[program.phase].batch_size
    timing = phase_timing(records[restored:], program.steps_per_epoch, batch_size)
    timing["epochs_restored"] = restored
    extra = (teacher_variables,) if program.spiking else ()
    pure = pure_step_ms(program, batch_size, mesh, train_ds, extra, pure_steps)
    timing |= {
        "train_s": train_s,
        # Outside the epochs: the initial state, compiling and running the evaluation, checkpoints.
        "outside_epochs_s": train_s - timing["epoch_s_total"],
        "pure_step_ms": pure,
        "step_in_epoch_over_pure": timing["step_ms_in_epoch"] / pure,
    }
    return timing, records


def student_seeded(
    config: ml_collections.ConfigDict, seed: int | None
) -> ml_collections.ConfigDict:
    """`config` with the students' seed (None: the teacher's, config.seed)."""
    cfg = copy.deepcopy(config)
    cfg.seed = config.seed if seed is None else seed
    return cfg


def student_config(config: ml_collections.ConfigDict, method: str, teacher_dir: Path):
    """The base config distilling with `method` from the teacher phase in `teacher_dir`."""
    cfg = copy.deepcopy(config)
    cfg.student.method = method
    cfg.student.teacher_checkpoint = str(teacher_dir)
    return cfg


# ----------------------------------------------------------------------------- outputs


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


# The speed columns of results_table (a phase restored from WORK has none) and their formats.
_SPEED_CELLS = (
    ("wall_s", ".0f"),
    ("train_images_per_s", ".0f"),
    ("step_in_epoch_over_pure", ".2f"),
)


def results_table(record: dict[str, Any]) -> str:
    """Markdown: one row per phase, test accuracies in percent."""
    columns = ["Model", "Epochs", "ANN", "SNN T=1", "T=2", "T=4", "Wall (s)", "Train img/s"]
    columns.append("Step in epoch / pure step")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in record["phases"]:
        label = tables.method_label(p["name"])
        if p["status"] != "done":
            lines.append(f"| {label} | - | {p['status']} |" + " |" * (len(columns) - 3))
            continue
        acc = p["accuracy"]
        cells = [_pct(acc.get("ann"))] + [_pct(acc.get(t)) for t in ("1", "2", "4")]
        epochs = f"{p['epochs_run']}" + (
            f" (+{p['epochs_restored']} restored)" if p.get("epochs_restored") else ""
        )
        speed = [f"{p[k]:{f}}" if k in p else "-" for k, f in _SPEED_CELLS]
        lines.append(f"| {label} | {epochs} | " + " | ".join(cells + speed) + " |")
    env = record["environment"]
    lines += spikes_table(record) + [
        "",
        f"Paper (ResNet-20, CIFAR-10): {PAPER}. Device: {', '.join(env['devices'])}; "
        f"{record['elapsed_s']:.0f} s of a {record['budget_s']:.0f} s budget; seeds: teacher "
        f"{record['config']['seed']}, students {record.get('student_seed', '-')}; commit "
        f"{env['commit'] or 'unknown'}; JAX {env['versions']['jax']}.",
    ]
    return "\n".join(lines) + "\n"


def spikes_table(record: dict[str, Any]) -> list[str]:
    """Markdown lines (each starting with an empty one): the paper's Table III (`tables.table3`,
    the firing rate before the classifier) for the teacher and each student `add_spike_energy`
    measured."""
    rows = [p for p in record["phases"] if p.get("spikes", {}).get("status") == "done"]
    if not rows:
        return []
    first = rows[0]["spikes"]
    arch = record["config"]["model"]["name"]
    teacher = {"method": "teacher", "architecture": arch, "firing_rate": None}
    table = [teacher | {key: first[f"teacher_{key}"] for key in ENERGY_KEYS}]
    for p in rows:
        x = p["spikes"]
        student = {"method": p["name"], "architecture": f"{arch} T={x['timesteps']}"}
        student["firing_rate"] = x["pre_classifier_rate"]
        table.append(student | {key: x[key] for key in ENERGY_KEYS})
    caption = (
        f"Energy per image on {first['images']} test images ({energy_lib.E_AC_PJ} pJ per AC, "
        f"{energy_lib.E_MAC_PJ} pJ per MAC; overall firing rates in results.json):"
    )
    return ["", caption, "", tables.markdown_table(*tables.table3(table)).rstrip("\n")]


def write_outputs(out: Path, record: dict[str, Any], metrics: list[dict]) -> None:
    """Rewrites the three result files (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "results.json", record)
    for name, text in (
        ("results.md", results_table(record)),
        ("metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


# ----------------------------------------------------------------------------- phases


def _skip_reason(estimate_s: float, budget: Budget) -> str:
    return (
        f"skipped: ~{estimate_s:.0f} s would end at {budget.elapsed() + estimate_s:.0f} s, "
        f"after the {budget.total_s:.0f} s budget"
    )


def _skipped(name: str, estimate_s: float, budget: Budget) -> dict[str, Any]:
    return {"name": name, "status": _skip_reason(estimate_s, budget)}


def _failed(
    error: FloatingPointError, budget: Budget, workdir: Path, phase: str, tags: dict[str, str]
) -> tuple[dict[str, Any], list[dict]]:
    """(record, metrics of its finished epochs) of a phase ended by a non-finite loss; its last
    good checkpoint is kept in `workdir`."""
    name = tags.get("method", phase)
    logging.error("%s failed at %.0f s: %s", name, budget.elapsed(), error)
    path = Path(runs.phase_dir(str(workdir), phase)) / metrics_lib.METRICS_FILE
    records = metrics_lib.read_metrics(path) if path.exists() else []
    return {"name": name, "status": f"failed: {error}"}, [r | tags for r in records]


def run_teacher(
    program, config, work: Path, budget: Budget, *, info, pure_steps, setting, **data_args
):
    """Trains the teacher; returns (phase record, metrics records, its variables or None)."""
    estimate = prior_estimate("teacher", config, len(data_args["train_ds"]), setting)
    if not budget.fits(estimate):
        return _skipped("teacher", estimate, budget), [], None
    start = time.perf_counter()
    timing, records = train_and_time(
        program, config, work, teacher_variables=None, pure_steps=pure_steps, **data_args
    )
    variables, _, _ = runs.restore_for_eval(
        runs.phase_dir(str(work), "teacher"),
        program.model,
        config,
        info,
        data_args["mesh"],
        spiking=False,
    )
    phase = {
        "name": "teacher",
        "status": "done",
        "epochs": config.teacher.epochs,
        "accuracy": {"ann": records[-1]["eval_accuracy"]},  # the final state, after the last epoch
        "wall_s": time.perf_counter() - start,
    }
    return phase | timing, [r | {"phase": "teacher"} for r in records], variables


def run_student(
    method,
    config,
    work: Path,
    budget: Budget,
    *,
    teacher,
    teacher_variables,
    estimate_s,
    info,
    pure_steps,
    setting,
    **data_args,
):
    """Distils one student from the teacher and evaluates it at config.eval.timesteps; returns
    (phase record, metrics records)."""
    cfg = student_config(config, method, Path(runs.phase_dir(str(work / "teacher"), "teacher")))
    mesh, train_ds = data_args["mesh"], data_args["train_ds"]
    estimate = estimate_s or prior_estimate("student", cfg, len(train_ds), setting)
    if not budget.fits(estimate):
        return _skipped(method, estimate, budget), []
    program = steps.phase_program("student", cfg, mesh=mesh, info=info, num_train=len(train_ds))
    start = time.perf_counter()
    timing, records = train_and_time(
        program,
        cfg,
        work / method,
        teacher_variables=None if method == "ce" else teacher_variables,
        pure_steps=pure_steps,
        **data_args,
    )
    results = evaluate.evaluate_run(
        cfg,
        str(work / method),
        eval_ds=data_args["eval_ds"],
        info=info,
        mesh=mesh,
        teacher=teacher,
        student=program,
    )
    phase = {
        "name": method,
        "status": "done",
        "epochs": cfg.student.epochs,
        "timesteps": cfg.student.timesteps,
        "accuracy": results["student_accuracy"],
        "teacher_accuracy": results["teacher_accuracy"],
        "wall_s": time.perf_counter() - start,
    }
    return phase | timing, [r | {"phase": "student", "method": method} for r in records]


def load_data(config: ml_collections.ConfigDict, record: dict[str, Any]):
    """(train set, test set, DatasetInfo); their sizes and the decode time go into `record`."""
    start = time.perf_counter()
    train_ds, eval_ds, info = runs.load_data(config)
    record["data"] = {
        "file": config.data.data_dir,
        "train_images": len(train_ds),
        "test_images": len(eval_ds),
        "load_s": time.perf_counter() - start,
    }
    return train_ds, eval_ds, info


def add_phase(out: Path, record: dict, metrics: list[dict], phase: dict, budget: Budget) -> None:
    """Appends a finished (or skipped, or failed) phase and rewrites the outputs at once."""
    record["phases"].append(phase)
    record["elapsed_s"] = budget.elapsed()
    write_outputs(out, record, metrics)


def spike_energy(
    config: ml_collections.ConfigDict, phase_dir: Path, eval_ds: runs.Dataset, info: Any
) -> dict[str, Any]:
    """Firing rates and per-image ACs, MACs and energy (45 nm model, `htakl_jax.energy`) of the
    student checkpoint in `phase_dir` at its trained T on SPIKE_IMAGES test images (a fixed
    random subset), with the ANN teacher's beside them (`report.spikes_and_energy`)."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    build = dict(num_classes=info.num_classes, bn_axis_name=None)
    student = runs.build_model(config, spiking=True, **build)
    variables, _, _ = runs.restore_for_eval(
        str(phase_dir), student, config, info, mesh, spiking=True
    )
    images, _ = report.image_subset(eval_ds.images, eval_ds.labels, info, SPIKE_IMAGES)
    t = int(config.student.timesteps)
    stats, ours, teacher = report.spikes_and_energy(
        student,
        variables,
        runs.build_model(config, spiking=False, **build),
        images,
        timesteps=t,
        batch_size=min(config.eval.batch_size, len(images)),
    )
    return {
        "images": stats.num_examples,
        "timesteps": t,
        "firing_rate": stats.overall_rate,
        "pre_classifier_rate": stats.pre_classifier_rate,
        "layer_rates": stats.layer_rates(),
        **{key: getattr(ours, key) for key in ENERGY_KEYS},
        **{f"teacher_{key}": getattr(teacher, key) for key in ENERGY_KEYS},
    }


def add_spike_energy(
    out: Path,
    record: dict,
    metrics: list[dict],
    config: ml_collections.ConfigDict,
    work: Path,
    budget: Budget,
    *,
    setting: str,
    eval_ds: runs.Dataset,
    info: Any,
) -> None:
    """`spike_energy` of each finished student, in run order, while the budget fits one more;
    recorded in its phase as "spikes" (with "status": done, or why it was not measured)."""
    estimate = SPIKE_PRIOR_S[setting]
    for phase in record["phases"]:
        if phase["name"] == "teacher" or phase["status"] != "done":
            continue
        if not budget.fits(estimate):
            phase["spikes"] = {"status": _skip_reason(estimate, budget)}
        else:
            start = budget.elapsed()
            student_dir = Path(runs.phase_dir(str(work / phase["name"]), "student"))
            phase["spikes"] = {"status": "done"} | spike_energy(config, student_dir, eval_ds, info)
            estimate = phase["spikes"]["seconds"] = budget.elapsed() - start
        record["elapsed_s"] = budget.elapsed()
        write_outputs(out, record, metrics)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    checkpoint.quiet_orbax_logging()
    budget = Budget(args.start_time or time.time(), args.budget_s)
    out, work = Path(args.out), Path(args.work)
    jax.config.update("jax_compilation_cache_dir", str(work / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    config = load_config(args)
    record: dict[str, Any] = {
        "environment": environment(),
        "budget_s": args.budget_s,
        "config": json.loads(config.to_json()),
        "phases": [],
    }
    student_base = student_seeded(config, args.student_seed)
    record["student_seed"] = student_base.seed
    mesh = parallel.make_mesh()
    train_ds, eval_ds, info = load_data(config, record)
    kw = dict(mesh=mesh, train_ds=train_ds, eval_ds=eval_ds, info=info)
    kw |= dict(pure_steps=PURE_STEPS[args.setting], setting=args.setting)
    teacher = steps.phase_program("teacher", config, mesh=mesh, info=info, num_train=len(train_ds))
    try:
        phase, metrics, teacher_variables = run_teacher(
            teacher, config, work / "teacher", budget, **kw
        )
    except FloatingPointError as e:
        phase, metrics = _failed(e, budget, work / "teacher", "teacher", {"phase": "teacher"})
        teacher_variables = None
    add_phase(out, record, metrics, phase, budget)
    last_student_s = None
    for method in args.methods if teacher_variables is not None else ():
        try:
            phase, records = run_student(
                method,
                student_base,
                work,
                budget,
                teacher=teacher,
                teacher_variables=teacher_variables,
                estimate_s=last_student_s,
                **kw,
            )
        except FloatingPointError as e:  # the next method may still train: go on
            tags = {"phase": "student", "method": method}
            phase, records = _failed(e, budget, work / method, "student", tags)
        last_student_s = phase.get("wall_s", last_student_s)
        metrics += records
        add_phase(out, record, metrics, phase, budget)
    spike_args = dict(setting=args.setting, eval_ds=eval_ds, info=info)
    add_spike_energy(out, record, metrics, config, work, budget, **spike_args)
    print(results_table(record))
    # Every finished phase is written above; the exit status still tells a failure.
    return int(any(p["status"].startswith("failed") for p in record["phases"]))


if __name__ == "__main__":
    sys.exit(main())
