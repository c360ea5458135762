"""Forward and inverse kinematics of the arm, on the same MJCF model the simulator runs.

Inverse kinematics uses **mink** (differential IK on MuJoCo models: each iteration solves a small
QP for the joint step that reduces the SE(3) error of the end-effector site, with the joint
limits as hard QP constraints). Why mink:
- it works on the MuJoCo model itself, so the controller, the simulator and the FK checks share
  one kinematic description (no URDF/MJCF drift), and any arm with an MJCF works unchanged;
- joint limits are constraints of every step, not a clamp applied after the fact, so a
  solution is either inside the limits or reported as not converged;
- it is maintained, pip-installable (no ROS build), and fast enough on CPU for 5 Hz control
  (tens of iterations of a 6x6 QP per action).
The solver starts from the measured joints (the IK seed), iterates to convergence and then checks
the result independently: the forward kinematics of the solution must be within
``ik_position_tolerance_m`` / ``ik_orientation_tolerance_rad`` of the target and inside the
(possibly tightened) joint limits, otherwise the action is refused (``ik_failed`` /
``joint_limit``). A 6-DoF arm such as the WidowX 250s reaches a full 6-D pose only in part of
its workspace; an unreachable orientation ends as a least-squares compromise whose residual is
above tolerance, i.e. a clean refusal, never a wrong command.
"""
from __future__ import annotations

from dataclasses import dataclass

import mink
import mujoco
import numpy as np

from openvla_ros.control.embodiment import Embodiment
from openvla_ros.control.geometry import Pose

IK_FAILED = 'ik_failed'
JOINT_LIMIT = 'joint_limit'


@dataclass(frozen=True)
class IkResult:
    success: bool
    joint_positions: np.ndarray          # arm joints, in Embodiment.arm_joints order
    position_error_m: float
    orientation_error_rad: float
    iterations: int
    reason: str = ''                     # '' on success, else IK_FAILED or JOINT_LIMIT with details


class ArmKinematics:
    """FK/IK for ``embodiment.arm_joints`` up to ``embodiment.end_effector_site``.

    Joints of the model that are not arm joints (fingers, objects of a workcell) stay where they
    are. Not thread-safe: one instance per thread."""

    def __init__(self, embodiment: Embodiment):
        self.embodiment = embodiment
        self.model = mujoco.MjModel.from_xml_path(str(embodiment.model_path))
        try:
            self._site_id = self.model.site(embodiment.end_effector_site).id
        except KeyError:
            raise ValueError(f'model {embodiment.model_file} has no site {embodiment.end_effector_site!r}') from None
        self._qpos_adr = []
        self._dof_adr = []
        lower, upper = [], []
        for name in embodiment.arm_joints:
            try:
                j = self.model.joint(name)
            except KeyError:
                raise ValueError(f'model {embodiment.model_file} has no joint {name!r}') from None
            if int(self.model.jnt_type[j.id]) not in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)):
                raise ValueError(f'joint {name!r} is not a hinge or slide joint')
            lo, hi = (self.model.jnt_range[j.id] if self.model.jnt_limited[j.id] else (-np.inf, np.inf))
            if name in embodiment.joint_limits_rad:
                t_lo, t_hi = embodiment.joint_limits_rad[name]
                if t_lo < lo or t_hi > hi:
                    raise ValueError(f'joint_limits_rad.{name} [{t_lo}, {t_hi}] must lie inside the model '
                                     f'range [{lo}, {hi}] (the YAML may only tighten limits)')
                lo, hi = t_lo, t_hi
                # the QP constraints then respect the tightened range too
                self.model.jnt_range[j.id] = (lo, hi)
                self.model.jnt_limited[j.id] = 1
            lower.append(lo)
            upper.append(hi)
            self._qpos_adr.append(int(self.model.jnt_qposadr[j.id]))
            self._dof_adr.append(int(self.model.jnt_dofadr[j.id]))
        self.lower_limits = np.array(lower, dtype=float)
        self.upper_limits = np.array(upper, dtype=float)
        self._data = mujoco.MjData(self.model)
        self._configuration = mink.Configuration(self.model)
        # Levenberg-Marquardt damping (scaled by the squared error inside mink) keeps the first,
        # large steps of a solve from overshooting into a far-away branch; near the solution it
        # vanishes and the iteration converges like Gauss-Newton.
        self._task = mink.FrameTask(embodiment.end_effector_site, 'site', position_cost=1.0,
                                    orientation_cost=1.0, lm_damping=1.0)
        self._limits = [mink.ConfigurationLimit(self.model)]
        # Non-arm joints (fingers) sit at their model default, moved inside their range so the
        # limit constraints are feasible; their Jacobian columns are zero, so the damped QP
        # leaves them where they are.
        self._base_qpos = self.model.qpos0.copy()
        for j in range(self.model.njnt):
            if self.model.jnt_limited[j] and int(self.model.jnt_type[j]) in (
                    int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)):
                adr = self.model.jnt_qposadr[j]
                self._base_qpos[adr] = np.clip(self._base_qpos[adr], *self.model.jnt_range[j])

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.embodiment.arm_joints

    def _qpos(self, arm_q: np.ndarray, base_qpos: np.ndarray | None = None) -> np.ndarray:
        q = (self._base_qpos if base_qpos is None else base_qpos).copy()
        q[self._qpos_adr] = arm_q
        return q

    def forward(self, arm_q) -> Pose:
        """End-effector pose in the base frame for the arm joint positions (rad / m)."""
        self._data.qpos[:] = self._qpos(np.asarray(arm_q, dtype=float))
        mujoco.mj_kinematics(self.model, self._data)
        return Pose(self._data.site_xpos[self._site_id], self._data.site_xmat[self._site_id].reshape(3, 3))

    def within_limits(self, arm_q, margin: float = 1e-6) -> bool:
        q = np.asarray(arm_q, dtype=float)
        return bool(np.all(q >= self.lower_limits - margin) and np.all(q <= self.upper_limits + margin))

    def solve(self, target: Pose, seed_q) -> IkResult:
        """Joint positions that put the end-effector site at ``target``, starting from ``seed_q``."""
        e = self.embodiment
        seed = np.clip(np.asarray(seed_q, dtype=float), self.lower_limits, self.upper_limits)
        self._configuration.update(self._qpos(seed))
        self._task.set_target(mink.SE3.from_rotation_and_translation(
            mink.SO3.from_matrix(target.rotation), target.position))
        iterations = 0
        pos_err = rot_err = np.inf
        solver_note = ''
        for iterations in range(1, e.ik_max_iterations + 1):
            try:
                vel = mink.solve_ik(self._configuration, [self._task], 1.0, 'daqp', damping=1e-4,
                                    limits=self._limits)
            except mink.NoSolutionFound as exc:
                # A failed QP is a failed solve, not a controller crash: the check below decides
                # on the configuration reached so far.
                solver_note = f' (QP solver found no step: {exc})'
                break
            self._configuration.integrate_inplace(vel, 1.0)
            err = self._task.compute_error(self._configuration)
            pos_err, rot_err = float(np.linalg.norm(err[:3])), float(np.linalg.norm(err[3:]))
            if pos_err < 0.1 * e.ik_position_tolerance_m and rot_err < 0.1 * e.ik_orientation_tolerance_rad:
                break
            if np.linalg.norm(vel) < 1e-9:  # stuck at a limit or singularity: no further progress
                break
        q = self._configuration.q[self._qpos_adr].copy()
        # independent check of the result: FK of the solution against the target
        reached = self.forward(q)
        pos_err = reached.position_error_m(target)
        rot_err = reached.rotation_error_rad(target)
        if not self.within_limits(q):
            return IkResult(False, q, pos_err, rot_err, iterations, f'{JOINT_LIMIT}: solution outside the joint limits')
        # written so that a NaN residual fails too
        if not (pos_err <= e.ik_position_tolerance_m and rot_err <= e.ik_orientation_tolerance_rad):
            return IkResult(False, q, pos_err, rot_err, iterations,
                            f'{IK_FAILED}: residual {pos_err * 1000:.1f} mm / {rot_err:.3f} rad '
                            f'> {e.ik_position_tolerance_m * 1000:.1f} mm / {e.ik_orientation_tolerance_rad:.3f} rad'
                            + solver_note)
        return IkResult(True, q, pos_err, rot_err, iterations)
