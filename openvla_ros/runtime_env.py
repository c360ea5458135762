"""The process environment every ROS process of this project runs with (tests, demo, bring-up).

Loopback-only DDS: Fast DDS with shared memory + UDPv4 bound to 127.0.0.1 (the default profile
multicasts discovery out of the network interface), discovery limited to localhost, and a
random domain id per run so parallel runs do not see each other. Also: no model-hub access.

``python -m openvla_ros.runtime_env`` prints ``export`` lines for shell scripts.
"""
from __future__ import annotations

import os
import random
import shlex
import sys
from pathlib import Path

DOMAIN_IDS = range(1, 101)   # Fast DDS on loopback: each domain takes its own port block


def loopback_env(base: dict | None = None, domain_id: int | None = None) -> dict:
    """Return a copy of ``base`` (default: os.environ) with the project's runtime variables set.

    Variables already set in ``base`` are kept (so a caller can pin a domain id)."""
    from openvla_ros.paths import fastdds_profile

    env = dict(os.environ if base is None else base)
    env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds_profile()))
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('ROS_DOMAIN_ID', str(domain_id if domain_id is not None else random.choice(DOMAIN_IDS)))
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    env.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    env.setdefault('ROS_LOG_DIR', str(Path(env.get('TMPDIR', '/tmp')) / 'openvla_ros_logs'))
    env.setdefault('HOME', env.get('HOME') or '/tmp')
    env.setdefault('HF_HUB_OFFLINE', '1')
    env.setdefault('TRANSFORMERS_OFFLINE', '1')
    env.setdefault('MUJOCO_GL', 'egl')
    env.setdefault('PYOPENGL_PLATFORM', env['MUJOCO_GL'])
    return env


def worker_domain_id(env: dict | None = None) -> int | None:
    """A ROS domain id of its own for this pytest-xdist worker (None outside xdist).

    Workers of one run share a base, the ``ROS_DOMAIN_ID`` they inherit from the controlling
    process (which draws it at random when unset), and add 1 + their index, so two workers never
    land on one domain; ``apply`` exports it, so the processes a test starts share it.
    """
    env = os.environ if env is None else env
    worker = env.get('PYTEST_XDIST_WORKER', '')
    if not worker.startswith('gw'):
        return None
    base = int(env.get('ROS_DOMAIN_ID') or random.choice(DOMAIN_IDS))
    index = int(worker[2:])
    return DOMAIN_IDS[(base - DOMAIN_IDS[0] + 1 + index) % len(DOMAIN_IDS)]


def apply(domain_id: int | None = None) -> None:
    """Set the runtime variables in this process (call before rclpy.init()); ``domain_id``, when
    given, replaces an inherited ``ROS_DOMAIN_ID``."""
    if domain_id is not None:
        os.environ['ROS_DOMAIN_ID'] = str(domain_id)
    os.environ.update(loopback_env())


def main() -> int:
    env = loopback_env()
    for k in ('FASTDDS_DEFAULT_PROFILES_FILE', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID',
              'RMW_IMPLEMENTATION', 'AMENT_PREFIX_PATH', 'ROS_LOG_DIR', 'HF_HUB_OFFLINE',
              'TRANSFORMERS_OFFLINE', 'MUJOCO_GL', 'PYOPENGL_PLATFORM'):
        print(f'export {k}={shlex.quote(env[k])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
