"""vla_node with ``backend:=remote`` against a live openvla-serve, then with the server killed.

Real processes: the server (parity checkpoint) and vla_node run as children; this test publishes
camera images over loopback DDS and listens to the actions and the status. After the server is
killed, no action may come from an image taken after the kill, and the status must say why.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import VlaProbe
from openvla_ros import defaults
from openvla_ros.msg import VlaStatus
from openvla_ros.server.process import ServerProcess
from openvla_ros.stamps import stamp_to_ns

pytestmark = pytest.mark.ros

CASE = 1   # parity case: 224 x 224, "put carrot on plate", bridge_orig


def test_vla_node_remote_backend_and_server_killed(parity_dir, tmp_path, processes, probe):
    case = json.loads((parity_dir / 'expected.json').read_text())['cases'][CASE]
    assert case['unnorm_key'] == defaults.DEFAULT_UNNORM_KEY
    rgb = np.asarray(PILImage.open(parity_dir / 'images' / f'case_{CASE:02d}.png').convert('RGB'))

    server = ServerProcess(parity_dir / 'checkpoint', '--cpu-threads', '1',
                           log_path=tmp_path / 'server.log').start()
    try:
        processes.start('openvla_ros.nodes.vla_node', '--ros-args',
                        '-p', 'backend:=remote', '-p', f'server_url:={server.url}',
                        '-p', 'server_timeout_s:=2.0', '-p', 'server_retries:=1',
                        '-p', 'server_backoff_s:=0.05', '-p', f'instruction:={case["instruction"]}',
                        '-p', 'max_rate_hz:=10.0', '-p', 'max_image_age_s:=2.0')

        vla = VlaProbe(*probe, rgb, period_s=0.1)
        actions, statuses = vla.actions, vla.statuses
        assert vla.feed_until(lambda: len(actions) >= 3, 60.0), \
            f'no actions from vla_node:\n{processes.log("vla_node")[-3000:]}'
        for a in actions:
            np.testing.assert_array_equal(np.asarray(a.action), case['action'])
            assert list(a.action_token_ids) == case['action_token_ids']
            assert a.instruction == case['instruction']
        assert any(s.backend == 'remote' and s.state == VlaStatus.STATE_RUNNING for s in statuses)

        server.kill()
        killed_ns = vla.node.get_clock().now().nanoseconds

        def backend_down() -> bool:
            return any(s.state == VlaStatus.STATE_ERROR and 'unavailable' in s.message
                       and stamp_to_ns(s.header.stamp) > killed_ns for s in statuses)

        assert vla.feed_until(backend_down, 20.0), [(s.state_name, s.message) for s in statuses[-5:]]
        # Keep the camera going a while: images keep arriving, the server stays dead.
        vla.feed_until(lambda: False, 1.5)
        after_kill = [a for a in actions if stamp_to_ns(a.header.stamp) > killed_ns]
        assert after_kill == [], f'{len(after_kill)} action(s) from images taken after the kill'
        last = statuses[-1]
        assert last.state == VlaStatus.STATE_ERROR and last.inference_errors > 0
    finally:
        server.stop()
    codes = processes.stop()
    assert codes.get('vla_node') == 0, processes.log('vla_node')[-3000:]
