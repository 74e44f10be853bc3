#!/usr/bin/env bash
# The per-method learning-rate protocol (../README.md, "Each method at its own learning rate";
# fixed before its run). 1. Tune: FKL and HTA-KL students of the T = 2 protocol (4 epochs),
# seed 0, under the retrained teacher, at learning rates 0.05, 0.1 and 0.2, scored on the
# 1,000-image hold-out (never the test split) -> tuning.md here (about 21 minutes on 2 CPU
# cores). 2. Each method whose chosen rate is not the common 0.1 trains at its rate under the
# six teachers of the current numerics (retrained, root seeds 1-5; linked from their finished
# workdirs in RUNS), student seeds 0-1, seed by seed (about 42 minutes per method); a method
# at 0.1 reuses the committed grids. 3. The readings -> per_method_lr.md here.
#   bash results/cifar10_powered/t2_lr/run.sh [RUNS=runs]
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${1:-runs}
work=$runs/powered_t2_lr
out=results/cifar10_powered/t2_lr
protocol=results/cifar10_powered/protocol.py
retrained=$(realpath "$runs/powered_t2_long/teacher")
for method in fkl hta_kl; do
  for lr in 0.05 0.1 0.2; do
    [ -f "$work/tune/${method}_lr$lr/results.json" ] && continue
    python -m htakl_jax.main --config configs/powered.py:t2_rep_base --mode all \
      --workdir "$work/tune/${method}_lr$lr" --config.data.eval_on_validation=True \
      --config.student.method="$method" --config.student.lr="$lr" \
      --config.student.teacher_checkpoint="$retrained"
  done
done
python "$protocol" tune-methods "$work" "$out"

names="retrained seed1 seed2 seed3 seed4 seed5"
config() { [ "$1" = retrained ] && echo t2_rep || echo "t2_teacher${1#seed}"; }
teacher() {
  [ "$1" = retrained ] && echo "$retrained" || realpath "$runs/powered_t2_teacher${1#seed}/teacher"
}
grid() {  # NAME METHOD LR STAGE SEEDS: one stage of METHOD's grid at LR under teacher NAME
  python -m htakl_jax.experiments --config "configs/powered.py:$(config "$1")" \
    --workdir "$work/$1_$2" --stage "$4" "--config.grid.seeds=$5" \
    "--config.grid.methods=('$2',)" --config.base.student.lr="$3"
}
rates=$(python "$protocol" rerun-rates "$out")  # METHOD:RATE, each rate not 0.1
for name in $names; do
  for rate in $rates; do
    mkdir -p "$work/${name}_${rate%%:*}"
    link="$work/${name}_${rate%%:*}/teacher"
    [ -e "$link" ] || ln -s "$(teacher "$name")" "$link"
  done
done
for seeds in "(0,)" "(0,1)"; do
  for name in $names; do
    for rate in $rates; do grid "$name" "${rate%%:*}" "${rate#*:}" train "$seeds"; done
  done
done
for name in $names; do
  for rate in $rates; do
    m=${rate%%:*}
    for stage in analyze report; do grid "$name" "$m" "${rate#*:}" "$stage" "(0,1)"; done
    mkdir -p "$out/${name}_$m"
    for f in results.csv results.json table1.md endpoints.md; do
      [ -f "$work/${name}_$m/$f" ] && cp "$work/${name}_$m/$f" "$out/${name}_$m/"
    done
  done
done
python "$protocol" per-method-lr "$out"
