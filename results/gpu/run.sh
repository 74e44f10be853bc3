#!/usr/bin/env bash
# The one-command GPU reproduction: teacher and students on all of CIFAR-10, within a 9-minute
# budget (what runs, the budget arithmetic and the outputs: results/gpu/reproduce.py's header).
#
#   bash results/gpu/run.sh PACKED_CIFAR10.npz OUT_DIR [reproduce.py flags, e.g. --smoke]
#
# Needs no install of this package (the repository root goes on PYTHONPATH). ml-collections, which
# the GPU machine lacks, comes from its wheel in .gpu/wheels when it is not importable
# (results/gpu/wheels.sh; results/gpu/README.md says how to fetch it). OUT_DIR receives
# results.md, results.json, metrics.jsonl and log.txt (this script's whole output); checkpoints
# go to --work (/tmp).
set -euo pipefail
start=$(date +%s.%N)
cd "$(dirname "$0")/../.."
if [ $# -lt 2 ]; then
  echo "usage: bash results/gpu/run.sh PACKED_CIFAR10.npz OUT_DIR [reproduce.py flags]" >&2
  exit 2
fi
data=$1
out=$2
shift 2
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The commit the tree was copied from, when it travelled without .git (results/gpu/README.md).
export HTAKL_COMMIT="${HTAKL_COMMIT:-$(cat .gpu/commit 2>/dev/null || true)}"
source results/gpu/wheels.sh
use_wheels .gpu/wheels ml_collections=ml-collections
# Fail in seconds, not minutes, when a library is missing.
python3 -c "import jax, flax, optax, orbax.checkpoint, ml_collections, yaml, PIL" \
  || { echo "error: a library above is missing (see results/gpu/README.md)" >&2; exit 1; }
python3 results/gpu/reproduce.py --data "$data" --out "$out" --start-time "$start" "$@" \
  2>&1 | tee "$out/log.txt"
