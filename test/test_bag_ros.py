"""openvla-bag play and record against a live rclpy graph (loopback DDS)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import VlaProbe, spin_until
from test_bag_support import T0_NS, TALKER_MESSAGES, write_bag, write_talker_bag

from openvla_ros import defaults
from openvla_ros.imaging import image_msg_to_rgb
from openvla_ros.stamps import stamp_to_ns

pytestmark = pytest.mark.ros

BAG_CLI = 'openvla_ros.bag.cli'


def _stamp_ns(msg) -> int:
    return stamp_to_ns(msg.header.stamp)


def test_play_publishes_images_with_recorded_stamps_and_clock(tmp_path, probe, processes):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    node, executor = probe
    bag = write_bag(tmp_path / 'cam', 'sqlite3', n_frames=5)
    images, clocks = [], []
    node.create_subscription(Image, defaults.CAMERA_TOPIC, images.append, 10)
    node.create_subscription(Clock, defaults.CLOCK_TOPIC, clocks.append, 50)
    proc = processes.start(BAG_CLI, 'play', str(bag.path), '--clock', '50', '--rate', '2',
                           '--topics', defaults.CAMERA_TOPIC, '--wait-for-subscribers-s', '15', name='play')
    assert spin_until(executor, lambda: len(images) == 5 or proc.poll() is not None, 40)
    spin_until(executor, lambda: len(images) == 5, 2)
    assert proc.wait(15) == 0, processes.log('play')
    assert [_stamp_ns(m) for m in images] == bag.stamps_ns
    for msg, rgb, enc in zip(images, bag.frames, bag.encodings):
        assert msg.encoding == enc
        np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)
    clock_ns = [stamp_to_ns(c.clock) for c in clocks]
    assert clock_ns, 'no /clock message'
    # the clock follows the bag's timeline (log times T0 .. T0 + 0.4 s), never backwards
    assert all(T0_NS <= t <= T0_NS + 400_000_000 for t in clock_ns)
    assert clock_ns == sorted(clock_ns)


def test_play_start_paused_steps_one_message_at_a_time(tmp_path, probe, processes):
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger

    node, executor = probe
    bag = write_bag(tmp_path / 'cam', 'mcap', n_frames=4, instructions=())
    images = []
    node.create_subscription(Image, '/replayed/image', images.append, 10)
    processes.start(BAG_CLI, 'play', str(bag.path), '--start-paused',
                    '--remap', f'{defaults.CAMERA_TOPIC}:=/replayed/image', name='play')
    player = f'/{defaults.BAG_PLAYER_NODE}'
    play_next = node.create_client(Trigger, f'{player}/play_next')
    toggle = node.create_client(Trigger, f'{player}/toggle_pause')
    assert spin_until(executor, lambda: play_next.service_is_ready() and toggle.service_is_ready()
                      and node.count_publishers('/replayed/image') > 0, 30), processes.log('play')
    spin_until(executor, lambda: bool(images), 1.0)   # paused: nothing may arrive
    assert images == []

    def call(client):
        future = client.call_async(Trigger.Request())
        assert spin_until(executor, future.done, 10)
        return future.result()

    reply = call(play_next)
    assert reply.success, reply.message
    assert '/replayed/image' in reply.message
    assert spin_until(executor, lambda: len(images) >= 1, 5)
    spin_until(executor, lambda: len(images) > 1, 0.5)
    assert len(images) == 1 and _stamp_ns(images[0]) == bag.stamps_ns[0]

    assert call(play_next).success
    assert spin_until(executor, lambda: len(images) >= 2, 5)
    assert _stamp_ns(images[1]) == bag.stamps_ns[1]

    assert call(toggle).message == 'playing'
    assert spin_until(executor, lambda: len(images) == 4, 10)
    assert [_stamp_ns(m) for m in images] == bag.stamps_ns


def test_record_round_trip_readable_by_rosbags_and_mcap_ros2(tmp_path, probe, processes):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from openvla_ros.action_message import fill_message, prediction_to_delta_fields
    from openvla_ros.bag.storage import BagSource, project_typestore
    from openvla_ros.engine.api import PredictionResult
    from openvla_ros.imaging import rgb_to_image_fields
    from openvla_ros.msg import EndEffectorDelta, VlaStatus
    from openvla_ros.nodes.common import latched_qos

    node, executor = probe
    out = tmp_path / 'rec'
    status_pub = node.create_publisher(VlaStatus, defaults.VLA_STATUS_TOPIC, latched_qos())
    status = VlaStatus(state=VlaStatus.STATE_RUNNING, state_name='RUNNING', model_id='tiny')
    status_pub.publish(status)   # before the recorder exists: latched, so it must still be recorded
    action_pub = node.create_publisher(EndEffectorDelta, defaults.ACTION_TOPIC, 10)
    ins_pub = node.create_publisher(String, defaults.INSTRUCTION_TOPIC, 10)
    img_pub = node.create_publisher(Image, defaults.CAMERA_TOPIC, 10)
    proc = processes.start(BAG_CLI, 'record', '-o', str(out), defaults.ACTION_TOPIC, defaults.VLA_STATUS_TOPIC,
                           defaults.INSTRUCTION_TOPIC, '--camera', '--camera-scale', '0.5', name='record')
    pubs = (action_pub, ins_pub, img_pub)
    assert spin_until(executor, lambda: all(p.get_subscription_count() > 0 for p in pubs)
                      or proc.poll() is not None, 30), processes.log('record')
    assert proc.poll() is None, processes.log('record')

    sent = []
    for i in range(4):
        vec = np.arange(7, dtype=np.float64) * 0.01 * (i + 1)
        result = PredictionResult(action=vec, normalized_action=vec / 2,
                                  action_token_ids=np.arange(31800, 31807) + i, unnorm_key='bridge_orig',
                                  timings={'total': 0.02})
        fields = prediction_to_delta_fields(result, f'pick {i}', T0_NS + i * 10**8, 'base_link', 'tiny', sequence=i)
        action_pub.publish(fill_message(EndEffectorDelta(), fields))
        ins_pub.publish(String(data=f'pick {i}'))
        img = Image(**{k: v for k, v in rgb_to_image_fields(np.full((40, 60, 3), 10 * i, np.uint8)).items()
                       if k != 'data'})
        img.data = rgb_to_image_fields(np.full((40, 60, 3), 10 * i, np.uint8))['data']
        img.header.stamp.sec, img.header.frame_id = 100 + i, 'camera'
        img_pub.publish(img)
        sent.append(fields)
    bad = Image(height=40, width=60, encoding='no-such-encoding', step=180, data=bytes(7200))
    bad.header.stamp.sec = 200
    img_pub.publish(bad)   # cannot be decoded to shrink it: recorded as received, the recorder goes on
    spin_until(executor, lambda: False, 1.5)  # let the recorder take everything before it stops
    codes = processes.stop()
    assert codes['record'] == 0, processes.log('record')

    store = project_typestore()
    with BagSource(out) as src:
        assert src.topics[defaults.ACTION_TOPIC].msgtype == 'openvla_ros/msg/EndEffectorDelta'
        got = {}
        for m in src.messages():
            got.setdefault(m.topic, []).append(store.deserialize_cdr(m.raw, m.msgtype))
    actions = got[defaults.ACTION_TOPIC]
    assert [list(a.action) for a in actions] == [f['action'] for f in sent]
    assert [list(a.action_token_ids) for a in actions] == [f['action_token_ids'] for f in sent]
    assert [_stamp_ns(a) for a in actions] == \
        [T0_NS + i * 10**8 for i in range(4)]
    assert [m.data for m in got[defaults.INSTRUCTION_TOPIC]] == [f'pick {i}' for i in range(4)]
    assert got[defaults.VLA_STATUS_TOPIC][0].state_name == 'RUNNING'
    images = got[defaults.CAMERA_TOPIC]
    assert [(m.width, m.height, m.header.stamp.sec) for m in images] == \
        [(30, 20, 100 + i) for i in range(4)] + [(60, 40, 200)]
    assert images[4].encoding == 'no-such-encoding' and 'recorded unscaled' in processes.log('record')
    assert int(images[2].data[0]) == 20

    # an independent decoder (mcap_ros2) reads the same bag from the stored message definitions
    mcap_file = next(Path(out).glob('*.mcap'))
    decoded = {}
    with open(mcap_file, 'rb') as fh:
        for _, channel, _, ros_msg in make_reader(fh, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            decoded.setdefault(channel.topic, []).append(ros_msg)
    assert [list(a.action) for a in decoded[defaults.ACTION_TOPIC]] == [f['action'] for f in sent]
    assert [a.instruction for a in decoded[defaults.ACTION_TOPIC]] == [f'pick {i}' for i in range(4)]
    assert decoded[defaults.ACTION_TOPIC][3].translation.z == pytest.approx(sent[3]['translation']['z'])
    assert decoded[defaults.VLA_STATUS_TOPIC][0].model_id == 'tiny'
    assert [m.width for m in decoded[defaults.CAMERA_TOPIC]] == [30] * 4 + [60]


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_play_publishes_every_message_of_a_rosbag2_talker_bag(tmp_path, probe, processes, storage):
    from std_msgs.msg import String

    node, executor = probe
    bag = write_talker_bag(tmp_path / f'talker_{storage}', storage)
    got = []
    node.create_subscription(String, '/chatter', got.append, 50)
    proc = processes.start(BAG_CLI, 'play', str(bag), '--rate', '50', '--wait-for-subscribers-s', '15',
                           name='play')
    assert spin_until(executor, lambda: proc.poll() is not None, 60), processes.log('play')
    spin_until(executor, lambda: len(got) == TALKER_MESSAGES, 5)
    assert proc.returncode == 0, processes.log('play')
    assert [m.data for m in got] == [f'Hello World: {i + 1}' for i in range(TALKER_MESSAGES)]
    assert f'published {TALKER_MESSAGES} messages' in processes.log('play')


def test_play_fails_when_it_publishes_nothing_from_a_bag_that_lists_messages(tmp_path, processes):
    import yaml

    bag = write_talker_bag(tmp_path / 'short', 'sqlite3', listed=TALKER_MESSAGES + 4)
    proc = processes.start(BAG_CLI, 'play', str(bag), '--rate', '50', name='short')
    assert proc.wait(60) == 0, processes.log('short')   # a shortfall alone is a warning ...
    assert 'warning: fewer messages read' in processes.log('short')
    proc = processes.start(BAG_CLI, 'play', str(bag), '--rate', '50', '--strict', name='strict')
    assert proc.wait(60) == 1 and 'read 20 of 24' in processes.log('strict')   # ... or with --strict an error

    empty = tmp_path / 'empty'
    write_bag(empty, 'mcap', n_frames=0, instructions=())
    meta_path = empty / 'metadata.yaml'
    meta = yaml.safe_load(meta_path.read_text())
    info = meta['rosbag2_bagfile_information']
    info['message_count'] = info['topics_with_message_count'][0]['message_count'] = 20
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    proc = processes.start(BAG_CLI, 'play', str(empty), name='empty')
    assert proc.wait(60) == 1, processes.log('empty')
    assert 'published nothing although the bag lists 20 messages' in processes.log('empty')


def test_record_replaces_only_a_bag_and_only_with_force(tmp_path):
    from openvla_ros.bag.cli import main
    from openvla_ros.bag.storage import BagSource

    out = tmp_path / 'existing'
    write_bag(out, 'mcap', n_frames=1)
    before = sorted(p.name for p in out.iterdir())
    assert main(['record', '-o', str(out), '--duration-s', '0.1']) == 2
    assert sorted(p.name for p in out.iterdir()) == before
    # --force replaces a bag, but never a plain file or a directory that is not a bag
    document = tmp_path / 'notes.txt'
    document.write_text('keep me')
    assert main(['record', '-o', str(document), '--duration-s', '0.1', '--force']) == 2
    assert document.read_text() == 'keep me'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['existing', 'notes.txt']
    # a bag is replaced once the new recording is closed (nothing publishes here: an empty bag)
    assert main(['record', '-o', str(out), '--duration-s', '0.5', '--force', '--no-use-sim-time']) == 0
    with BagSource(out) as src:
        assert sum(t.count for t in src.topics.values()) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['existing', 'notes.txt']


def test_play_drives_vla_node_under_sim_time(tmp_path, probe, processes, tiny_checkpoint):
    """Replay with /clock into vla_node (use_sim_time): its actions carry the recorded image stamps,
    and the images are not stale although they were recorded long ago (the node follows the bag clock)."""
    from openvla_ros.msg import VlaStatus

    node, executor = probe
    bag = write_bag(tmp_path / 'run', 'mcap', n_frames=4, instructions=((0, 'pick up the block'),))
    vla = VlaProbe(node, executor, depth=10)
    actions = vla.actions
    processes.start('openvla_ros.nodes.vla_node', '--ros-args', '-p', f'model_path:={tiny_checkpoint}',
                    '-p', 'use_sim_time:=true', '-p', 'self_test:=false', '-p', 'max_image_age_s:=2.0',
                    name='vla_node')
    assert spin_until(executor, lambda: vla.state() == VlaStatus.STATE_IDLE, 90), processes.log('vla_node')
    play = processes.start(BAG_CLI, 'play', str(bag.path), '--clock', '100', '--rate', '0.5',
                           '--wait-for-subscribers-s', '20', name='play')
    assert spin_until(executor, lambda: play.poll() is not None and actions, 60), processes.log('play')
    spin_until(executor, lambda: len(actions) == 4, 3)
    assert play.returncode == 0, processes.log('play')
    assert actions, processes.log('vla_node')
    assert all(_stamp_ns(a) in bag.stamps_ns for a in actions)
    assert [_stamp_ns(a) for a in actions] == sorted(_stamp_ns(a) for a in actions)
    # the synthetic stamps are 1.234 us after the log time the clock shows, hence the small negative bound
    assert all(-1e-3 <= a.image_age_s <= 2.0 for a in actions), [a.image_age_s for a in actions]
    assert all(a.instruction == 'pick up the block' for a in actions)
