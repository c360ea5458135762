"""The MuJoCo WidowX 250s workcell: load, reset, step, command joints, read state, render.

ROS-free. The node ``openvla_ros.nodes.sim_node`` wraps it; tests and tools use it directly.

Joint commands follow joint_trajectory_controller semantics (see ``trajectory.py``). The gripper is
commanded through ``left_finger`` (finger position in metres); ``right_finger`` mirrors it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import mujoco
import numpy as np

from openvla_ros.control.geometry import Pose
from openvla_ros.paths import description_dir
from openvla_ros.sim.trajectory import JointTrajectory, TrajectoryError, TrajectoryFollower

WORKCELL_FILE = 'workcell.xml'
CAMERA_NAME = 'over_shoulder'
EE_SITE = 'ee'
HOME_KEYFRAME = 'home'
ARM_ROOT_BODY = 'base_link'
OBJECT_PREFIX = 'obj_'
# Joints driven as the mirror image of another one: name -> (source joint, factor).
MIRRORED_JOINTS = {'right_finger': ('left_finger', -1.0)}
# Seeded start-pose randomisation of the objects: planar offset and yaw, and the clearance kept
# between objects (their bounding spheres may not overlap by more than this).
OBJECT_POSITION_JITTER_M = 0.04
OBJECT_YAW_JITTER_RAD = np.pi
OBJECT_MIN_GAP_M = 0.01
_MAX_PLACEMENT_TRIES = 200


def default_model_path() -> Path:
    return description_dir() / WORKCELL_FILE


class WorkcellSim:
    """One simulated workcell (model + data + renderers). Not thread-safe: use from one thread.

    Args:
        model_path: MJCF file (default: the package's ``description/workcell.xml``).
        max_image_size: (width, height) of the largest image ``render`` will be asked for; the
            offscreen buffer is enlarged to it if the model's is smaller.
    """

    def __init__(self, model_path: str | Path | None = None, *,
                 max_image_size: tuple[int, int] = (640, 480)):
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f'workcell model not found: {self.model_path}')
        spec = mujoco.MjSpec.from_file(str(self.model_path))
        width, height = (int(v) for v in max_image_size)
        spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, width)
        spec.visual.global_.offheight = max(spec.visual.global_.offheight, height)
        self.model: mujoco.MjModel = spec.compile()
        self.data = mujoco.MjData(self.model)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

        m = self.model
        arm_bodies = self._arm_body_names(m)
        # Every 1-DoF joint of the arm, in model order (waist ... wrist_rotate, fingers).
        self.joint_names: tuple[str, ...] = tuple(
            m.joint(j).name for j in range(m.njnt)
            if int(m.jnt_type[j]) in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
            and m.body(m.jnt_bodyid[j]).name in arm_bodies)
        self._qpos_adr = np.array([m.joint(n).qposadr[0] for n in self.joint_names])
        self._dof_adr = np.array([m.joint(n).dofadr[0] for n in self.joint_names])
        self.joint_ranges = {n: tuple(m.joint(n).range) if m.joint(n).limited else (-np.inf, np.inf)
                             for n in self.joint_names}
        # Actuator driving each joint directly (position actuators named after the joints).
        self._actuator_of: dict[str, int] = {}
        for a in range(m.nu):
            if int(m.actuator_trntype[a]) == int(mujoco.mjtTrn.mjTRN_JOINT):
                name = m.joint(m.actuator_trnid[a, 0]).name
                if name in self.joint_names:
                    self._actuator_of[name] = a
        # Commandable joints: actuated, and not a mirror of another commanded joint.
        self.command_joint_names: tuple[str, ...] = tuple(
            n for n in self.joint_names if n in self._actuator_of and n not in MIRRORED_JOINTS)
        self.arm_joint_names: tuple[str, ...] = tuple(
            n for n in self.command_joint_names if int(m.jnt_type[m.joint(n).id]) == int(mujoco.mjtJoint.mjJNT_HINGE))
        self.object_names: tuple[str, ...] = tuple(
            m.body(b).name for b in range(m.nbody) if m.body(b).name.startswith(OBJECT_PREFIX))
        self._object_qpos_adr = {}
        for name in self.object_names:
            body = m.body(name)
            if body.jntnum[0] != 1 or int(m.jnt_type[body.jntadr[0]]) != int(mujoco.mjtJoint.mjJNT_FREE):
                raise ValueError(f'object body {name!r} must have exactly one free joint')
            self._object_qpos_adr[name] = int(m.jnt_qposadr[body.jntadr[0]])
        self._ee_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, EE_SITE)
        if self._ee_site < 0:
            raise ValueError(f'the model has no site {EE_SITE!r}')
        self._home_key = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, HOME_KEYFRAME)
        self.camera_names = tuple(m.camera(c).name for c in range(m.ncam))
        self._follower = TrajectoryFollower(self.command_joint_names, np.zeros(len(self.command_joint_names)))
        self.reset()

    # ---------------------------------------------------------------- model facts
    @staticmethod
    def _arm_body_names(model: mujoco.MjModel) -> set[str]:
        root = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, ARM_ROOT_BODY)
        if root < 0:
            raise ValueError(f'the model has no body {ARM_ROOT_BODY!r}')
        names, frontier = {ARM_ROOT_BODY}, [root]
        while frontier:
            parent = frontier.pop()
            for b in range(model.nbody):
                if b != parent and model.body_parentid[b] == parent:
                    names.add(model.body(b).name)
                    frontier.append(b)
        return names

    @property
    def timestep_s(self) -> float:
        return float(self.model.opt.timestep)

    @property
    def time_s(self) -> float:
        return float(self.data.time)

    def home_positions(self) -> dict[str, float]:
        """Joint positions of the ``home`` keyframe (model defaults if there is none)."""
        qpos = self.model.key_qpos[self._home_key] if self._home_key >= 0 else self.model.qpos0
        return {n: float(qpos[a]) for n, a in zip(self.joint_names, self._qpos_adr)}

    # ---------------------------------------------------------------- reset
    def reset(self, seed: int | None = None, joint_positions: Mapping[str, float] | None = None,
              time_s: float = 0.0) -> None:
        """Arm to ``joint_positions`` (default: ``home``), objects to their nominal poses or, with a
        ``seed`` >= 0, to a reproducible random arrangement; commands hold the start pose.

        ``time_s`` sets the sim time after the reset (a running simulation passes its current time
        so the clock it publishes never jumps back)."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.time = float(time_s)
        start = self.home_positions()
        if joint_positions:
            unknown = set(joint_positions) - set(start)
            if unknown:
                raise ValueError(f'unknown joint names {sorted(unknown)}; known: {list(start)}')
            start.update({k: float(v) for k, v in joint_positions.items()})
            for src_name, (mirror_src, factor) in MIRRORED_JOINTS.items():
                if mirror_src in joint_positions and src_name not in joint_positions and src_name in start:
                    start[src_name] = factor * start[mirror_src]
        for name, value in start.items():
            lo, hi = self.joint_ranges[name]
            if not lo <= value <= hi:
                raise ValueError(f'start position {value} of joint {name!r} is outside its range [{lo}, {hi}]')
        d.qpos[self._qpos_adr] = [start[n] for n in self.joint_names]
        for name, pose in self._object_start_poses(seed).items():
            adr = self._object_qpos_adr[name]
            d.qpos[adr:adr + 7] = pose
        self._follower.hold([start[n] for n in self.command_joint_names])
        self._apply_targets(self._follower.sample(d.time))
        mujoco.mj_forward(m, d)

    def _object_start_poses(self, seed: int | None) -> dict[str, np.ndarray]:
        nominal = {n: self.model.qpos0[a:a + 7].copy() for n, a in self._object_qpos_adr.items()}
        if seed is None or seed < 0:
            return nominal
        rng = np.random.default_rng(seed)
        radius = {n: self.planar_radius(n) for n in self.object_names}
        placed: dict[str, np.ndarray] = {}
        for name in self.object_names:
            for _ in range(_MAX_PLACEMENT_TRIES):
                pose = nominal[name].copy()
                pose[:2] += rng.uniform(-OBJECT_POSITION_JITTER_M, OBJECT_POSITION_JITTER_M, 2)
                yaw = rng.uniform(-OBJECT_YAW_JITTER_RAD, OBJECT_YAW_JITTER_RAD)
                q_yaw = np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
                quat = np.zeros(4)
                mujoco.mju_mulQuat(quat, q_yaw, pose[3:7])
                pose[3:7] = quat
                if all(np.linalg.norm(pose[:2] - other[:2]) >= radius[name] + radius[o] + OBJECT_MIN_GAP_M
                       for o, other in placed.items()):
                    break
            placed[name] = pose
        return placed

    def planar_radius(self, body_name: str) -> float:
        """Radius of a circle around the body origin that contains the footprint of its geoms."""
        m = self.model
        return max(float(np.linalg.norm(m.geom_pos[g][:2])) + self._geom_extent(g)[0]
                   for g in self._body_geoms(body_name))

    def top_offset_m(self, body_name: str) -> float:
        """Height of the body's highest geom point above the body origin, for an upright body."""
        m = self.model
        return max(float(m.geom_pos[g][2]) + self._geom_extent(g)[1] for g in self._body_geoms(body_name))

    def _body_geoms(self, body_name: str) -> list[int]:
        b = self.model.body(body_name).id
        return [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] == b]

    def _geom_extent(self, g: int) -> tuple[float, float]:
        """(horizontal radius, half height) of geom ``g`` about its own origin, upright (its axis
        vertical); the bounding sphere radius for both where the shape has no closed form."""
        m = self.model
        size, kind, t = m.geom_size[g], int(m.geom_type[g]), mujoco.mjtGeom
        extent = {int(t.mjGEOM_BOX): (np.hypot(size[0], size[1]), size[2]),
                  int(t.mjGEOM_ELLIPSOID): (max(size[0], size[1]), size[2]),
                  int(t.mjGEOM_CYLINDER): (size[0], size[1]),
                  int(t.mjGEOM_SPHERE): (size[0], size[0]),
                  int(t.mjGEOM_CAPSULE): (size[0], size[0] + size[1])}.get(kind, (m.geom_rbound[g],) * 2)
        return float(extent[0]), float(extent[1])

    def place_object(self, name: str, x: float, y: float, yaw_rad: float) -> None:
        """Put object ``name`` upright at planar position (x, y), turned by ``yaw_rad`` about the
        vertical from its body axes (the nominal yaw is replaced), at its nominal height."""
        adr = self._object_qpos_adr[name]
        z = self.model.qpos0[adr + 2]
        self.data.qpos[adr:adr + 7] = [x, y, z, np.cos(yaw_rad / 2), 0.0, 0.0, np.sin(yaw_rad / 2)]
        self.data.qvel[self.model.jnt_dofadr[self.model.body(name).jntadr[0]]:][:6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def move_fixture(self, name: str, x: float, y: float) -> None:
        """Move a body without joints (the towel) to planar position (x, y); it stays there
        through later resets until moved again (it is part of the model, not of the state)."""
        body = self.model.body(name)
        if body.jntnum[0] != 0:
            raise ValueError(f'{name!r} has joints: it is not a fixture')
        self.model.body_pos[body.id][:2] = (x, y)
        mujoco.mj_forward(self.model, self.data)

    def site_position(self, name: str) -> np.ndarray:
        return self.data.site(name).xpos.copy()

    def body_position(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    # ---------------------------------------------------------------- commands
    def set_joint_targets(self, targets: Mapping[str, float]) -> None:
        """Step the named joints' position targets to ``targets`` now (other joints keep theirs)."""
        names = list(targets)
        self.follow_trajectory(names, [([targets[n] for n in names], 0.0)])

    def follow_trajectory(self, joint_names: Sequence[str],
                          points: Sequence[tuple[Sequence[float], float]]) -> None:
        """Follow (positions, time_from_start_s) points from now, replacing the active trajectory.

        Raises ``TrajectoryError`` (and keeps the current command) on unknown joints or bad points."""
        names, pts = self._resolve_mirrors(list(joint_names), [(list(p), t) for p, t in points])
        traj = JointTrajectory.build(names, pts, self.command_joint_names)
        self._follower.start(traj, self.time_s)

    def _resolve_mirrors(self, names: list[str], points: list) -> tuple[list[str], list]:
        for mirrored, (source, factor) in MIRRORED_JOINTS.items():
            if mirrored not in names:
                continue
            i = names.index(mirrored)
            if source in names or source not in self.command_joint_names:
                # The source joint is commanded already: the mirror follows it.
                keep = [k for k in range(len(names)) if k != i]
                names = [names[k] for k in keep]
                points = [([p[k] for k in keep if k < len(p)], t) for p, t in points]
            else:
                names[i] = source
                points = [([factor * v if k == i else v for k, v in enumerate(p)], t) for p, t in points]
        return names, points

    def hold(self) -> None:
        """Stop the active trajectory where its targets are now (an empty trajectory message)."""
        self._follower.sample(self.time_s)
        self._follower.hold()

    @property
    def trajectory_active(self) -> bool:
        return self._follower.active

    def desired_positions(self) -> dict[str, float]:
        return self._follower.desired()

    def _apply_targets(self, desired: np.ndarray) -> None:
        ctrl = self.data.ctrl
        for name, value in zip(self.command_joint_names, desired):
            ctrl[self._actuator_of[name]] = value
        for mirrored, (source, factor) in MIRRORED_JOINTS.items():
            if mirrored in self._actuator_of and source in self._actuator_of:
                ctrl[self._actuator_of[mirrored]] = factor * ctrl[self._actuator_of[source]]

    # ---------------------------------------------------------------- stepping
    def step(self, n_steps: int = 1) -> None:
        """Advance physics by ``n_steps`` timesteps, updating the joint targets before each."""
        for _ in range(int(n_steps)):
            self._apply_targets(self._follower.sample(self.data.time))
            mujoco.mj_step(self.model, self.data)

    def advance_to(self, time_s: float, max_steps: int | None = None) -> int:
        """Step to the whole physics step nearest ``time_s`` (at most ``max_steps`` steps); returns
        the steps taken. Afterwards ``time_s - timestep/2 <= time < time_s + timestep/2`` holds."""
        n = int(np.floor((time_s - self.data.time) / self.timestep_s + 0.5))
        if max_steps is not None:
            n = min(n, max_steps)
        n = max(n, 0)
        self.step(n)
        return n

    def advance(self, duration_s: float) -> int:
        return self.advance_to(self.data.time + duration_s)

    # ---------------------------------------------------------------- state
    def joint_positions(self) -> np.ndarray:
        """Positions of ``joint_names`` (rad for hinges, m for the fingers)."""
        return self.data.qpos[self._qpos_adr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._dof_adr].copy()

    def joint_efforts(self) -> np.ndarray:
        """Actuator forces/torques on ``joint_names`` (0 where a joint has no actuator)."""
        return np.array([self.data.actuator_force[self._actuator_of[n]] if n in self._actuator_of else 0.0
                         for n in self.joint_names])

    def ee_pose(self) -> Pose:
        """Pose of site ``ee`` (the gripper frame) in the world = arm base frame."""
        return Pose(self.data.site_xpos[self._ee_site], self.data.site_xmat[self._ee_site])

    def object_pose(self, name: str) -> Pose:
        adr = self._object_qpos_adr[name]
        q = self.data.qpos[adr:adr + 7]
        rotation = np.zeros(9)
        mujoco.mju_quat2Mat(rotation, q[3:7])  # free-joint qpos holds the quaternion as w, x, y, z
        return Pose(q[:3], rotation)

    # ---------------------------------------------------------------- rendering
    def renderer(self, width: int, height: int) -> mujoco.Renderer:
        key = (int(height), int(width))
        if key not in self._renderers:
            _load_triton_before_gl()
            self._renderers[key] = mujoco.Renderer(self.model, height=key[0], width=key[1])
        return self._renderers[key]

    def render(self, camera: str = CAMERA_NAME, width: int = 640, height: int = 480,
               scene_option: mujoco.MjvOption | None = None) -> np.ndarray:
        """Render ``camera`` to an H x W x 3 uint8 RGB image (a new array)."""
        if camera not in self.camera_names:
            raise ValueError(f'unknown camera {camera!r}; the model has {list(self.camera_names)}')
        r = self.renderer(width, height)
        if scene_option is None:
            r.update_scene(self.data, camera=camera)
        else:
            r.update_scene(self.data, camera=camera, scene_option=scene_option)
        return r.render().copy()

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def __enter__(self) -> 'WorkcellSim':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def embodiment_start_positions(sim: WorkcellSim, embodiment) -> dict[str, float]:
    """Joint positions that put the arm at ``embodiment``'s start pose (its IK from ``home``),
    gripper open: where sim_node and the evaluation start an episode."""
    from openvla_ros.control.kinematics import ArmKinematics

    home = sim.home_positions()
    ik = ArmKinematics(embodiment).solve(embodiment.start_pose, [home[j] for j in embodiment.arm_joints])
    if not ik.success:
        raise ValueError(f'start pose of embodiment {embodiment.name!r} is not reachable: {ik.reason}')
    start = dict(zip(embodiment.arm_joints, ik.joint_positions.tolist()))
    if embodiment.gripper is not None:
        start[embodiment.gripper.joint] = embodiment.gripper.open_position_m
    return start


__all__ = ['WorkcellSim', 'embodiment_start_positions', 'Pose', 'TrajectoryError', 'default_model_path', 'CAMERA_NAME', 'EE_SITE',
           'HOME_KEYFRAME', 'MIRRORED_JOINTS']


def _load_triton_before_gl() -> None:
    """Mesa's software GL (llvmpipe, used by MUJOCO_GL=egl on CPU) and triton (loaded by torch)
    each bring their own LLVM; when triton's is loaded second the process segfaults. Loading
    triton first, when it is installed, makes rendering and a later torch import coexist in one
    process (the tests, a user's notebook)."""
    try:
        import triton._C.libtriton  # noqa: F401
    except ImportError:
        pass

