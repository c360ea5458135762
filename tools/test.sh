#!/usr/bin/env bash
# Set up (idempotent) and run every test. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/setup.sh"
cd "$ROOT"
eval "$("$ROOT/.venv/bin/python" -m openvla_ros.runtime_env)"
# 2-core CI machines: one OpenMP thread per torch process (several run at once) is much faster.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
