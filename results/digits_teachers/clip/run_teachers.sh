#!/usr/bin/env bash
# The clipped comparison over eight teachers (../README.md, "Gradient clipping over eight
# teachers"; fixed before its run), about 30 minutes on 2 CPU cores: FKL and HTA-KL with the
# student's gradient clipped at 2.0, seeds 0-3, under teachers 2-7 (the T = 2 grids' teachers,
# linked; teachers 0 and 1 have these cells from run.sh), each grid in WORKDIR/clip/teacherK;
# tables to teacherK/ here, then teachers_readings.py here.
#   bash results/digits_teachers/clip/run_teachers.sh [WORKDIR=runs/digits_teachers]
set -euo pipefail
cd "$(dirname "$0")/../../.."
work=${1:-runs/digits_teachers}
out=results/digits_teachers/clip
for k in 2 3 4 5 6 7; do
  grid="$work/clip/teacher$k"
  mkdir -p "$grid" "$out/teacher$k"
  [ -e "$grid/teacher" ] || ln -s "$(realpath "$work/teacher$k/teacher")" "$grid/teacher"
  python -m htakl_jax.experiments --config "configs/digits_teachers.py:teacher$k" \
    --workdir "$grid" --config.base.student.grad_clip_norm=2.0 \
    "--config.grid.methods=('fkl','hta_kl')" "--config.grid.seeds=(0,1,2,3)"
  for f in results.csv results.json table1.md paired.md; do
    [ -f "$grid/$f" ] && cp "$grid/$f" "$out/teacher$k/"
  done
  python "$out/teachers_readings.py"
done
