"""vla_node with ``use_compressed:=true``: sensor_msgs/CompressedImage on <camera>/compressed.

A separate module (and node process) from test_vla_node.py, which shares node and topic names;
the harness and helpers come from there. test_vla_node_hostile_frames.py runs its own compressed
vla_node with the helpers here.
"""
from __future__ import annotations

import contextlib

import cv2
import numpy as np
import pytest
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header

from openvla_ros import defaults
from openvla_ros.imaging import compressed_msg_to_rgb
from test_vla_node import WAIT_S, Harness, _ns, _scenes, _stamp, running_vla_node
from test_vla_node import local_policy  # noqa: F401  (module fixture)

pytestmark = pytest.mark.ros
INSTRUCTION = 'put the carrot in the pot'


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return buf.tobytes()


def _publish_compressed(h: Harness, pub, data: bytes, fmt: str = 'png') -> int:
    """Publish ``data`` as a CompressedImage stamped now; returns the stamp (ns)."""
    stamp_ns = h.now_ns()
    pub.publish(CompressedImage(header=Header(stamp=_stamp(stamp_ns), frame_id='camera'), format=fmt, data=data))
    return stamp_ns


@contextlib.contextmanager
def running_compressed_vla_node(tmp_path_factory, name: str, checkpoint):
    """A vla_node process ``name`` on ``checkpoint`` that reads only CompressedImage frames;
    yields ``(harness, the compressed camera publisher)``."""
    with running_vla_node(tmp_path_factory, name, f'model_path:={checkpoint}',
                          'use_compressed:=true', 'self_test:=false', 'max_image_age_s:=2.0',
                          camera_publisher=lambda h: h.node.create_publisher(
                              CompressedImage, defaults.COMPRESSED_CAMERA_TOPIC, QoSProfile(depth=10))
                          ) as (harness, _, pub):
        yield harness, pub


@pytest.fixture(scope='module')
def compressed_node(tmp_path_factory, tiny_checkpoint):
    with running_compressed_vla_node(tmp_path_factory, 'vla_node_compressed', tiny_checkpoint) as node:
        yield node


def test_png_frames_give_the_engine_action_with_their_stamp(compressed_node, local_policy):  # noqa: F811
    h, pub = compressed_node
    # Only the compressed topic is read in this mode.
    assert h.node.count_subscribers(defaults.CAMERA_TOPIC) == 0
    h.instruct(INSTRUCTION)
    h.wait_status(lambda s: s.instruction == INSTRUCTION)
    scenes = _scenes(3, 64, 80, seed=11)
    encoded = [_png(rgb) for rgb in scenes]
    sent: dict[int, np.ndarray] = {}
    i = 0
    while len(h.actions) < 3 and i < 200:
        k = i % len(scenes)
        sent[_publish_compressed(h, pub, encoded[k])] = scenes[k]
        i += 1
        h.spin(0.1)
    assert h.wait(lambda: len(h.actions) >= 3), f'{len(h.actions)} actions; {h.latest_status()}'
    for rgb, data in zip(scenes, encoded):
        # PNG is lossless: the node decodes exactly the scene the engine is asked about below.
        np.testing.assert_array_equal(compressed_msg_to_rgb(CompressedImage(format='png', data=data)), rgb)
    for _, msg in h.actions:
        stamp = _ns(msg.header.stamp)
        assert stamp in sent, 'action stamped with an image that was never published'
        expected = local_policy.predict(sent[stamp], INSTRUCTION, defaults.DEFAULT_UNNORM_KEY)
        np.testing.assert_array_equal(np.array(msg.action), expected.action)
        assert list(msg.action_token_ids) == [int(t) for t in expected.action_token_ids]
        assert msg.instruction == INSTRUCTION
    s = h.wait_status(lambda s: s.actions_published >= len(h.actions))
    assert s.frames_rejected == 0 and s.frames_received >= len(h.actions)


@pytest.mark.parametrize('case', ['garbage', 'truncated', 'empty'])
def test_corrupt_compressed_frame_is_rejected_and_never_acted_on(compressed_node, case):
    h, pub = compressed_node
    h.instruct(INSTRUCTION)
    h.wait_status(lambda s: s.instruction == INSTRUCTION)
    before = h.wait_status(lambda s: True).frames_rejected
    good = _png(_scenes(1, 48, 64, seed=12)[0])
    data = {'garbage': good[:8] + bytes(range(256)) * 4,   # PNG signature, then no valid chunk
            'truncated': good[:len(good) // 3],
            'empty': b''}[case]
    bad = _publish_compressed(h, pub, data)
    h.wait_status(lambda s: s.frames_rejected == before + 1)
    # A valid frame afterwards is still acted on; the corrupt one never is.
    ok = _publish_compressed(h, pub, good)
    assert h.wait(lambda: any(_ns(m.header.stamp) == ok for _, m in h.actions), WAIT_S), h.latest_status()
    assert not any(_ns(m.header.stamp) == bad for _, m in h.actions)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim ``width`` x ``height``."""
    ok, buf = cv2.imencode('.jpg', np.full((16, 16, 3), 90, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.find(b'\xff\xc0')
    assert sof > 0, 'baseline JPEG without SOF0'
    # FFC0, length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 7] = height.to_bytes(2, 'big')
    data[sof + 7:sof + 9] = width.to_bytes(2, 'big')
    return bytes(data)


def test_jpeg_bomb_header_is_rejected_and_the_node_survives(compressed_node):
    h, pub = compressed_node
    h.instruct(INSTRUCTION)
    h.wait_status(lambda s: s.instruction == INSTRUCTION)
    before = h.wait_status(lambda s: True).frames_rejected
    bomb = _jpeg_claiming(65500, 65500)
    assert len(bomb) < 1000
    bad = [_publish_compressed(h, pub, bomb, 'jpeg') for _ in range(3)]
    h.wait_status(lambda s: s.frames_rejected >= before + 3)
    ok = _publish_compressed(h, pub, _png(_scenes(1, 48, 64, seed=16)[0]))
    assert h.wait(lambda: any(_ns(m.header.stamp) == ok for _, m in h.actions), WAIT_S), h.latest_status()
    assert not any(_ns(m.header.stamp) in bad for _, m in h.actions)
