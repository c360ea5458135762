"""The safety logic between a policy's actions and the arm: ROS-free, clock passed in.

:class:`SafetyController` takes actions, joint measurements, enable / e-stop events and the
current time, and answers each with either a :class:`Command` (joint targets + end-effector
target + servo twist) or a :class:`Refusal`. Each answer carries a reason string and the list of
limits that changed it. The safe state is *hold*: keep the measured joints and the last gripper
command, never extrapolate the last motion.

Rules, in the order they are checked for an action:
1. e-stop latched → refused until :meth:`reset_estop` (which needs the e-stop input released);
2. not enabled → refused (the controller starts disabled unless ``start_enabled``);
3. no joint measurement yet → refused (state ERROR); joint states older than
   ``max_joint_state_age_s`` → refused (the IK seed and the hold pose would be stale);
4. wrong length / NaN / inf → refused, nothing of the action is used;
5. image stamp older than ``max_action_age_s`` (or that far in the future) → refused as stale;
6. blocking mode with a goal still pending → dropped, the newest is kept for when the goal is
   reached (or ``blocking_timeout_s`` passes);
7. Bridge delta on the previous commanded target (re-seeded from the measured pose after
   enable, hold, e-stop reset or ``reset_target``), per-step and workspace clips;
8. IK from the measured joints; failure or a joint limit → refused, the target is not advanced;
9. trajectory duration stretched so no joint exceeds ``max_joint_speed_rad_s``.
:meth:`tick` runs the watchdog (no accepted action for ``watchdog_timeout_s`` → one hold command,
none while the joint states are stale: a hold at an old measured pose could itself move the arm)
and the blocking-mode bookkeeping. :meth:`update_limits` replaces limits while running; every rule
reads them when it runs, so a change applies from the next action or tick on.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from openvla_ros.control.delta import InvalidActionError, apply_bridge_delta, validate_action
from openvla_ros.control.embodiment import Embodiment
from openvla_ros.control.geometry import Pose, rotation_vector
from openvla_ros.control.kinematics import ArmKinematics

JOINT_SPEED_LIMIT = 'joint_speed_limit'


class Mode(enum.Enum):
    """Same names and order as the ControllerStatus STATE_* constants."""
    DISABLED = 0
    HOLDING = 1
    TRACKING = 2
    ESTOP = 3
    ERROR = 4


@dataclass(frozen=True)
class ActionInput:
    values: tuple                # [dx, dy, dz, droll, dpitch, dyaw, gripper] (any sequence)
    stamp_s: float               # stamp of the camera image the action was computed from


@dataclass(frozen=True)
class Command:
    target: Pose                                  # commanded end-effector pose (base frame)
    gripper: float                                # 1 = open, 0 = closed
    gripper_position_m: float | None              # finger joint position from the mapping
    joint_positions: np.ndarray | None            # arm joints (None in servo-only mode)
    duration_s: float                             # time_from_start of the trajectory point
    linear_velocity_m_s: np.ndarray               # servo twist (zero when holding)
    angular_velocity_rad_s: np.ndarray
    hold: bool = False
    reason: str = ''                              # why it was modified / why it is a hold
    active_limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    reason: str
    active_limits: tuple[str, ...] = ()


@dataclass
class Counters:
    received: int = 0
    executed: int = 0
    rejected: int = 0
    dropped_while_busy: int = 0
    ik_failures: int = 0


class SafetyController:
    def __init__(self, embodiment: Embodiment, kinematics: ArmKinematics | None = None):
        self.embodiment = embodiment
        self.kinematics = kinematics or ArmKinematics(embodiment)
        self.enabled = embodiment.start_enabled
        self.estop_latched = False
        self.estop_input = False
        self.counters = Counters()
        self.last_event = ''
        self.active_limits: tuple[str, ...] = ()
        self.target: Pose | None = None
        self.target_gripper: float | None = None
        self.last_action_stamp_s: float | None = None
        self._joints: dict[str, float] = {}
        self._joints_time_s: float | None = None
        self._last_accepted_s: float | None = None
        self._needs_reseed = True
        self._watchdog_tripped = False
        self._goal_deadline_s: float | None = None
        self._pending: ActionInput | None = None

    # ---------------------------------------------------------------- inputs
    def update_joints(self, positions: dict, now_s: float | None = None) -> None:
        """Merge measured joint positions by name (a JointState may carry a subset), received at
        ``now_s`` (the clock of :meth:`on_action` / :meth:`tick`; None: freshness not tracked)."""
        for name, value in positions.items():
            if math.isfinite(value):  # per JointState message: math, not numpy, on scalars
                self._joints[name] = float(value)
        if now_s is not None:
            self._joints_time_s = now_s

    def joint_states_stale(self, now_s: float) -> str:
        """Why the joint measurement is too old to act on; '' when fresh (or not tracked)."""
        if self._joints_time_s is None:
            return ''
        age = now_s - self._joints_time_s
        limit = self.embodiment.max_joint_state_age_s
        return f'joint states stale: age {age:.2f} s > {limit:.2f} s' if age > limit else ''

    def measured_q(self) -> np.ndarray | None:
        try:
            return np.array([self._joints[j] for j in self.embodiment.arm_joints], dtype=float)
        except KeyError:
            return None

    def measured_pose(self) -> Pose | None:
        q = self.measured_q()
        return None if q is None else self.kinematics.forward(q)

    def _measured_gripper(self) -> float:
        g = self.embodiment.gripper
        if g is None or g.joint not in self._joints:
            return 1.0
        return g.command_from_position_m(self._joints[g.joint])

    @property
    def mode(self) -> Mode:
        if self.estop_latched:
            return Mode.ESTOP
        if not self.enabled:
            return Mode.DISABLED
        if self.measured_q() is None:
            return Mode.ERROR
        if self._last_accepted_s is None or self._watchdog_tripped or self._needs_reseed:
            return Mode.HOLDING
        return Mode.TRACKING

    # ---------------------------------------------------------------- events
    def _event(self, reason: str, limits: tuple[str, ...] = ()) -> None:
        self.last_event = reason
        self.active_limits = tuple(limits)

    def _enter_hold(self, reason: str, now_s: float | None = None) -> Command | None:
        """Hold the measured pose; the next action starts from the measured pose again.
        With ``now_s`` and stale joint states, no hold command is produced (only the state)."""
        self._needs_reseed = True
        self._goal_deadline_s = None
        self._pending = None
        stale = self.joint_states_stale(now_s) if now_s is not None else ''
        if stale:
            self._event(f'{reason}; {stale}: no hold command sent')
            return None
        self._event(reason)
        return self.hold_command(reason)

    def hold_command(self, reason: str) -> Command | None:
        q = self.measured_q()
        if q is None:
            return None
        pose = self.kinematics.forward(q)
        gripper = self.target_gripper if self.target_gripper is not None else self._measured_gripper()
        g = self.embodiment.gripper
        return Command(target=pose, gripper=gripper,
                       gripper_position_m=None if g is None else g.position_m(gripper),
                       joint_positions=q if self.embodiment.use_ik else None,
                       duration_s=self.embodiment.control_period_s,
                       linear_velocity_m_s=np.zeros(3), angular_velocity_rad_s=np.zeros(3),
                       hold=True, reason=reason)

    def set_enabled(self, enabled: bool) -> tuple[bool, str]:
        if enabled and self.estop_latched:
            return False, 'e-stop latched: reset it first'
        self.enabled = bool(enabled)
        self._enter_hold('enabled' if enabled else 'disabled')
        return True, 'enabled' if enabled else 'disabled'

    def set_estop(self, active: bool) -> Command | None:
        """E-stop input; a True latches until :meth:`reset_estop`. Returns a hold command on latch."""
        self.estop_input = bool(active)
        if active and not self.estop_latched:
            self.estop_latched = True
            return self._enter_hold('estop')
        return None

    def reset_estop(self) -> tuple[bool, str]:
        if self.estop_input:
            return False, 'e-stop input is still active: release it first'
        was = self.estop_latched
        self.estop_latched = False
        self._enter_hold('estop reset')
        return True, 'e-stop reset' if was else 'e-stop was not latched'

    def reset_target(self) -> tuple[bool, str]:
        pose = self.measured_pose()
        if pose is None:
            return False, 'no joint states yet'
        self.target = pose
        self._needs_reseed = True
        self._event('target reset to the measured pose')
        return True, self.last_event

    def update_limits(self, **changes) -> None:
        """Replace embodiment limits (e.g. ``max_translation_step_m``) from the next action on.

        The whole embodiment is validated again (ranges, workspace low < high per axis); on an
        :class:`EmbodimentConfigError` nothing changes. Kinematic keys must not be passed: the
        kinematic model was built from the original embodiment."""
        self.embodiment = self.embodiment.with_overrides(**changes)
        self._event('limits changed: ' + ', '.join(f'{k}={v}' for k, v in changes.items()))

    # ---------------------------------------------------------------- actions
    def _refuse(self, reason: str, limits: tuple[str, ...] = ()) -> Refusal:
        self.counters.rejected += 1
        self._event(reason, limits)
        return Refusal(reason, tuple(limits))

    def on_action(self, action: ActionInput, now_s: float) -> Command | Refusal:
        self.counters.received += 1
        e = self.embodiment
        if self.estop_latched:
            return self._refuse('estop latched')
        if not self.enabled:
            return self._refuse('disabled')
        if self.measured_q() is None:
            return self._refuse('no joint states')
        stale_joints = self.joint_states_stale(now_s)
        if stale_joints:
            return self._refuse(stale_joints)
        try:
            validate_action(action.values)
        except InvalidActionError as exc:
            return self._refuse(f'invalid action: {exc}')
        if not np.isfinite(action.stamp_s):
            return self._refuse('invalid action: stamp is not finite')
        stale = self._stale_reason(action, now_s)
        if stale:
            return self._refuse(stale)
        if e.blocking and self._goal_deadline_s is not None:
            if self._pending is not None:
                self.counters.dropped_while_busy += 1
            self._pending = action
            return Refusal('blocking: waiting for the goal; action kept as the newest pending')
        return self._execute(action, now_s)

    def _stale_reason(self, action: ActionInput, now_s: float) -> str:
        """Why the action's image stamp is too old (or too far in the future); '' when fresh."""
        limit = self.embodiment.max_action_age_s
        age = now_s - action.stamp_s
        if age > limit:
            return f'stale action: age {age:.2f} s > {limit:.2f} s'
        if age < -limit:
            return f'stale action: stamp {-age:.2f} s in the future'
        return ''

    def _execute(self, action: ActionInput, now_s: float) -> Command | Refusal:
        e = self.embodiment
        q_meas = self.measured_q()
        measured = self.kinematics.forward(q_meas)
        if self._needs_reseed or self.target is None:
            self.target = measured
            self.target_gripper = self._measured_gripper() if self.target_gripper is None else self.target_gripper
        previous = self.target
        pivot = measured.position if e.rotation_pivot == 'measured' else None
        try:
            result = apply_bridge_delta(previous, action.values, e.step_limits, pivot_m=pivot)
        except InvalidActionError as exc:
            return self._refuse(f'invalid action: {exc}')
        limits = list(result.active_limits)
        joints = None
        duration = e.control_period_s
        if e.use_ik:
            ik = self.kinematics.solve(result.target, q_meas)
            if not ik.success:
                self.counters.ik_failures += 1
                return self._refuse(ik.reason, tuple(limits))
            joints = ik.joint_positions
            slowest = float(np.max(np.abs(joints - q_meas))) / e.max_joint_speed_rad_s
            if slowest > duration:
                duration = slowest
                limits.append(JOINT_SPEED_LIMIT)
        self.target = result.target
        self.target_gripper = result.gripper
        self.last_action_stamp_s = action.stamp_s
        self._last_accepted_s = now_s
        self._needs_reseed = False
        self._watchdog_tripped = False
        self.counters.executed += 1
        if e.blocking:
            self._goal_deadline_s = now_s + duration + e.blocking_timeout_s
        reason = ', '.join(limits)
        self._event(reason, tuple(limits))
        g = e.gripper
        return Command(target=result.target, gripper=result.gripper,
                       gripper_position_m=None if g is None else g.position_m(result.gripper),
                       joint_positions=joints, duration_s=duration,
                       linear_velocity_m_s=(result.target.position - previous.position) / e.control_period_s,
                       angular_velocity_rad_s=rotation_vector(result.target.rotation @ previous.rotation.T)
                       / e.control_period_s,
                       reason=reason, active_limits=tuple(limits))

    def goal_reached(self) -> bool:
        pose = self.measured_pose()
        if pose is None or self.target is None:
            return False
        e = self.embodiment
        return (pose.position_error_m(self.target) <= e.goal_position_tolerance_m
                and pose.rotation_error_rad(self.target) <= e.goal_orientation_tolerance_rad)

    def tick(self, now_s: float) -> Command | Refusal | None:
        """Watchdog and blocking-mode bookkeeping; call periodically and on joint updates."""
        e = self.embodiment
        if self.mode is Mode.TRACKING and now_s - self._last_accepted_s > e.watchdog_timeout_s:
            self._watchdog_tripped = True
            return self._enter_hold(f'watchdog: no fresh action for {now_s - self._last_accepted_s:.2f} s '
                                    f'> {e.watchdog_timeout_s:.2f} s', now_s)
        if self._goal_deadline_s is not None:
            reached = self.goal_reached()
            if reached or now_s >= self._goal_deadline_s:
                self._goal_deadline_s = None
                if not reached:
                    self._event('blocking: goal not reached before the timeout')
                pending, self._pending = self._pending, None
                if pending is not None:
                    # checked again: the limits may have changed and time has passed while blocking
                    stale = self.joint_states_stale(now_s) or self._stale_reason(pending, now_s)
                    if stale:
                        return self._refuse(f'{stale} (pending while blocking)')
                    return self._execute(pending, now_s)
        return None
