#!/usr/bin/env bash
# The closed-loop demo in one command: set up (idempotent), then run openvla-demo in the
# project's loopback DDS environment. Arguments go to openvla-demo (see --help), e.g.
#   ./tools/demo.sh --duration-s 60 --instruction "put the spoon on the towel"
#   ./tools/demo.sh --checkpoint /models/openvla-7b --device cuda --dtype bfloat16
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/setup.sh"
cd "$ROOT"
eval "$("$ROOT/.venv/bin/python" -m openvla_ros.runtime_env)"
exec "$ROOT/.venv/bin/openvla-demo" "$@"
