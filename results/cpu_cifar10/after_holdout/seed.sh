#!/usr/bin/env bash
# Another student seed for results/cpu_cifar10/after_holdout/ (README there, "Seed 1" and on):
# the teacher with its seed 0 (the same config, so the same 83.57% teacher: training is
# deterministic on this CPU), then the HTA-KL, FKL and CE students with seed SEED, everything else
# as run.sh; reproduce.py ends with the spike step when the budget allows. WORK must hold no
# student of another seed (train refuses that resume); a finished seed-0 teacher in WORK/teacher
# is restored instead of retrained.
#
#   bash results/cpu_cifar10/after_holdout/seed.sh SEED PACKED_CIFAR10.npz WORK OUT_DIR [flags]
#
# Further flags go to reproduce.py after these (the last --methods wins).
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ $# -lt 4 ]; then
  echo "usage: bash $0 SEED PACKED_CIFAR10.npz WORK OUT_DIR [reproduce.py flags]" >&2
  exit 2
fi
bash results/gpu/run.sh "$2" "$4" --setting cpu --budget-s 7200 --work "$3" \
  --methods hta_kl,fkl,ce --student-seed "$1" "${@:5}"
