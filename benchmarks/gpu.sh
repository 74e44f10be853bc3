#!/usr/bin/env bash
# GPU benchmarks (issues 6 and 19), in two parts of under 10 minutes each on one GPU:
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
#   bash benchmarks/gpu.sh [OUT_DIR=bench_gpu] [--part all|steps|rest|goal] [--dry-run]
#                          [--wheels DIR]
# Prints each table and writes OUT_DIR/env.txt, OUT_DIR/log.txt and the part's JSON files. A
# failing benchmark is reported and the next one still runs; the exit status is the number of
# failures. One device call may run 10 minutes and return 8 files, so the whole (about 11 minutes
# by the last H200 run's times) runs as two parts (results/gpu/README.md):
#   steps: 1. (OUT_DIR/step_<dtype>_b<batch>.json), about 8 minutes;
#   rest:  2.-4. (lif.json, loss.json, fused_<dtype>.json), about 3 minutes;
#   goal:  only issue 19's goal row (resnet19, T = 4, bf16, batch 256, against SpikingJelly and
#          the matmul rate; step_bfloat16_b256_goal.json) and the LIF, about 2 minutes: what fits
#          after the reproduction in one session's device time;
#   all:   steps, then rest (the default).
# --dry-run: builds and runs every case of the part once at tiny sizes on the CPU (width 1/16,
#   batches 2 and 4, a 256^3 matmul), so that a GPU run cannot fail on a path or an import.
# --wheels DIR: libraries that do not import come from the wheels in DIR (results/gpu/wheels.sh):
#   ml-collections (required), loguru and spikingjelly (the peer; skipped when they cannot load).
set -uo pipefail
cd "$(dirname "$0")/.."
out=bench_gpu dry=0 part=all wheels=""
while (($#)); do
  case $1 in
    --dry-run) dry=1 ;;
    --part)
      part=${2:?--part needs one of all, steps, rest, goal}
      shift
      ;;
    --wheels)
      wheels=${2:?--wheels needs a folder}
      shift
      ;;
    -*)
      echo "benchmarks/gpu.sh: unknown flag $1" >&2
      exit 2
      ;;
    *) out=$1 ;;
  esac
  shift
done
case $part in
  all | steps | rest | goal) ;;
  *)
    echo "benchmarks/gpu.sh: --part must be all, steps, rest or goal, got '$part'" >&2
    exit 2
    ;;
esac
mkdir -p "$out"
if ((dry)); then
  export JAX_PLATFORMS=cpu
  width=0.0625 batches="2 4" goal_batch=4 repeats=1 matmul=256
  lif_args=(--batch 2 --features 8 8 8 --repeats 1)
  loss_args=(--big-rows 8 --repeats 1 --slow-repeats 1)
  fused_args=(--tokens 64 --hidden 8 --vocab 100 --repeats 1)
else
  width=1.0 batches="64 256" goal_batch=256 repeats=20 matmul=8192
  lif_args=(--batch 256 --repeats 20)
  loss_args=(--repeats 10 --slow-repeats 5)
  fused_args=(--repeats 10)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX and torch share the GPU in one process: leave torch room beside JAX's preallocated pool.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
exec > >(tee -a "$out/log.txt") 2>&1

if [ -n "$wheels" ]; then
  source results/gpu/wheels.sh
  use_wheels "$wheels" ml_collections=ml-collections || exit 1
  use_wheels "$wheels" loguru=loguru spikingjelly=spikingjelly \
    || echo "SpikingJelly unavailable: the peer columns stay empty"
fi

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
step() {  # step DTYPE BATCH JSON "MODEL..." "TIMESTEP...": one step.py run
  local models timesteps
  read -ra models <<<"$4"
  read -ra timesteps <<<"$5"
  bench "step $3" python3 benchmarks/step.py --models "${models[@]}" --timesteps "${timesteps[@]}" \
    --width-mult "$width" --batch "$2" --repeats "$repeats" --dtype "$1" --matmul "$matmul" \
    --out "$out/$3"
}
if [ "$part" = goal ]; then
  step bfloat16 "$goal_batch" "step_bfloat16_b${goal_batch}_goal.json" resnet19 4
  bench lif python3 benchmarks/lif.py "${lif_args[@]}" --out "$out/lif.json"
fi
if [ "$part" = all ] || [ "$part" = steps ]; then
  for dtype in float32 bfloat16; do
    for batch in $batches; do
      step "$dtype" "$batch" "step_${dtype}_b$batch.json" "resnet20 resnet19" "2 4"
    done
  done
fi
if [ "$part" = all ] || [ "$part" = rest ]; then
  bench lif python3 benchmarks/lif.py "${lif_args[@]}" --out "$out/lif.json"
  bench loss python3 benchmarks/loss.py "${loss_args[@]}" --out "$out/loss.json"
  for dtype in float32 bfloat16; do
    bench "fused $dtype" python3 benchmarks/fused_memory.py --methods hta_kl fkl --time \
      --dtype "$dtype" "${fused_args[@]}" --out "$out/fused_$dtype.json"
  done
fi
exit "$failures"
