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

import inspect
import sys
import time

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
from openvla_ros.action_message import (GRIPPER_INDEX, ROTATION_SLICE, TRANSLATION_SLICE, fill_message,
                                        prediction_to_delta_fields)
from openvla_ros.control.geometry import delta_to_twist
from openvla_ros.control.embodiment import EmbodimentConfigError, load_embodiment
from openvla_ros.engine.api import OpenVLAError
from openvla_ros.engine.prompt import validate_instruction
from openvla_ros.imaging import ImageConversionError, compressed_msg_to_rgb, image_msg_to_rgb, rgb_to_image_fields
from openvla_ros.msg import EndEffectorDelta, VlaStatus
from openvla_ros.nodes import common
from openvla_ros.stamps import stamp_to_ns
from openvla_ros.nodes import vla_backend, vla_core, vla_params

WARN_THROTTLE_S = 5.0
# How long deactivate waits for a forward pass to finish; a worker still running afterwards is
# kept (and its result discarded), and activate refuses until it has ended.
WORKER_JOIN_S = 60.0
ACTIVATE_WAIT_S = 5.0


class VlaNode(LifecycleNode):

    def __init__(self, **kwargs):
        super().__init__(defaults.VLA_NODE, **kwargs)
        for spec in vla_params.PARAMS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        self._p = {spec.name: self.get_parameter(spec.name).value for spec in vla_params.PARAMS}

        self._core = vla_core.VlaCore(self._now_ns, time.monotonic, max_rate_hz=self._p['max_rate_hz'],
                                      max_image_age_s=self._p['max_image_age_s'],
                                      enabled=self._p['enabled'])
        self._policy = None
        self._accepts_draft = False
        self._worker = vla_core.WorkerSlot('vla_inference')
        self._model_id = ''
        self._frame_id = ''
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
            self._log_info(self._core.set_instruction(self._p['instruction']))
        self._publish_status(force=True)

    def _log_info(self, text: str) -> None:
        self.get_logger().info(text)

    # ------------------------------------------------------------------ parameters
    def _check_instruction(self, text: str) -> None:
        """The engine's check: the loaded backend's (local: characters and token positions,
        remote: characters), else the character-level one."""
        policy = self._policy
        if policy is not None and hasattr(policy, 'check_instruction'):
            policy.check_instruction(text)
        else:
            validate_instruction(text)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name not in vla_params.BY_NAME:
                continue
            if p.name in vla_params.LOAD_TIME and self._core.configured:
                return SetParametersResult(
                    successful=False,
                    reason=f'{p.name} is fixed while the model is loaded; cleanup, set it, configure again')
            reason = vla_params.check_value(p.name, p.value)
            if p.name == 'instruction' and not reason:
                try:
                    reason = self._core.instruction_problem(p.value, self._check_instruction)
                except Exception as exc:  # a closed or broken backend: refuse, keep the current one
                    reason = f'cannot check the instruction: {type(exc).__name__}: {exc}'
            if reason:
                if p.name == 'instruction':
                    self.get_logger().warning(self._core.reject_instruction(reason))
                    self._publish_status()
                return SetParametersResult(successful=False, reason=reason)
        for p in params:
            if p.name in vla_params.BY_NAME:
                self._apply_param(p.name, p.value)
        return SetParametersResult(successful=True)

    def _apply_param(self, name: str, value) -> None:
        self._p[name] = value
        if name == 'instruction':
            self._log_info(self._core.set_instruction(value))
        else:
            self._core.set_param(name, value)
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
        resp.message = self._core.reset()
        self._publish_status(force=True)
        resp.success = True
        return resp

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            return self._configure()
        except Exception as exc:  # a broken backend must not take the node down
            self._fail_configure(f'configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE

    def _fail_configure(self, reason: str) -> None:
        self.get_logger().error(reason)
        self._core.note(reason)
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
            self._set_policy(vla_backend.make_policy(p))
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
        self._core.set_configured(True, f'configured: {self._model_id}')
        self._publish_status(force=True)
        return TransitionCallbackReturn.SUCCESS

    def _set_policy(self, policy) -> None:
        self._policy = policy
        try:
            self._accepts_draft = 'draft_token_ids' in inspect.signature(policy.predict).parameters
        except (TypeError, ValueError):
            self._accepts_draft = False

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
        # Relative names (defaults.relative): the node's namespace moves every package topic.
        self._action_pub = self.create_lifecycle_publisher(EndEffectorDelta,
                                                           defaults.relative(defaults.ACTION_TOPIC), 10)
        if self._p['publish_twist']:
            self._twist_pub = self.create_lifecycle_publisher(TwistStamped,
                                                              defaults.relative(defaults.ACTION_TWIST_TOPIC), 10)
        self._debug_pub = self.create_lifecycle_publisher(Image, defaults.relative(defaults.DEBUG_IMAGE_TOPIC), 1)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        if self._p['use_compressed']:
            msg_type, topic, cb = CompressedImage, defaults.COMPRESSED_CAMERA_TOPIC, self._on_compressed
        else:
            msg_type, topic, cb = Image, defaults.CAMERA_TOPIC, self._on_image
        self._subs.append(self.create_subscription(
            msg_type, defaults.relative(topic), cb, qos_profile_sensor_data, callback_group=self._image_group,
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
        if self._worker.alive():
            # A worker from before the last deactivate is still inside a forward pass: wait a
            # little, never start a second one beside it.
            if not self._worker.stop(ACTIVATE_WAIT_S):
                return self._fail_activate('the previous inference worker is still running (inside a '
                                           'forward pass); activate again when it has finished')
        if self._policy is None:  # unloaded by on_deactivate (GPU)
            try:
                self.get_logger().info('reloading the policy ...')
                self._set_policy(vla_backend.make_policy(self._p))
            except Exception as exc:
                return self._fail_activate(f'cannot reload the policy: {exc}')
        # The lifecycle publishers first: the worker may publish as soon as it runs.
        result = super().on_activate(state)
        self._core.set_active(True)
        reason = self._worker.start(self._worker_loop)
        if reason:
            self._core.set_active(False)
            super().on_deactivate(state)
            return self._fail_activate(reason)
        self._core.note('activated')
        self._publish_status(force=True)
        return result

    def _fail_activate(self, reason: str) -> TransitionCallbackReturn:
        self.get_logger().error(reason)
        self._core.note(reason)
        self._publish_status(force=True)
        return TransitionCallbackReturn.FAILURE

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        still_running = not self._stop_inference()
        if (not still_running and self._p['backend'] == 'local'
                and str(self._p['device']).startswith('cuda')):
            self._close_policy()  # give the GPU memory back; on_activate reloads
        self._core.note('deactivated' + (': a forward pass is still running, its result will be '
                                         'discarded' if still_running else ''))
        result = super().on_deactivate(state)
        self._publish_status(force=True)
        return result

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        self._core.note('cleaned up')
        self._publish_status(force=True)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._release()
        self._core.note('shut down')
        self._publish_status(force=True)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        self._stop_inference()
        self._destroy_io()
        self._close_policy()
        self._core.set_configured(False)

    def _stop_inference(self) -> bool:
        """True when no worker runs any more. A running forward pass finishes first; its result
        is discarded (the core is inactive)."""
        self._core.set_active(False)
        return self._worker.stop(WORKER_JOIN_S, notify=self._notify_core)

    def _notify_core(self) -> None:
        with self._core.cond:
            self._core.cond.notify_all()

    def _close_policy(self) -> None:
        if self._policy is not None:
            if self._worker.alive():
                # Closing under a running forward pass would break it mid-way; the object goes
                # with the worker.
                self._policy = None
                return
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
        self._core.frame_received()
        try:
            rgb = convert(msg)
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except Exception as exc:  # ImageConversionError or any decoder failure: one bad frame never ends the node
            detail = str(exc) if isinstance(exc, ImageConversionError) else f'{type(exc).__name__}: {exc}'
            self.get_logger().warning(self._core.frame_rejected(detail), throttle_duration_sec=WARN_THROTTLE_S)
            self._publish_status()
            return
        self._core.offer_frame(rgb, msg.header, stamp_ns, received)

    def _on_incompatible_qos(self, info) -> None:
        policy = getattr(info.last_policy_kind, 'name', str(info.last_policy_kind))
        self.get_logger().warning(self._core.qos_incompatible(policy, info.total_count),
                                  throttle_duration_sec=WARN_THROTTLE_S)
        self._publish_status(force=True)

    # ------------------------------------------------------------------ inference
    def _worker_loop(self, stop) -> None:
        policy = self._policy   # this worker's backend, even if the node drops its reference
        while True:
            job = self._core.next_job(stop)
            if job is None:
                return
            try:
                if self._core.is_stale(job):
                    self.get_logger().warning(self._core.last_event, throttle_duration_sec=WARN_THROTTLE_S)
                    self._publish_status()
                    continue
                self._infer(policy, job)
            except Exception as exc:  # publishing or status failed: report, keep the worker alive
                self._report_error(exc)

    def _infer(self, policy, job: vla_core.Job) -> None:
        unnorm_key = self._p['unnorm_key']
        t0 = time.perf_counter()
        try:
            if self._accepts_draft and job.draft_token_ids is not None:
                result = policy.predict(job.frame.rgb, job.instruction, unnorm_key,
                                        draft_token_ids=list(job.draft_token_ids))
            else:
                result = policy.predict(job.frame.rgb, job.instruction, unnorm_key)
            # The node's own wall time of the policy call (for the remote backend: the round trip).
            latency_s = time.perf_counter() - t0
            fields = prediction_to_delta_fields(result, job.instruction, job.frame.stamp_ns, self._frame_id,
                                                self._model_id, image_age_s=job.age_s)
            fields['inference_latency_s'] = latency_s
        except Exception as exc:  # the node must keep serving: report and retry on the next frame
            self._report_error(exc)
            return
        published = []

        def publish(sequence: int) -> None:
            fields['sequence'] = sequence
            msg = fill_message(EndEffectorDelta(), fields)
            self._action_pub.publish(msg)
            published.append(msg)

        if not self._core.publish_if_current(job, result.action_token_ids, latency_s, publish):
            return
        msg = published[0]
        action = fields['action']
        if self._twist_pub is not None:
            self._twist_pub.publish(self._twist(msg, action))
        if self._p['publish_debug_image'] and self._debug_pub.get_subscription_count() > 0:
            self._publish_debug_image(policy, job, action)
        self._publish_status()

    def _report_error(self, exc: Exception) -> None:
        error = self._core.report_error(exc)
        self.get_logger().error(f'inference failed, nothing published: {error}',
                                throttle_duration_sec=WARN_THROTTLE_S)
        self._publish_status()

    def _twist(self, msg: EndEffectorDelta, action) -> TwistStamped:
        linear, angular = delta_to_twist(action[TRANSLATION_SLICE], action[ROTATION_SLICE],
                                         float(self._p['control_period_s']))
        t = TwistStamped()
        t.header = msg.header
        t.twist.linear.x, t.twist.linear.y, t.twist.linear.z = (float(v) for v in linear)
        t.twist.angular.x, t.twist.angular.y, t.twist.angular.z = (float(v) for v in angular)
        return t

    def _publish_debug_image(self, policy, job: vla_core.Job, action) -> None:
        from openvla_ros.nodes import vla_debug_image

        try:
            img = vla_debug_image.render(job.frame.rgb, job.instruction, action[TRANSLATION_SLICE],
                                         float(action[GRIPPER_INDEX]), policy=policy)
            out = Image(header=job.frame.header, **rgb_to_image_fields(img, 'rgb8'))
            self._debug_pub.publish(out)
        except Exception as exc:  # a drawing problem must never stop the actions
            self.get_logger().warning(f'debug image failed: {exc}', throttle_duration_sec=WARN_THROTTLE_S)

    # ------------------------------------------------------------------ monitoring
    def _status_msg(self) -> VlaStatus:
        core = self._core
        state, message = core.state()
        s = VlaStatus()
        s.header.stamp = self.get_clock().now().to_msg()
        s.state = state
        s.state_name = vla_core.STATE_NAMES[state]
        s.message = message
        s.backend = self._p['backend']
        s.model_id = self._model_id
        s.device = vla_backend.device_label(self._p)
        s.dtype = self._p['dtype']
        s.quantization = self._p['quantization']
        s.unnorm_key = self._p['unnorm_key']
        s.instruction = core.instruction
        s.inference_rate_hz, s.latency_p50_s, s.latency_p95_s = core.rates()
        s.last_image_age_s = core.image_age_s()
        with core.cond:
            c = dict(core.counters)
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
        lv = self._core.levels()
        c = lv.counters
        level = {'OK': common.OK, 'WARN': common.WARN, 'ERROR': common.ERROR}
        error = self._core.error
        statuses = [
            d.status('model', level[lv.model], f'backend failing: {error}' if lv.model == 'ERROR' else s.state_name, {
                'backend': s.backend, 'model_id': s.model_id, 'device': s.device, 'dtype': s.dtype,
                'quantization': s.quantization, 'unnorm_key': s.unnorm_key}),
            d.status('inference', level[lv.inference], s.message if s.state == VlaStatus.STATE_ERROR else s.state_name, {
                'rate_hz': s.inference_rate_hz, 'latency_p50_s': s.latency_p50_s,
                'latency_p95_s': s.latency_p95_s, 'actions_published': c['actions_published'],
                'inference_errors': c['inference_errors'], 'last_error': error}),
            d.status('camera', level[lv.camera], self._core.last_event if lv.camera != 'OK' else 'ok', {
                'last_image_age_s': s.last_image_age_s, 'frames_received': c['frames_received'],
                'frames_rejected': c['frames_rejected'], 'frames_dropped': c['frames_dropped'],
                'frames_stale': c['frames_stale'], 'qos_incompatible_events': c['qos_incompatible']}),
            d.status('instruction', level[lv.instruction],
                     s.instruction or 'no instruction', {'instructions_rejected': c['instructions_rejected']}),
        ]
        d.publish(statuses)


def main(args=None) -> int:
    return common.run_node(VlaNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
