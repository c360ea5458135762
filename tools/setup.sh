#!/usr/bin/env bash
# Set up openvla_ros on a fresh Debian/Ubuntu machine, idempotently:
#   1. apt packages (only those missing: cmake, a C++ compiler, python3-venv/dev, EGL for MuJoCo)
#   2. a project-local virtual environment with the pinned ROS 2 wheels and ML stack
#   3. the messages + Python package built with CMake and installed into the venv
# A second run only re-checks: pip is skipped while the lock files are unchanged.
#
# The ROS distribution comes from ROS_DISTRO (default kilted):
#   kilted  .venv/        requirements-ros.txt        build/cmake/
#   jazzy   .venv-jazzy/  requirements-ros-jazzy.txt  build/cmake-jazzy/
# The Jazzy venv installs only the Jazzy ROS wheels; the ML and test stack (torch, ...) is the
# Kilted venv's, seen through links to its non-ROS site-packages entries, so it is set up first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DISTRO="${ROS_DISTRO:-kilted}"
PYTHON="${PYTHON:-python3}"
log() { printf '[setup %s] %s\n' "$DISTRO" "$*" >&2; }

case "$DISTRO" in
  kilted) VENV="${VENV:-$ROOT/.venv}"; ROS_LOCK="$ROOT/requirements-ros.txt"; BUILD="$ROOT/build/cmake" ;;
  jazzy)  VENV="${VENV:-$ROOT/.venv-jazzy}"; ROS_LOCK="$ROOT/requirements-ros-jazzy.txt"; BUILD="$ROOT/build/cmake-jazzy" ;;
  *) log "ROS_DISTRO=$DISTRO is not supported here: kilted or jazzy (PyPI has wheels for no other" \
         "distribution; on a ROS installation build with colcon, see the README)"; exit 2 ;;
esac

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
STAMP="$VENV/.openvla_ros_requirements.sha256"
if [ "$DISTRO" = kilted ]; then
  LOCKS=("$ROS_LOCK" "$ROOT/requirements.txt" "$ROOT/requirements-test.txt")
  want="$(cat "${LOCKS[@]}" | sha256sum | cut -d' ' -f1)"
else
  SHARED_VENV="$ROOT/.venv"
  ROS_DISTRO=kilted VENV="$SHARED_VENV" "$ROOT/tools/setup.sh"
  LOCKS=("$ROS_LOCK")
  want="$( { cat "$ROS_LOCK" "$SHARED_VENV/.openvla_ros_requirements.sha256"; echo "$SHARED_VENV"; } | sha256sum | cut -d' ' -f1)"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "installing pinned Python packages into $VENV (first run: several minutes, ~6 GB for torch)"
  args=(); for f in "${LOCKS[@]}"; do args+=(-r "$f"); done
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}"
  if [ "$DISTRO" != kilted ]; then
    # Link every top-level entry of the Kilted site-packages that no ROS wheel installed (and
    # not our own package, built per distribution) into one folder on this venv's path. Its
    # .pth files are not run from there, so the Kilted ROS bootstrapper stays out.
    "$VENV/bin/python" - "$SHARED_VENV" "$VENV" <<'EOF'
import os, pathlib, shutil, sys, sysconfig
shared, venv = map(pathlib.Path, sys.argv[1:])
rel = pathlib.Path(sysconfig.get_path('purelib')).relative_to(sys.prefix)
src, dst = shared / rel, venv / 'openvla_ros_shared_site'
ros_owned = {'openvla_ros'}
for info in src.glob('*.dist-info'):
    name = info.name.split('-')[0].lower().replace('_', '-')
    record = info / 'RECORD'
    if (name.startswith('ros-') or name == 'openvla-ros') and record.exists():
        for line in record.read_text().splitlines():
            ros_owned.add(line.split('/', 1)[0].split(',', 1)[0])
shutil.rmtree(dst, ignore_errors=True)
dst.mkdir()
n = 0
for entry in sorted(src.iterdir()):
    if entry.name in ros_owned or entry.suffix == '.pth' or entry.name.endswith('.egg-info') \
            or entry.name in ('__pycache__', '_distutils_hack', 'pip', 'setuptools') \
            or entry.name.startswith(('pip-', 'setuptools-')):
        continue
    (dst / entry.name).symlink_to(entry)
    n += 1
(venv / rel / 'openvla_ros_shared_site.pth').write_text(f'{dst}\n')
print(f'[setup jazzy] sharing {n} site-packages entries of {src}', file=sys.stderr)
EOF
  fi
  echo "$want" > "$STAMP"
else
  log "Python packages up to date"
fi

# ---- 3. messages + package, installed into the venv ----
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
LOGS="$ROOT/build/$(basename "$BUILD")"; mkdir -p "$BUILD"
CONFIGURE_ARGS=(-DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python"
                -DAMENT_CMAKE_SYMLINK_INSTALL=ON -DBUILD_TESTING=OFF)
CONFIGURED="$BUILD/.openvla_ros_configured"
configured_want="$(printf '%s\n' "${CONFIGURE_ARGS[@]}" | sha256sum | cut -d' ' -f1)"
# A failed configure leaves a CMakeCache.txt without a Makefile: only a configure that finished
# (stamped) is trusted; anything else starts from a clean cache.
if [ "$(cat "$CONFIGURED" 2>/dev/null)" != "$configured_want" ] || [ ! -f "$BUILD/Makefile" ]; then
  rm -rf "$BUILD/CMakeCache.txt" "$BUILD/CMakeFiles" "$CONFIGURED"
  cmake -S "$ROOT" -B "$BUILD" -Wno-dev "${CONFIGURE_ARGS[@]}" >"$LOGS-configure.log" 2>&1 \
    || { cat "$LOGS-configure.log"; log "cmake configure failed (log: $LOGS-configure.log)"; exit 1; }
  echo "$configured_want" > "$CONFIGURED"
fi
cmake --build "$BUILD" -j"$(nproc)" >"$LOGS-build.log" 2>&1 || { tail -50 "$LOGS-build.log"; exit 1; }
cmake --install "$BUILD" >"$LOGS-install.log" 2>&1 || { tail -50 "$LOGS-install.log"; exit 1; }
"$VENV/bin/python" -c "import rclpy, openvla_ros.msg as m; m.EndEffectorDelta; m.VlaStatus; m.ControllerStatus" \
  || { log "message import check failed"; exit 1; }
log "ready: $VENV (messages built and installed)"
