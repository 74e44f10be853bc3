#!/usr/bin/env bash
# Full-width resnet20 on all of CIFAR-10 (issue 8's GPU run): the teacher, then FKL and HTA-KL
# students at T = 2, all from the shared image folders; results in OUT/results.md.
# Budget: under 10 minutes of one H100-class GPU (teacher 30 epochs, students 12 epochs each,
# batch 256, bf16 compute). Not run in this repository's CPU-only sessions so far.
#
#   pip install -e . "jax[cuda12]"
#   bash results/gpu_cifar10.sh [DATA_DIR=../shared/data/cifar10] [OUT=runs/gpu_cifar10]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/cifar10}
out=${2:-runs/gpu_cifar10}
python -c "import jax; assert jax.default_backend() == 'gpu', 'needs a CUDA jax'"
common=(
  --config configs/cifar10_local.py:resnet20,2
  --config.data.data_dir="$data"
  --config.model.dtype=bfloat16
  --config.teacher.epochs=30 --config.teacher.batch_size=256 --config.teacher.lr=0.2
  --config.student.epochs=12 --config.student.batch_size=256 --config.student.lr=0.1
  --config.eval.timesteps='(1,2)' --config.eval.every_epochs=1000 --config.log_every_steps=50
)
start=$(date +%s)
python -m htakl_jax.main "${common[@]}" --mode teacher --workdir "$out/teacher_run"
for method in fkl hta_kl; do
  python -m htakl_jax.main "${common[@]}" --mode all --workdir "$out/$method" \
    --config.student.method="$method" \
    --config.student.teacher_checkpoint="$(realpath "$out/teacher_run/teacher")"
done
python - "$out" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
out, seconds = sys.argv[1], int(sys.argv[2])
lines = [
    "| method | teacher (%) | student T=1 (%) | student T=2 (%) |",
    "|---|---|---|---|",
]
for m in ("fkl", "hta_kl"):
    r = json.load(open(f"{out}/{m}/results.json"))
    acc = r["student_accuracy"]
    lines.append(
        f"| {m} | {100 * r['teacher_accuracy']:.2f} | {100 * acc['1']:.2f} | {100 * acc['2']:.2f} |"
    )
lines.append(f"\nwall time: {seconds} s (including compiles and data decoding)")
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
