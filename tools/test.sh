#!/usr/bin/env bash
# Set up (idempotent) and run every test. Extra arguments go to pytest.
#
# The tests run once per ROS 2 distribution in OPENVLA_TEST_DISTROS (default "kilted jazzy"):
# the whole suite on Kilted, then the tests that use a live rclpy graph (marker "ros") on Jazzy,
# less the slow closed-loop ones (marker "slow": the same rclpy calls as the quick graph tests),
# each in its own venv (see tools/setup.sh). The exit status is non-zero when any run fails.
# OPENVLA_TEST_WORKERS (default 2) pytest-xdist workers per run; 1 runs in one process. Each
# worker gets its own ROS_DOMAIN_ID (openvla_ros.runtime_env), so graphs of two workers never meet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DISTROS="${OPENVLA_TEST_DISTROS:-kilted jazzy}"
WORKERS="${OPENVLA_TEST_WORKERS:-2}"
cd "$ROOT"
# 2-core CI machines: one OpenMP thread per torch process (several run at once) is much faster.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

run_pytest() {   # VENV [pytest arguments...]; in a subshell so each run gets its own environment
  local venv="$1"; shift
  (
    eval "$("$venv/bin/python" -m openvla_ros.runtime_env)"
    exec "$venv/bin/python" -m pytest "$@"
  )
}

status=0
for distro in $DISTROS; do
  case "$distro" in
    kilted) venv="$ROOT/.venv"; select=() ;;
    jazzy)  venv="$ROOT/.venv-jazzy"; select=(-m 'ros and not slow') ;;
    *) echo "tools/test.sh: unknown distribution '$distro' in OPENVLA_TEST_DISTROS" >&2; exit 2 ;;
  esac
  ROS_DISTRO="$distro" "$ROOT/tools/setup.sh"
  echo "==== ROS 2 $distro: pytest ${select[*]} $*" >&2
  rc=0
  parallel=()
  [ "$WORKERS" -gt 1 ] && parallel=(-n "$WORKERS")
  run_pytest "$venv" "${parallel[@]}" --durations=15 "${select[@]}" "$@" || rc=$?
  # 5 = nothing collected: arguments that select no ros test are not a failure of the Jazzy run
  if [ "$rc" -eq 5 ] && [ "$distro" != kilted ]; then rc=0; fi
  echo "==== ROS 2 $distro: pytest exit status $rc" >&2
  [ "$rc" -eq 0 ] || status=$rc
done
exit "$status"
