#!/usr/bin/env bash
# The digits teacher-seed protocol (configs/digits_teachers.py; README.md here), end to end on
# 2 CPU cores (about an hour). Resumable: the grids skip finished cells.
#   bash results/digits_teachers/run.sh [WORKDIR=runs/digits_teachers]
# Teachers in the order 0, 1, 2, 3, one grid each (WORKDIR/teacherK); each grid's tables go to
# results/digits_teachers/teacherK/ when it ends, then the readings are rewritten.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-runs/digits_teachers}
here=results/digits_teachers
teachers=$(python -c "import runpy; print(*runpy.run_path('configs/digits_teachers.py')['TEACHERS'])")
for k in $teachers; do
  python -m htakl_jax.experiments --config "configs/digits_teachers.py:teacher$k" \
    --workdir "$work/teacher$k"
  mkdir -p "$here/teacher$k"
  for f in results.csv results.json table1.md paired.md; do
    [ -f "$work/teacher$k/$f" ] && cp "$work/teacher$k/$f" "$here/teacher$k/"
  done
  python "$here/readings.py"
done
