"""Bridge delta semantics and the embodiment config, against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from openvla_ros.control.delta import (ROTATION_CLIP, TRANSLATION_CLIP, WORKSPACE_CLIP, InvalidActionError,
                                       StepLimits, apply_bridge_delta)
from openvla_ros.control.embodiment import (EmbodimentConfigError, GripperMapping, embodiment_from_dict,
                                            load_embodiment)
from openvla_ros.control.geometry import Pose, matrix_from_quat_xyzw, quat_xyzw_from_matrix, rotation_from_static_xyz

LIMITS = StepLimits(0.05, 0.25, (0.1, -0.20, -0.01), (0.45, 0.25, 0.30))
START_R = np.array([[0.267, 0, 0.963], [0, 1, 0], [-0.963, 0, 0.267]])


def _rz(a):
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _ry(a):
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _rx(a):
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def test_static_xyz_is_rz_ry_rx():
    r, p, y = 0.1, -0.2, 0.3
    np.testing.assert_allclose(rotation_from_static_xyz(r, p, y), _rz(y) @ _ry(p) @ _rx(r), atol=1e-12)


def test_quaternion_order_is_xyzw():
    q = quat_xyzw_from_matrix(_rz(math.pi / 2))
    np.testing.assert_allclose(q, [0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)], atol=1e-12)
    np.testing.assert_allclose(matrix_from_quat_xyzw(q), _rz(math.pi / 2), atol=1e-12)


def test_pure_translation():
    prev = Pose([0.3, -0.09, 0.26], np.eye(3))
    res = apply_bridge_delta(prev, [0.01, -0.02, 0.03, 0, 0, 0, 1.0], LIMITS)
    np.testing.assert_allclose(res.target.position, [0.31, -0.11, 0.29], atol=1e-12)
    np.testing.assert_allclose(res.target.rotation, np.eye(3), atol=1e-12)
    assert res.gripper == 1.0 and res.active_limits == ()


def test_pure_rotation_keeps_the_position_and_premultiplies():
    prev = Pose([0.3, -0.09, 0.26], _ry(1.3))
    res = apply_bridge_delta(prev, [0, 0, 0, 0.1, 0.0, 0.2, 0.0], LIMITS)
    np.testing.assert_allclose(res.target.position, prev.position, atol=1e-12)
    # base-aligned axes: R_d on the left of the previous orientation
    np.testing.assert_allclose(res.target.rotation, _rz(0.2) @ _rx(0.1) @ _ry(1.3), atol=1e-12)


def test_measured_pivot_reproduces_bridge_conjugation():
    # T_d = Tr(p) [R_d|d] Tr(-p) composed on T_prev, with p the measured position
    prev = Pose([0.3, 0.0, 0.2], np.eye(3))
    p = np.array([0.28, 0.0, 0.2])
    res = apply_bridge_delta(prev, [0, 0, 0, 0, 0, 0.2, 1.0], LIMITS, pivot_m=p)
    t_d = np.eye(4)
    t_d[:3, :3] = _rz(0.2)
    tr = np.eye(4)
    tr[:3, 3] = p
    tr_inv = np.eye(4)
    tr_inv[:3, 3] = -p
    t_prev = np.eye(4)
    t_prev[:3, 3] = prev.position
    expected = tr @ t_d @ tr_inv @ t_prev
    np.testing.assert_allclose(res.target.position, expected[:3, 3], atol=1e-12)
    # hand value: (0.02, 0) rotated by 0.2 rad about p
    np.testing.assert_allclose(res.target.position[:2], [0.28 + 0.02 * math.cos(0.2), 0.02 * math.sin(0.2)],
                               atol=1e-12)


def test_composition_on_previous_target():
    target = Pose([0.3, -0.09, 0.26], np.eye(3))
    for _ in range(3):
        target = apply_bridge_delta(target, [0.02, 0, 0, 0, 0, 0.1, 1.0], LIMITS).target
    np.testing.assert_allclose(target.position, [0.36, -0.09, 0.26], atol=1e-12)
    np.testing.assert_allclose(target.rotation, _rz(0.3), atol=1e-12)


def test_clipping_per_dimension_and_workspace():
    prev = Pose([0.44, 0.0, 0.29], np.eye(3))
    res = apply_bridge_delta(prev, [0.2, -0.3, 0.04, 1.0, 0.1, -2.0, 1.7], LIMITS)
    np.testing.assert_allclose(res.clipped_action, [0.05, -0.05, 0.04, 0.25, 0.1, -0.25, 1.0])
    np.testing.assert_allclose(res.target.position, [0.45, -0.05, 0.30], atol=1e-12)
    assert {TRANSLATION_CLIP, ROTATION_CLIP, WORKSPACE_CLIP} <= set(res.active_limits)
    assert res.gripper == 1.0


@pytest.mark.parametrize('action', [[0.0] * 6, [0.0] * 8, [0, 0, float('nan'), 0, 0, 0, 1],
                                    [0, 0, 0, float('inf'), 0, 0, 1], [0, 0, 0, 0, 0, 0, -float('inf')]])
def test_invalid_actions_rejected_whole(action):
    with pytest.raises(InvalidActionError):
        apply_bridge_delta(Pose([0.3, 0, 0.2], np.eye(3)), action, LIMITS)


def test_gripper_mapping_sim_and_real_ranges():
    sim = GripperMapping('left_finger', 0.015, 0.037)
    real = GripperMapping('left_finger', 0.010, 0.035)
    assert sim.position_m(0.0) == pytest.approx(0.015)
    assert sim.position_m(1.0) == pytest.approx(0.037)
    assert sim.position_m(0.996) == pytest.approx(0.015 + 0.996 * 0.022)
    assert real.position_m(0.5) == pytest.approx(0.0225)
    assert real.position_m(3.0) == pytest.approx(0.035)


def test_bridge_config_loads():
    e = load_embodiment('widowx_250s_bridge')
    assert e.base_frame_id == 'wx250s/base_link'
    assert e.control_period_s == pytest.approx(0.2)
    assert e.workspace_low_m == pytest.approx((0.1, -0.20, -0.01))
    assert not e.start_enabled and not e.blocking
    np.testing.assert_allclose(e.start_pose.rotation, START_R, atol=2e-3)
    assert e.gripper.position_m(0) == pytest.approx(0.015)


def test_generic_servo_config_loads():
    e = load_embodiment('generic_7dof_servo')
    assert len(e.arm_joints) == 7 and e.output_servo_twist and not e.output_joint_trajectory


def _minimal():
    return {'base_frame_id': 'base', 'kinematics': {'model_file': 'wx250s.xml', 'end_effector_site': 'ee',
                                                    'arm_joints': ['waist']}}


@pytest.mark.parametrize('mutate, key', [
    (lambda d: d['control'].update(max_translation_step_m=-1), 'max_translation_step_m'),
    (lambda d: d['control'].update(workspace_low_m=[0, 0]), 'workspace_low_m'),
    (lambda d: d['control'].update(workspce_high_m=[1, 1, 1]), 'control.workspce_high_m'),
    (lambda d: d['control'].update(rotation_pivot='elbow'), 'rotation_pivot'),
    (lambda d: d.update(gripper={'joint': 'left_finger', 'closed_position_m': 0.01}), 'gripper.open_position_m'),
    (lambda d: d['kinematics'].pop('arm_joints'), 'kinematics.arm_joints'),
    (lambda d: d.update(colour='red'), 'colour'),
])
def test_bad_yaml_names_the_key(mutate, key):
    d = _minimal()
    d['control'] = {}
    mutate(d)
    with pytest.raises(EmbodimentConfigError, match=key.replace('.', r'\.')):
        embodiment_from_dict(d, 'bad')


def test_delta_to_twist_integrates_back_to_the_delta_at_large_angles():
    from scipy.spatial.transform import Rotation

    from openvla_ros.control.geometry import delta_to_twist
    rpy = (1.2, -0.8, 2.0)
    period = 0.2
    linear, angular = delta_to_twist((0.01, -0.02, 0.03), rpy, period)
    np.testing.assert_allclose(linear, [0.05, -0.1, 0.15])
    # a constant angular velocity held for one period is the rotation exp(w * T)
    reached = Rotation.from_rotvec(angular * period).as_matrix()
    np.testing.assert_allclose(reached, rotation_from_static_xyz(*rpy), atol=1e-12)
    # Euler rates are not an angular velocity: at this size they miss the delta by far
    euler_rates = Rotation.from_rotvec(np.asarray(rpy)).as_matrix()
    assert np.abs(euler_rates - rotation_from_static_xyz(*rpy)).max() > 0.3
    with pytest.raises(ValueError):
        delta_to_twist((0, 0, 0), (0, 0, 0), 0.0)


def test_gripper_inverse_mapping_round_trips_and_clips():
    g = GripperMapping('left_finger', 0.015, 0.037)
    for cmd in (0.0, 0.25, 0.5, 1.0):
        assert g.command_from_position_m(g.position_m(cmd)) == pytest.approx(cmd)
    assert g.command_from_position_m(0.0) == 0.0 and g.command_from_position_m(1.0) == 1.0
    assert GripperMapping('f', 0.02, 0.02).command_from_position_m(0.02) == 1.0
