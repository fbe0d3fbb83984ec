#!/usr/bin/env bash
# One short GPU session: fresh venv, real providers, GPU benchmark cells, GPU tests, results.
#
#   bench/gpu.sh                 # on a lent GPU machine (< 5 minutes)
#   bench/gpu.sh --no-venv       # use the current python (its packages) instead of a fresh venv
#   bench/gpu.sh --venv DIR      # where the fresh venv goes (default: $TMPDIR/edge-gpu-venv)
#
# Steps: (1) no GPU (nvidia-smi missing or listing none): say so and exit 0; (2) a fresh venv with
# the edge-gpu, host-gpu and dev extras (pip from the package registry only); (3) which ONNX
# Runtime providers really run: a session per provider on models/tiny with
# on_fallback="error", its get_providers() printed, and whether TensorFlow sees the GPU; (4) the GPU
# benchmark cells (ORT CUDA and TensorRT, batch 1/32/256, default, MobileNetV2-0.35 and
# EfficientNet-Lite0 where built) and the Keras baseline's fit on TensorFlow GPU, through
# `python -m bench.report`, which writes bench/results/<host>-gpu.{json,md}; (5) the GPU tests
# (`pytest -m gpu`). Each step is bounded with `timeout` so the whole run stays under 5 minutes;
# a step that fails is reported and the next one still runs. Exit status: 0 when there is no GPU
# or every step passed, else the number of failed steps.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
USE_VENV=1
VENV="${TMPDIR:-/tmp}/edge-gpu-venv"
while [ $# -gt 0 ]; do
    case "$1" in
        --no-venv) USE_VENV=0 ;;
        --venv) shift; VENV="${1:?--venv needs a directory}" ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown option '$1' (expected --no-venv, --venv DIR or --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '[gpu.sh %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# (1) Is there a GPU at all?
if ! command -v nvidia-smi >/dev/null 2>&1; then
    say "no GPU found: nvidia-smi is not installed (no NVIDIA driver). Nothing to run; exiting 0."
    exit 0
fi
GPUS="$(timeout 20 nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
if [ "${GPUS:-0}" -eq 0 ]; then
    say "no GPU found: nvidia-smi lists no GPU. Nothing to run; exiting 0."
    exit 0
fi
say "found ${GPUS} GPU(s):"
timeout 20 nvidia-smi -L

FAILED=0
step() {  # step NAME SECONDS CMD...
    local name="$1" limit="$2"
    shift 2
    say "step ${name} (at most ${limit} s): $*"
    if timeout "$limit" "$@"; then
        say "step ${name}: ok"
    else
        say "step ${name}: FAILED (exit $?)"
        FAILED=$((FAILED + 1))
    fi
}

# (2) A fresh venv with the GPU extras.
PY="${PYTHON:-python3}"
if [ "$USE_VENV" -eq 1 ]; then
    rm -rf "$VENV"
    if "$PY" -m venv "$VENV" && timeout 150 "$VENV/bin/python" -m pip install --quiet --upgrade pip \
        && timeout 150 "$VENV/bin/python" -m pip install --quiet -e ".[edge-gpu,host-gpu,dev]"; then
        PY="$VENV/bin/python"
        say "venv ready: $VENV"
    else
        say "could not build the venv with the GPU extras (no registry?): continuing with $PY"
        FAILED=$((FAILED + 1))
    fi
fi

# (3) Providers that really run (onnxruntime-gpu lists CUDA/TensorRT even when they fall back).
step providers 60 "$PY" - <<'EOF'
import onnxruntime as ort
from edge.runtimes import open_backbone
print("available:", ort.get_available_providers())
ok = False
for name in ("cuda", "tensorrt"):
    try:
        bb = open_backbone("models/tiny", runtime="onnx", providers=name, on_fallback="error")
    except Exception as exc:  # report every failure, keep going
        print(f"{name}: does not run: {exc}")
        continue
    print(f"{name}: session providers {list(bb.info.providers)}")
    ok = True
    bb.close()
try:
    import tensorflow as tf
    print("tensorflow GPUs:", tf.config.list_physical_devices("GPU"))
except ImportError:
    print("tensorflow: not installed (the Keras baseline runs on CPU or skips)")
raise SystemExit(0 if ok else 1)
EOF

# (4) GPU cells + the Keras fit baseline (TensorFlow uses the GPU when it sees one).
HOST="$(hostname | tr -c 'A-Za-z0-9_.-\n' '-')"
EDGE_BENCH_BATCHES="1,32,256" step bench 170 "$PY" -m bench.report --name "${HOST}-gpu" -- \
    -m "bench_gpu or keras_fit"

# (5) GPU tests.
step tests 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/

say "done: ${FAILED} step(s) failed; results in bench/results/${HOST}-gpu.{json,md}"
exit "$FAILED"
