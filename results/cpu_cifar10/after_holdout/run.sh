#!/usr/bin/env bash
# The GPU recipe after the two hold-out fixes (decay_input=False, student LR 0.4) at width 1/4 on
# the CPU: what ran for results/cpu_cifar10/after_holdout/ (README there).
#
#   bash results/cpu_cifar10/after_holdout/run.sh PACKED_CIFAR10.npz WORK OUT_DIR
#
# Ran at 211a731 (training) with WORK holding the finished teacher of results/cpu_cifar10/ (same
# teacher config, seed and code), which reproduce.py resumes instead of retraining; from an empty
# WORK it trains that teacher first (about 25 minutes more on 2 cores). The spike step ran at a
# later commit that adds it (reproduce.spike_energy; the training code is unchanged).
set -euo pipefail
cd "$(dirname "$0")/../../.."
packed=$1
work=$2
out=$3
run() { bash results/gpu/run.sh "$packed" "$1" --setting cpu --budget-s 9000 --work "$work" "${@:2}"; }
run "$out" --methods hta_kl,fkl
run "$out/ce" --methods ce
python - "$packed" "$work" "$out/spikes.json" <<'PY'
import importlib.util, json, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("reproduce", "results/gpu/reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)
packed, work, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
args = reproduce.parse_args(["--data", packed, "--out", "/tmp/unused", "--setting", "cpu"])
config = reproduce.load_config(args)
_, eval_ds, info = reproduce.runs.load_data(config)
spikes = {
    m: reproduce.spike_energy(config, work / m / "student", eval_ds, info)
    for m in ("hta_kl", "fkl", "ce")
}
out.write_text(json.dumps(spikes, indent=1) + "\n")
PY
