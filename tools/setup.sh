#!/usr/bin/env bash
# Set up openvla_ros on a fresh Debian/Ubuntu machine, idempotently:
#   1. apt packages (only those missing: cmake, a C++ compiler, python3-venv/dev, EGL for MuJoCo)
#   2. a project-local virtual environment .venv with the pinned ROS 2 Kilted wheels and ML stack
#   3. the messages + Python package built with CMake and installed into the venv
# A second run only re-checks: pip is skipped while the lock files are unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
log() { printf '[setup] %s\n' "$*" >&2; }

# ---- 1. system packages ----
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' || need_apt+=(python3-dev)
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || need_apt+=(libegl1 libgl1 libgles2)
ldconfig -p 2>/dev/null | grep -q 'libgomp.so.1' || need_apt+=(libgomp1)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# ---- 2. virtual environment ----
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
LOCKS=("$ROOT/requirements-ros.txt" "$ROOT/requirements.txt" "$ROOT/requirements-test.txt")
STAMP="$VENV/.openvla_ros_requirements.sha256"
want="$(cat "${LOCKS[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "installing pinned Python packages into $VENV (first run: several minutes, ~6 GB for torch)"
  args=(); for f in "${LOCKS[@]}"; do args+=(-r "$f"); done
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}"
  echo "$want" > "$STAMP"
else
  log "Python packages up to date"
fi

# ---- 3. messages + package, installed into the venv ----
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
BUILD="$ROOT/build/cmake"; mkdir -p "$BUILD"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -Wno-dev \
    -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$VENV/bin/python" \
    -DAMENT_CMAKE_SYMLINK_INSTALL=ON \
    -DBUILD_TESTING=OFF >"$ROOT/build/cmake-configure.log" 2>&1 || { cat "$ROOT/build/cmake-configure.log"; exit 1; }
fi
cmake --build "$BUILD" -j"$(nproc)" >"$ROOT/build/cmake-build.log" 2>&1 || { tail -50 "$ROOT/build/cmake-build.log"; exit 1; }
cmake --install "$BUILD" >"$ROOT/build/cmake-install.log" 2>&1 || { tail -50 "$ROOT/build/cmake-install.log"; exit 1; }
"$VENV/bin/python" -c "import rclpy, openvla_ros.msg as m; m.EndEffectorDelta; m.VlaStatus; m.ControllerStatus" \
  || { log "message import check failed"; exit 1; }
log "ready: $VENV (messages built and installed)"
