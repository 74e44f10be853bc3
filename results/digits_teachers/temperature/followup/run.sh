#!/usr/bin/env bash
# Post hoc, after the temperature readings (../../README.md, "Temperature follow-up"), about
# 10 minutes on 2 CPU cores:
# (a) HTA-KL at KD temperature 2 under teachers 1 and 0, seeds 0-3, added to the temperature-2
#     grids (WORKDIR/tau/teacherK_tau2; their FKL and RKL cells reused);
# (b) FKL and RKL under teacher 1 at temperature 4 with the student learning rate 0.02 instead
#     of 0.1, seeds 0-3, in WORKDIR/tau/teacher1_lr0.02 (teacher 1 linked).
# Tables to teacherK_tau2/ and teacher1_lr0.02/ here, then readings.py here.
#   bash results/digits_teachers/temperature/followup/run.sh [WORKDIR=runs/digits_teachers]
set -euo pipefail
cd "$(dirname "$0")/../../../.."
work=${1:-runs/digits_teachers}
out=results/digits_teachers/temperature/followup
copy() {  # grid workdir, folder here
  mkdir -p "$out/$2"
  for f in results.csv results.json table1.md paired.md; do
    [ -f "$1/$f" ] && cp "$1/$f" "$out/$2/"
  done
}
for k in 1 0; do
  python -m htakl_jax.experiments --config "configs/digits_teachers.py:teacher${k}_tau2" \
    --workdir "$work/tau/teacher${k}_tau2" "--config.grid.methods=('fkl','rkl','hta_kl')"
  copy "$work/tau/teacher${k}_tau2" "teacher${k}_tau2"
done
grid="$work/tau/teacher1_lr0.02"
mkdir -p "$grid"
[ -e "$grid/teacher" ] || ln -s "$(realpath "$work/teacher1/teacher")" "$grid/teacher"
python -m htakl_jax.experiments --config configs/digits_teachers.py:teacher1 --workdir "$grid" \
  --config.base.student.lr=0.02 "--config.grid.methods=('fkl','rkl')" \
  "--config.grid.seeds=(0,1,2,3)"
copy "$grid" teacher1_lr0.02
python "$out/readings.py"
