#!/usr/bin/env bash
# The digits gradient-clipping test (../README.md, "Gradient clipping"; fixed before its run),
# about 16 minutes on 2 CPU cores: under teachers 1 and 0 (the T = 2 grids' teachers, linked),
# FKL, RKL and HTA-KL at KD temperature 4, learning rate 0.1, student gradients clipped to a
# global L2 norm of 2.0, seeds 0-3, each grid in WORKDIR/clip/teacherK; its tables go to
# teacherK/ here, then READINGS here. run_teachers.sh calls it for the other teachers.
#   bash results/digits_teachers/clip/run.sh [WORKDIR=runs/digits_teachers] [TEACHERS="1 0"]
#     [METHODS="('fkl','rkl','hta_kl')"] [READINGS=readings.py]
set -euo pipefail
cd "$(dirname "$0")/../../.."
work=${1:-runs/digits_teachers}
teachers=${2:-1 0}
methods=${3:-"('fkl','rkl','hta_kl')"}
readings=${4:-readings.py}
out=results/digits_teachers/clip
for k in $teachers; do
  grid="$work/clip/teacher$k"
  mkdir -p "$grid" "$out/teacher$k"
  [ -e "$grid/teacher" ] || ln -s "$(realpath "$work/teacher$k/teacher")" "$grid/teacher"
  python -m htakl_jax.experiments --config "configs/digits_teachers.py:teacher$k" \
    --workdir "$grid" --config.base.student.grad_clip_norm=2.0 \
    "--config.grid.methods=$methods" "--config.grid.seeds=(0,1,2,3)"
  for f in results.csv results.json table1.md paired.md; do
    [ -f "$grid/$f" ] && cp "$grid/$f" "$out/teacher$k/"
  done
  python "$out/$readings"
done
