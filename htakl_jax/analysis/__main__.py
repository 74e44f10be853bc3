"""Analysis of a trained workdir: ``python -m htakl_jax.analysis --workdir DIR``.

Writes DIR/analysis/ (firing rates, energy table, per-layer counts, t-SNE, loss and accuracy per
epoch of teacher and student); see :mod:`htakl_jax.analysis.report`.
"""

from __future__ import annotations

from absl import app, flags

from htakl_jax.analysis import report, tables
from htakl_jax.checkpoint import quiet_orbax_logging
from htakl_jax.compilation import enable_compilation_cache

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (holds config.json, teacher/, student/).")
flags.DEFINE_string("out_dir", None, "Output folder (default WORKDIR/analysis).")
flags.DEFINE_integer("num_examples", 1024, "Eval examples for firing rates and energy.")
flags.DEFINE_integer("timesteps", None, "T to analyse the student at (default: its trained T).")
flags.DEFINE_integer("batch_size", 256, "Examples per forward pass.")
flags.DEFINE_integer("tsne_examples", 500, "Examples in the t-SNE plot (0 = no t-SNE).")
flags.DEFINE_float("e_ac_pj", 0.9, "Energy per accumulate (pJ).")
flags.DEFINE_float("e_mac_pj", 4.6, "Energy per multiply-accumulate (pJ).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_orbax_logging()
    enable_compilation_cache()
    summary = report.analyze_workdir(
        FLAGS.workdir,
        FLAGS.out_dir,
        num_examples=FLAGS.num_examples,
        timesteps=FLAGS.timesteps,
        batch_size=FLAGS.batch_size,
        tsne_examples=FLAGS.tsne_examples,
        e_ac_pj=FLAGS.e_ac_pj,
        e_mac_pj=FLAGS.e_mac_pj,
    )
    f = summary["firing"]
    e = summary["energy"]["student"]
    print(
        f"firing rate {100 * f['overall_rate']:.2f}% overall, "
        f"{100 * f['pre_classifier_rate']:.2f}% before the classifier "
        f"({f['pre_classifier_layer']});"
        f" ACs {tables.format_count(e['acs'])}, MACs {tables.format_count(e['macs'])}, "
        f"energy {tables.format_energy(e['energy_mj'])} per image"
    )


if __name__ == "__main__":
    app.run(main)
