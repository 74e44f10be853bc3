#!/usr/bin/env bash
# Post hoc, after the T = 2 readings (results/digits_teachers/README.md, "Follow-up"): RKL and
# the fixed ratio 0.42 FKL + 0.58 RKL beside FKL and HTA-KL, T = 2, student seeds 0-3, under
# teacher 1 (where HTA-KL failed) and teacher 0, in the T = 2 grids' workdirs (teachers and
# the FKL and HTA-KL cells reused).
#   bash results/digits_teachers/followup/run.sh [WORKDIR=runs/digits_teachers]
set -euo pipefail
cd "$(dirname "$0")/../../.."
work=${1:-runs/digits_teachers}
out=results/digits_teachers/followup
for k in 1 0; do
  python -m htakl_jax.experiments --config "configs/digits_teachers.py:teacher$k" \
    --workdir "$work/teacher$k" "--config.grid.methods=('fkl','rkl','hta_kl')" \
    "--config.grid.seeds=(0,1,2,3)" "--config.ablation.head_ratios=(0.42,)" \
    "--config.ablation.seeds=(0,1,2,3)"
  mkdir -p "$out/teacher$k"
  for f in results.csv results.json table1.md paired.md ablation.md; do
    [ -f "$work/teacher$k/$f" ] && cp "$work/teacher$k/$f" "$out/teacher$k/"
  done
done
