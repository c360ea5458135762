"""The README's bag sequence in the simulator, end to end: ``openvla-bag record`` (default topics)
while sim_node runs, ``openvla-bag play --clock`` of that recording into a ``use_sim_time``
vla_node, and ``openvla-bag eval`` of the same recording. All processes use loopback DDS."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import VlaProbe, spin_until

from openvla_ros import defaults, runtime_env
from openvla_ros.bag.storage import BagSource, project_typestore
from openvla_ros.stamps import NS_PER_S, stamp_to_ns

pytestmark = [pytest.mark.ros, pytest.mark.slow]

BAG_CLI = 'openvla_ros.bag.cli'
RECORD_S = 4.0
INSTRUCTION = 'put the spoon on the towel'
STARTUP_TIMEOUT_S = 90.0


def test_record_play_eval_in_the_simulator(tmp_path, probe, processes, tiny_checkpoint):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from openvla_ros.msg import VlaStatus

    node, executor = probe
    sim = processes.start('openvla_ros.nodes.sim_node', '--ros-args', '-p', 'image_width:=96',
                          '-p', 'image_height:=96', name='sim')
    frames, clocks = [], []
    node.create_subscription(Image, defaults.CAMERA_TOPIC, frames.append, 10)
    node.create_subscription(Clock, defaults.CLOCK_TOPIC, clocks.append, 10)
    assert spin_until(executor, lambda: frames and clocks or sim.poll() is not None, STARTUP_TIMEOUT_S), \
        processes.log('sim')

    # 1. record with the default topics; the graph has a /clock, so log times are sim time
    out = tmp_path / 'episode1'
    rec = processes.start(BAG_CLI, 'record', '-o', str(out), '--duration-s', str(RECORD_S + 3), name='record')
    ins_pub = node.create_publisher(String, defaults.INSTRUCTION_TOPIC, 10)
    assert spin_until(executor, lambda: ins_pub.get_subscription_count() > 0 or rec.poll() is not None, 30), \
        processes.log('record')
    n0 = len(frames)
    spin_until(executor, lambda: len(frames) > n0 + 5, 30)
    ins_pub.publish(String(data=INSTRUCTION))
    spin_until(executor, lambda: False, RECORD_S)
    ins_pub.publish(String(data=INSTRUCTION))
    assert rec.wait(60) == 0, processes.log('record')
    assert f'log times from {defaults.CLOCK_TOPIC}' in processes.log('record')
    sim.send_signal(2)   # SIGINT: its clean exit; then only the player drives /clock
    sim.wait(20)

    store = project_typestore()
    with BagSource(out) as src:
        assert {defaults.CAMERA_TOPIC, defaults.INSTRUCTION_TOPIC} <= set(src.topics), src.describe()
        images = [(m.log_time_ns, store.deserialize_cdr(m.raw, m.msgtype))
                  for m in src.messages([defaults.CAMERA_TOPIC])]
    assert len(images) >= 10
    # the bag's timeline is the stamps' timeline (sim time), not the wall clock
    lags = [(t - stamp_to_ns(msg.header.stamp)) / NS_PER_S for t, msg in images]
    assert all(-0.05 <= lag < 1.0 for lag in lags), lags[:5]

    # 2. play it with --clock into a use_sim_time vla_node: images are fresh on the node clock
    vla = VlaProbe(node, executor)
    actions, statuses = vla.actions, vla.statuses
    processes.start('openvla_ros.nodes.vla_node', '--ros-args', '-p', f'model_path:={tiny_checkpoint}',
                    '-p', 'use_sim_time:=true', '-p', 'max_image_age_s:=1.0', name='vla')
    assert spin_until(executor, lambda: vla.state() == VlaStatus.STATE_IDLE, STARTUP_TIMEOUT_S), \
        processes.log('vla')
    play = processes.start(BAG_CLI, 'play', str(out), '--clock', '--topics', defaults.CAMERA_TOPIC,
                           defaults.INSTRUCTION_TOPIC, '--wait-for-subscribers-s', '30', name='play')
    assert spin_until(executor, lambda: play.poll() is not None, 60), processes.log('play')
    assert play.returncode == 0, processes.log('play')
    spin_until(executor, lambda: len(actions) >= 3, 20)
    assert len(actions) >= 3, (processes.log('vla')[-3000:], statuses[-1] if statuses else None)
    recorded_stamps = {stamp_to_ns(msg.header.stamp) for _, msg in images}
    assert all(stamp_to_ns(a.header.stamp) in recorded_stamps for a in actions)
    # fresh on the node clock, within vla_node's bound either way: /clock and the images come on
    # separate topics, so under load an image can arrive before the clock has reached its stamp
    # (a small negative age, which the node accepts as it accepts clock skew)
    assert all(abs(a.image_age_s) <= 1.0 for a in actions), [a.image_age_s for a in actions]
    assert all(a.instruction == INSTRUCTION for a in actions)

    # 3. eval the same recording offline
    report_dir = tmp_path / 'eval_report'
    proc = subprocess.run([sys.executable, '-m', BAG_CLI, 'eval', str(out), '--checkpoint', str(tiny_checkpoint),
                           '--rate', '2', '--report-dir', str(report_dir), '--json', '--no-progress'],
                          capture_output=True, text=True, timeout=300, env=runtime_env.loopback_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report['complete'] and report['instruction_topic'] == defaults.INSTRUCTION_TOPIC
    assert report['counts']['frames_evaluated'] >= RECORD_S * 2 - 2
    assert not report['warnings'], report['warnings']
