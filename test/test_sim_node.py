"""sim_node in its own process over loopback DDS: camera, joint states, clock, trajectories, reset."""
from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from conftest import spin_until
from openvla_ros import defaults
from openvla_ros.control.embodiment import load_embodiment
from openvla_ros.control.kinematics import ArmKinematics
from openvla_ros.imaging import image_msg_to_rgb

pytestmark = pytest.mark.ros


def _t(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _trajectory(names, positions, t_s) -> JointTrajectory:
    msg = JointTrajectory(joint_names=list(names))
    msg.points = [JointTrajectoryPoint(positions=[float(p) for p in positions],
                                       time_from_start=Duration(sec=int(t_s), nanosec=int((t_s % 1) * 1e9)))]
    return msg


def test_sim_node_publishes_follows_trajectories_resets_and_exits_cleanly(processes, probe):
    processes.start('openvla_ros.nodes.sim_node', '--ros-args', '-p', 'image_width:=160', '-p', 'image_height:=120',
                    '-p', 'camera_rate_hz:=10.0', '-p', 'joint_state_rate_hz:=50.0', '-p', 'seed:=3',
                    '-p', 'embodiment:=widowx_250s_bridge')
    node, ex = probe
    images, states, clocks = [], [], []
    node.create_subscription(Image, defaults.CAMERA_TOPIC, images.append, qos_profile_sensor_data)
    node.create_subscription(JointState, defaults.JOINT_STATES_TOPIC, states.append, 10)
    node.create_subscription(Clock, defaults.CLOCK_TOPIC, clocks.append, 10)
    diagnostics = []
    node.create_subscription(DiagnosticArray, defaults.DIAGNOSTICS_TOPIC, diagnostics.append, 10)
    traj_pub = node.create_publisher(JointTrajectory, defaults.JOINT_TRAJECTORY_TOPIC, 10)
    reset = node.create_client(Trigger, f'/{defaults.SIM_NODE}/reset')
    assert spin_until(ex, lambda: len(images) >= 3 and len(states) >= 10 and clocks, 30.0), \
        processes.log('sim_node')
    img = images[-1]
    assert (img.width, img.height, img.encoding, img.header.frame_id) == (160, 120, 'rgb8', 'over_shoulder_camera')
    assert image_msg_to_rgb(img).std() > 20
    stamps = [_t(m.header.stamp) for m in images]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    # Sim-time stamps on the camera grid (10 Hz), not wall time.
    assert stamps[-1] < 1000 and np.allclose(np.array(stamps) * 10, np.round(np.array(stamps) * 10), atol=1e-3)
    # rqt_robot_monitor sees the simulation's real-time factor and render time
    assert spin_until(ex, lambda: diagnostics, 10.0)
    status = diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == f'{defaults.SIM_NODE}: simulation' and status.hardware_id == defaults.SIM_NODE
    assert float(values['real_time_factor']) > 0 and float(values['render_ms_per_image']) > 0
    js = states[-1]
    assert list(js.name) == ['waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate',
                             'left_finger', 'right_finger']
    assert len(js.position) == len(js.velocity) == 8

    # The arm starts at the embodiment's (Bridge) start pose, gripper open.
    emb = load_embodiment('widowx_250s_bridge')
    start = dict(zip(states[0].name, states[0].position))
    ee = ArmKinematics(emb).forward([start[j] for j in emb.arm_joints])
    np.testing.assert_allclose(ee.position, emb.start_position_m, atol=0.003)
    assert start['left_finger'] == pytest.approx(emb.gripper.open_position_m, abs=0.001)

    def joint(name):
        return dict(zip(states[-1].name, states[-1].position))[name]

    # A trajectory for the arm and the gripper is followed; the other finger mirrors.
    target = {'waist': 0.4, 'shoulder': -0.6, 'left_finger': 0.035}
    assert spin_until(ex, lambda: traj_pub.get_subscription_count() > 0, 10.0)
    traj_pub.publish(_trajectory(target, target.values(), 0.5))
    assert spin_until(ex, lambda: all(abs(joint(n) - v) < 0.01 for n, v in target.items()), 20.0), \
        (dict(zip(states[-1].name, states[-1].position)), processes.log('sim_node'))
    assert joint('right_finger') == pytest.approx(-0.035, abs=0.003)

    # An unknown joint name is rejected (logged) and the arm keeps its command.
    traj_pub.publish(_trajectory(['waist', 'tail'], [-0.5, 0.0], 0.2))
    assert spin_until(ex, lambda: 'unknown joint names' in processes.log('sim_node'), 10.0)
    settle_until = _t(states[-1].header.stamp) + 0.5
    spin_until(ex, lambda: _t(states[-1].header.stamp) > settle_until, 10.0)
    assert joint('waist') == pytest.approx(0.4, abs=0.01)

    # ~/reset puts the arm back to the start pose; sim time keeps running forward.
    assert reset.wait_for_service(timeout_sec=10.0)
    before = _t(clocks[-1].clock)
    fut = reset.call_async(Trigger.Request())
    assert spin_until(ex, fut.done, 10.0)
    assert fut.result().success, fut.result().message
    assert 'seed 3' in fut.result().message
    assert spin_until(ex, lambda: abs(joint('waist') - start['waist']) < 0.01 and _t(clocks[-1].clock) > before, 10.0)
    assert processes.stop() == {'sim_node': 0}


@pytest.mark.parametrize('parameter, message', [('start_joint_positions:=[0.1, 0.2]', 'start_joint_positions needs 7 values'),
                                                ('real_time_factor:=-5.0', 'real_time_factor')])
def test_sim_node_refuses_bad_parameters(processes, parameter, message):
    proc = processes.start('openvla_ros.nodes.sim_node', '--ros-args', '-p', parameter)
    assert proc.wait(30) == 2
    assert message in processes.log('sim_node')


def test_sim_node_parameters_are_honest(processes, probe):
    """Every parameter has a value (GetParameters answers all at once), numbers have a range,
    load-time ones refuse live changes with a reason, and object poses are published."""
    from geometry_msgs.msg import PoseArray
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters, SetParameters
    from std_msgs.msg import String

    from openvla_ros.nodes.common import latched_qos

    processes.start('openvla_ros.nodes.sim_node', '--ros-args', '-p', 'image_width:=64', '-p', 'image_height:=48',
                    '-p', 'camera_rate_hz:=2.0')
    node, ex = probe
    poses, names = [], []
    node.create_subscription(PoseArray, '/sim_node/object_poses', poses.append, 10)
    node.create_subscription(String, '/sim_node/object_names', names.append, latched_qos())

    def call(srv_type, name, request):
        client = node.create_client(srv_type, f'/sim_node/{name}')
        assert spin_until(ex, client.service_is_ready, 30.0), name
        fut = client.call_async(request)
        assert spin_until(ex, fut.done, 30.0), name
        return fut.result()

    listed = call(ListParameters, 'list_parameters', ListParameters.Request()).result.names
    own = [n for n in listed if n != 'use_sim_time' and not n.startswith('qos_overrides')]
    assert 'start_joint_positions' in own and 'seed' in own
    values = call(GetParameters, 'get_parameters', GetParameters.Request(names=own)).values
    assert len(values) == len(own)
    assert all(v.type != ParameterType.PARAMETER_NOT_SET for v in values)
    descriptors = call(DescribeParameters, 'describe_parameters', DescribeParameters.Request(names=own)).descriptors
    for d, v in zip(descriptors, values):
        if v.type in (ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_INTEGER):
            assert d.floating_point_range or d.integer_range, f'{d.name} has no range'
        assert d.read_only == (d.name not in ('seed', 'task')), d.name   # live: for the next ~/reset
    bad = [ParameterMsg(name='real_time_factor',
                        value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=-5.0)),
           ParameterMsg(name='seed', value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=-7)),
           ParameterMsg(name='seed', value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=4))]
    results = call(SetParameters, 'set_parameters', SetParameters.Request(parameters=bad)).results
    assert not results[0].successful and results[0].reason
    assert not results[1].successful and results[2].successful
    task = [ParameterMsg(name='task', value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                           string_value='no_such_task'))]
    refused = call(SetParameters, 'set_parameters', SetParameters.Request(parameters=task)).results[0]
    assert not refused.successful and 'unknown task' in refused.reason
    assert spin_until(ex, lambda: poses and names, 30.0)
    assert len(poses[-1].poses) == len(names[-1].data.split(',')) == 4
    assert processes.stop() == {'sim_node': 0}


def test_sim_node_lockstep_advances_one_period_per_command(processes, probe):
    """lockstep:=true: sim time stands still until a trajectory (or ~/step) arrives, then moves by
    exactly lockstep_period_s, and the image of the new state follows."""
    processes.start('openvla_ros.nodes.sim_node', '--ros-args', '-p', 'lockstep:=true', '-p', 'image_width:=64',
                    '-p', 'image_height:=48', '-p', 'lockstep_period_s:=0.2')
    node, ex = probe
    clocks, images, joints = [], [], []
    node.create_subscription(Clock, defaults.CLOCK_TOPIC, clocks.append, 10)
    node.create_subscription(Image, defaults.CAMERA_TOPIC, images.append, qos_profile_sensor_data)
    node.create_subscription(JointState, defaults.JOINT_STATES_TOPIC, joints.append, qos_profile_sensor_data)
    pub = node.create_publisher(JointTrajectory, defaults.JOINT_TRAJECTORY_TOPIC, 10)
    step = node.create_client(Trigger, '/sim_node/step')
    assert spin_until(ex, lambda: images and len(clocks) >= 5 and joints, 60.0)
    assert _t(images[0].header.stamp) == 0.0
    assert {_t(c.clock) for c in clocks} == {0.0}, 'physics must be paused between steps'
    assert spin_until(ex, step.service_is_ready, 30.0)
    fut = step.call_async(Trigger.Request())
    assert spin_until(ex, lambda: fut.done() and len(images) >= 2, 30.0)
    assert _t(images[-1].header.stamp) == pytest.approx(0.2, abs=1e-9)
    names = [n for n in joints[-1].name if n != 'right_finger']
    positions = dict(zip(joints[-1].name, joints[-1].position))
    target = [positions[n] + (0.1 if n == 'waist' else 0.0) for n in names]
    assert spin_until(ex, lambda: pub.get_subscription_count() > 0, 30.0)
    pub.publish(_trajectory(names, target, 0.2))
    assert spin_until(ex, lambda: len(images) >= 3, 30.0)
    assert _t(images[-1].header.stamp) == pytest.approx(0.4, abs=1e-9)
    seen = len(clocks)
    assert spin_until(ex, lambda: len(clocks) >= seen + 3, 30.0)
    assert max(_t(c.clock) for c in clocks) == pytest.approx(0.4, abs=1e-9)
    after = [j for j in joints if _t(j.header.stamp) == pytest.approx(0.4, abs=1e-9)]
    assert after and dict(zip(after[-1].name, after[-1].position))['waist'] > positions['waist'] + 0.05
    assert processes.stop() == {'sim_node': 0}
