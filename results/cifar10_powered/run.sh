#!/usr/bin/env bash
# The powered HTA-KL vs FKL comparison (configs/powered.py; results/cifar10_powered/README.md),
# end to end on 2 CPU cores (about 2 hours). Resumable: every step skips what is finished.
#   bash results/cifar10_powered/run.sh [WORKDIR=runs/powered] [PROTOCOL] [TEACHER]
# PROTOCOL: first (default), restart, t2, t2_long, t2_long_ext, t2_rep, t2_teacher1 to 12 or
# t2_ce.
# The restart and t2 reuse the first protocol's finished teacher (same config): TEACHER, by
# default runs/powered/teacher, is linked into WORKDIR when WORKDIR has none (else it is trained).
# t2 and t2_long have no tuning runs (the learning rate of both earlier tunings) and no ablation
# arms; t2_long trains its seeds seed by seed (whole pairs if cut off), with no power check;
# t2_long_ext is t2_long at seeds 0-7, run in t2_long's WORKDIR (its seeds 0-3 are reused);
# t2_rep is t2 at seeds 0-3 from t2_long's teacher (TEACHER, by default
# runs/powered_t2_long/teacher), seed by seed; it never trains a teacher of its own;
# t2_teacherK (K = 1-12) is t2 at seeds 0-3 (K <= 2) or 0-1, seed by seed, with its own teacher
# (root seed K) trained in WORKDIR, never linked; use one WORKDIR per teacher. t2_ce is t2's
# students without distillation (CE) at seeds 0-7, seed by seed; like t2_rep it links t2_long's
# teacher (for the teacher endpoints only) and never trains one. The seed counts are the
# grids' (configs/powered.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-runs/powered}
protocol=${2:-first}
here=results/cifar10_powered
case "$protocol" in
  first) grid=configs/powered.py:grid; base=configs/powered.py:base; out=$here
         lrs="0.05 0.1 0.2 0.4"; timesteps=1 ;;
  restart) grid=configs/powered.py:restart; base=configs/powered.py:restart_base; out=$here/restart
           lrs="0.025 0.05 0.1"; timesteps=1 ;;
  t2) grid=configs/powered.py:t2; base=configs/powered.py:t2_base; out=$here/t2; lrs=""; timesteps=2 ;;
  t2_long) grid=configs/powered.py:t2_long; base=configs/powered.py:t2_long_base; out=$here/t2_long
           lrs=""; timesteps=2; byseed=1 ;;
  t2_long_ext) grid=configs/powered.py:t2_long_ext; base=configs/powered.py:t2_long_ext_base
               out=$here/t2_long_ext; lrs=""; timesteps=2; byseed=1 ;;
  t2_rep) grid=configs/powered.py:t2_rep; base=configs/powered.py:t2_rep_base; out=$here/t2_rep
          lrs=""; timesteps=2; byseed=1 ;;
  t2_ce) grid=configs/powered.py:t2_ce; base=configs/powered.py:t2_ce_base; out=$here/t2_ce
         lrs=""; timesteps=2; byseed=1 ;;
  t2_teacher[1-9] | t2_teacher1[0-2])
    grid=configs/powered.py:$protocol; base=configs/powered.py:${protocol}_base
    out=$here/t2_teachers/seed${protocol#t2_teacher}; lrs=""; timesteps=2; byseed=1; own=1 ;;
  *) echo "error: PROTOCOL must be first, restart, t2, t2_long, t2_long_ext, t2_rep," \
       "t2_teacher1 to t2_teacher12 or t2_ce, got '$protocol'" >&2
     exit 1 ;;
esac
mkdir -p "$work" "$out"
teacher="$(realpath -m "$work")/teacher"
finished() { python -c "import sys; from htakl_jax import runs; sys.exit(not runs.teacher_finished('$1'))"; }

# 1. The teacher: 49,000 training images (all but the 1,000-image hold-out).
default_teacher=runs/powered/teacher
[[ $protocol == t2_rep || $protocol == t2_ce ]] && default_teacher=runs/powered_t2_long/teacher
given=${3:-$default_teacher}
if [ "$protocol" != first ] && [ -z "${own:-}" ] && [ ! -e "$teacher" ] && finished "$given"; then
  ln -s "$(realpath "$given")" "$teacher"
fi
if [[ $protocol == t2_rep || $protocol == t2_ce ]] && ! finished "$teacher"; then
  echo "error: $protocol links t2_long's teacher; none finished in '$given'" >&2
  exit 1
fi
finished "$teacher" || python -m htakl_jax.main --config "$base" --mode teacher --workdir "$work"

# 2. The student learning rate: FKL, seed 0, scored on the hold-out (never the test split).
if [ -n "$lrs" ] && [ ! -f "$out/tuning.json" ]; then
  for lr in $lrs; do
    tune="$work/tune/lr$lr"
    [ -f "$tune/results.json" ] && continue
    python -m htakl_jax.main --config "$base" --mode all --workdir "$tune" \
      --config.data.eval_on_validation=True --config.student.lr="$lr" \
      --config.student.teacher_checkpoint="$teacher"
  done
  python "$here/protocol.py" choose-lr "$work" "$out"
fi

# 3. FKL and HTA-KL at seeds 0-3 (seed by seed: every seed of the grid), then the planned check
#    of the paired spread (not for seed-by-seed protocols; stops here when the spread is above
#    2 points).
if [ -n "${byseed:-}" ]; then  # seed by seed: a cut-off run leaves whole pairs
  seeds=$(python -c "import runpy, sys
print(len(runpy.run_path('configs/powered.py')['get_config'](sys.argv[1]).grid.seeds))" "$protocol")
  for ((n = 1; n <= seeds; n++)); do
    python -m htakl_jax.experiments --config "$grid" --workdir "$work" --stage train \
      "--config.grid.seeds=($(seq -s, 0 $((n - 1))),)"
  done
else
  python -m htakl_jax.experiments --config "$grid" --workdir "$work" --stage train \
    "--config.grid.seeds=(0,1,2,3)" "--config.ablation.weight_temperatures=()"
  python "$here/protocol.py" spread "$work" "$timesteps"
fi

# 4. The fixed ratio r: HTA-KL's mean head weight over training at seeds 0-3.
[ -n "$lrs" ] && [ ! -f "$out/head_ratio.json" ] && python "$here/protocol.py" head-ratio "$work" "$out"

# 5. Every arm: FKL and HTA-KL at seeds 4-7, HTA-KL (weights at tau = 1) and the fixed ratio at
#    seeds 0-3; then the per-cell analysis (endpoints, firing, energy) and the tables.
for stage in train analyze report; do
  python -m htakl_jax.experiments --config "$grid" --workdir "$work" --stage "$stage"
done
for f in results.csv results.json table1.md endpoints.md paired.md table3.md ablation.md; do
  [ -f "$work/$f" ] && cp "$work/$f" "$out/"
done
mkdir -p "$out/plots" && cp "$work"/plots/*.png "$out/plots/"

# 6. t2_long(_ext): its readings 1 and 2 (8 epochs, and the change from t2's 4 epochs) -> change.md.
if [[ $protocol == t2_long* ]]; then
  python "$here/protocol.py" change "$work" "$out"
fi
# 7. t2_rep: its readings (the teacher's effect at 4 epochs, 4 vs 8 epochs) -> replicate.md.
[ "$protocol" = t2_rep ] && python "$here/protocol.py" replicate "$work" "$out"
# 8. t2_teacherK: the gap per teacher and over teachers -> t2_teachers/teachers.md.
[ -n "${own:-}" ] && python "$here/protocol.py" teachers "$here/t2_teachers"
# 9. t2_ce: distillation's gain over CE, per teacher and over teachers -> t2_ce/kd_gain.md.
[ "$protocol" = t2_ce ] && python "$here/protocol.py" kd-gain "$work" "$out"
exit 0
