#!/usr/bin/env bash
# Measure the engine's decode modes and the server on this machine (no network needed):
#   tools/gpu_check.sh                                   full-size openvla-7b shapes on cuda
#   tools/gpu_check.sh --device cpu --preset tiny --budget-s 50
# Uses the project's .venv when it has torch, else python3 with whatever is installed, and says
# which packages are missing. Results: $OUT (or output/gpu_check)/gpu_check.json and .md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
    python=.venv/bin/python
fi
if ! "$python" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: $python cannot import torch; install torch (CUDA build) first" >&2
    exit 2
fi
# the source tree itself, whether or not the package is installed into this interpreter
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout --signal=TERM --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-480}" \
    "$python" -m openvla_ros.cli.gpu_check "$@"
