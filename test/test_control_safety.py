"""Kinematics round trips and the safety controller (ROS-free), on the real wx250s MJCF."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from conftest import enabled_controller
from openvla_ros.control.embodiment import EmbodimentConfigError
from openvla_ros.control.geometry import Pose, rotation_from_static_xyz
from openvla_ros.control.safety import JOINT_SPEED_LIMIT, ActionInput, Command, Mode, Refusal, SafetyController

def test_fk_matches_the_kinematic_table(kin):
    # all joints zero: arm stretched along x at shoulder height + upper arm
    pose = kin.forward(np.zeros(6))
    np.testing.assert_allclose(pose.position, [0.04975 + 0.175 + 0.075 + 0.065, 0, 0.072 + 0.03865 + 0.25],
                               atol=1e-9)


def test_ik_round_trip_over_the_workspace(bridge, kin, start_q):
    start_r = bridge.start_pose.rotation
    failures = []
    for x in (0.2, 0.3, 0.4):
        for y in (-0.15, 0.0, 0.15):
            for z in (0.05, 0.15, 0.25):
                for d in ((0, 0, 0), (0.2, 0, 0), (0, -0.2, 0.2)):
                    target = Pose([x, y, z], rotation_from_static_xyz(*d) @ start_r)
                    r = kin.solve(target, start_q)
                    reached = kin.forward(r.joint_positions)
                    if not (r.success and reached.position_error_m(target) <= 1e-3
                            and reached.rotation_error_rad(target) <= 0.01 and kin.within_limits(r.joint_positions)):
                        failures.append(((x, y, z), d, r.reason))
    assert not failures, failures


def test_unreachable_pose_is_refused(bridge, kin, start_q):
    r = kin.solve(Pose([0.9, 0.0, 0.2], bridge.start_pose.rotation), start_q)
    assert not r.success and r.reason.startswith('ik_failed')
    # reachable position, orientation a 6-DoF wrist cannot take there (pointing back at the base)
    r = kin.solve(Pose([0.45, 0.0, 0.0], rotation_from_static_xyz(0, -1.5, np.pi)), start_q)
    assert not r.success


def _controller(bridge, kin, q, **overrides):
    e, c = enabled_controller(bridge, kin, **overrides)
    c.update_joints(dict(zip(e.arm_joints, q)))
    c.update_joints({'left_finger': 0.037})
    return c


def test_first_action_starts_from_measured_pose_then_composes_on_target(bridge, kin, start_q):
    c = _controller(bridge, kin, start_q)
    measured = kin.forward(start_q)
    cmd = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1.0), 10.0), 10.0)
    assert isinstance(cmd, Command), cmd
    np.testing.assert_allclose(cmd.target.position, measured.position + [0.01, 0, 0], atol=1e-9)
    # the arm has not moved (measured unchanged): the next delta adds to the commanded target
    cmd2 = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 0.0), 10.2), 10.2)
    np.testing.assert_allclose(cmd2.target.position, measured.position + [0.02, 0, 0], atol=1e-9)
    assert cmd2.gripper == 0.0 and cmd2.gripper_position_m == pytest.approx(0.015)
    np.testing.assert_allclose(kin.forward(cmd2.joint_positions).position, cmd2.target.position, atol=1e-3)
    assert c.mode is Mode.TRACKING
    np.testing.assert_allclose(cmd2.linear_velocity_m_s, [0.05, 0, 0], atol=1e-9)


def test_update_limits_applies_to_the_next_action_and_invalid_changes_nothing(bridge, kin, start_q):
    c = _controller(bridge, kin, start_q)
    measured = kin.forward(start_q)
    c.update_limits(max_translation_step_m=0.005)
    cmd = c.on_action(ActionInput((0.03, 0, 0, 0, 0, 0, 1.0), 10.0), 10.0)
    np.testing.assert_allclose(cmd.target.position, measured.position + [0.005, 0, 0], atol=1e-9)
    before = c.embodiment
    with pytest.raises(EmbodimentConfigError, match='workspace'):
        c.update_limits(workspace_low_m=(0.5, -0.2, -0.01))
    with pytest.raises(EmbodimentConfigError, match='watchdog_timeout_s'):
        c.update_limits(watchdog_timeout_s=0.0)
    assert c.embodiment is before


def test_refusals(bridge, kin, start_q):
    c = _controller(bridge, kin, start_q)
    assert 'stale' in c.on_action(ActionInput((0,) * 6 + (1,), 9.0), 10.0).reason
    assert 'invalid' in c.on_action(ActionInput((0, 0, float('nan'), 0, 0, 0, 1), 10.0), 10.0).reason
    assert 'invalid' in c.on_action(ActionInput((0, 0, 0), 10.0), 10.0).reason
    assert c.counters.rejected == 3 and c.counters.executed == 0 and c.target is None or c.counters.executed == 0
    c.set_enabled(False)
    assert c.on_action(ActionInput((0,) * 6 + (1,), 10.0), 10.0).reason == 'disabled'
    assert c.mode is Mode.DISABLED
    none = SafetyController(bridge.with_overrides(start_enabled=True), kin)
    assert none.mode is Mode.ERROR
    assert none.on_action(ActionInput((0,) * 6 + (1,), 10.0), 10.0).reason == 'no joint states'


def test_stale_joint_states_refuse_actions_and_send_no_hold(bridge, kin, start_q):
    e = bridge.with_overrides(start_enabled=True, max_joint_state_age_s=0.5, watchdog_timeout_s=1.0)
    c = SafetyController(e, kin)
    c.update_joints(dict(zip(e.arm_joints, start_q)), now_s=10.0)
    assert isinstance(c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1.0), 10.2), 10.2), Command)
    # joint states stop arriving: the next action is refused, nothing of it is used
    target = c.target
    r = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1.0), 10.8), 10.8)
    assert isinstance(r, Refusal) and r.reason.startswith('joint states stale: age 0.80 s > 0.50 s')
    assert c.target is target
    # the watchdog trips, but a hold at a pose measured 1.5 s ago could itself move the arm
    assert c.tick(11.5) is None
    assert 'watchdog' in c.last_event and 'no hold command sent' in c.last_event
    assert c.mode is Mode.HOLDING
    # fresh joint states again: actions are accepted, starting from the measured pose
    c.update_joints(dict(zip(e.arm_joints, start_q)), now_s=12.0)
    cmd = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1.0), 12.0), 12.0)
    np.testing.assert_allclose(cmd.target.position, kin.forward(start_q).position + [0.01, 0, 0], atol=1e-9)


def test_estop_latches_until_reset(bridge, kin, start_q):
    c = _controller(bridge, kin, start_q)
    hold = c.set_estop(True)
    assert hold.hold and np.allclose(hold.joint_positions, start_q) and np.allclose(hold.linear_velocity_m_s, 0)
    c.set_estop(False)
    assert c.mode is Mode.ESTOP
    assert c.on_action(ActionInput((0,) * 6 + (1,), 10.0), 10.0).reason == 'estop latched'
    c.set_estop(True)
    assert c.reset_estop()[0] is False      # input still pressed
    c.set_estop(False)
    assert c.reset_estop()[0] is True
    assert isinstance(c.on_action(ActionInput((0,) * 6 + (1,), 10.0), 10.0), Command)


def test_watchdog_holds_and_reseeds(bridge, kin, start_q):
    c = _controller(bridge, kin, start_q)
    c.on_action(ActionInput((0.02, 0, 0, 0, 0, 0, 1), 10.0), 10.0)
    assert c.tick(10.5) is None
    hold = c.tick(11.1)
    assert isinstance(hold, Command) and hold.hold and 'watchdog' in hold.reason
    np.testing.assert_allclose(hold.joint_positions, start_q)   # measured joints, not the target
    assert c.tick(11.2) is None                                  # one hold, not a stream
    cmd = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 11.3), 11.3)
    np.testing.assert_allclose(cmd.target.position, kin.forward(start_q).position + [0.01, 0, 0], atol=1e-9)


def test_joint_speed_limit_stretches_duration(bridge, kin, start_q):
    c = _controller(bridge, kin, start_q, max_joint_speed_rad_s=0.1)
    cmd = c.on_action(ActionInput((0.05, 0.05, 0, 0, 0, 0.25, 1), 10.0), 10.0)
    assert JOINT_SPEED_LIMIT in cmd.active_limits
    assert np.max(np.abs(cmd.joint_positions - start_q)) / cmd.duration_s <= 0.1 + 1e-9


def test_blocking_keeps_newest_pending(bridge, kin, start_q):
    c = _controller(bridge, kin, start_q, blocking=True, blocking_timeout_s=0.5)
    assert isinstance(c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 10.0), 10.0), Command)
    assert isinstance(c.on_action(ActionInput((0.0, 0.01, 0, 0, 0, 0, 1), 10.05), 10.05), Refusal)
    assert isinstance(c.on_action(ActionInput((0.0, 0.0, 0.01, 0, 0, 0, 1), 10.1), 10.1), Refusal)
    assert c.counters.dropped_while_busy == 1
    assert c.tick(10.2) is None                        # arm has not moved, goal pending
    # the arm reaches the target: the newest pending action (dz) runs
    c.update_joints(dict(zip(bridge.arm_joints, kin.solve(c.target, start_q).joint_positions)))
    cmd = c.tick(10.3)
    assert isinstance(cmd, Command)
    np.testing.assert_allclose(cmd.target.position, kin.forward(start_q).position + [0.01, 0, 0.01], atol=1e-6)



def test_an_action_waits_for_joint_states_as_new_as_its_image(bridge, kin, start_q):
    """The policy saw the arm at the image's stamp: the IK seed and the speed stretch must not
    come from an older measurement. The action waits (pending) until one arrives, and is refused
    as stale if none does; stamps of another time base (farther apart than the joint-state age
    bound) and unstamped joint states are not compared."""
    c = _controller(bridge, kin, start_q)
    names = bridge.arm_joints
    c.update_joints(dict(zip(names, start_q)), 10.0, stamp_s=9.98)
    r = c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), 10.0), 10.0)
    assert isinstance(r, Refusal) and r.pending and 'as new as the image' in r.reason
    assert c.counters.executed == 0 and c.counters.rejected == 0
    assert c.tick(10.01) is None                               # still behind: keeps waiting
    c.update_joints(dict(zip(names, start_q)), 10.02, stamp_s=10.0)
    assert isinstance(c.tick(10.02), Command) and c.counters.executed == 1
    # never catching up: refused once the action is stale, with the reason
    late = bridge.control_period_s + 10.02
    c.update_joints(dict(zip(names, start_q)), late, stamp_s=late - 0.05)
    assert c.on_action(ActionInput((0.01, 0, 0, 0, 0, 0, 1), late), late).pending
    stale_at = late + bridge.max_action_age_s + 0.01
    c.update_joints(dict(zip(names, start_q)), stale_at, stamp_s=late - 0.05)
    r = c.tick(stale_at)
    assert isinstance(r, Refusal) and not r.pending and r.reason.startswith('stale action')
    # unstamped, or stamped on another clock: not compared
    for stamp in (0.0, None, stale_at - 1000.0):
        t = stale_at + bridge.control_period_s * 2
        stale_at = t
        c.update_joints(dict(zip(names, start_q)), t, stamp_s=stamp)
        assert isinstance(c.on_action(ActionInput((0.0, 0, 0, 0, 0, 0, 1), t), t), Command), stamp


finite = st.floats(-0.2, 0.2)
wild = st.one_of(finite, st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e9, -1e9]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(wild, min_size=7, max_size=7), min_size=1, max_size=12))
def test_any_action_sequence_stays_safe(bridge, kin, start_q, actions):
    c = _controller(bridge, kin, start_q)
    e = c.embodiment
    low, high = np.array(e.workspace_low_m), np.array(e.workspace_high_m)
    now = 10.0
    for a in actions:
        before = c.target
        result = c.on_action(ActionInput(tuple(a), now), now)
        if not all(np.isfinite(a)):
            assert isinstance(result, Refusal)
        if isinstance(result, Command):
            t = result.target
            assert np.all(t.position >= low - 1e-12) and np.all(t.position <= high + 1e-12)
            assert kin.within_limits(result.joint_positions)
            assert 0.0 <= result.gripper <= 1.0
            if before is not None:
                step = np.abs(t.position - before.position)
                assert np.all(step <= e.max_translation_step_m + 1e-9)
                # the step's rotation, as static-XYZ Euler angles, is within the per-axis clip
                rpy = Rotation.from_matrix(t.rotation @ before.rotation.T).as_euler('xyz')
                assert np.all(np.abs(rpy) <= e.max_rotation_step_rad + 1e-9)
            # the arm follows the command
            c.update_joints(dict(zip(e.arm_joints, result.joint_positions)))
        else:
            assert result.reason
            assert c.target is before      # a refusal never advances the target
        now += 0.2
