"""Command line: train an ANN teacher, distill it into an SNN student, evaluate.

  python -m htakl_jax.main --config configs/quickstart.py --workdir /tmp/qs
  python -m htakl_jax.main --config configs/cifar.py:cifar100,resnet20,2 --workdir runs/c100 \
      --mode distill --config.student.method=fkl

--mode: all (teacher, then student, then eval; a finished teacher is reused), teacher, distill
(needs a teacher checkpoint), eval (writes WORKDIR/results.json). Rerunning with the same workdir
resumes from the latest checkpoint. Exit codes: 0 done, 1 invalid config / data / checkpoint or
a workdir in use by another run (nothing written), 2 non-finite loss (last good checkpoint kept),
3 disk full while writing a checkpoint (earlier ones intact; free space and rerun to resume),
143 stopped by SIGTERM after saving a checkpoint (rerun to resume).
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from htakl_jax import checkpoint, compilation, config_validation, parallel, runs, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, e.g. configs/cifar.py:cifar10,resnet20,4.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "all", runs.MODES, "What to run.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_INVALID, EXIT_NONFINITE, EXIT_DISK_FULL, EXIT_PREEMPTED = 1, 2, 3, 143


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    checkpoint.quiet_orbax_logging()
    config, workdir, mode = FLAGS.config, FLAGS.workdir, FLAGS.mode
    d = config.distributed
    try:
        parallel.maybe_initialize_distributed(
            d.initialize,
            coordinator_address=d.coordinator_address,
            num_processes=d.num_processes,
            process_id=d.process_id,
        )
        if jax.process_index() != 0:
            logging.set_verbosity(logging.WARNING)  # progress is logged by process 0 only
        config_validation.validate(
            config, mode=mode, workdir=workdir, num_devices=jax.device_count()
        )
    except (ValueError, FileNotFoundError) as e:
        logging.error("invalid configuration: %s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_INVALID)
    logging.info(
        "JAX %s: process %d/%d, devices %s; persistent program cache %s",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        jax.devices(),
        compilation.enable_compilation_cache(config.compilation_cache) or "off",
    )
    try:
        results = train.train_and_evaluate(config, workdir, mode=mode)
    except train.Preempted as e:
        logging.warning("%s; rerun the same command to resume", e)
        sys.exit(EXIT_PREEMPTED)
    except FloatingPointError as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_NONFINITE)
    except checkpoint.DiskFull as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_DISK_FULL)
    except (ValueError, FileNotFoundError) as e:
        # E.g. data loading or checkpoint/class-count checks (these run before any write).
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_INVALID)
    if results is not None:
        acc = ", ".join(f"T={t}: {a:.4f}" for t, a in results["student_accuracy"].items())
        logging.info("teacher %.4f; student %s", results["teacher_accuracy"], acc)


if __name__ == "__main__":
    app.run(main)
