"""arm_controller: OpenVLA end-effector deltas → safe joint commands for a single arm.

A lifecycle node around the ROS-free :class:`openvla_ros.control.safety.SafetyController`.
``on_configure`` loads ``config/<embodiment>.yaml``, applies the safety-limit parameters (they
override the YAML; their defaults are the YAML values) and builds the kinematics;
``on_activate`` starts the outputs. The ``live`` safety parameters may also be changed while
configured (validated by an on-set-parameters callback; they apply from the next action on),
never beyond the embodiment file's hard limits; every other parameter is read-only after start.
The controller state is guarded by one lock; joint states and the e-stop have callback groups of
their own, so an action flood cannot delay them (each action callback is short: at most one
action per control period reaches the IK, the others only replace the pending one).

The e-stop latch lives in the node, outside what ``on_configure`` rebuilds, and the e-stop topic
is subscribed from construction on, in every lifecycle state: best-effort + volatile (which every
publisher QoS matches) plus reliable + transient-local (to receive a latched message published
before the node started). An incompatible-QoS event on the action, joint-state or e-stop topic
is an ERROR in the status and in /diagnostics. The watchdog runs on a steady timer, and every
freshness bound also holds on the steady clock.

Outputs: JointTrajectory (arm joints + the gripper finger joint when the gripper output is
``trajectory``; one point at max(control period, distance / max joint speed)), the target
PoseStamped (always), optionally a TwistStamped for moveit_servo (re-sent at ``servo_rate_hz``
for one control period after each action, zero otherwise) and a Float64 gripper position;
ControllerStatus (latched, on change and at 1 Hz) and /diagnostics.

Holding publishes one trajectory point at the measured joints (gripper unchanged) and zero twist.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import NamedTuple

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from openvla_ros import defaults
from openvla_ros.control.embodiment import Embodiment, EmbodimentConfigError, load_embodiment
from openvla_ros.control.kinematics import ArmKinematics
from openvla_ros.control.safety import ActionInput, Command, EStopLatch, Mode, Refusal, SafetyController
from openvla_ros.msg import ControllerStatus, EndEffectorDelta
from openvla_ros.nodes import common
from openvla_ros.stamps import s_to_sec_nanosec

CONTROL_TICK_S = 0.02      # watchdog / pending-action polling period (steady clock)
STATUS_PERIOD_S = 1.0
# Best-effort + volatile requests the least, so publishers of every QoS match it.
ESTOP_ANY_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                           reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)

class SafetyParam(NamedTuple):
    description: str
    low: float | None       # numeric range; None: no numeric range (bool / arrays)
    high: float | None
    live: bool              # True: a change while configured applies to the next action


# Safety parameters that override the embodiment YAML. The live ones only bound what the next
# action may do; the others shape the outputs and timers created at configure.
SAFETY_PARAMS = {
    'control_period_s': SafetyParam('control period and minimum trajectory duration, s', 0.01, 10.0, False),
    'max_translation_step_m': SafetyParam('per-step clip of dx, dy, dz, m', 0.0001, 1.0, True),
    'max_rotation_step_rad': SafetyParam('per-step clip of droll, dpitch, dyaw, rad', 0.0001, 3.14, True),
    'max_joint_speed_rad_s': SafetyParam(
        'maximum joint speed; trajectory durations are stretched to respect it, rad/s', 0.01, 10.0, True),
    'watchdog_timeout_s': SafetyParam('no fresh action for this long -> hold, s', 0.01, 60.0, True),
    'max_action_age_s': SafetyParam('actions whose image stamp is older are ignored, s', 0.001, 60.0, True),
    'max_joint_state_age_s': SafetyParam('actions are refused (and no hold is sent) while the newest joint state '
                                         'is older than this, s', 0.001, 60.0, True),
    'blocking_timeout_s': SafetyParam('blocking mode: longest wait for the goal, s', 0.01, 60.0, False),
    'goal_position_tolerance_m': SafetyParam('blocking mode: goal position tolerance, m', 0.0001, 1.0, False),
    'goal_orientation_tolerance_rad': SafetyParam('blocking mode: goal orientation tolerance, rad',
                                                  0.0001, 3.14, False),
    'servo_rate_hz': SafetyParam('servo twist re-send rate, Hz', 1.0, 1000.0, False),
    'workspace_low_m': SafetyParam('workspace box lower corner x, y, z (below workspace_high_m), m',
                                   None, None, True),
    'workspace_high_m': SafetyParam('workspace box upper corner x, y, z (above workspace_low_m), m',
                                    None, None, True),
    'start_enabled': SafetyParam('start enabled (otherwise ~/enable true is needed before the arm moves)',
                                 None, None, False),
    'blocking': SafetyParam('wait for the goal before accepting the next action', None, None, False),
}


def _param_to_field(value):
    """A parameter value as the Embodiment field holds it (arrays become tuples of floats)."""
    if isinstance(value, (list, tuple)) or hasattr(value, 'tolist'):
        return tuple(float(x) for x in value)
    return value


def _duration_msg(seconds: float) -> Duration:
    sec, nanosec = s_to_sec_nanosec(seconds)
    return Duration(sec=sec, nanosec=nanosec)


class ArmControllerNode(LifecycleNode):

    def __init__(self, **kwargs):
        super().__init__(defaults.ARM_CONTROLLER_NODE, **kwargs)
        self.declare_parameter('embodiment', defaults.DEFAULT_EMBODIMENT, ParameterDescriptor(
            description='embodiment config: config/<name>.yaml or a path to a YAML file (read at configure)',
            read_only=True))
        self.declare_parameter('estop_latch_file', '', ParameterDescriptor(
            description="file that keeps an e-stop latched across node restarts ('' = none: a restarted "
                        'node starts with the e-stop clear, disabled unless start_enabled)', read_only=True))
        self._load_error = ''
        try:
            base = load_embodiment(self.get_parameter('embodiment').value)
        except (EmbodimentConfigError, FileNotFoundError) as exc:
            self._load_error = str(exc)
            base = None
        for name, spec in SAFETY_PARAMS.items():
            default = getattr(base, name) if base is not None else Embodiment.__dataclass_fields__[name].default
            if isinstance(default, tuple):
                default = [float(x) for x in default]
            when = ('live: applies to the next action, within the hard limits of the embodiment file'
                    if spec.live else 'read-only: set at launch')
            descriptor = ParameterDescriptor(
                description=f'{spec.description} (default from the embodiment YAML; {when})',
                read_only=not spec.live)
            if spec.low is not None:
                high = float(spec.high)
                if base is not None and name in base.hard_limits:
                    high = min(high, float(base.hard_limits[name]))
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=high)]
                default = float(default)
            self.declare_parameter(name, default, descriptor)

        self._base = base
        self._lock = threading.RLock()
        self._group = MutuallyExclusiveCallbackGroup()
        self._joints_group = MutuallyExclusiveCallbackGroup()
        self._estop_group = MutuallyExclusiveCallbackGroup()
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._estop = EStopLatch(self.get_parameter('estop_latch_file').value or None)
        self._qos_errors: dict[str, str] = {}
        self._controller: SafetyController | None = None
        self._embodiment: Embodiment | None = None
        self._active = False
        self._config_event = ''
        self._subs = []
        # Not ``_timers``: rclpy's Node keeps its own timer list under that name.
        self._io_timers = []
        self._traj_pub = self._pose_pub = self._twist_pub = self._gripper_pub = None
        self._twist_cmd: tuple[np.ndarray, np.ndarray] | None = None
        self._twist_until_s = -1.0
        self._last_status_key = None

        self._status_pub = self.create_publisher(ControllerStatus, defaults.relative(defaults.CONTROLLER_STATUS_TOPIC),
                                                 common.latched_qos())
        self._diagnostics = common.DiagnosticsPublisher(self, hardware_id=defaults.ARM_CONTROLLER_NODE)
        self.create_service(SetBool, '~/enable', self._on_enable, callback_group=self._group)
        self.create_service(Trigger, '~/reset_estop', self._on_reset_estop, callback_group=self._group)
        self.create_service(Trigger, '~/reset_target', self._on_reset_target, callback_group=self._group)
        self.create_timer(STATUS_PERIOD_S, self._on_status_timer, callback_group=self._group, clock=self._steady)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_subscription(Bool, defaults.relative(defaults.ESTOP_TOPIC), self._on_estop, ESTOP_ANY_QOS,
                                 callback_group=self._estop_group,
                                 event_callbacks=self._qos_events(defaults.ESTOP_TOPIC))
        # Only for a latched e-stop published before this node started; volatile or best-effort
        # publishers are incompatible with it by design (the subscription above receives them).
        self.create_subscription(Bool, defaults.relative(defaults.ESTOP_TOPIC), self._on_estop, common.latched_qos(),
                                 callback_group=self._estop_group,
                                 event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda _info: None))
        if self._estop.restored:
            self.get_logger().warning(f'e-stop latched before the restart ({self._estop.path}): '
                                      'holding until ~/reset_estop')
        self._publish_status(force=True)

    def _qos_events(self, topic: str) -> SubscriptionEventCallbacks:
        return SubscriptionEventCallbacks(incompatible_qos=lambda info: self._on_incompatible_qos(topic, info))

    def _on_incompatible_qos(self, topic: str, info) -> None:
        policy = getattr(info.last_policy_kind, 'name', str(info.last_policy_kind))
        text = (f'incompatible QoS on {topic}: a publisher does not match ({policy}, '
                f'{info.total_count} so far); its messages are not received')
        with self._lock:
            self._qos_errors[topic] = text
        self.get_logger().error(text, throttle_duration_sec=5.0)
        self._publish_status(force=True)

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {p.name: _param_to_field(p.value) for p in params
                   if p.name in SAFETY_PARAMS and SAFETY_PARAMS[p.name].live}
        if not changes:
            return SetParametersResult(successful=True)
        with self._lock:
            if self._controller is None:  # the hard limits hold while unconfigured too
                if self._base is not None:
                    current = {n: _param_to_field(self.get_parameter(n).value) for n in SAFETY_PARAMS}
                    try:
                        self._base.with_overrides(**{**current, **changes})
                    except EmbodimentConfigError as exc:
                        return SetParametersResult(successful=False, reason=str(exc))
                return SetParametersResult(successful=True)
            try:
                self._controller.update_limits(**changes)
            except EmbodimentConfigError as exc:
                self.get_logger().warning(f'parameter change rejected: {exc}')
                return SetParametersResult(successful=False, reason=str(exc))
            self._embodiment = self._controller.embodiment
        self.get_logger().info(self._controller.last_event)
        self._publish_status()
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ lifecycle
    def _fail(self, reason: str) -> TransitionCallbackReturn:
        self.get_logger().error(reason)
        self._config_event = reason
        self._publish_status(force=True)
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            embodiment = load_embodiment(self.get_parameter('embodiment').value)
            overrides = {name: _param_to_field(self.get_parameter(name).value) for name in SAFETY_PARAMS}
            embodiment = embodiment.with_overrides(**overrides)
            kinematics = ArmKinematics(embodiment)
        except (EmbodimentConfigError, FileNotFoundError, ValueError) as exc:
            return self._fail(f'configure failed: {exc}')
        with self._lock:
            self._embodiment = embodiment
            self._controller = SafetyController(embodiment, kinematics, self._estop)
            self._create_io()
            self._config_event = f'configured: {embodiment.name}'
        self.get_logger().info(f'embodiment {embodiment.name}: {len(embodiment.arm_joints)} arm joints, '
                               f'{1.0 / embodiment.control_period_s:.1f} Hz, '
                               f'{"blocking" if embodiment.blocking else "non-blocking"}, '
                               f'{"enabled" if embodiment.start_enabled else "disabled until ~/enable"}')
        self._publish_status(force=True)
        return TransitionCallbackReturn.SUCCESS

    def _create_io(self) -> None:
        e = self._embodiment
        if e.output_joint_trajectory:
            self._traj_pub = self.create_lifecycle_publisher(JointTrajectory, e.joint_trajectory_topic, 10)
        self._pose_pub = self.create_lifecycle_publisher(PoseStamped, defaults.relative(defaults.TARGET_POSE_TOPIC), 10)
        if e.output_servo_twist:
            self._twist_pub = self.create_lifecycle_publisher(TwistStamped, e.servo_twist_topic, 10)
        if e.gripper is not None and e.gripper.output == 'float64':
            self._gripper_pub = self.create_lifecycle_publisher(Float64, e.gripper_width_topic, 10)
        self._subs = [
            self.create_subscription(EndEffectorDelta, defaults.relative(defaults.ACTION_TOPIC), self._on_action,
                                     common.reliable_qos(10), callback_group=self._group,
                                     event_callbacks=self._qos_events(defaults.ACTION_TOPIC)),
            self.create_subscription(JointState, defaults.relative(defaults.JOINT_STATES_TOPIC), self._on_joint_state,
                                     qos_profile_sensor_data, callback_group=self._joints_group,
                                     event_callbacks=self._qos_events(defaults.JOINT_STATES_TOPIC)),
        ]
        self._io_timers = [self.create_timer(CONTROL_TICK_S, self._on_tick, callback_group=self._group,
                                             clock=self._steady)]
        if e.output_servo_twist:
            self._io_timers.append(self.create_timer(1.0 / e.servo_rate_hz, self._on_servo_timer,
                                                  callback_group=self._group))

    def _destroy_io(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        for t in self._io_timers:
            self.destroy_timer(t)
        self._subs, self._io_timers = [], []
        for pub in (self._traj_pub, self._pose_pub, self._twist_pub, self._gripper_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._traj_pub = self._pose_pub = self._twist_pub = self._gripper_pub = None

    def on_activate(self, state) -> TransitionCallbackReturn:
        with self._lock:
            self._active = True
            self._controller.reset_target()  # next action starts from the measured pose
        result = super().on_activate(state)
        self._publish_status(force=True)
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        with self._lock:
            self._publish_command(self._controller.hold_command('deactivated', *self._clocks()))
            self._active = False
            self._twist_until_s = -1.0
        result = super().on_deactivate(state)
        self._publish_status(force=True)
        return result

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        with self._lock:
            self._destroy_io()
            self._controller = None
            self._embodiment = None
        self._publish_status(force=True)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        with self._lock:
            if self._controller is not None:
                self._destroy_io()
            self._active = False
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ inputs
    def _now_s(self) -> float:
        return common.now_s(self)

    def _clocks(self) -> tuple[float, float]:
        """(node clock, steady clock) in seconds, as the controller core takes them."""
        return common.now_s(self), time.monotonic()

    def _on_action(self, msg: EndEffectorDelta) -> None:
        with self._lock:
            if not self._active:
                return
            action = ActionInput(tuple(msg.action), common.stamp_to_s(msg.header.stamp), msg.header.frame_id)
            self._handle(self._controller.on_action(action, *self._clocks()))

    def _on_joint_state(self, msg: JointState) -> None:
        if len(msg.name) != len(msg.position):
            self.get_logger().warning(f'JointState ignored: {len(msg.name)} names but {len(msg.position)} '
                                      'positions', throttle_duration_sec=5.0)
            return
        with self._lock:
            if self._controller is None:
                return
            self._controller.update_joints(dict(zip(msg.name, msg.position)), *self._clocks(),
                                           stamp_s=common.stamp_to_s(msg.header.stamp))

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if self._controller is None:   # latched all the same: the next controller sees it
                self._estop.input = bool(msg.data)
                if msg.data and not self._estop.latched:
                    self._estop.latch()
                    self.get_logger().warning('e-stop latched (unconfigured): holding until ~/reset_estop')
                self._publish_status(force=True)
                return
            cmd = self._controller.set_estop(bool(msg.data), *self._clocks())
            if cmd is not None:
                self.get_logger().warning('e-stop latched: holding until ~/reset_estop')
                self._twist_until_s = -1.0
                if self._active:
                    self._publish_command(cmd)
            self._publish_status()

    def _on_tick(self) -> None:
        with self._lock:
            if not self._active:
                return
            result = self._controller.tick(*self._clocks())
            if result is not None:
                self._handle(result)
            else:
                self._publish_status()

    def _handle(self, result) -> None:
        if isinstance(result, Command):
            if result.hold:
                self._twist_until_s = -1.0
                self.get_logger().info(f'hold: {result.reason}')
            self._publish_command(result)
        elif isinstance(result, Refusal) and not result.pending:
            self.get_logger().warning(f'action refused: {result.reason}', throttle_duration_sec=2.0)
        self._publish_status()

    # ------------------------------------------------------------------ services
    def _on_enable(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        with self._lock:
            if self._controller is None:
                resp.success, resp.message = False, 'not configured'
                return resp
            resp.success, resp.message = self._controller.set_enabled(req.data)
            if resp.success:
                self._twist_until_s = -1.0
                if not req.data and self._active:
                    self._publish_command(self._controller.hold_command('disabled', *self._clocks()))
        self._publish_status()
        return resp

    def _on_reset_estop(self, req, resp: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if self._controller is None:
                resp.success, resp.message = False, 'not configured'
                return resp
            resp.success, resp.message = self._controller.reset_estop()
            if resp.success:
                self.get_logger().info(resp.message)
        self._publish_status()
        return resp

    def _on_reset_target(self, req, resp: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if self._controller is None:
                resp.success, resp.message = False, 'not configured'
                return resp
            resp.success, resp.message = self._controller.reset_target()
        self._publish_status()
        return resp

    # ------------------------------------------------------------------ outputs
    def _publish_command(self, cmd: Command | None) -> None:
        if cmd is None or not self._active:
            return
        e = self._embodiment
        now = self.get_clock().now().to_msg()
        if self._traj_pub is not None and cmd.joint_positions is not None:
            traj = JointTrajectory()
            traj.header.frame_id = e.base_frame_id  # stamp 0: start immediately on reception
            traj.joint_names = list(e.arm_joints)
            positions = [float(x) for x in cmd.joint_positions]
            if e.gripper is not None and e.gripper.output == 'trajectory':
                traj.joint_names.append(e.gripper.joint)
                positions.append(float(cmd.gripper_position_m))
            traj.points = [JointTrajectoryPoint(positions=positions,
                                                time_from_start=_duration_msg(cmd.duration_s))]
            self._traj_pub.publish(traj)
        pose = PoseStamped()
        pose.header.stamp = now
        pose.header.frame_id = e.base_frame_id
        self._fill_pose(pose.pose, cmd.target)
        self._pose_pub.publish(pose)
        if self._gripper_pub is not None and cmd.gripper_position_m is not None:
            self._gripper_pub.publish(Float64(data=float(cmd.gripper_position_m)))
        if self._twist_pub is not None:
            self._twist_cmd = (cmd.linear_velocity_m_s, cmd.angular_velocity_rad_s)
            self._twist_until_s = -1.0 if cmd.hold else self._now_s() + e.control_period_s
            self._on_servo_timer()

    @staticmethod
    def _fill_pose(msg_pose, pose) -> None:
        msg_pose.position.x, msg_pose.position.y, msg_pose.position.z = (float(v) for v in pose.position)
        q = pose.quat_xyzw()
        msg_pose.orientation.x, msg_pose.orientation.y, msg_pose.orientation.z, msg_pose.orientation.w = (
            float(v) for v in q)

    def _on_servo_timer(self) -> None:
        with self._lock:
            if not self._active or self._twist_pub is None:
                return
            msg = TwistStamped()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self._embodiment.base_frame_id
            # the delta is spread over one control period; afterwards (and when holding) zero:
            # never extrapolate the last motion
            if (self._twist_cmd is not None and self._controller.mode is Mode.TRACKING
                    and self._now_s() < self._twist_until_s):
                lin, ang = self._twist_cmd
                msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in lin)
                msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in ang)
            self._twist_pub.publish(msg)

    def _status_msg(self) -> ControllerStatus:
        c = self._controller
        msg = ControllerStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        if c is None:
            msg.state, msg.state_name = ControllerStatus.STATE_ERROR, 'UNCONFIGURED'
            msg.embodiment = str(self.get_parameter('embodiment').value)
            msg.estop_latched = self._estop.latched
            msg.last_event = '; '.join(self._qos_errors.values()) or self._config_event or self._load_error
            return msg
        e = self._embodiment
        mode = c.mode
        msg.header.frame_id = e.base_frame_id
        msg.state = mode.value
        msg.state_name = mode.name if self._active else f'{mode.name} (inactive)'
        if self._qos_errors and mode is not Mode.ESTOP:
            msg.state, msg.state_name = ControllerStatus.STATE_ERROR, f'ERROR ({mode.name}: incompatible QoS)'
        msg.embodiment = e.name
        msg.enabled = c.enabled
        msg.estop_latched = c.estop_latched
        msg.last_event = self._last_event_text(c, mode)
        msg.active_limits = list(c.active_limits)
        if c.target is not None:
            self._fill_pose(msg.target_pose, c.target)
        msg.target_gripper = float(c.target_gripper) if c.target_gripper is not None else 0.0
        msg.last_action_age_s = (self._now_s() - c.last_action_stamp_s) if c.last_action_stamp_s is not None else -1.0
        msg.actions_received = c.counters.received
        msg.actions_executed = c.counters.executed
        msg.actions_rejected = c.counters.rejected
        return msg

    def _last_event_text(self, c: SafetyController, mode: Mode) -> str:
        if self._qos_errors:
            return '; '.join(self._qos_errors.values())
        if mode is Mode.ERROR and not c.last_event:
            return 'no joint states'
        return c.last_event if (c.last_event or not self._config_event) else self._config_event

    def _status_key(self) -> tuple:
        """What decides whether a status is new; built without the message (the control tick
        asks at 50 Hz, and most ticks change nothing)."""
        c = self._controller
        if c is None:
            return (None, self._config_event or self._load_error, self._estop.latched, tuple(self._qos_errors))
        mode = c.mode
        cnt = c.counters
        return (mode, self._active, c.enabled, c.estop_latched, self._last_event_text(c, mode),
                c.active_limits, cnt.received, cnt.executed, cnt.rejected)

    def _publish_status(self, force: bool = False) -> None:
        with self._lock:
            key = self._status_key()
            if not force and key == self._last_status_key:
                return
            self._last_status_key = key
            self._status_pub.publish(self._status_msg())

    def _on_status_timer(self) -> None:
        self._publish_status(force=True)
        with self._lock:
            self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        d = self._diagnostics
        c = self._controller
        qos = d.status('qos', common.ERROR if self._qos_errors else common.OK,
                       '; '.join(self._qos_errors.values()) or 'ok')
        if c is None:
            d.publish([d.status('configuration', common.ERROR, self._config_event or self._load_error or 'unconfigured'),
                       qos])
            return
        mode = c.mode
        state_level = {Mode.TRACKING: common.OK, Mode.HOLDING: common.OK, Mode.DISABLED: common.OK,
                       Mode.ESTOP: common.WARN, Mode.ERROR: common.ERROR}[mode]
        q = c.measured_q()
        cnt = c.counters
        d.publish([
            d.status('state', state_level, mode.name, {'enabled': c.enabled, 'estop_latched': c.estop_latched,
                                                       'active': self._active, 'last_event': c.last_event}),
            d.status('joint_states', common.OK if q is not None else common.ERROR,
                     'ok' if q is not None else 'no joint states for the arm joints',
                     {'joints': ','.join(self._embodiment.arm_joints)}),
            d.status('actions', common.WARN if cnt.rejected else common.OK,
                     c.last_event or 'ok', {'received': cnt.received, 'executed': cnt.executed,
                                            'rejected': cnt.rejected,
                                            'dropped_while_busy': cnt.dropped_while_busy}),
            d.status('kinematics', common.WARN if cnt.ik_failures else common.OK,
                     f'{cnt.ik_failures} IK failures', {'ik_failures': cnt.ik_failures,
                                                       'model': self._embodiment.model_file}),
            qos,
        ])


def main(args=None) -> int:
    return common.run_node(ArmControllerNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
