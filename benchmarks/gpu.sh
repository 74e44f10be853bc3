#!/usr/bin/env bash
# GPU benchmarks (issue 6), a few minutes on one GPU:
#   1. step.py: one training step of resnet20 and resnet19 students at T = 4 against 4 x the ANN
#      step, fp32 and bf16, full width, batch 64, 32x32 inputs;
#   2. lif.py: the LIF forward+backward at [4, 256, 64, 32, 32] (256 MiB per array, several times
#      the L2 cache) against a device copy;
#   3. loss.py: HTA-KL, FKL and CE gradients at [128, 100] and [4096, 32000].
# SpikingJelly (torch on the same GPU, its own CUDA LIF kernels) and the PyTorch loss port run
# alongside when torch with CUDA and spikingjelly are importable; skipped with a message otherwise.
# The repository root goes on PYTHONPATH, so no install of this package is needed; the machine
# needs a CUDA jax (pip install "jax[cuda13]" or "jax[cuda12]") plus flax and optax.
#
#   bash benchmarks/gpu.sh [OUT_DIR=bench_gpu]
# Prints each table and writes OUT_DIR/{env.txt,step_float32,step_bfloat16,lif,loss}.json and
# OUT_DIR/log.txt. A failing benchmark is reported and the next one still runs; the exit status is
# the number of failures.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench_gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX and torch share the GPU in one process: leave torch room beside JAX's preallocated pool.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
exec > >(tee -a "$out/log.txt") 2>&1

python3 - <<'PY' | tee "$out/env.txt" || exit 1
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
if backend != "gpu":
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
  bench "step $dtype" python3 benchmarks/step.py --models resnet20 resnet19 --timesteps 4 \
    --width-mult 1.0 --batch 64 --repeats 20 --dtype "$dtype" --out "$out/step_$dtype.json"
done
bench lif python3 benchmarks/lif.py --batch 256 --repeats 20 --out "$out/lif.json"
bench loss python3 benchmarks/loss.py --repeats 10 --slow-repeats 5 --out "$out/loss.json"
exit "$failures"
