"""arm_controller on a real rclpy graph: the node runs in-process on its own executor thread,
the test talks to it over DDS (loopback) through topics and services."""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from conftest import close_probe, make_probe, spin_until
from openvla_ros import defaults
from openvla_ros.control.embodiment import load_embodiment
from openvla_ros.msg import ControllerStatus, EndEffectorDelta
from openvla_ros.nodes import common
from openvla_ros.nodes.arm_controller import ArmControllerNode

pytestmark = pytest.mark.ros


class Rig:
    """The controller under test plus a client node with publishers/subscribers and recorders."""

    def __init__(self, context, embodiment: str, **params):
        # The rig re-publishes joint states at 20 Hz; a loaded 2-core CI machine can still delay
        # their processing past the 0.5 s default, which is not what these tests are about
        # (joint-state staleness has its own test in test_control_safety.py).
        params.setdefault('max_joint_state_age_s', 10.0)
        self.frame_id = load_embodiment(embodiment).base_frame_id
        overrides = [Parameter('embodiment', value=embodiment)] + [Parameter(k, value=v) for k, v in params.items()]
        self.node = ArmControllerNode(context=context, parameter_overrides=overrides)
        self.node_exec = MultiThreadedExecutor(num_threads=2, context=context)
        self.node_exec.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self.client, self.exec = make_probe(context, 'arm_controller_test_client')
        c = self.client
        self.trajectories, self.poses, self.statuses, self.twists = [], [], [], []
        c.create_subscription(JointTrajectory, defaults.JOINT_TRAJECTORY_TOPIC, self.trajectories.append, 10)
        c.create_subscription(PoseStamped, defaults.TARGET_POSE_TOPIC, self.poses.append, 10)
        c.create_subscription(ControllerStatus, defaults.CONTROLLER_STATUS_TOPIC, self.statuses.append,
                              common.latched_qos())
        c.create_subscription(TwistStamped, defaults.SERVO_TWIST_TOPIC,
                              lambda m: self.twists.append((time.monotonic(), m)), 100)
        self.action_pub = c.create_publisher(EndEffectorDelta, defaults.ACTION_TOPIC, 10)
        self.joint_pub = c.create_publisher(JointState, defaults.JOINT_STATES_TOPIC, 10)
        self.estop_pub = c.create_publisher(Bool, defaults.ESTOP_TOPIC, common.latched_qos())
        self.enable_cli = c.create_client(SetBool, f'/{defaults.ARM_CONTROLLER_NODE}/enable')
        # Like a robot's joint_state_broadcaster: the latest joint state is re-published at 20 Hz
        # from its own thread, whatever the test is doing (the controller refuses to act on stale
        # joint states).
        self._joint_state: JointState | None = None
        self._joints_thread = threading.Thread(target=self._republish_joints, daemon=True)
        self._joints_thread.start()
        self.reset_estop_cli = c.create_client(Trigger, f'/{defaults.ARM_CONTROLLER_NODE}/reset_estop')
        self.set_parameters_cli = c.create_client(SetParameters, f'/{defaults.ARM_CONTROLLER_NODE}/set_parameters')
        self.get_parameters_cli = c.create_client(GetParameters, f'/{defaults.ARM_CONTROLLER_NODE}/get_parameters')

    def _spin(self):
        while not self._stop.is_set():
            self.node_exec.spin_once(timeout_sec=0.05)

    def start(self):
        from rclpy.lifecycle import TransitionCallbackReturn
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._joints_thread.join(5)
        self.node_exec.shutdown(timeout_sec=1)
        self.node.destroy_node()
        close_probe(self.client, self.exec)

    def wait(self, predicate, timeout_s=10.0):
        return spin_until(self.exec, predicate, timeout_s)

    def publish_joints(self, names, q):
        self._joint_state = JointState(name=list(names), position=[float(x) for x in q])
        self.joint_pub.publish(self._joint_state)

    def stop_joints(self):
        self._joint_state = None

    def _republish_joints(self):
        while not self._stop.wait(0.05):
            state = self._joint_state
            if state is not None:
                self.joint_pub.publish(state)

    def send_action(self, values, age_s=0.0, frame_id=None):
        msg = EndEffectorDelta()
        msg.header.frame_id = self.frame_id if frame_id is None else frame_id
        now_ns = self.client.get_clock().now().nanoseconds - int(age_s * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
        msg.action = [float(v) for v in values]
        self.action_pub.publish(msg)

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=10.0)
        fut = client.call_async(request)
        assert self.wait(fut.done)
        return fut.result()

    def set_parameter(self, name, value):
        """The controller's SetParameters result for one parameter."""
        req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return self.call(self.set_parameters_cli, req).results[0]

    def get_parameter(self, name):
        value = self.call(self.get_parameters_cli, GetParameters.Request(names=[name])).values[0]
        return Parameter.from_parameter_msg(ParameterMsg(name=name, value=value)).value

    def wait_event(self, text, timeout_s=10.0):
        return self.wait(lambda: self.statuses and text in self.statuses[-1].last_event, timeout_s)

    def connected(self):
        return self.wait(lambda: self.action_pub.get_subscription_count() > 0
                         and self.joint_pub.get_subscription_count() > 0)


@contextlib.contextmanager
def running_rig(context, embodiment: str = 'widowx_250s_bridge', **params):
    """A :class:`Rig` whose controller is configured and active; closed afterwards."""
    rig = Rig(context, embodiment, **params)
    try:
        rig.start()
        yield rig
    finally:
        rig.close()


@pytest.fixture
def bridge_rig(ros_context):
    with running_rig(ros_context, watchdog_timeout_s=0.6, max_action_age_s=0.5) as rig:
        yield rig


def test_action_in_trajectory_and_pose_out(bridge_rig, bridge, kin, start_q):
    rig, e, q = bridge_rig, bridge, start_q
    assert rig.connected()
    rig.publish_joints(list(e.arm_joints) + ['left_finger', 'right_finger'], list(q) + [0.037, -0.037])
    # starts disabled: the action is refused with a reason
    rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0])
    assert rig.wait_event('disabled')
    assert rig.statuses[-1].state == ControllerStatus.STATE_DISABLED and not rig.trajectories
    assert rig.call(rig.enable_cli, SetBool.Request(data=True)).success

    rig.send_action([0.01, 0, 0, 0, 0, 0, 0.0])
    assert rig.wait(lambda: rig.trajectories and rig.poses)
    traj = rig.trajectories[-1]
    assert traj.joint_names == list(e.arm_joints) + ['left_finger']
    point = traj.points[0]
    assert point.positions[-1] == pytest.approx(0.015)          # gripper 0 -> closed finger position
    assert point.time_from_start.sec + point.time_from_start.nanosec * 1e-9 >= 0.2 - 1e-9
    reached = kin.forward(point.positions[:6])
    expected = kin.forward(q).position + [0.01, 0, 0]
    np.testing.assert_allclose(reached.position, expected, atol=1e-3)
    p = rig.poses[-1].pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], expected, atol=1e-9)
    assert rig.poses[-1].header.frame_id == 'wx250s/base_link'
    assert rig.wait(lambda: rig.statuses[-1].state == ControllerStatus.STATE_TRACKING)

    # invalid and stale actions are dropped with a reason; no new trajectory
    n = len(rig.trajectories)
    rig.send_action([0.01, 0, float('nan'), 0, 0, 0, 1.0])
    assert rig.wait_event('non-finite')
    rig.send_action([0.01, 0, 0, 0, 0, 1.0])
    assert rig.wait_event('expected 7')
    rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0], age_s=2.0)
    assert rig.wait_event('stale action')
    assert len(rig.trajectories) == n
    assert rig.statuses[-1].actions_rejected >= 4

    # watchdog: no fresh action -> one hold trajectory at the measured joints
    assert rig.wait_event('watchdog', timeout_s=5.0)
    assert rig.wait(lambda: len(rig.trajectories) == n + 1)
    np.testing.assert_allclose(rig.trajectories[-1].points[0].positions[:6], q, atol=1e-9)
    assert rig.statuses[-1].state == ControllerStatus.STATE_HOLDING

    # disable: further actions refused
    assert rig.call(rig.enable_cli, SetBool.Request(data=False)).success
    rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0])
    assert rig.wait_event('disabled')


def test_estop_latches_until_reset(bridge_rig, bridge, start_q):
    rig, e, q = bridge_rig, bridge, start_q
    assert rig.connected()
    rig.publish_joints(e.arm_joints, q)
    assert rig.call(rig.enable_cli, SetBool.Request(data=True)).success
    rig.estop_pub.publish(Bool(data=True))
    assert rig.wait(lambda: rig.statuses and rig.statuses[-1].estop_latched)
    assert rig.statuses[-1].state == ControllerStatus.STATE_ESTOP
    rig.estop_pub.publish(Bool(data=False))       # releasing the button does not clear the latch
    rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0])
    assert rig.wait_event('estop latched')
    assert not rig.call(rig.enable_cli, SetBool.Request(data=True)).success
    n = len(rig.trajectories)
    res = rig.call(rig.reset_estop_cli, Trigger.Request())
    assert res.success, res.message
    assert rig.wait(lambda: not rig.statuses[-1].estop_latched)
    rig.publish_joints(e.arm_joints, q)
    rig.send_action([0.01, 0, 0, 0, 0, 0, 1.0])
    assert rig.wait(lambda: len(rig.trajectories) > n and rig.trajectories[-1].points[0].positions[:6] != list(q)), (n, len(rig.trajectories), rig.statuses[-1])


def test_servo_twist_resent_then_zero(ros_context):
    e = load_embodiment('generic_7dof_servo')
    with running_rig(ros_context, 'generic_7dof_servo', start_enabled=True, servo_rate_hz=50.0,
                     control_period_s=0.5, watchdog_timeout_s=5.0) as rig:
        assert rig.connected()
        q = [0.0, 0.5, 0.0, -1.2, 0.0, 0.8, 0.0]
        rig.publish_joints(e.arm_joints, q)
        assert rig.wait(lambda: len(rig.twists) > 5)      # zero twists while holding
        assert all(m.twist.linear.x == 0.0 for _, m in rig.twists)
        rig.twists.clear()
        rig.send_action([0.02, 0, 0, 0, 0, 0.1, 1.0])
        assert rig.wait(lambda: any(m.twist.linear.x > 0 for _, m in rig.twists))
        t0 = next(t for t, m in rig.twists if m.twist.linear.x > 0)
        rig.wait(lambda: rig.twists and rig.twists[-1][0] > t0 + 1.5, timeout_s=5.0)
        moving = [m for _, m in rig.twists if m.twist.linear.x > 0]
        # delta / control period, repeated during the period, then zero (never extrapolated)
        assert moving[0].twist.linear.x == pytest.approx(0.02 / 0.5)
        assert moving[0].twist.angular.z == pytest.approx(0.1 / 0.5)
        assert 5 <= len(moving) <= 40
        assert rig.twists[-1][1].twist.linear.x == 0.0
        window = [t for t, _ in rig.twists if t0 <= t <= t0 + 1.0]
        assert len(window) >= 10
        assert rig.poses and rig.poses[-1].header.frame_id == 'base_link'
        assert not rig.trajectories


def _trajectory_pose(kin, traj):
    return kin.forward(np.asarray(traj.points[0].positions[:6]))


def _pose_xyz(msg):
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


def test_blocking_keeps_the_newest_action_until_the_goal_is_reached(ros_context, bridge, kin, start_q):
    e, q = bridge, start_q
    with running_rig(ros_context, blocking=True, start_enabled=True, blocking_timeout_s=3.0,
                     watchdog_timeout_s=20.0, max_action_age_s=10.0) as rig:
        assert rig.connected()
        rig.publish_joints(e.arm_joints, q)
        assert rig.wait(lambda: rig.statuses and rig.statuses[-1].state == ControllerStatus.STATE_HOLDING)
        start = kin.forward(q).position
        # 3 cm steps: farther than the 1 cm goal tolerance, so the measured joints (still at q) are
        # not at the goal until the test moves them there.
        rig.send_action([0.03, 0, 0, 0, 0, 0, 1.0])
        assert rig.wait(lambda: len(rig.trajectories) == 1)
        first = rig.trajectories[0]
        np.testing.assert_allclose(_trajectory_pose(kin, first).position, start + [0.03, 0, 0], atol=1e-3)
        rig.send_action([0, 0.03, 0, 0, 0, 0, 1.0])      # superseded by the next one
        rig.send_action([0, 0, 0.03, 0, 0, 0, 1.0])      # the newest: executed once the goal is reached
        assert rig.wait(lambda: rig.statuses[-1].actions_received == 3)
        rig.wait(lambda: False, timeout_s=0.5)
        s = rig.statuses[-1]
        assert len(rig.trajectories) == 1, 'an action was executed before the goal was reached'
        assert (s.actions_executed, s.actions_rejected) == (1, 0)
        assert s.state == ControllerStatus.STATE_TRACKING

        # The arm follows the commanded trajectory: measured joints = its point.
        first_q = first.points[0].positions[:6]
        deadline = time.monotonic() + 10.0
        while len(rig.trajectories) < 2 and time.monotonic() < deadline:
            rig.publish_joints(e.arm_joints, first_q)
            rig.wait(lambda: len(rig.trajectories) >= 2, timeout_s=0.1)
        assert len(rig.trajectories) == 2, rig.statuses[-1]
        second = _trajectory_pose(kin, rig.trajectories[1]).position
        # dz from the previous target; the dy action was dropped
        np.testing.assert_allclose(second, start + [0.03, 0, 0.03], atol=1e-3)
        assert rig.wait(lambda: rig.statuses[-1].actions_executed == 2)
        assert rig.statuses[-1].actions_received == 3

        # The arm does not move this time: the pending action waits for the blocking timeout.
        rig.send_action([-0.03, 0, 0, 0, 0, 0, 1.0])
        assert rig.wait(lambda: rig.statuses[-1].actions_received == 4)
        rig.wait(lambda: False, timeout_s=1.0)
        assert len(rig.trajectories) == 2 and rig.statuses[-1].actions_executed == 2
        assert rig.wait(lambda: len(rig.trajectories) == 3, timeout_s=10.0), rig.statuses[-1]
        third = _trajectory_pose(kin, rig.trajectories[2]).position
        np.testing.assert_allclose(third, start + [0.0, 0, 0.03], atol=1e-3)
        assert rig.wait(lambda: rig.statuses[-1].actions_executed == 3)


def test_live_safety_parameters_apply_to_the_next_action(ros_context, bridge, kin, start_q):
    e, q = bridge, start_q
    with running_rig(ros_context, start_enabled=True, watchdog_timeout_s=20.0, max_action_age_s=10.0) as rig:
        assert rig.connected()
        rig.publish_joints(e.arm_joints, q)
        assert rig.wait(lambda: rig.statuses and rig.statuses[-1].state == ControllerStatus.STATE_HOLDING)
        rig.send_action([0.04, 0, 0, 0, 0, 0, 1.0])
        assert rig.wait(lambda: len(rig.poses) == 1)
        np.testing.assert_allclose(_pose_xyz(rig.poses[0]), kin.forward(q).position + [0.04, 0, 0], atol=1e-9)

        r = rig.set_parameter('max_translation_step_m', 0.01)
        assert r.successful, r.reason
        assert rig.get_parameter('max_translation_step_m') == 0.01
        rig.send_action([0.04, 0, 0, 0, 0, 0, 1.0])
        assert rig.wait(lambda: len(rig.poses) == 2)
        step = _pose_xyz(rig.poses[1]) - _pose_xyz(rig.poses[0])
        np.testing.assert_allclose(step, [0.01, 0, 0], atol=1e-9)
        assert rig.wait(lambda: 'translation_clip' in rig.statuses[-1].active_limits)

        # Invalid values are refused with a reason and change nothing.
        low = list(rig.get_parameter('workspace_low_m'))
        high = list(rig.get_parameter('workspace_high_m'))
        r = rig.set_parameter('workspace_low_m', [high[0] + 0.01, low[1], low[2]])
        assert not r.successful and 'workspace' in r.reason, r.reason
        r = rig.set_parameter('workspace_high_m', [high[0], high[1]])
        assert not r.successful and '3' in r.reason, r.reason
        r = rig.set_parameter('max_translation_step_m', 5.0)
        assert not r.successful
        assert list(rig.get_parameter('workspace_low_m')) == low
        assert rig.get_parameter('max_translation_step_m') == 0.01

        # A tighter box clips the next target at its new face.
        x = float(_pose_xyz(rig.poses[1])[0])
        r = rig.set_parameter('workspace_high_m', [x + 0.004, high[1], high[2]])
        assert r.successful, r.reason
        rig.send_action([0.04, 0, 0, 0, 0, 0, 1.0])
        assert rig.wait(lambda: len(rig.poses) == 3)
        assert _pose_xyz(rig.poses[2])[0] == pytest.approx(x + 0.004, abs=1e-9)
        assert rig.wait(lambda: 'workspace_clip' in rig.statuses[-1].active_limits)

        # A shorter action age makes the same action stale.
        assert rig.set_parameter('max_action_age_s', 0.2).successful
        rig.send_action([0.0, 0, 0, 0, 0, 0, 1.0], age_s=0.5)
        assert rig.wait_event('stale action')
        assert len(rig.poses) == 3

        # Nothing changes now, yet the status keeps coming (STATUS_PERIOD_S, 1 s).
        n = len(rig.statuses)
        assert rig.wait(lambda: len(rig.statuses) >= n + 2, timeout_s=5.0)
