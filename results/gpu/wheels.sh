# Sourced by results/gpu/run.sh and benchmarks/gpu.sh. The GPU machine has no network and lacks
# some pure-Python libraries (ml-collections; SpikingJelly and loguru for the benchmarks' peer),
# so their wheels travel in the repository tree (.gpu/wheels, results/gpu/README.md).
#
#   use_wheels DIR MODULE=DISTRIBUTION ...
#
# For each MODULE that does not import, extracts DIR/DISTRIBUTION-*.whl (a zip of the package and
# its metadata) into $HTAKL_SITE (default /tmp/htakl_gpu_site) and puts that folder first on
# PYTHONPATH: a pure-Python wheel needs no pip for that, and nothing outside the folder changes.
# Fails, naming the module and folder, when the module is missing and no wheel is there.
use_wheels() {
  local dir=$1 spec module dist wheel site=${HTAKL_SITE:-/tmp/htakl_gpu_site}
  shift
  for spec in "$@"; do
    module=${spec%%=*} dist=${spec#*=}
    python3 -c "import $module" 2>/dev/null && continue
    wheel=$(ls "$dir/${dist//-/_}"-*.whl 2>/dev/null | head -n 1)
    if [ -z "$wheel" ]; then
      echo "error: $module is not importable and $dir holds no ${dist//-/_}-*.whl" >&2
      return 1
    fi
    mkdir -p "$site"
    python3 -m zipfile -e "$wheel" "$site"
    case ":${PYTHONPATH:-}:" in
      *":$site:"*) ;;
      *) export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" ;;
    esac
    python3 -c "import $module" || { echo "error: $module from $wheel does not import" >&2; return 1; }
    echo "installed $(basename "$wheel") into $site"
  done
}
