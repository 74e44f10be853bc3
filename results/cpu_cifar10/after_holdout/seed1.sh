#!/usr/bin/env bash
# A second student seed for results/cpu_cifar10/after_holdout/ (README there, "Seed 1"): the
# teacher retrained from an empty WORK with its seed 0 (the same config, so the same 83.57% teacher
# if training is deterministic on this CPU), then the HTA-KL, FKL and CE students with seed 1,
# everything else as run.sh; reproduce.py ends with the spike step when the budget allows.
#
#   bash results/cpu_cifar10/after_holdout/seed1.sh PACKED_CIFAR10.npz EMPTY_WORK OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash results/gpu/run.sh "$1" "$3" --setting cpu --budget-s 7200 --work "$2" \
  --methods hta_kl,fkl,ce --student-seed 1
