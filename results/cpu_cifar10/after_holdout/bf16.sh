#!/usr/bin/env bash
# The HTA-KL student of results/cpu_cifar10/after_holdout/ again with bfloat16 compute (float32
# parameters), as the GPU run computes, everything else equal: does LR 0.4 stay stable and
# accurate in bf16? (README there.)
#
#   bash results/cpu_cifar10/after_holdout/bf16.sh PACKED_CIFAR10.npz WORK OUT_DIR
#
# WORK: the work folder of run.sh (its teacher, decode cache and compilation cache).
set -euo pipefail
cd "$(dirname "$0")/../../.."
for mode in distill eval; do  # train the student, then evaluate it at T = 1, 2, 4
  python -m htakl_jax.main --config configs/gpu_cifar10.py:cpu --workdir "$3" --mode $mode \
    --config.data.data_dir="$1" --config.data.cache_dir="$2/data_cache" \
    --config.student.method=hta_kl --config.model.dtype=bfloat16 \
    --config.student.teacher_checkpoint="$2/teacher/teacher" --config.compilation_cache="$2/jax_cache"
done
