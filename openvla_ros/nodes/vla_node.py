"""vla_node: camera image + language instruction -> OpenVLA -> EndEffectorDelta.

A lifecycle node. ``on_configure`` reads the load-time parameters and loads the policy (local
engine or remote server); ``on_activate`` starts the inference worker; ``on_deactivate`` stops it
and, on a GPU, unloads the model to give its memory back (a CPU model stays loaded: reloading would
free nothing the operating system does not already page, and costs the load time again);
``on_cleanup`` releases everything.

Threading: subscription callbacks only convert and store the newest frame (an overwritten, unused
frame counts as dropped). One worker thread takes the newest frame when the node is active,
enabled and has an instruction, skips it if it is stale, runs the policy and publishes. Services,
parameters, status and diagnostics run on a MultiThreadedExecutor in their own callback groups,
so they are served during a forward pass.

Nothing is published from stale images, a failed policy call or an invalid action (NaN/inf,
wrong dimension); the node reports the reason (status ERROR, diagnostics, counters) and tries
again with the next frame.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

try:  # Jazzy and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from openvla_ros import defaults
from openvla_ros.action_message import MIN_ACTION_DIM as BRIDGE_ACTION_DIM
from openvla_ros.action_message import (GRIPPER_INDEX, TRANSLATION_SLICE, fill_message,
                                        prediction_to_delta_fields)
from openvla_ros.control.embodiment import EmbodimentConfigError, load_embodiment
from openvla_ros.engine.api import OpenVLAError
from openvla_ros.imaging import ImageConversionError, compressed_msg_to_rgb, image_msg_to_rgb, rgb_to_image_fields
from openvla_ros.msg import EndEffectorDelta, VlaStatus
from openvla_ros.nodes import common
from openvla_ros.stamps import stamp_to_ns
from openvla_ros.nodes import vla_backend, vla_params

STATS_WINDOW_S = 10.0
# RUNNING turns back into IDLE when no action was published for this long.
IDLE_AFTER_S = 2.0
WARN_THROTTLE_S = 5.0


@dataclass
class _Frame:
    rgb: np.ndarray
    header: object          # std_msgs/Header of the source image
    stamp_ns: int
    received_ns: int        # node clock at reception


class VlaNode(LifecycleNode):

    def __init__(self, **kwargs):
        super().__init__(defaults.VLA_NODE, **kwargs)
        for spec in vla_params.PARAMS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        self._p = {spec.name: self.get_parameter(spec.name).value for spec in vla_params.PARAMS}

        self._cond = threading.Condition()
        self._policy = None
        self._configured = False
        self._active = False
        self._stop_worker = False
        self._worker: threading.Thread | None = None
        self._frame: _Frame | None = None
        self._last_frame_stamp_ns: int | None = None
        self._instruction = ''
        self._error = ''            # non-empty: the last inference failed (state ERROR)
        self._last_event = ''       # latest notable event (rejection, stale frame, QoS problem)
        self._qos_problem = ''      # kept in the status message until ~/reset or configure
        self._model_id = ''
        self._frame_id = ''
        self._last_action_mono = -math.inf
        self._latency = common.RollingStats(STATS_WINDOW_S)
        self._published = common.RollingStats(STATS_WINDOW_S)
        self._reset_counters()
        self._last_status_key = None

        self._image_group = MutuallyExclusiveCallbackGroup()
        self._control_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._subs = []
        self._action_pub = self._twist_pub = self._debug_pub = None

        self._status_pub = self.create_publisher(VlaStatus, defaults.relative(defaults.VLA_STATUS_TOPIC),
                                                 common.latched_qos())
        self._diagnostics = common.DiagnosticsPublisher(self, hardware_id=defaults.VLA_NODE)
        self.create_service(SetBool, '~/enable', self._on_enable, callback_group=self._control_group)
        self.create_service(Trigger, '~/reset', self._on_reset, callback_group=self._control_group)
        # Steady clock: status and diagnostics keep coming while a simulation is paused.
        self.create_timer(1.0, self._on_status_timer, callback_group=self._timer_group,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self._p['instruction']:
            self._apply_instruction(self._p['instruction'])
        self._publish_status(force=True)

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name not in vla_params.BY_NAME:
                continue
            if p.name in vla_params.LOAD_TIME and self._configured:
                return SetParametersResult(
                    successful=False,
                    reason=f'{p.name} is fixed while the model is loaded; cleanup, set it, configure again')
            reason = vla_params.check_value(p.name, p.value)
            if reason:
                if p.name == 'instruction':
                    self._reject_instruction(reason)
                return SetParametersResult(successful=False, reason=reason)
        for p in params:
            if p.name in vla_params.BY_NAME:
                self._apply_param(p.name, p.value)
        return SetParametersResult(successful=True)

    def _apply_param(self, name: str, value) -> None:
        with self._cond:
            self._p[name] = value
            if name == 'instruction':
                self._apply_instruction(value)
            self._cond.notify_all()
        self._publish_status()

    def _apply_instruction(self, text: str) -> None:
        # An instruction stays until replaced or cleared: no silent expiry.
        self._instruction = text
        self._last_event = f'instruction set: {text!r}' if text else 'instruction cleared'
        self.get_logger().info(self._last_event)

    def _reject_instruction(self, reason: str) -> None:
        self._counters['instructions_rejected'] += 1
        self._last_event = f'instruction rejected ({reason}); keeping {self._instruction!r}'
        self.get_logger().warning(self._last_event)
        self._publish_status()

    def _on_instruction(self, msg: String) -> None:
        # Through the parameter so `ros2 param get` shows the instruction in use.
        self.set_parameters([Parameter('instruction', Parameter.Type.STRING, msg.data)])

    # ------------------------------------------------------------------ services
    def _on_enable(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter('enabled', Parameter.Type.BOOL, bool(req.data))])[0]
        resp.success = result.successful
        resp.message = ('inference resumed' if req.data else 'inference paused') if result.successful else result.reason
        return resp

    def _on_reset(self, req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self.set_parameters([Parameter('instruction', Parameter.Type.STRING, '')])
        with self._cond:
            self._reset_counters()
            self._frame = None
            self._error = ''
            self._qos_problem = ''
            self._last_event = 'reset: instruction and counters cleared'
            self._latency.clear()
            self._published.clear()
        self._publish_status(force=True)
        resp.success = True
        resp.message = self._last_event
        return resp

    def _reset_counters(self) -> None:
        self._counters = dict(frames_received=0, frames_rejected=0, frames_dropped=0, frames_stale=0,
                              actions_published=0, inference_errors=0, instructions_rejected=0,
                              qos_incompatible=0)
        self._sequence = 0

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            return self._configure()
        except Exception as exc:  # a broken backend must not take the node down
            self._fail_configure(f'configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE

    def _fail_configure(self, reason: str) -> None:
        self.get_logger().error(reason)
        self._last_event = reason
        self._close_policy()
        self._publish_status(force=True)

    def _configure(self) -> TransitionCallbackReturn:
        p = {spec.name: self.get_parameter(spec.name).value for spec in vla_params.PARAMS}
        problems = vla_params.check_all(p)
        if problems:
            self._fail_configure('invalid parameters: ' + '; '.join(problems))
            return TransitionCallbackReturn.FAILURE
        self._p = p
        source = p['server_url'] if p['backend'] == 'remote' else p['model_path']
        self.get_logger().info(f'loading checkpoint {source} (backend={p["backend"]}, device={p["device"]}, '
                               f'dtype={p["dtype"]}, quantization={p["quantization"]}) ...')
        t0 = time.perf_counter()
        try:
            self._policy = vla_backend.make_policy(p)
        except OpenVLAError as exc:
            self._fail_configure(f'cannot load the policy: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f'policy ready in {time.perf_counter() - t0:.2f} s')
        reason = self._check_unnorm_key()
        if reason:
            self._fail_configure(reason)
            return TransitionCallbackReturn.FAILURE
        self._model_id = vla_backend.model_label(p, self._policy)
        try:
            self._frame_id = p['base_frame_id'] or load_embodiment(p['embodiment']).base_frame_id
        except (EmbodimentConfigError, FileNotFoundError) as exc:
            self._fail_configure(f'cannot read the embodiment config: {exc}')
            return TransitionCallbackReturn.FAILURE
        self._create_io()
        with self._cond:
            self._reset_counters()
            self._error = ''
            self._qos_problem = ''
            self._configured = True
        self._last_event = f'configured: {self._model_id}'
        self._publish_status(force=True)
        return TransitionCallbackReturn.SUCCESS

    def _check_unnorm_key(self) -> str:
        key = self._p['unnorm_key']
        try:
            keys = self._policy.unnorm_keys()
        except OpenVLAError as exc:
            if self._p['backend'] == 'remote':
                # The server may come up later; every prediction is checked anyway.
                self.get_logger().warning(f'cannot list unnorm keys from the server yet: {exc}')
                return ''
            return f'cannot list unnorm keys: {exc}'
        if key not in keys:
            return f'unnorm_key {key!r} is not in the checkpoint; available: {", ".join(sorted(keys))}'
        if int(keys[key]) != BRIDGE_ACTION_DIM:
            return (f'unnorm_key {key!r} has {keys[key]}-dimensional actions; EndEffectorDelta needs '
                    f'{BRIDGE_ACTION_DIM} ([dx, dy, dz, droll, dpitch, dyaw, gripper])')
        return ''

    def _create_io(self) -> None:
        self._action_pub = self.create_lifecycle_publisher(EndEffectorDelta,
                                                           defaults.relative(defaults.ACTION_TOPIC), 10)
        if self._p['publish_twist']:
            self._twist_pub = self.create_lifecycle_publisher(TwistStamped,
                                                              defaults.relative(defaults.ACTION_TWIST_TOPIC), 10)
        self._debug_pub = self.create_lifecycle_publisher(Image, defaults.relative(defaults.DEBUG_IMAGE_TOPIC), 1)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        if self._p['use_compressed']:
            topic = defaults.relative(defaults.COMPRESSED_CAMERA_TOPIC)
            msg_type, cb = CompressedImage, self._on_compressed
        else:
            msg_type, topic, cb = Image, defaults.relative(defaults.CAMERA_TOPIC), self._on_image
        self._subs.append(self.create_subscription(
            msg_type, topic, cb, qos_profile_sensor_data, callback_group=self._image_group,
            event_callbacks=events, qos_overriding_options=QoSOverridingOptions.with_default_policies()))
        self._subs.append(self.create_subscription(
            String, defaults.relative(defaults.INSTRUCTION_TOPIC), self._on_instruction, common.reliable_qos(10),
            callback_group=self._control_group,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)))

    def _destroy_io(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for pub in (self._action_pub, self._twist_pub, self._debug_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._action_pub = self._twist_pub = self._debug_pub = None

    def on_activate(self, state) -> TransitionCallbackReturn:
        if self._policy is None:  # unloaded by on_deactivate (GPU)
            try:
                self.get_logger().info('reloading the policy ...')
                self._policy = vla_backend.make_policy(self._p)
            except Exception as exc:
                self._last_event = f'cannot reload the policy: {exc}'
                self.get_logger().error(self._last_event)
                return TransitionCallbackReturn.FAILURE
        with self._cond:
            self._frame = None
            self._active = True
            self._stop_worker = False
        self._worker = threading.Thread(target=self._worker_loop, name='vla_inference', daemon=True)
        self._worker.start()
        result = super().on_activate(state)
        self._last_event = 'activated'
        self._publish_status(force=True)
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._stop_inference()
        if self._p['backend'] == 'local' and str(self._p['device']).startswith('cuda'):
            self._close_policy()  # give the GPU memory back; on_activate reloads
        self._last_event = 'deactivated'
        result = super().on_deactivate(state)
        self._publish_status(force=True)
        return result

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        self._last_event = 'cleaned up'
        self._publish_status(force=True)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._release()
        self._last_event = 'shut down'
        self._publish_status(force=True)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        self._stop_inference()
        self._destroy_io()
        self._close_policy()
        with self._cond:
            self._configured = False
            self._frame = None

    def _stop_inference(self) -> None:
        with self._cond:
            self._active = False
            self._stop_worker = True
            self._frame = None
            self._cond.notify_all()
        if self._worker is not None:
            # A running forward pass finishes first; its result is discarded.
            self._worker.join(timeout=60.0)
            self._worker = None

    def _close_policy(self) -> None:
        if self._policy is not None:
            try:
                self._policy.close()
            except Exception as exc:
                self.get_logger().warning(f'closing the policy failed: {exc}')
            self._policy = None

    # ------------------------------------------------------------------ inputs
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_image(self, msg: Image) -> None:
        self._store_frame(msg, image_msg_to_rgb)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._store_frame(msg, compressed_msg_to_rgb)

    def _store_frame(self, msg, convert) -> None:
        received = self._now_ns()
        with self._cond:
            self._counters['frames_received'] += 1
        try:
            rgb = convert(msg)
        except ImageConversionError as exc:
            with self._cond:
                self._counters['frames_rejected'] += 1
                self._last_event = f'image rejected: {exc}'
            self.get_logger().warning(self._last_event, throttle_duration_sec=WARN_THROTTLE_S)
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        with self._cond:
            self._last_frame_stamp_ns = stamp_ns
            if not self._active:
                return
            if self._frame is not None:
                self._counters['frames_dropped'] += 1
            self._frame = _Frame(rgb, msg.header, stamp_ns, received)
            self._cond.notify_all()

    def _on_incompatible_qos(self, info) -> None:
        policy = getattr(info.last_policy_kind, 'name', str(info.last_policy_kind))
        with self._cond:
            self._counters['qos_incompatible'] += 1
            self._last_event = self._qos_problem = (
                f'QoS incompatible with a publisher (policy {policy}, {info.total_count} so far): '
                'no data from it')
        self.get_logger().warning(self._last_event, throttle_duration_sec=WARN_THROTTLE_S)
        self._publish_status(force=True)

    # ------------------------------------------------------------------ inference
    def _ready(self) -> bool:
        return (self._active and self._frame is not None and bool(self._instruction)
                and bool(self._p['enabled']))

    def _worker_loop(self) -> None:
        next_start = 0.0
        while True:
            with self._cond:
                while True:
                    if self._stop_worker:
                        return
                    if self._ready():
                        wait = next_start - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait(0.5)
                frame, self._frame = self._frame, None
                instruction = self._instruction
                rate = float(self._p['max_rate_hz'])
                max_age = float(self._p['max_image_age_s'])
            next_start = time.monotonic() + (1.0 / rate if rate > 0 else 0.0)
            try:
                self._infer(frame, instruction, max_age)
            except Exception as exc:  # publishing or status failed: report, keep the worker alive
                self._report_error(exc)

    def _infer(self, frame: _Frame, instruction: str, max_age_s: float) -> None:
        age_s = (self._now_ns() - frame.stamp_ns) * 1e-9
        stale = frame.stamp_ns == 0 or (max_age_s > 0 and abs(age_s) > max_age_s)
        if stale:
            with self._cond:
                self._counters['frames_stale'] += 1
                self._last_event = (f'stale image skipped: age {age_s:.3f} s > {max_age_s} s'
                                    if frame.stamp_ns else 'image skipped: header.stamp is zero')
            self.get_logger().warning(self._last_event, throttle_duration_sec=WARN_THROTTLE_S)
            self._publish_status()
            return
        unnorm_key = self._p['unnorm_key']
        t0 = time.perf_counter()
        try:
            result = self._policy.predict(frame.rgb, instruction, unnorm_key)
            latency_s = time.perf_counter() - t0
            fields = prediction_to_delta_fields(result, instruction, frame.stamp_ns, self._frame_id,
                                                self._model_id, image_age_s=age_s)
        except Exception as exc:  # the node must keep serving: report and retry on the next frame
            self._report_error(exc)
            return
        with self._cond:
            if not (self._active and self._p['enabled'] and self._instruction == instruction):
                self._last_event = 'prediction discarded: paused, deactivated or instruction changed meanwhile'
                return
            fields['sequence'] = self._sequence
            self._sequence += 1
            self._counters['actions_published'] += 1
            self._error = ''
        # The node's own wall time of the policy call (for the remote backend: the round trip).
        fields['inference_latency_s'] = latency_s
        msg = fill_message(EndEffectorDelta(), fields)
        action = np.asarray(fields['action'])
        self._action_pub.publish(msg)
        if self._twist_pub is not None:
            self._twist_pub.publish(self._twist(msg))
        now = time.monotonic()
        self._last_action_mono = now
        self._latency.add(now, latency_s)
        self._published.add(now)
        if self._p['publish_debug_image'] and self._debug_pub.get_subscription_count() > 0:
            self._publish_debug_image(frame, instruction, action)
        self._publish_status()

    def _report_error(self, exc: Exception) -> None:
        with self._cond:
            self._counters['inference_errors'] += 1
            self._error = f'{type(exc).__name__}: {exc}'
            self._last_event = self._error
        self.get_logger().error(f'inference failed, nothing published: {self._error}',
                                throttle_duration_sec=WARN_THROTTLE_S)
        self._publish_status()

    def _twist(self, msg: EndEffectorDelta) -> TwistStamped:
        period = float(self._p['control_period_s'])
        t = TwistStamped()
        t.header = msg.header
        t.twist.linear.x, t.twist.linear.y, t.twist.linear.z = (
            msg.translation.x / period, msg.translation.y / period, msg.translation.z / period)
        t.twist.angular.x, t.twist.angular.y, t.twist.angular.z = (
            msg.rotation.x / period, msg.rotation.y / period, msg.rotation.z / period)
        return t

    def _publish_debug_image(self, frame: _Frame, instruction: str, action: np.ndarray) -> None:
        from openvla_ros.nodes import vla_debug_image

        try:
            img = vla_debug_image.render(frame.rgb, instruction, action[TRANSLATION_SLICE], float(action[GRIPPER_INDEX]))
            out = Image(header=frame.header, **rgb_to_image_fields(img, 'rgb8'))
            self._debug_pub.publish(out)
        except Exception as exc:  # a drawing problem must never stop the actions
            self.get_logger().warning(f'debug image failed: {exc}', throttle_duration_sec=WARN_THROTTLE_S)

    # ------------------------------------------------------------------ monitoring
    def _state(self) -> tuple[int, str]:
        state, message = self._state_and_reason()
        if self._qos_problem and self._qos_problem not in message:
            message = f'{self._qos_problem}; {message}' if message else self._qos_problem
        return state, message

    def _state_and_reason(self) -> tuple[int, str]:
        with self._cond:
            if not self._configured:
                return VlaStatus.STATE_UNCONFIGURED, self._last_event
            if not self._active:
                return VlaStatus.STATE_INACTIVE, self._last_event
            if not self._p['enabled']:
                return VlaStatus.STATE_PAUSED, 'paused through ~/enable or the enabled parameter'
            if self._error:
                return VlaStatus.STATE_ERROR, self._error
            if not self._instruction:
                return VlaStatus.STATE_IDLE, 'no instruction: publish one on ' + defaults.INSTRUCTION_TOPIC
            if time.monotonic() - self._last_action_mono > IDLE_AFTER_S:
                return VlaStatus.STATE_IDLE, self._last_event or 'waiting for camera images'
            return VlaStatus.STATE_RUNNING, self._last_event

    _STATE_NAMES = {VlaStatus.STATE_UNCONFIGURED: 'UNCONFIGURED', VlaStatus.STATE_INACTIVE: 'INACTIVE',
                    VlaStatus.STATE_IDLE: 'IDLE', VlaStatus.STATE_RUNNING: 'RUNNING',
                    VlaStatus.STATE_PAUSED: 'PAUSED', VlaStatus.STATE_ERROR: 'ERROR'}

    def _status_msg(self) -> VlaStatus:
        state, message = self._state()
        now_mono = time.monotonic()
        s = VlaStatus()
        s.header.stamp = self.get_clock().now().to_msg()
        s.state = state
        s.state_name = self._STATE_NAMES[state]
        s.message = message
        s.backend = self._p['backend']
        s.model_id = self._model_id
        s.device = vla_backend.device_label(self._p)
        s.dtype = self._p['dtype']
        s.quantization = self._p['quantization']
        s.unnorm_key = self._p['unnorm_key']
        s.instruction = self._instruction
        s.inference_rate_hz = self._published.rate_hz(now_mono)
        s.latency_p50_s = _nan_to(self._latency.percentile(now_mono, 50), -1.0)
        s.latency_p95_s = _nan_to(self._latency.percentile(now_mono, 95), -1.0)
        stamp = self._last_frame_stamp_ns
        s.last_image_age_s = -1.0 if stamp is None else (self._now_ns() - stamp) * 1e-9
        with self._cond:
            c = dict(self._counters)
        for k in ('frames_received', 'frames_rejected', 'frames_dropped', 'frames_stale',
                  'actions_published', 'inference_errors'):
            setattr(s, k, c[k])
        return s

    def _publish_status(self, force: bool = False) -> VlaStatus | None:
        if not rclpy.ok(context=self.context):
            return None
        s = self._status_msg()
        key = (s.state, s.message, s.instruction)
        if force or key != self._last_status_key:
            self._last_status_key = key
            self._status_pub.publish(s)
            return s
        return None

    def _on_status_timer(self) -> None:
        s = self._publish_status(force=True)
        if s is not None:
            self._publish_diagnostics(s)

    def _publish_diagnostics(self, s: VlaStatus) -> None:
        d = self._diagnostics
        with self._cond:
            c = dict(self._counters)
        model_level = common.OK if s.state != VlaStatus.STATE_UNCONFIGURED else common.WARN
        inference_level = common.ERROR if s.state == VlaStatus.STATE_ERROR else common.OK
        camera_level = common.WARN if (c['qos_incompatible'] or c['frames_rejected']) else common.OK
        statuses = [
            d.status('model', model_level, s.state_name, {
                'backend': s.backend, 'model_id': s.model_id, 'device': s.device, 'dtype': s.dtype,
                'quantization': s.quantization, 'unnorm_key': s.unnorm_key}),
            d.status('inference', inference_level, s.message if s.state == VlaStatus.STATE_ERROR else s.state_name, {
                'rate_hz': s.inference_rate_hz, 'latency_p50_s': s.latency_p50_s,
                'latency_p95_s': s.latency_p95_s, 'actions_published': c['actions_published'],
                'inference_errors': c['inference_errors'], 'last_error': self._error}),
            d.status('camera', camera_level, self._last_event if camera_level != common.OK else 'ok', {
                'last_image_age_s': s.last_image_age_s, 'frames_received': c['frames_received'],
                'frames_rejected': c['frames_rejected'], 'frames_dropped': c['frames_dropped'],
                'frames_stale': c['frames_stale'], 'qos_incompatible_events': c['qos_incompatible']}),
            d.status('instruction', common.OK if s.instruction else common.WARN,
                     s.instruction or 'no instruction', {'instructions_rejected': c['instructions_rejected']}),
        ]
        d.publish(statuses)


def _nan_to(x: float, default: float) -> float:
    return default if math.isnan(x) else x


def main(args=None) -> int:
    return common.run_node(VlaNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
