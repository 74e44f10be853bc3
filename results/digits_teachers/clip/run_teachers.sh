#!/usr/bin/env bash
# The clipped comparison over eight teachers (../README.md, "Gradient clipping over eight
# teachers"; fixed before its run), about 30 minutes on 2 CPU cores: FKL and HTA-KL with the
# student's gradient clipped at 2.0, seeds 0-3, under teachers 2-7 (the T = 2 grids' teachers,
# linked; teachers 0 and 1 have these cells from run.sh), each grid in WORKDIR/clip/teacherK;
# tables to teacherK/ here, then teachers_readings.py here.
#   bash results/digits_teachers/clip/run_teachers.sh [WORKDIR=runs/digits_teachers]
set -euo pipefail
exec bash "$(dirname "$0")/run.sh" "${1:-runs/digits_teachers}" "2 3 4 5 6 7" \
  "('fkl','hta_kl')" teachers_readings.py
