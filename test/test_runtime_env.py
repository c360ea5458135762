"""The runtime environment: loopback-only DDS, offline model hub, a ROS domain per test worker."""
from __future__ import annotations

import os
import re
from pathlib import Path

from openvla_ros import paths, runtime_env


def test_loopback_dds_profile_applied():
    env = runtime_env.loopback_env(base={})
    profile = Path(env['FASTDDS_DEFAULT_PROFILES_FILE'])
    assert profile == paths.fastdds_profile() and profile.is_file()
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert 1 <= int(env['ROS_DOMAIN_ID']) <= 100
    assert env['HF_HUB_OFFLINE'] == '1'
    xml = profile.read_text()
    # only shared memory and UDP bound to loopback; builtin (multicast) transports disabled
    assert '<useBuiltinTransports>false</useBuiltinTransports>' in xml
    assert re.findall(r'<address>([^<]+)</address>', xml) == ['127.0.0.1']
    # this test process itself runs with it (conftest applied it before rclpy was imported)
    assert os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] == str(profile)


def test_each_xdist_worker_gets_its_own_domain():
    ids = [runtime_env.worker_domain_id({'PYTEST_XDIST_WORKER': f'gw{i}', 'ROS_DOMAIN_ID': '99'})
           for i in range(4)]
    assert len(set(ids)) == 4 and 99 not in ids        # apart from each other and the controller
    assert all(i in runtime_env.DOMAIN_IDS for i in ids)
    assert runtime_env.worker_domain_id({}) is None       # serial run: the domain drawn at start
    # this process and its children share the domain conftest chose
    assert runtime_env.loopback_env()['ROS_DOMAIN_ID'] == os.environ['ROS_DOMAIN_ID']
