"""The MuJoCo workcell core: model, camera, seeded resets, joint commands executed by physics."""
from __future__ import annotations

import mujoco
import numpy as np
import pytest

from openvla_ros.sim import CAMERA_NAME, TrajectoryError, TrajectoryFollower, WorkcellSim
from openvla_ros.sim.trajectory import JointTrajectory

W, H = 320, 240


@pytest.fixture(scope='module')
def sim():
    s = WorkcellSim()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _fresh(sim):
    sim.reset()


def _segmentation(sim: WorkcellSim) -> np.ndarray:
    """Per-pixel geom id (-1 where no geom) of the camera image."""
    r = sim.renderer(W, H)
    r.enable_segmentation_rendering()
    try:
        r.update_scene(sim.data, camera=CAMERA_NAME)
        seg = r.render().copy()
    finally:
        r.disable_segmentation_rendering()
    return np.where(seg[:, :, 1] == int(mujoco.mjtObj.mjOBJ_GEOM), seg[:, :, 0], -1)


def test_model_has_arm_objects_and_camera(sim):
    assert sim.joint_names == ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate',
                               'left_finger', 'right_finger')
    assert sim.command_joint_names[-1] == 'left_finger' and 'right_finger' not in sim.command_joint_names
    assert set(sim.object_names) == {'obj_cube', 'obj_can', 'obj_spoon', 'obj_block'}
    assert CAMERA_NAME in sim.camera_names
    home = sim.home_positions()
    np.testing.assert_allclose(sim.joint_positions(), [home[n] for n in sim.joint_names])
    assert sim.model.vis.global_.offwidth >= 640 and sim.model.vis.global_.offheight >= 480


def test_scene_renders_and_every_object_is_visible(sim):
    rgb = sim.render(width=W, height=H)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 20, 'image is (nearly) blank'
    seg = _segmentation(sim)
    m = sim.model
    for name in sim.object_names:
        body = m.body(name).id
        geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == body]
        mask = np.isin(seg, geoms)
        assert mask.sum() > 30, f'{name} covers only {mask.sum()} pixels of the camera image'
        # The rendered colour there is the object's own: its dominant material channel dominates.
        rgba = m.mat_rgba[m.geom_matid[geoms[0]]]
        mean = rgb[mask].astype(float).mean(axis=0)
        assert np.argmax(mean) == np.argmax(rgba[:3]), f'{name}: pixel colour {mean} vs material {rgba}'
        # And the object's origin projects (pinhole camera from MuJoCo's camera pose) into its region.
        u, v = _project(sim, sim.data.xpos[body])
        ys, xs = np.nonzero(mask)
        assert xs.min() - 8 <= u <= xs.max() + 8 and ys.min() - 8 <= v <= ys.max() + 8, (name, u, v)


def _project(sim: WorkcellSim, point: np.ndarray) -> tuple[float, float]:
    cam = sim.model.camera(CAMERA_NAME).id
    pos = sim.data.cam_xpos[cam]
    rot = sim.data.cam_xmat[cam].reshape(3, 3)  # columns: camera x (right), y (up), z (backwards)
    p = rot.T @ (point - pos)
    f = 0.5 * H / np.tan(np.deg2rad(sim.model.cam_fovy[cam]) / 2)
    return W / 2 + f * p[0] / -p[2], H / 2 - f * p[1] / -p[2]


def test_seeded_resets_are_deterministic_and_differ_between_seeds(sim):
    sim.reset(seed=7)
    a = sim.render(width=W, height=H)
    poses_a = {n: sim.object_pose(n).position for n in sim.object_names}
    sim.advance(0.3)
    sim.reset(seed=7)
    b = sim.render(width=W, height=H)
    np.testing.assert_array_equal(a, b)
    sim.reset(seed=8)
    c = sim.render(width=W, height=H)
    assert np.abs(a.astype(int) - c).mean() > 0.5
    sim.reset()
    nominal = {n: sim.object_pose(n).position for n in sim.object_names}
    for n in sim.object_names:
        offset = poses_a[n][:2] - nominal[n][:2]
        assert 0 < np.abs(offset).max() <= 0.04 + 1e-9
    # A randomised arrangement is physically at rest: nothing falls or gets pushed away.
    sim.reset(seed=7)
    sim.advance(0.5)
    for n in sim.object_names:
        assert np.linalg.norm(sim.object_pose(n).position - poses_a[n]) < 0.005, n


def test_trajectory_is_interpolated_like_joint_trajectory_controller():
    f = TrajectoryFollower(['a', 'b'], [0.0, 1.0])
    f.start(JointTrajectory.build(['a'], [([1.0], 1.0), ([3.0], 2.0)], ['a', 'b']), now_s=10.0)
    np.testing.assert_allclose(f.sample(10.5), [0.5, 1.0])
    np.testing.assert_allclose(f.sample(11.5), [2.0, 1.0])
    np.testing.assert_allclose(f.sample(12.5), [3.0, 1.0])
    assert not f.active
    # A new trajectory starts from the current desired state, not from its first point.
    f.start(JointTrajectory.build(['b'], [([3.0], 1.0)], ['a', 'b']), now_s=20.0)
    np.testing.assert_allclose(f.sample(20.25), [3.0, 1.5])
    for bad in ([(['c'], [([0.0], 1.0)])],  # unknown joint
                [(['a'], [([0.0, 1.0], 1.0)])],  # size mismatch
                [(['a'], [([np.nan], 1.0)])],
                [(['a'], [([0.0], 1.0), ([1.0], 1.0)])]):  # time not increasing
        names, pts = bad[0]
        with pytest.raises(TrajectoryError):
            JointTrajectory.build(names, pts, ['a', 'b'])


def test_commanded_joints_are_reached_by_physics_and_bad_commands_change_nothing(sim):
    target = dict(waist=0.3, shoulder=-0.5, elbow=0.7, forearm_roll=0.2, wrist_angle=0.1, wrist_rotate=-0.4,
                  left_finger=0.035)
    names = list(target)
    sim.follow_trajectory(names, [([target[n] for n in names], 1.0)])
    sim.advance(0.5)
    half = sim.desired_positions()
    home = sim.home_positions()
    assert half['waist'] == pytest.approx(0.15, abs=0.01)
    with pytest.raises(TrajectoryError):
        sim.follow_trajectory(['waist', 'no_such_joint'], [([0.0, 0.0], 0.5)])
    assert sim.trajectory_active  # the rejected command did not replace the active one
    sim.advance(1.5)
    q = dict(zip(sim.joint_names, sim.joint_positions()))
    for n in names:
        assert q[n] == pytest.approx(target[n], abs=0.01), n
    assert q['right_finger'] == pytest.approx(-target['left_finger'], abs=0.002)  # the gripper mirrors
    assert home['waist'] != pytest.approx(q['waist'])
    # The end-effector pose is MuJoCo's own site pose.
    ee = sim.ee_pose()
    np.testing.assert_allclose(ee.position, sim.data.site('ee').xpos)
    np.testing.assert_allclose(ee.rotation, sim.data.site('ee').xmat.reshape(3, 3), atol=1e-9)
    np.testing.assert_allclose(ee.rotation @ ee.rotation.T, np.eye(3), atol=1e-9)  # a proper rotation


def test_reset_to_caller_joint_configuration_and_bad_start_rejected(sim):
    sim.reset(joint_positions={'waist': 0.5, 'left_finger': 0.03}, time_s=12.0)
    q = dict(zip(sim.joint_names, sim.joint_positions()))
    assert q['waist'] == 0.5 and q['right_finger'] == pytest.approx(-0.03)
    assert sim.time_s == 12.0
    sim.advance(0.5)
    assert dict(zip(sim.joint_names, sim.joint_positions()))['waist'] == pytest.approx(0.5, abs=0.005)
    with pytest.raises(ValueError):
        sim.reset(joint_positions={'elbow': 3.0})
    with pytest.raises(ValueError):
        sim.reset(joint_positions={'tail': 0.0})


def test_hold_stops_the_active_trajectory_where_it_is(sim):
    sim.follow_trajectory(['waist'], [([1.0], 1.0)])
    sim.advance(0.5)
    sim.hold()
    held = sim.desired_positions()['waist']
    assert held == pytest.approx(0.5, abs=0.01) and not sim.trajectory_active
    sim.advance(1.0)
    assert sim.desired_positions()['waist'] == held
    assert dict(zip(sim.joint_names, sim.joint_positions()))['waist'] == pytest.approx(held, abs=0.01)
