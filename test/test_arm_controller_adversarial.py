"""arm_controller on a live rclpy graph under hostile input: e-stops under every publisher QoS,
lifecycle cycles after an e-stop, action floods, incompatible publishers, parameter abuse."""
from __future__ import annotations

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger

from openvla_ros import defaults
from openvla_ros.msg import ControllerStatus, EndEffectorDelta
from test_arm_controller_node import Rig, running_rig

pytestmark = pytest.mark.ros
QOS_COMBINATIONS = [(r, d) for r in (ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT)
                    for d in (DurabilityPolicy.VOLATILE, DurabilityPolicy.TRANSIENT_LOCAL)]


@pytest.fixture
def rig(ros_context):
    with running_rig(ros_context, start_enabled=True, watchdog_timeout_s=20.0, max_action_age_s=10.0) as r:
        yield r


def _latch_with(rig, pub, active: bool):
    """Publish like a button does (repeatedly) until the controller shows the state."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        pub.publish(Bool(data=active))
        if rig.wait(lambda: rig.statuses and rig.statuses[-1].estop_latched, timeout_s=0.2) == active:
            return True
        if not active:
            return True
    return False


def _only_holds(rig, q) -> bool:
    """Every trajectory so far keeps the arm at the measured joints (e-stop, deactivate holds)."""
    return all(np.allclose(t.points[0].positions[:6], q, atol=1e-9) for t in rig.trajectories)


def test_estop_reaches_the_controller_from_every_publisher_qos(rig, bridge, start_q):
    e, q = bridge, start_q
    assert rig.connected()
    rig.publish_joints(e.arm_joints, q)
    for reliability, durability in QOS_COMBINATIONS:
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability, durability=durability)
        pub = rig.client.create_publisher(Bool, defaults.ESTOP_TOPIC, qos)
        assert rig.wait(lambda: pub.get_subscription_count() > 0)
        assert _latch_with(rig, pub, True), (reliability, durability)
        assert rig.statuses[-1].state == ControllerStatus.STATE_ESTOP
        rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0])
        assert rig.wait_event('estop latched')
        assert _only_holds(rig, q)
        pub.publish(Bool(data=False))
        # the reset needs the released input: wait until the release has arrived
        assert rig.wait(lambda: rig.call(rig.reset_estop_cli, Trigger.Request()).success, timeout_s=10.0)
        assert rig.wait(lambda: not rig.statuses[-1].estop_latched)
        rig.client.destroy_publisher(pub)
    # every one of those publishers was compatible: no QoS error
    assert 'incompatible' not in rig.statuses[-1].last_event


def test_estop_survives_a_lifecycle_cycle_and_enable(rig, bridge, start_q):
    e, q = bridge, start_q
    assert rig.connected()
    rig.publish_joints(e.arm_joints, q)
    pub = rig.client.create_publisher(Bool, defaults.ESTOP_TOPIC, 10)   # rclpy default: reliable + volatile
    assert rig.wait(lambda: pub.get_subscription_count() > 0)
    assert _latch_with(rig, pub, True)
    pub.publish(Bool(data=False))
    node = rig.node
    for transition in (node.trigger_deactivate, node.trigger_cleanup, node.trigger_configure, node.trigger_activate):
        assert transition() == TransitionCallbackReturn.SUCCESS
    assert rig.wait(lambda: rig.statuses[-1].estop_latched and rig.statuses[-1].state == ControllerStatus.STATE_ESTOP)
    assert not rig.call(rig.enable_cli, SetBool.Request(data=True)).success
    assert rig.connected()
    for _ in range(5):
        rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0])
    assert rig.wait(lambda: rig.statuses[-1].actions_received >= 5)
    rig.wait(lambda: False, timeout_s=0.3)
    assert _only_holds(rig, q) and rig.statuses[-1].actions_executed == 0
    assert rig.wait(lambda: rig.call(rig.reset_estop_cli, Trigger.Request()).success)
    rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0])
    assert rig.wait(lambda: not _only_holds(rig, q))


def test_an_action_flood_moves_one_clip_per_control_period(rig, bridge, kin, start_q):
    e, q = bridge, start_q
    assert rig.connected()
    rig.publish_joints(e.arm_joints, q)
    assert rig.wait(lambda: rig.statuses and rig.statuses[-1].state == ControllerStatus.STATE_HOLDING)
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < 1.0:            # as fast as this process can publish
        rig.send_action([0.05, 0, 0, 0, 0, 0, 1.0])
        sent += 1
    elapsed = time.monotonic() - t0
    # the reliable depth-10 queues drop some of the flood; wait until the rest has arrived
    seen = -1
    while rig.statuses[-1].actions_received != seen:
        seen = rig.statuses[-1].actions_received
        rig.wait(lambda: False, timeout_s=0.5)
    assert sent > 100 and seen > 20
    window = time.monotonic() - t0        # the flood and its backlog, all processed
    executed = rig.statuses[-1].actions_executed
    # at most one per control period (plus the first one, at the window's start)
    assert 1 <= executed <= int(window / e.control_period_s) + 1, (sent, executed, elapsed, window)
    xs = [p.pose.position.x for p in rig.poses]
    assert np.all(np.abs(np.diff([kin.forward(q).position[0]] + xs)) <= e.max_translation_step_m + 1e-9)
    # the joint states were not starved: nothing was refused as stale
    assert 'stale' not in rig.statuses[-1].last_event


def test_incompatible_action_publisher_is_an_error_in_status_and_diagnostics(rig):
    diagnostics = []
    rig.client.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    best_effort = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
    rig.client.create_publisher(EndEffectorDelta, defaults.ACTION_TOPIC, best_effort)
    assert rig.wait(lambda: rig.statuses and rig.statuses[-1].state == ControllerStatus.STATE_ERROR
                    and 'incompatible QoS' in rig.statuses[-1].last_event)

    def qos_error():
        return any(s.level == DiagnosticStatus.ERROR and 'incompatible QoS' in s.message
                   for d in diagnostics for s in d.status)
    assert rig.wait(qos_error, timeout_s=5.0)


def test_parameters_are_applied_live_or_refused(rig):
    for name, value in (('blocking', True), ('control_period_s', 0.05), ('start_enabled', False),
                        ('embodiment', 'generic_7dof_servo'), ('servo_rate_hz', 10.0)):
        r = rig.set_parameter(name, value)
        assert not r.successful and r.reason, name
    r = rig.set_parameter('workspace_high_m', [1e9, 1e9, 1e9])
    assert not r.successful and 'hard limit' in r.reason
    r = rig.set_parameter('max_joint_speed_rad_s', 5.0)
    assert not r.successful
    assert rig.set_parameter('max_joint_speed_rad_s', 1.0).successful
    assert rig.set_parameter('max_joint_speed_rad_s', 1.5).successful      # back up to the file's value


def test_a_latch_file_keeps_the_estop_across_a_restart(ros_context, tmp_path):
    latch = tmp_path / 'estop.latch'
    with running_rig(ros_context, start_enabled=True, estop_latch_file=str(latch)) as first:
        pub = first.client.create_publisher(Bool, defaults.ESTOP_TOPIC, 10)
        assert first.wait(lambda: pub.get_subscription_count() > 0)
        assert _latch_with(first, pub, True)
        assert latch.exists()
    with running_rig(ros_context, start_enabled=True, estop_latch_file=str(latch)) as restarted:
        assert restarted.wait(lambda: restarted.statuses and restarted.statuses[-1].estop_latched)
        assert not restarted.call(restarted.enable_cli, SetBool.Request(data=True)).success
        assert restarted.wait(lambda: restarted.call(restarted.reset_estop_cli, Trigger.Request()).success)
        assert not latch.exists()


def test_launch_parameters_beyond_the_hard_limits_fail_configure(ros_context):
    rig = Rig(ros_context, 'widowx_250s_bridge', workspace_high_m=[1e9, 1e9, 1e9])
    try:
        assert rig.node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert rig.wait(lambda: rig.statuses and 'hard limit' in rig.statuses[-1].last_event)
    finally:
        rig.close()


def test_random_lifecycle_enable_estop_sequences_never_move_after_an_estop(rig, bridge, start_q):
    """A seeded random walk over lifecycle transitions, enable, e-stops under every QoS and
    resets: after an e-stop, no trajectory leaves the measured joints until reset_estop."""
    e, q = bridge, start_q
    rng = np.random.default_rng(16)
    assert rig.connected()
    rig.publish_joints(e.arm_joints, q)
    pubs = [rig.client.create_publisher(Bool, defaults.ESTOP_TOPIC, QoSProfile(
        depth=1, history=HistoryPolicy.KEEP_LAST, reliability=r, durability=d)) for r, d in QOS_COMBINATIONS]
    assert rig.wait(lambda: all(p.get_subscription_count() > 0 for p in pubs))
    node = rig.node
    active = True
    latched = False
    for step in rng.choice(['estop', 'reset', 'enable', 'cycle', 'action', 'action'], size=14):
        if step == 'estop':
            pub = pubs[rng.integers(len(pubs))]
            assert _latch_with(rig, pub, True)
            pub.publish(Bool(data=False))
            latched = True
            mark = len(rig.trajectories)
        elif step == 'reset':
            if active and rig.wait(lambda: rig.call(rig.reset_estop_cli, Trigger.Request()).success, 5.0):
                latched = False
        elif step == 'enable':
            ok = rig.call(rig.enable_cli, SetBool.Request(data=True)).success
            assert not (ok and latched)
        elif step == 'cycle':
            for t in (node.trigger_deactivate, node.trigger_cleanup, node.trigger_configure, node.trigger_activate):
                assert t() == TransitionCallbackReturn.SUCCESS
            assert rig.connected()
            rig.call(rig.enable_cli, SetBool.Request(data=True))
        else:
            n = rig.statuses[-1].actions_received
            rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0])
            assert rig.wait(lambda: rig.statuses[-1].actions_received > n or rig.statuses[-1].actions_received < n)
        if latched:
            rig.wait(lambda: False, timeout_s=0.1)
            assert rig.statuses[-1].estop_latched
            assert all(np.allclose(t.points[0].positions[:6], q, atol=1e-9) for t in rig.trajectories[mark:])
