#!/usr/bin/env bash
# The digits temperature protocol (configs/digits_teachers.py, teacherK_tauX; ../README.md,
# "Temperature"), about 25 minutes on 2 CPU cores: teachers 1 and 0 (from the T = 2 grids in
# WORKDIR/teacherK, linked) distil students at KD temperatures 8 and 2, seeds 0-3, each grid
# in WORKDIR/tau/teacherK_tauX; its tables go to teacherK_tauX/ here, then the readings are
# rewritten. Resumable: the grids skip finished cells.
#   bash results/digits_teachers/temperature/run.sh [WORKDIR=runs/digits_teachers]
set -euo pipefail
cd "$(dirname "$0")/../../.."
work=${1:-runs/digits_teachers}
out=results/digits_teachers/temperature
read -r -a names < <(python -c "import runpy
c = runpy.run_path('configs/digits_teachers.py')
print(*(f'teacher{k}_tau{t:g}' for k in c['TEMPERATURE_TEACHERS'] for t in c['TEMPERATURES']))")
for name in "${names[@]}"; do
  teacher="$work/${name%_tau*}/teacher"
  if ! python -c "import sys; from htakl_jax import runs; sys.exit(not runs.teacher_finished('$teacher'))"; then
    echo "error: $name links the T = 2 grid's teacher; none finished in '$teacher'" >&2
    exit 1
  fi
  mkdir -p "$work/tau/$name" "$out/$name"
  [ -e "$work/tau/$name/teacher" ] || ln -s "$(realpath "$teacher")" "$work/tau/$name/teacher"
  python -m htakl_jax.experiments --config "configs/digits_teachers.py:$name" \
    --workdir "$work/tau/$name"
  for f in results.csv results.json table1.md paired.md; do
    [ -f "$work/tau/$name/$f" ] && cp "$work/tau/$name/$f" "$out/$name/"
  done
  python "$out/readings.py"
done
