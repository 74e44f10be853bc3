#!/usr/bin/env bash
# The powered HTA-KL vs FKL comparison (configs/powered.py; results/cifar10_powered/README.md),
# end to end on 2 CPU cores (about 2 hours). Resumable: every step skips what is finished.
#   bash results/cifar10_powered/run.sh [WORKDIR=runs/powered]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-runs/powered}
here=results/cifar10_powered
base=configs/powered.py:base
teacher="$(realpath -m "$work")/teacher"

# 1. The teacher: 49,000 training images (all but the 1,000-image hold-out).
if ! python -c "import sys; from htakl_jax import runs; sys.exit(not runs.teacher_finished('$teacher'))"; then
  python -m htakl_jax.main --config "$base" --mode teacher --workdir "$work"
fi

# 2. The student learning rate: FKL, seed 0, scored on the hold-out (never the test split).
if [ ! -f "$here/tuning.json" ]; then
  for lr in 0.05 0.1 0.2 0.4; do
    out="$work/tune/lr$lr"
    [ -f "$out/results.json" ] && continue
    python -m htakl_jax.main --config "$base" --mode all --workdir "$out" \
      --config.data.eval_on_validation=True --config.student.lr="$lr" \
      --config.student.teacher_checkpoint="$teacher"
  done
  python "$here/protocol.py" choose-lr "$work"
fi

# 3. FKL and HTA-KL at seeds 0-3, then the planned check of the paired spread.
python -m htakl_jax.experiments --config configs/powered.py --workdir "$work" --stage train \
  "--config.grid.seeds=(0,1,2,3)" "--config.ablation.weight_temperatures=()"
python "$here/protocol.py" spread "$work"

# 4. The fixed ratio r: HTA-KL's mean head weight over training at seeds 0-3.
[ -f "$here/head_ratio.json" ] || python "$here/protocol.py" head-ratio "$work"

# 5. Every arm: FKL and HTA-KL at seeds 4-7, HTA-KL (weights at tau = 1) and the fixed ratio at
#    seeds 0-3; then the per-cell analysis (endpoints, firing, energy) and the tables.
python -m htakl_jax.experiments --config configs/powered.py --workdir "$work" --stage train
python -m htakl_jax.experiments --config configs/powered.py --workdir "$work" --stage analyze
python -m htakl_jax.experiments --config configs/powered.py --workdir "$work" --stage report
for f in results.csv results.json table1.md paired.md table3.md ablation.md; do
  [ -f "$work/$f" ] && cp "$work/$f" "$here/"
done
mkdir -p "$here/plots" && cp "$work"/plots/*.png "$here/plots/"
