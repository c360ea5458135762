"""The controller's Bridge conventions checked against physics: a delta integrated by the control
core, IK'd to joints and executed by the simulated position actuators moves the simulated
end effector (site ``ee``, measured in MuJoCo after settling) by that delta."""
from __future__ import annotations

import numpy as np
import pytest

from openvla_ros.control.embodiment import load_embodiment
from openvla_ros.control.geometry import rotation_angle_rad, rotation_from_static_xyz
from openvla_ros.control.kinematics import ArmKinematics
from openvla_ros.control.safety import ActionInput, Command, SafetyController
from openvla_ros.sim import WorkcellSim

POSITION_TOL_M = 0.001  # measured: ~0.05 mm
ROTATION_TOL_RAD = 0.01  # measured: ~1e-4 rad
SETTLE_S = 1.0


@pytest.fixture(scope='module')
def rig():
    emb = load_embodiment('widowx_250s_bridge').with_overrides(start_enabled=True)
    kin = ArmKinematics(emb)
    sim = WorkcellSim()
    # Start at the Bridge reset pose, reached through the controller's own IK.
    home = sim.home_positions()
    ik = kin.solve(emb.start_pose, [home[j] for j in emb.arm_joints])
    assert ik.success, ik.reason
    yield emb, kin, sim, dict(zip(emb.arm_joints, ik.joint_positions))
    sim.close()


def _measured(sim: WorkcellSim) -> dict[str, float]:
    return dict(zip(sim.joint_names, sim.joint_positions().tolist()))


def _execute(sim: WorkcellSim, ctrl: SafetyController, action) -> Command:
    ctrl.update_joints(_measured(sim))
    cmd = ctrl.on_action(ActionInput(tuple(action), stamp_s=sim.time_s), now_s=sim.time_s)
    assert isinstance(cmd, Command), cmd
    names = list(ctrl.embodiment.arm_joints) + [ctrl.embodiment.gripper.joint]
    sim.follow_trajectory(names, [(list(cmd.joint_positions) + [cmd.gripper_position_m], cmd.duration_s)])
    sim.advance(cmd.duration_s + SETTLE_S)
    return cmd


def test_bridge_deltas_move_the_simulated_end_effector_by_the_delta(rig):
    emb, kin, sim, start_q = rig
    sim.reset(joint_positions=start_q)
    sim.advance(SETTLE_S)
    ctrl = SafetyController(emb, kin)
    ctrl.update_joints(_measured(sim))
    start = sim.ee_pose()
    assert np.linalg.norm(start.position - np.asarray(emb.start_position_m)) < POSITION_TOL_M

    # +2 cm along base x: position moves by the delta, orientation stays.
    _execute(sim, ctrl, [0.02, 0, 0, 0, 0, 0, 1.0])
    after_x = sim.ee_pose()
    np.testing.assert_allclose(after_x.position - start.position, [0.02, 0, 0], atol=POSITION_TOL_M)
    assert rotation_angle_rad(after_x.rotation, start.rotation) < ROTATION_TOL_RAD

    # -1.5 cm z and +1 cm y together.
    _execute(sim, ctrl, [0, 0.01, -0.015, 0, 0, 0, 1.0])
    after_yz = sim.ee_pose()
    np.testing.assert_allclose(after_yz.position - after_x.position, [0, 0.01, -0.015], atol=POSITION_TOL_M)

    # A yaw delta rotates about base z (R_next = Rz · R_prev), about the end-effector point.
    _execute(sim, ctrl, [0, 0, 0, 0, 0, 0.2, 1.0])
    after_yaw = sim.ee_pose()
    expected = rotation_from_static_xyz(0, 0, 0.2) @ after_yz.rotation
    assert rotation_angle_rad(after_yaw.rotation, expected) < ROTATION_TOL_RAD
    assert rotation_angle_rad(after_yaw.rotation, after_yz.rotation) == pytest.approx(0.2, abs=ROTATION_TOL_RAD)
    np.testing.assert_allclose(after_yaw.position, after_yz.position, atol=POSITION_TOL_M)

    # Gripper 0 closes the simulated fingers to the mapped closed position; both fingers move.
    _execute(sim, ctrl, [0, 0, 0, 0, 0, 0, 0.0])
    q = _measured(sim)
    assert q[emb.gripper.joint] == pytest.approx(emb.gripper.closed_position_m, abs=0.001)
    assert q['right_finger'] == pytest.approx(-emb.gripper.closed_position_m, abs=0.002)
