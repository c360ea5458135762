"""The package messages: CDR round trip, documented fields, all built by CMake."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
