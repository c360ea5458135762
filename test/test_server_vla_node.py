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
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from conftest import spin_until
from openvla_ros import defaults
from openvla_ros.imaging import rgb_to_image_fields
from openvla_ros.msg import EndEffectorDelta, VlaStatus
from openvla_ros.nodes import common
from openvla_ros.server.process import ServerProcess

pytestmark = pytest.mark.ros

CASE = 1   # parity case: 224 x 224, "put carrot on plate", bridge_orig


def test_vla_node_remote_backend_and_server_killed(parity_dir, tmp_path, processes, ros_context):
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

        import rclpy

        node = rclpy.create_node('remote_backend_probe', context=ros_context)
        executor = SingleThreadedExecutor(context=ros_context)
        executor.add_node(node)
        actions: list[EndEffectorDelta] = []
        statuses: list[VlaStatus] = []
        node.create_subscription(EndEffectorDelta, defaults.ACTION_TOPIC, actions.append,
                                 common.reliable_qos(50))
        node.create_subscription(VlaStatus, defaults.VLA_STATUS_TOPIC, statuses.append,
                                 common.latched_qos())
        camera = node.create_publisher(Image, defaults.CAMERA_TOPIC, qos_profile_sensor_data)
        fields = rgb_to_image_fields(rgb, 'rgb8')
        last_sent = [0.0]

        def publish_and(predicate):
            def step():
                now = node.get_clock().now()
                if now.nanoseconds * 1e-9 - last_sent[0] >= 0.1:
                    msg = Image(**fields)
                    msg.header.stamp = now.to_msg()
                    msg.header.frame_id = 'camera'
                    camera.publish(msg)
                    last_sent[0] = now.nanoseconds * 1e-9
                return predicate()
            return step

        try:
            assert spin_until(executor, publish_and(lambda: len(actions) >= 3), 60.0), \
                f'no actions from vla_node:\n{processes.log("vla_node")[-3000:]}'
            for a in actions:
                np.testing.assert_array_equal(np.asarray(a.action), case['action'])
                assert list(a.action_token_ids) == case['action_token_ids']
                assert a.instruction == case['instruction']
            assert any(s.backend == 'remote' and s.state == VlaStatus.STATE_RUNNING for s in statuses)

            server.kill()
            killed_ns = node.get_clock().now().nanoseconds

            def backend_down() -> bool:
                return any(s.state == VlaStatus.STATE_ERROR and 'unavailable' in s.message
                           and s.header.stamp.sec * 10**9 + s.header.stamp.nanosec > killed_ns
                           for s in statuses)

            assert spin_until(executor, publish_and(backend_down), 20.0), \
                [(s.state_name, s.message) for s in statuses[-5:]]
            # Keep the camera going a while: images keep arriving, the server stays dead.
            spin_until(executor, publish_and(lambda: False), 1.5)
            after_kill = [a for a in actions
                          if a.header.stamp.sec * 10**9 + a.header.stamp.nanosec > killed_ns]
            assert after_kill == [], f'{len(after_kill)} action(s) from images taken after the kill'
            last = statuses[-1]
            assert last.state == VlaStatus.STATE_ERROR and last.inference_errors > 0
        finally:
            executor.shutdown()
            node.destroy_node()
    finally:
        server.stop()
    codes = processes.stop()
    assert codes.get('vla_node') == 0, processes.log('vla_node')[-3000:]
