"""The safety logic between a policy's actions and the arm: ROS-free, clock passed in.

:class:`SafetyController` takes actions, joint measurements, enable / e-stop events and the
current time, and answers each with either a :class:`Command` (joint targets + end-effector
target + servo twist) or a :class:`Refusal`. Each answer carries a reason string and the list of
limits that changed it. The safe state is *hold*: keep the measured joints and the last gripper
command, never extrapolate the last motion.

Two clocks are passed in: ``now_s`` (the node clock, sim time under ``use_sim_time``: all
control logic runs on it, so a lockstep simulation sees the same behaviour at any speed) and
``steady_s`` (a monotonic clock: every freshness bound and the watchdog also hold on it, so when
a simulator dies together with its ``/clock`` nothing moves). ``steady_s=None`` skips the steady
bound (offline use with one clock).

Rules, in the order they are checked for an action:
1. e-stop latched → refused until :meth:`reset_estop` (which needs the e-stop input released);
   the latch is an :class:`EStopLatch` owned by the caller, so rebuilding the controller keeps it;
2. not enabled → refused (the controller starts disabled unless ``start_enabled``);
3. every arm joint needs its own finite measurement, younger than ``max_joint_state_age_s`` on
   both clocks; one missing or stale joint → refused (the IK seed and the hold pose would be
   stale), and no hold is commanded either;
4. wrong length / NaN / inf, or a ``frame_id`` that is not the embodiment's ``base_frame_id``
   → refused, nothing of the action is used;
5. image stamp older than ``max_action_age_s`` (or that far in the future) → refused as stale;
6. at most one action is executed per ``control_period_s`` of the node clock, whatever the input
   rate: an action accepted sooner is kept as the newest pending one (replacing, never adding
   to, an earlier pending one) and executed by :meth:`tick` when the period has passed; in
   blocking mode the pending action also waits for the goal (or ``blocking_timeout_s``); an
   action also waits while the arm joints' newest measurement is stamped before the action's
   image (the policy saw a newer arm than the controller has: the IK seed and the speed stretch
   would come from an older state), until the measurement catches up or rule 5 refuses it;
   stamps are compared only when both are set and less than ``max_joint_state_age_s`` apart
   (farther apart means another time base, which the receive-time bounds cover);
7. Bridge delta on the previous commanded target (re-seeded from the measured pose after
   enable, hold, e-stop reset or ``reset_target``), per-step and workspace clips;
8. IK from the measured joints; failure or a joint limit → refused, the target is not advanced;
9. trajectory duration stretched so no joint exceeds ``max_joint_speed_rad_s`` measured from
   the latest joint measurement; holds go through the same stretch.
Hence the commanded target moves at most one per-step clip per control period, at any rate.
:meth:`tick` runs the watchdog (no accepted action for ``watchdog_timeout_s`` on either clock →
one hold command, none while the joint states are stale: a hold at an old measured pose could
itself move the arm) and releases the pending action. :meth:`update_limits` replaces limits
while running; every rule reads them when it runs, so a change applies from the next action or
tick on.
"""
from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openvla_ros.action_layout import ROTATION_SLICE
from openvla_ros.control.delta import InvalidActionError, apply_bridge_delta, validate_action
from openvla_ros.control.embodiment import Embodiment
from openvla_ros.control.geometry import Pose, delta_to_twist
from openvla_ros.control.kinematics import ArmKinematics

JOINT_SPEED_LIMIT = 'joint_speed_limit'
# Float seconds of a ROS time near 1.7e9 s resolve to ~0.2 us: a period measured between two
# stamps exactly one period apart may come out that much short.
PERIOD_TOLERANCE_S = 1e-6


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
    frame_id: str | None = None  # frame of the delta; None: not checked (offline callers)


class EStopLatch:
    """The e-stop state, kept apart from the controller so no rebuild can clear it.

    With ``path``, a latch is also written to that file and the file removed on reset: a node
    restarted after an e-stop starts latched."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self.input = False
        self.latched = bool(self.path and self.path.exists())
        self.restored = self.latched     # latched from the file at start-up

    def latch(self, reason: str = 'estop') -> None:
        self.latched = True
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(reason + '\n')

    def clear(self) -> None:
        self.latched = self.restored = False
        if self.path is not None:
            self.path.unlink(missing_ok=True)


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
    pending: bool = False        # not refused: kept as the newest pending action (rate / blocking)


@dataclass
class Counters:
    received: int = 0
    executed: int = 0
    rejected: int = 0
    dropped_while_busy: int = 0      # pending actions replaced by a newer one (rate or blocking)
    ik_failures: int = 0


class SafetyController:
    def __init__(self, embodiment: Embodiment, kinematics: ArmKinematics | None = None,
                 estop: EStopLatch | None = None):
        self.embodiment = embodiment
        self.kinematics = kinematics or ArmKinematics(embodiment)
        self.enabled = embodiment.start_enabled
        self.estop = estop if estop is not None else EStopLatch()
        self.counters = Counters()
        self.last_event = ''
        self.active_limits: tuple[str, ...] = ()
        self.target: Pose | None = None
        self.target_gripper: float | None = None
        self.last_action_stamp_s: float | None = None
        # name -> its newest finite measurement: (position, received on the node clock, received on
        # the steady clock, header stamp), s
        self._joints: dict[str, tuple[float, float | None, float | None, float | None]] = {}
        self._last_accepted_s: float | None = None
        self._last_accepted_steady_s: float | None = None
        self._last_executed_s: float | None = None
        self._needs_reseed = True
        self._watchdog_tripped = False
        self._goal_deadline_s: float | None = None
        self._pending: ActionInput | None = None

    @property
    def estop_latched(self) -> bool:
        return self.estop.latched

    @property
    def estop_input(self) -> bool:
        return self.estop.input

    # ---------------------------------------------------------------- inputs
    def update_joints(self, positions: dict, now_s: float | None = None, steady_s: float | None = None,
                      stamp_s: float | None = None) -> None:
        """Record measured joint positions by name, received at ``now_s`` / ``steady_s`` (None:
        freshness not tracked), measured at ``stamp_s`` (the message's header stamp; None or 0:
        unknown). Each joint's age is its own: a message refreshes only the joints it carries
        with a finite value, so a partial, empty, non-finite or foreign JointState never makes
        the other joints look fresh."""
        stamp_s = stamp_s if stamp_s else None
        for name, value in positions.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):  # per JointState message: math, not numpy, on scalars
                self._joints[name] = (value, now_s, steady_s, stamp_s)

    def joint_states_stale(self, now_s: float, steady_s: float | None = None) -> str:
        """Why the arm-joint measurement cannot be acted on; '' when every arm joint is fresh."""
        limit = self.embodiment.max_joint_state_age_s
        for name in self.embodiment.arm_joints:
            if name not in self._joints:
                return f'no joint state for {name}'
            _, t_node, t_steady, _ = self._joints[name]
            if t_node is not None and now_s - t_node > limit:
                return f'joint states stale: age {now_s - t_node:.2f} s > {limit:.2f} s ({name})'
            if steady_s is not None and t_steady is not None and steady_s - t_steady > limit:
                return (f'joint states stale: age {steady_s - t_steady:.2f} s > {limit:.2f} s ({name}) '
                        'on the steady clock (is the clock source alive?)')
        return ''

    def measured_q(self) -> np.ndarray | None:
        """The newest finite value of every arm joint, however old (for status and FK); commands
        use :meth:`fresh_q`."""
        try:
            return np.array([self._joints[j][0] for j in self.embodiment.arm_joints], dtype=float)
        except KeyError:
            return None

    def fresh_q(self, now_s: float | None, steady_s: float | None = None) -> tuple[np.ndarray | None, str]:
        """The arm joints if every one is freshly measured, else None and why."""
        q = self.measured_q()
        if q is None:
            return None, self.joint_states_stale(0.0)
        why = self.joint_states_stale(now_s, steady_s) if now_s is not None else ''
        return (None, why) if why else (q, '')

    def measured_pose(self) -> Pose | None:
        q = self.measured_q()
        return None if q is None else self.kinematics.forward(q)

    def _measured_gripper(self) -> float:
        g = self.embodiment.gripper
        if g is None or g.joint not in self._joints:
            return 1.0
        return g.command_from_position_m(self._joints[g.joint][0])

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

    def _enter_hold(self, reason: str, now_s: float | None = None, steady_s: float | None = None) -> Command | None:
        """Hold the measured pose; the next action starts from the measured pose again.
        With ``now_s`` and a joint not freshly measured, no hold command is produced (only the state)."""
        self._needs_reseed = True
        self._goal_deadline_s = None
        self._pending = None
        cmd, why = self._hold(reason, now_s, steady_s)
        self._event(f'{reason}; {why}: no hold command sent' if cmd is None and why else reason)
        return cmd

    def hold_command(self, reason: str, now_s: float | None = None, steady_s: float | None = None) -> Command | None:
        """A hold at the measured joints; None unless every arm joint is freshly measured."""
        return self._hold(reason, now_s, steady_s)[0]

    def _hold(self, reason: str, now_s: float | None, steady_s: float | None) -> tuple[Command | None, str]:
        q, why = self.fresh_q(now_s, steady_s)
        if q is None:
            return None, why
        pose = self.kinematics.forward(q)
        gripper = self.target_gripper if self.target_gripper is not None else self._measured_gripper()
        g = self.embodiment.gripper
        joints = q if self.embodiment.use_ik else None
        duration, limits = self._duration(joints, q)
        return Command(target=pose, gripper=gripper,
                       gripper_position_m=None if g is None else g.position_m(gripper),
                       joint_positions=joints, duration_s=duration,
                       linear_velocity_m_s=np.zeros(3), angular_velocity_rad_s=np.zeros(3),
                       hold=True, reason=reason, active_limits=limits), ''

    def _duration(self, joints: np.ndarray | None, q_meas: np.ndarray) -> tuple[float, tuple[str, ...]]:
        """time_from_start for a move from the measured joints: one control period, stretched so
        that no joint exceeds the joint-speed limit."""
        e = self.embodiment
        if joints is None:
            return e.control_period_s, ()
        slowest = float(np.max(np.abs(np.asarray(joints) - q_meas))) / e.max_joint_speed_rad_s
        if slowest > e.control_period_s:
            return slowest, (JOINT_SPEED_LIMIT,)
        return e.control_period_s, ()

    def set_enabled(self, enabled: bool, now_s: float | None = None,
                    steady_s: float | None = None) -> tuple[bool, str]:
        if enabled and self.estop_latched:
            return False, 'e-stop latched: reset it first'
        self.enabled = bool(enabled)
        self._enter_hold('enabled' if enabled else 'disabled', now_s, steady_s)
        return True, 'enabled' if enabled else 'disabled'

    def set_estop(self, active: bool, now_s: float | None = None,
                  steady_s: float | None = None) -> Command | None:
        """E-stop input; a True latches until :meth:`reset_estop`. Returns a hold command on latch."""
        self.estop.input = bool(active)
        if active and not self.estop_latched:
            self.estop.latch()
            return self._enter_hold('estop', now_s, steady_s)
        return None

    def reset_estop(self) -> tuple[bool, str]:
        if self.estop_input:
            return False, 'e-stop input is still active: release it first'
        was = self.estop_latched
        self.estop.clear()
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

    def on_action(self, action: ActionInput, now_s: float, steady_s: float | None = None) -> Command | Refusal:
        self.counters.received += 1
        e = self.embodiment
        if self.estop_latched:
            return self._refuse('estop latched')
        if not self.enabled:
            return self._refuse('disabled')
        if self.measured_q() is None:
            return self._refuse('no joint states')
        stale_joints = self.joint_states_stale(now_s, steady_s)
        if stale_joints:
            return self._refuse(stale_joints)
        try:
            validate_action(action.values)
        except InvalidActionError as exc:
            return self._refuse(f'invalid action: {exc}')
        if not np.isfinite(action.stamp_s):
            return self._refuse('invalid action: stamp is not finite')
        if action.frame_id is not None and action.frame_id != e.base_frame_id:
            return self._refuse(f'action frame {action.frame_id!r} is not the action frame '
                                f'{e.base_frame_id!r} (no tf: deltas are not transformed)')
        stale = self._stale_reason(action, now_s)
        if stale:
            return self._refuse(stale)
        waiting = self._wait_reason(now_s, action)
        if waiting:
            if self._pending is not None:
                self.counters.dropped_while_busy += 1
            self._pending = action
            return Refusal(f'{waiting}; action kept as the newest pending', pending=True)
        return self._execute(action, now_s, steady_s)

    def _wait_reason(self, now_s: float, action: ActionInput) -> str:
        """Why an accepted action has to wait before it may run; '' when it may run now."""
        if self.embodiment.blocking and self._goal_deadline_s is not None:
            return 'blocking: waiting for the goal'
        if self._last_executed_s is not None:
            left = self._last_executed_s + self.embodiment.control_period_s - now_s
            if left > PERIOD_TOLERANCE_S:
                return f'rate: next action in {left:.3f} s (one per control period)'
        return self._joints_behind(action)

    def _joints_behind(self, action: ActionInput) -> str:
        """Why the arm measurement is older than the action's image; '' when it is not."""
        limit = self.embodiment.max_joint_state_age_s
        for name in self.embodiment.arm_joints:
            stamp = self._joints[name][3] if name in self._joints else None
            behind = None if stamp is None else action.stamp_s - stamp
            if behind is not None and PERIOD_TOLERANCE_S < behind <= limit:
                return (f'waiting for joint states as new as the image: {name} measured '
                        f'{behind:.3f} s before it')
        return ''

    def _stale_reason(self, action: ActionInput, now_s: float) -> str:
        """Why the action's image stamp is too old (or too far in the future); '' when fresh."""
        limit = self.embodiment.max_action_age_s
        age = now_s - action.stamp_s
        if age > limit:
            return f'stale action: age {age:.2f} s > {limit:.2f} s'
        if age < -limit:
            return f'stale action: stamp {-age:.2f} s in the future'
        return ''

    def _execute(self, action: ActionInput, now_s: float, steady_s: float | None) -> Command | Refusal:
        e = self.embodiment
        q_meas, why = self.fresh_q(now_s, steady_s)
        if q_meas is None:
            return self._refuse(why)
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
            duration, speed_limits = self._duration(joints, q_meas)
            limits.extend(speed_limits)
        self.target = result.target
        self.target_gripper = result.gripper
        self.last_action_stamp_s = action.stamp_s
        self._last_accepted_s = self._last_executed_s = now_s
        self._last_accepted_steady_s = steady_s
        self._needs_reseed = False
        self._watchdog_tripped = False
        self.counters.executed += 1
        if e.blocking:
            self._goal_deadline_s = now_s + duration + e.blocking_timeout_s
        reason = ', '.join(limits)
        self._event(reason, tuple(limits))
        g = e.gripper
        # the twist carries out the delta actually commanded (after the workspace clip)
        linear, angular = delta_to_twist(result.target.position - previous.position,
                                         result.clipped_action[ROTATION_SLICE], e.control_period_s)
        return Command(target=result.target, gripper=result.gripper,
                       gripper_position_m=None if g is None else g.position_m(result.gripper),
                       joint_positions=joints, duration_s=duration,
                       linear_velocity_m_s=linear, angular_velocity_rad_s=angular,
                       reason=reason, active_limits=tuple(limits))

    def goal_reached(self) -> bool:
        pose = self.measured_pose()
        if pose is None or self.target is None:
            return False
        e = self.embodiment
        return (pose.position_error_m(self.target) <= e.goal_position_tolerance_m
                and pose.rotation_error_rad(self.target) <= e.goal_orientation_tolerance_rad)

    def _watchdog_reason(self, now_s: float, steady_s: float | None) -> str:
        limit = self.embodiment.watchdog_timeout_s
        age = now_s - self._last_accepted_s
        if age > limit:
            return f'watchdog: no fresh action for {age:.2f} s > {limit:.2f} s'
        if steady_s is not None and self._last_accepted_steady_s is not None:
            age = steady_s - self._last_accepted_steady_s
            if age > limit:
                return f'watchdog: no fresh action for {age:.2f} s > {limit:.2f} s on the steady clock'
        return ''

    def tick(self, now_s: float, steady_s: float | None = None) -> Command | Refusal | None:
        """Watchdog, blocking-mode bookkeeping and the pending action; call periodically (on a
        steady timer, so the watchdog runs when the node clock stops)."""
        if self.mode is Mode.TRACKING:
            why = self._watchdog_reason(now_s, steady_s)
            if why:
                self._watchdog_tripped = True
                return self._enter_hold(why, now_s, steady_s)
        if self._goal_deadline_s is not None:
            reached = self.goal_reached()
            if reached or now_s >= self._goal_deadline_s:
                self._goal_deadline_s = None
                if not reached:
                    self._event('blocking: goal not reached before the timeout')
        if self._pending is None:
            return None
        # checked again: the limits may have changed and time has passed while it waited; one
        # that went stale waiting is refused now, not kept
        stale_action = self._stale_reason(self._pending, now_s)
        if stale_action or not self._wait_reason(now_s, self._pending):
            pending, self._pending = self._pending, None
            if self.estop_latched or not self.enabled:
                return None
            stale = self.joint_states_stale(now_s, steady_s) or stale_action
            if stale:
                return self._refuse(f'{stale} (pending)')
            return self._execute(pending, now_s, steady_s)
        return None
