#!/usr/bin/env bash
# GPU benchmarks (issues 6 and 19), under 10 minutes on one GPU:
#   1. step.py: one training step of resnet20 and resnet19 students at T = 2 and 4 against T x the
#      ANN step, full width, batch 64 and 256, fp32 and bf16 (bf16 compute, fp32 parameters),
#      32x32 inputs, with each step's model TFLOP/s and its fraction of an 8192^3 bf16 matmul
#      timed in the same process;
#   2. lif.py: the (unrolled, fused) LIF forward+backward at [4, 256, 64, 32, 32] (256 MiB per
#      array, several times the L2 cache) against a device copy;
#   3. loss.py: HTA-KL, FKL and CE gradients at [128, 100] and [4096, 32000];
#   4. fused_memory.py: the fused-linear HTA-KL and FKL against the unfused path (memory and
#      time) at 4,096 tokens, hidden 512, vocabulary 32,000, float32 and bfloat16.
# SpikingJelly (torch on the same GPU, its own CUDA LIF kernels) and the PyTorch loss port run
# alongside when torch with CUDA and spikingjelly are importable; skipped with a message otherwise.
# The repository root goes on PYTHONPATH, so no install of this package is needed; the machine
# needs a CUDA jax (pip install -e ".[gpu]") plus flax and optax.
#
#   bash benchmarks/gpu.sh [OUT_DIR=bench_gpu] [--dry-run]
# Prints each table and writes OUT_DIR/env.txt, OUT_DIR/log.txt and
# OUT_DIR/{step_<dtype>_b<batch>,lif,loss,fused_<dtype>}.json. A failing benchmark is reported and the next one still runs; the exit status is
# the number of failures. --dry-run builds and runs every case once at tiny sizes on the CPU (width
# 1/16, batches 2 and 4, a 256^3 matmul), so that a GPU run cannot fail on a path or an import.
set -uo pipefail
cd "$(dirname "$0")/.."
out=bench_gpu dry=0
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    *) out=$arg ;;
  esac
done
mkdir -p "$out"
if ((dry)); then
  export JAX_PLATFORMS=cpu
  width=0.0625 batches="2 4" repeats=1 matmul=256
  lif_args=(--batch 2 --features 8 8 8 --repeats 1)
  loss_args=(--big-rows 8 --repeats 1 --slow-repeats 1)
  fused_args=(--tokens 64 --hidden 8 --vocab 100 --repeats 1)
else
  width=1.0 batches="64 256" repeats=20 matmul=8192
  lif_args=(--batch 256 --repeats 20)
  loss_args=(--repeats 10 --slow-repeats 5)
  fused_args=(--repeats 10)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX and torch share the GPU in one process: leave torch room beside JAX's preallocated pool.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
exec > >(tee -a "$out/log.txt") 2>&1

HTAKL_DRY_RUN=$dry python3 - <<'PY' | tee "$out/env.txt" || exit 1
import os

import jax
backend = jax.default_backend()
print(f"jax {jax.__version__}, backend {backend}, devices {jax.devices()}")
try:
    import torch
    print(f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}")
    import spikingjelly
    print(f"spikingjelly at {spikingjelly.__path__[0]}")
except ImportError as err:
    print(f"peer missing: {err}")
if backend != "gpu" and os.environ["HTAKL_DRY_RUN"] != "1":
    raise SystemExit("benchmarks/gpu.sh needs a CUDA jax: pip install -U 'jax[cuda13]'")
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader | tee -a "$out/env.txt"

failures=0
bench() {  # bench NAME COMMAND...: run one benchmark, report its time and a failure
  local name=$1 start=$SECONDS
  shift
  echo "=== $name: $*"
  if ! "$@"; then
    echo "=== $name FAILED"
    failures=$((failures + 1))
  fi
  echo "=== $name took $((SECONDS - start)) s"
}
for dtype in float32 bfloat16; do
  for batch in $batches; do
    bench "step $dtype batch $batch" python3 benchmarks/step.py --models resnet20 resnet19 \
      --timesteps 2 4 --width-mult "$width" --batch "$batch" --repeats "$repeats" \
      --dtype "$dtype" --matmul "$matmul" --out "$out/step_${dtype}_b$batch.json"
  done
done
bench lif python3 benchmarks/lif.py "${lif_args[@]}" --out "$out/lif.json"
bench loss python3 benchmarks/loss.py "${loss_args[@]}" --out "$out/loss.json"
for dtype in float32 bfloat16; do
  bench "fused $dtype" python3 benchmarks/fused_memory.py --methods hta_kl fkl --time \
    --dtype "$dtype" "${fused_args[@]}" --out "$out/fused_$dtype.json"
done
exit "$failures"
