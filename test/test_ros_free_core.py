"""The ROS-free core imports no rclpy: engine, control, sim, policy and server run without ROS."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from openvla_ros import runtime_env

ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGES = ['openvla_ros.engine', 'openvla_ros.control', 'openvla_ros.sim', 'openvla_ros.policy',
                 'openvla_ros.server']
CORE_MODULES = ['openvla_ros.defaults', 'openvla_ros.action_layout', 'openvla_ros.paths',
                'openvla_ros.imaging', 'openvla_ros.runtime_env', 'openvla_ros.stamps']


def test_ros_free_core_imports_no_rclpy():
    """Import every module of the ROS-free core in a fresh interpreter; rclpy must stay unloaded."""
    code = f"""
import importlib, pkgutil, sys
mods = {CORE_MODULES!r}
for pkg_name in {CORE_PACKAGES!r}:
    pkg = importlib.import_module(pkg_name)
    mods.append(pkg_name)
    mods += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + '.')]
for m in mods:
    importlib.import_module(m)
bad = sorted(m for m in sys.modules if m == 'rclpy' or m.startswith('rclpy.') or m.endswith('_msgs.msg'))
print('imported', len(mods), 'modules')
assert not bad, f'the ROS-free core imported {{bad[:5]}}'
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                       env=runtime_env.loopback_env(), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    n = int(re.search(r'imported (\d+) modules', r.stdout).group(1))
    assert n >= len(CORE_MODULES) + len(CORE_PACKAGES)
