#!/usr/bin/env bash
# The digits teacher-seed protocol (configs/digits_teachers.py; README.md here), end to end on
# 2 CPU cores (about 45 minutes per four teachers at T = 2). Resumable: the grids skip finished
# cells.
#   bash results/digits_teachers/run.sh [WORKDIR=runs/digits_teachers] [T=2]
# T = 2 or 1. Teachers in the order 0 to 7 at T = 2 (0-3 at T = 1), one grid each
# (WORKDIR/teacherK; the T = 1 grids reuse the teachers of the T = 2 ones there). Each grid's
# tables go to results/digits_teachers/teacherK/ (T = 1: t1/teacherK/) when it ends, then the
# readings there are rewritten.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-runs/digits_teachers}
timesteps=${2:-2}
case "$timesteps" in
  2) suffix=""; out=results/digits_teachers ;;
  1) suffix=_t1; out=results/digits_teachers/t1 ;;
  *) echo "error: T must be 1 or 2, got '$timesteps'" >&2; exit 1 ;;
esac
which=TEACHERS; [ "$timesteps" = 1 ] && which=T1_TEACHERS
teachers=$(python -c "import runpy; print(*runpy.run_path('configs/digits_teachers.py')['$which'])")
for k in $teachers; do
  python -m htakl_jax.experiments --config "configs/digits_teachers.py:teacher$k$suffix" \
    --workdir "$work/teacher$k"
  mkdir -p "$out/teacher$k"
  for f in results.csv results.json table1.md paired.md; do
    [ -f "$work/teacher$k/$f" ] && cp "$work/teacher$k/$f" "$out/teacher$k/"
  done
  python results/digits_teachers/readings.py "$out" "$timesteps"
done
