"""The package foundation: ROS-free core, messages, loopback DDS, executables."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from openvla_ros import defaults, paths, runtime_env

ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGES = ['openvla_ros.engine', 'openvla_ros.control', 'openvla_ros.sim', 'openvla_ros.server']
CORE_MODULES = ['openvla_ros.defaults', 'openvla_ros.paths', 'openvla_ros.imaging', 'openvla_ros.runtime_env',
                'openvla_ros.stamps']


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


def test_messages_roundtrip_through_cdr():
    from rclpy.serialization import deserialize_message, serialize_message

    from openvla_ros.msg import ControllerStatus, EndEffectorDelta, VlaStatus

    m = EndEffectorDelta()
    m.header.stamp.sec, m.header.stamp.nanosec = 12, 345
    m.header.frame_id = 'wx250s/base_link'
    m.action = [0.01, -0.02, 0.03, 0.1, -0.1, 0.2, 0.996]
    m.translation.x, m.rotation.z, m.gripper = 0.01, 0.2, 0.996
    m.normalized_action = [0.5] * 7
    m.action_token_ids = [31872] * 7
    m.instruction, m.unnorm_key, m.model_id = 'Pick up the spoon', 'bridge_orig', 'openvla-7b'
    m.inference_latency_s, m.image_age_s, m.sequence = 0.03, 0.05, 7
    back = deserialize_message(serialize_message(m), EndEffectorDelta)
    assert back == m
    assert list(back.action_token_ids) == [31872] * 7
    assert VlaStatus.STATE_RUNNING == 3 and ControllerStatus.STATE_ESTOP == 3
    s = VlaStatus(frames_dropped=2**40)
    assert deserialize_message(serialize_message(s), VlaStatus).frames_dropped == 2**40


def test_message_fields_documented_with_units():
    """Every field line in msg/*.msg carries a comment (unit/frame) on it or just above it."""
    for f in sorted((ROOT / 'msg').glob('*.msg')):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            body = line.split('#')[0].strip()
            if not body or '=' in body:
                continue
            documented = '#' in line or (i > 0 and lines[i - 1].lstrip().startswith('#'))
            assert documented, f'{f.name}:{i + 1} field without a comment: {line!r}'


def test_cmake_builds_every_message():
    cmake = (ROOT / 'CMakeLists.txt').read_text()
    for f in (ROOT / 'msg').glob('*.msg'):
        assert f'"msg/{f.name}"' in cmake, f'{f.name} is not in rosidl_generate_interfaces'


def test_package_xml_format_3():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'openvla_ros'
    assert root.find('export/build_type').text == 'ament_cmake'


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


def _console_scripts() -> list[tuple[str, str, str]]:
    out = []
    for line in (ROOT / 'console_scripts.txt').read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            name, target = (x.strip() for x in line.split('=', 1))
            module, func = target.split(':')
            out.append((name, module, func))
    return out


@pytest.mark.parametrize('name,module,func', _console_scripts())
def test_console_script_targets_exist(name, module, func):
    import importlib

    mod = importlib.import_module(module)
    assert callable(getattr(mod, func)), f'{name}: {module}:{func} is not callable'
    installed = Path(sys.prefix) / 'bin' / name
    assert installed.is_file(), f'{installed} missing: run ./tools/setup.sh'


def test_defaults_are_absolute_or_private_topics():
    for k, v in vars(defaults).items():
        if k.endswith('_TOPIC'):
            assert v.startswith('/') or v.startswith('~/'), (k, v)


def test_stamp_conversions_keep_nanosec_in_range():
    from types import SimpleNamespace

    from openvla_ros.stamps import ns_to_sec_nanosec, s_to_sec_nanosec, stamp_to_ns, stamp_to_s

    # rounding up to a whole second carries into sec instead of giving nanosec == 1e9
    assert s_to_sec_nanosec(1.9999999999) == (2, 0)
    assert s_to_sec_nanosec(0.25) == (0, 250_000_000)
    assert ns_to_sec_nanosec(-1) == (-1, 999_999_999)
    stamp = SimpleNamespace(sec=12, nanosec=345_000_000)
    assert stamp_to_ns(stamp) == 12_345_000_000
    assert stamp_to_s(stamp) == pytest.approx(12.345)
    with pytest.raises(ValueError):
        s_to_sec_nanosec(float('nan'))
