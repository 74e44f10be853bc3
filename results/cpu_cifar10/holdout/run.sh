#!/usr/bin/env bash
# Hold-out check of the students' LIF charge for the GPU recipe (fixed before it ran, after the
# width-1/4 run in results/cpu_cifar10/): FKL students at T = 2 from that run's teacher, 2 epochs
# (LR 0.1, batch 256, 1 warmup epoch, cosine), trained on 49,000 training images and scored once
# on the other 1,000 (class-balanced, data.subset_seed 0) at T = 2. Arms: decay_input True (the
# recipe until then) and False; seed 0 each. Adopt False if it leads by 5 points or more.
#
#   bash results/cpu_cifar10/holdout/run.sh PACKED_CIFAR10.npz CPU_RUN_WORK OUT_DIR
#
# CPU_RUN_WORK is the --work folder of the run in results/cpu_cifar10/ (its teacher is read from
# CPU_RUN_WORK/teacher/teacher). Run at 7ac2e86 (configs/gpu_cifar10.py:cpu had decay_input True).
set -euo pipefail
cd "$(dirname "$0")/../../.."
packed=$1
work=$2
out=$3
for di in True False; do
  python -m htakl_jax.main --config configs/gpu_cifar10.py:cpu --workdir "$out/decay_input_$di" \
    --mode distill --config.data.data_dir="$packed" --config.data.cache_dir="$work/data_cache" \
    --config.data.validation_examples=1000 --config.data.eval_on_validation=True \
    --config.student.epochs=2 --config.student.method=fkl \
    --config.student.teacher_checkpoint="$work/teacher/teacher" \
    --config.model.neuron.decay_input=$di --config.compilation_cache="$work/jax_cache"
done
