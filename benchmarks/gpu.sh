#!/usr/bin/env bash
# GPU step benchmark (issue 6): one training step of resnet20 and resnet19 students at T = 4 against
# 4 x the ANN step, fp32 and bf16, full width, batch 64, 32x32 inputs; SpikingJelly alongside when
# torch with CUDA and spikingjelly are installed (skipped with a message otherwise). A few minutes.
#
#   pip install -e . "jax[cuda12]"        # once, on the GPU machine
#   bash benchmarks/gpu.sh [OUT_DIR=bench_gpu]
# Prints one table per dtype and writes OUT_DIR/step_{float32,bfloat16}.json and OUT_DIR/env.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench_gpu}
mkdir -p "$out"
python - <<'PY' | tee "$out/env.txt"
import jax
backend = jax.default_backend()
print(f"jax {jax.__version__}, backend {backend}, devices {jax.devices()}")
if backend != "gpu":
    raise SystemExit("benchmarks/gpu.sh needs a CUDA jax: pip install -U 'jax[cuda12]'")
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader | tee -a "$out/env.txt"
for dtype in float32 bfloat16; do
  python benchmarks/step.py --models resnet20 resnet19 --timesteps 4 --width-mult 1.0 \
    --batch 64 --repeats 10 --dtype "$dtype" --out "$out/step_$dtype.json"
done
