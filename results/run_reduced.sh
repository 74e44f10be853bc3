#!/usr/bin/env bash
# Regenerates everything in results/ from the shared data (about 2 hours on 2 CPU cores):
#   1. alpha / temperature tuning on the CIFAR-10 hold-out (results/tune_cifar10.sh -> tuning.md);
#   2. the CIFAR-10 grid: CE, FKL, RKL, symmetric, HTA-KL x T in {1, 2} x seeds {0, 1, 2}, plus the
#      fixed head-ratio sweep r in {0.25, 0.5, 0.75} at T = 1 (r = 1 is FKL, r = 0 is RKL);
#   3. the Tiny ImageNet grid: FKL vs HTA-KL x T in {1, 2}, seed 0 (GRID_TIN_SEEDS to add more);
#   4. copies each grid's tables (Markdown/CSV/JSON) and plots into results/<dataset>/.
# Interrupted runs resume: finished cells are skipped, half-trained ones resume from checkpoints.
#   bash results/run_reduced.sh [RUNS=runs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$runs/jax_cache}

bash results/tune_cifar10.sh "$runs/c10" "$runs/c10_tune"

grid() {  # grid DATASET WORKDIR [overrides...]
  local dataset=$1 workdir=$2
  shift 2
  python -m htakl_jax.experiments --config "configs/compare.py:reduced:$dataset" \
    --workdir "$workdir" "$@"
  mkdir -p "results/$dataset/plots"
  cp "$workdir"/{results.csv,results.json,table1.md,paired.md,table3.md} "results/$dataset/"
  [ -f "$workdir/ablation.md" ] && cp "$workdir/ablation.md" "results/$dataset/"
  cp "$workdir"/plots/*.png "results/$dataset/plots/"
}

# FKL and HTA-KL first, so that an interrupted grid has the headline comparison.
grid cifar10 "$runs/c10" "--config.grid.methods=('fkl','hta_kl','ce','rkl','symmetric')"
grid tiny_imagenet "$runs/tin" "--config.grid.methods=('fkl','hta_kl')" \
  "--config.grid.seeds=${GRID_TIN_SEEDS:-(0,)}" "--config.ablation.head_ratios=()"
