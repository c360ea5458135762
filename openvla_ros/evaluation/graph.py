"""Evaluation episodes through the real ROS graph: vla_node → arm_controller → sim_node (lockstep).

The same episode as :func:`openvla_ros.evaluation.runner.run_episode`, with every part in its own
process over loopback DDS, as ``openvla-bringup sim:=true lockstep:=true`` starts them
(:func:`openvla_ros.bringup.node_specs`; vla_node and arm_controller on ``use_sim_time``):

1. reset: sim_node's ``~/reset`` with its ``task`` and ``seed`` parameters applies
   :func:`tasks.reset_episode` (the in-process runner's reset) and publishes the new state
   (clock, joint states, ``~/task_state``, camera image); arm_controller's ``~/reset_target``
   makes the next action start from the measured pose, as a fresh controller does;
2. the instruction goes out on ``/openvla/instruction``; vla_node acts on the reset image, its
   action goes to arm_controller, whose joint trajectory makes sim_node advance exactly one
   control period and publish the next state and image, and so on. A refused action is
   still one step: the evaluator calls sim_node's ``~/step`` (as the in-process runner advances
   physics after a refusal);
3. each step's observation and success are sim_node's ``~/task_state`` (:func:`tasks.observe`,
   the in-process runner's observation); the episode ends on success or after ``max_steps``;
   then vla_node's instruction is cleared, the evaluator waits until every action it published
   has been handled and stepped, and vla_node's ``~/reset`` drops the frame it holds.

A policy that reads the simulator state (the scripted expert, ``uses_image = False``) runs in the
evaluator like a teleoperator: it sees a mirror of the workcell set from ``~/task_state`` (the
full ``qpos``) and publishes EndEffectorDelta messages into arm_controller; no vla_node is needed.
:func:`run_graph_episode` is the one call for "one episode through the graph with policy X".

Determinism: the graph gives the in-process runner's actions (the same image bytes, instruction
and engine options reach the same engine) and end-effector trajectory; joint positions travel as
float64, the one rounding is a trajectory duration in whole nanoseconds
(``builtin_interfaces/Duration``), so end-effector positions agree to far below a micrometre.
The expert's mirror has its kinematics computed from the published ``qpos`` (in process the
expert reads the physics' own, one physics step older), so its actions agree only closely.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from openvla_ros import bringup, defaults
from openvla_ros.control.embodiment import Embodiment
from openvla_ros.evaluation import tasks as T
from openvla_ros.evaluation.runner import DEFAULT_IMAGE_SIZE, EpisodeResult, timed_predict, uses_image

VLA_NODE_POLICY = 'vla_node'           # run_episode(policy=...): the graph's vla_node is the policy
STARTUP_TIMEOUT_S = 300.0              # model load + self test of a large checkpoint
STEP_TIMEOUT_S = 120.0                 # one inference + one step
SERVICE_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 10.0
# arm_controller's bound on the joint states' age in the evaluation graph, s. The node-clock
# (sim time) bound never binds in lockstep: every state is published at its sim time and sim time
# stands while paused. On the steady clock the age is the gap between two of sim_node's paused
# re-publications (LOCKSTEP_IDLE_PERIOD_S, 0.1 s) as the receiving process sees them, which on a
# loaded machine (a 2-core runner with a second test worker) has reached 1.7 s: with the
# embodiment's 0.5 s an action was refused for the load, not for the episode. A dead simulator is
# still caught (the evaluator also watches its process).
LOCKSTEP_MAX_JOINT_STATE_AGE_S = 5.0


class GraphError(RuntimeError):
    """The graph did not do what an episode needs (a node failed to start, a timeout)."""


def vla_parameters(*, model_path: str | Path | None = None, options=None, server_url: str | None = None,
                   remote=None, unnorm_key: str | None = None) -> dict:
    """vla_node parameter overrides for a checkpoint (with its PolicyOptions) or a server (with its
    RemoteOptions): the engine options travel field by field, so vla_node runs the engine exactly
    as an in-process policy loaded with the same options."""
    from openvla_ros.policy.options import POLICY_SPECS, REMOTE_SPECS

    params: dict = {}
    if server_url:
        params['backend'] = 'remote'
        if remote is not None:
            params.update({s.ros_name: getattr(remote, s.field) for s in REMOTE_SPECS if s.ros_name})
        params['server_url'] = server_url
    else:
        params['backend'] = 'local'
        params['model_path'] = str(model_path)
    if options is not None:
        params.update({s.ros_name: getattr(options, s.field) for s in POLICY_SPECS if s.ros_name})
    if unnorm_key:
        params['unnorm_key'] = unnorm_key
    return params


@dataclasses.dataclass
class _Mirror:
    """What a state-reading policy's ``start_episode(env, task)`` needs: ``sim`` and ``embodiment``."""
    sim: object
    embodiment: Embodiment


class EvaluationGraph:
    """The node processes and the evaluator's rclpy node; reused across episodes.

    ``executable_command(name)`` gives the argv of a package executable and
    ``stop_processes(procs)`` stops them (``openvla_ros.cli.bringup`` provides both).
    ``vla``: vla_node parameter overrides (:func:`vla_parameters`); None = no vla_node (only
    state-reading policies). The node set runs in a ROS domain of its own (``domain_id``)."""

    def __init__(self, executable_command: Callable[[str], list[str]],
                 stop_processes: Callable[[list], dict], *, vla: dict | None = None,
                 image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, log_dir: str | Path | None = None,
                 embodiment: Embodiment | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 domain_id: int | None = None):
        self._command, self._stop = executable_command, stop_processes
        self._vla = dict(vla) if vla is not None else None
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self._tmp = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix='openvla-eval-graph-')
            log_dir = self._tmp.name
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.embodiment = (embodiment or T._embodiment()).with_overrides(start_enabled=True)
        self.startup_timeout_s = startup_timeout_s
        self.domain_id = domain_id          # None: a free one of runtime_env.DOMAIN_IDS at start
        self.period_s = self.embodiment.control_period_s
        self._procs: list = []
        self._logs: list = []
        self._node = self._ctx = self._executor = self._spin_thread = None
        self._cond = threading.Condition()
        self._mirror = None
        self._states: dict[tuple[int, int], dict] = {}     # (episode, step) -> task state
        self._actions: list = []                           # EndEffectorDelta messages of this episode
        self._controller = None                            # newest ControllerStatus
        self._vla_status = None                            # newest VlaStatus
        self._images: dict[int, np.ndarray] = {}           # stamp ns -> rgb, while recording
        self._recording = False

    @property
    def mirror(self):
        """The evaluator's copy of the workcell (reset like sim_node's; plots may reset it)."""
        return self._mirror

    @property
    def has_vla_node(self) -> bool:
        return self._vla is not None

    def pid(self, name: str) -> int:
        """The process id of the node ``name`` (a :mod:`openvla_ros.defaults` node name)."""
        for node, proc in self._procs:
            if node == name:
                return proc.pid
        raise KeyError(f'no {name} in this graph')

    # ------------------------------------------------------------------ bring-up
    def specs(self) -> list:
        """The node set: the bring-up description with sim:=true lockstep:=true, plus the
        evaluation's settings (camera size, lockstep period = control period, controller enabled
        with the longest watchdog its hard limits allow: lockstep pauses sim time while a policy
        thinks, the steady-clock watchdog keeps running; joint states may be
        :data:`LOCKSTEP_MAX_JOINT_STATE_AGE_S` old on the steady clock, within the hard limit)."""
        e = self.embodiment
        hard = e.hard_limits
        values = {'sim': 'true', 'lockstep': 'true', 'embodiment': e.name, 'diagnostic_aggregator': 'false'}
        extra = {
            defaults.VLA_NODE: {**(self._vla or {}), 'max_rate_hz': 0.0, 'instruction': '',
                                'publish_debug_image': False, 'embodiment': e.name},
            defaults.ARM_CONTROLLER_NODE: {
                'start_enabled': True,
                'watchdog_timeout_s': float(hard.get('watchdog_timeout_s', e.watchdog_timeout_s)),
                'max_joint_state_age_s': float(min(hard.get('max_joint_state_age_s', e.max_joint_state_age_s),
                                                   max(LOCKSTEP_MAX_JOINT_STATE_AGE_S, e.max_joint_state_age_s)))},
            defaults.SIM_NODE: {'image_width': self.image_size[0], 'image_height': self.image_size[1],
                                'lockstep_period_s': float(self.period_s), 'publish_object_poses': False},
        }
        out = []
        for spec in bringup.node_specs(values):
            if spec.name == defaults.VLA_NODE and self._vla is None:
                continue
            out.append(dataclasses.replace(spec, parameters=list(spec.parameters) + [extra[spec.name]]))
        return out

    def start(self) -> 'EvaluationGraph':
        import subprocess

        from openvla_ros import runtime_env

        # this process's settings (what is set already is kept), and a domain of the graph's own:
        # another node set on the machine (a bring-up, a second evaluation) uses the same topic
        # names and must not take part in these episodes
        runtime_env.apply()
        if self.domain_id is None:
            import random

            taken = os.environ.get('ROS_DOMAIN_ID', '')
            self.domain_id = random.choice([d for d in runtime_env.DOMAIN_IDS if str(d) != taken])
        base = {k: v for k, v in os.environ.items() if k != 'ROS_DOMAIN_ID'}
        env = runtime_env.loopback_env(base, domain_id=self.domain_id)
        try:
            for spec in self.specs():
                log = open(self.log_dir / f'{spec.name}.log', 'wb')
                self._logs.append(log)
                argv = self._command(spec.executable) + spec.ros_args()
                self._procs.append((spec.name, subprocess.Popen(argv, env=env, stdout=log,
                                                                 stderr=subprocess.STDOUT)))
            self._start_client()
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _start_client(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rcl_interfaces.srv import SetParameters
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from openvla_ros.msg import ControllerStatus, EndEffectorDelta, VlaStatus
        from openvla_ros.nodes.common import latched_qos, reliable_qos
        from openvla_ros.sim.workcell import WorkcellSim

        self._ctx = Context()
        rclpy.init(context=self._ctx, domain_id=int(self.domain_id))
        node = self._node = rclpy.create_node('openvla_eval_graph', context=self._ctx)
        sim, vla, arm = (f'/{defaults.SIM_NODE}', f'/{defaults.VLA_NODE}', f'/{defaults.ARM_CONTROLLER_NODE}')
        node.create_subscription(String, f'{sim}/task_state', self._on_task_state, reliable_qos(100))
        node.create_subscription(EndEffectorDelta, defaults.ACTION_TOPIC, self._on_action, reliable_qos(100))
        node.create_subscription(ControllerStatus, defaults.CONTROLLER_STATUS_TOPIC,
                                 lambda m: self._store('_controller', m), latched_qos(50))
        node.create_subscription(VlaStatus, defaults.VLA_STATUS_TOPIC,
                                 lambda m: self._store('_vla_status', m), latched_qos(50))
        node.create_subscription(Image, defaults.CAMERA_TOPIC, self._on_image, reliable_qos(10))
        self._action_pub = node.create_publisher(EndEffectorDelta, defaults.ACTION_TOPIC, reliable_qos(10))
        self._instruction_pub = node.create_publisher(String, defaults.INSTRUCTION_TOPIC, reliable_qos(10))
        self._clients = {
            'sim_reset': node.create_client(Trigger, f'{sim}/reset'),
            'sim_step': node.create_client(Trigger, f'{sim}/step'),
            'sim_params': node.create_client(SetParameters, f'{sim}/set_parameters'),
            'arm_reset_target': node.create_client(Trigger, f'{arm}/reset_target'),
        }
        if self._vla is not None:
            self._clients['vla_reset'] = node.create_client(Trigger, f'{vla}/reset')
            self._clients['vla_params'] = node.create_client(SetParameters, f'{vla}/set_parameters')
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(node)
        self._spin_thread = threading.Thread(target=self._spin, name='eval_graph_spin', daemon=True)
        self._spin_thread.start()
        self._mirror = WorkcellSim()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self._ctx.ok():
                self._executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, RuntimeError):
            pass

    def _wait_ready(self) -> None:
        from openvla_ros.msg import VlaStatus

        deadline = time.monotonic() + self.startup_timeout_s
        for name, client in self._clients.items():
            while not client.wait_for_service(timeout_sec=0.5):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise GraphError(f'{name}: service not available after {self.startup_timeout_s:.0f} s')

        def controller_ready():
            c = self._controller
            return c is not None and c.enabled and '(inactive)' not in c.state_name and c.state_name != 'UNCONFIGURED'

        self._wait(controller_ready, deadline - time.monotonic(), 'arm_controller active and enabled')
        if self._vla is not None:
            def vla_ready():
                s = self._vla_status
                if s is not None and s.state == VlaStatus.STATE_UNCONFIGURED and s.message.startswith(
                        ('configure failed', 'cannot', 'invalid parameters', 'unnorm_key')):
                    raise GraphError(f'vla_node: {s.message}')
                return s is not None and s.state in (VlaStatus.STATE_IDLE, VlaStatus.STATE_RUNNING)

            self._wait(vla_ready, deadline - time.monotonic(), 'vla_node active')

    def _check_alive(self) -> None:
        for name, proc in self._procs:
            if proc.poll() is not None:
                tail = (self.log_dir / f'{name}.log').read_text(errors='replace')[-2000:]
                raise GraphError(f'{name} exited with code {proc.returncode}; its log ends:\n{tail}')

    def close(self) -> None:
        if self._ctx is not None:
            import rclpy

            rclpy.try_shutdown(context=self._ctx)
            if self._spin_thread is not None:
                self._spin_thread.join(timeout=5)
            if self._node is not None:
                self._node.destroy_node()
            self._ctx = None
        if self._procs:
            self._stop(self._procs)
            self._procs = []
        for log in self._logs:
            log.close()
        self._logs = []
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> 'EvaluationGraph':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ callbacks
    def _store(self, attr: str, msg) -> None:
        with self._cond:
            setattr(self, attr, msg)
            self._cond.notify_all()

    def _on_task_state(self, msg) -> None:
        state = json.loads(msg.data)
        with self._cond:
            self._states.setdefault((state['episode'], state['step']), state)
            self._cond.notify_all()

    def _on_action(self, msg) -> None:
        with self._cond:
            self._actions.append(msg)
            self._cond.notify_all()

    def _on_image(self, msg) -> None:
        if not self._recording:
            return
        from openvla_ros.imaging import image_msg_to_rgb
        from openvla_ros.stamps import stamp_to_ns

        rgb = image_msg_to_rgb(msg)
        with self._cond:
            self._images[stamp_to_ns(msg.header.stamp)] = rgb
            self._cond.notify_all()

    def _wait(self, predicate, timeout_s: float, what: str):
        """Wait until ``predicate()`` (called under the lock) is truthy; returns its value."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
                if not self._cond_check_alive():
                    break
        self._check_alive()
        raise GraphError(f'timed out after {timeout_s:.0f} s waiting for {what}')

    def _cond_check_alive(self) -> bool:
        return all(proc.poll() is None for _, proc in self._procs)

    def _call(self, name: str, request=None, timeout_s: float = SERVICE_TIMEOUT_S):
        client = self._clients[name]
        if request is None:
            request = client.srv_type.Request()
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout_s):
            self._check_alive()
            raise GraphError(f'{name}: no answer within {timeout_s:.0f} s')
        return future.result()

    def _set_parameters(self, name: str, values: dict) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        for result in self._call(name, request).results:
            if not result.successful:
                raise GraphError(f'{name} {values}: {result.reason}')

    # ------------------------------------------------------------------ episodes
    def run_episode(self, policy, task: T.Task | str, seed: int, *, max_steps: int | None = None,
                    record: bool = False, unnorm_key: str | None = None, paraphrase=None,
                    instruction: str | None = None, stop_on_success: bool = True,
                    step_timeout_s: float = STEP_TIMEOUT_S) -> EpisodeResult:
        """One seeded episode through the graph. ``policy``: :data:`VLA_NODE_POLICY` (the
        graph's vla_node; ``unnorm_key`` is its parameter then) or a state-reading policy
        (``uses_image = False``, ``start_episode(env, task)`` + ``predict``) that the evaluator
        runs as a teleoperator."""
        task = T.get_task(task) if isinstance(task, str) else task
        via_vla = isinstance(policy, str)
        if via_vla and policy != VLA_NODE_POLICY:
            raise ValueError(f'unknown graph policy {policy!r} (use {VLA_NODE_POLICY!r} or a policy object)')
        if via_vla and self._vla is None:
            raise GraphError('this graph has no vla_node (started with vla=None)')
        if not via_vla and uses_image(policy):
            raise ValueError('a policy that needs camera images runs in vla_node through the graph '
                             f'(policy={VLA_NODE_POLICY!r}); only state-reading policies run in the evaluator')
        max_steps = max_steps or task.max_steps
        wall0 = time.perf_counter()
        start = T.reset_episode(self._mirror, task, seed, paraphrase=paraphrase, embodiment=self.embodiment)
        text = instruction if instruction is not None else start.instruction
        with self._cond:
            self._images = {}
            self._recording = record      # from the reset on: the reset image is the first frame
        episode, state = self._reset(task, seed, start)
        with self._cond:
            self._actions = []
        if not via_vla and hasattr(policy, 'start_episode'):
            policy.start_episode(_Mirror(self._mirror, self.embodiment), task)
        base = self._controller_counts()
        states, actions, refusals = [state], [], []
        reason, success, steps, policy_s = 'max_steps', False, 0, 0.0
        explicit_steps = refused = 0
        try:
            if via_vla:
                self._publish_instruction(text)
            for step in range(max_steps):
                stamp_ns = state['stamp_ns']
                if via_vla:
                    msg = self._wait_vla_action(step, stamp_ns, step_timeout_s)
                    if isinstance(msg, str):
                        reason = msg
                        break
                    action = np.asarray(msg.action, dtype=float)
                    policy_s += float(msg.inference_latency_s)
                else:
                    self._sync_mirror(state)
                    action, error, seconds = timed_predict(   # the publish refuses what no robot may get
                        policy, None, text, unnorm_key, then=lambda a: self._publish_action(a, stamp_ns, text))
                    policy_s += seconds
                    if error is not None:
                        reason = error
                        break
                actions.append(action)
                refusal, refused = self._wait_outcome(base, step + 1, refused, step_timeout_s)
                if refusal is not None:
                    refusals.append((step, refusal))
                    self._call('sim_step')     # a refused action is still one step
                    explicit_steps += 1
                state = self._wait_state(episode, step + 1, step_timeout_s)
                states.append(state)
                steps = step + 1
                if state['success']:
                    success, reason = True, 'success'
                    if stop_on_success:
                        break
        finally:
            self._finish(episode, base, explicit_steps, via_vla)
        frames = self._frames([s['stamp_ns'] for s in states]) if record else []
        return EpisodeResult(
            task=task.name, seed=int(seed), instruction=text, success=success, steps=steps, reason=reason,
            ee_positions=np.array([s['ee_position'] for s in states], dtype=float),
            ee_rotations=np.array([s['ee_rotation'] for s in states], dtype=float),
            tip_positions=np.array([s['tip_position'] for s in states], dtype=float),
            actions=np.array(actions).reshape(-1, 7) if actions else np.zeros((0, 7)),
            gripper=np.array([s['gripper'] for s in states], dtype=float), refusals=refusals, frames=frames,
            sim_time_s=states[-1]['sim_time_s'] - states[0]['sim_time_s'],
            wall_time_s=time.perf_counter() - wall0, policy_time_s=policy_s)

    def _reset(self, task: T.Task, seed: int, start: T.EpisodeStart) -> tuple[int, dict]:
        self._set_parameters('sim_params', {'task': task.name, 'seed': int(seed)})
        answer = self._call('sim_reset')
        if not answer.success:
            raise GraphError(f'sim_node reset: {answer.message}')
        info = json.loads(answer.message)
        poses = {k: tuple(v) for k, v in info['object_poses'].items()}
        if poses != start.object_poses:
            raise GraphError(f'sim_node reset {task.name} seed {seed} to another layout than reset_episode: '
                             f'{poses} != {start.object_poses}')
        episode = int(info['episode'])
        state = self._wait_state(episode, 0, SERVICE_TIMEOUT_S)
        # the next action starts from the measured (reset) pose, as with a fresh controller; the
        # target in the status shows that the controller has the reset joint states
        expected = self._mirror_ee_position()
        deadline = time.monotonic() + SERVICE_TIMEOUT_S
        while True:
            answer = self._call('arm_reset_target')
            status = self._wait(lambda: self._controller if self._controller is not None and
                                self._controller.last_event.startswith('target reset') else None,
                                SERVICE_TIMEOUT_S, 'the controller status after ~/reset_target')
            p = status.target_pose.position
            if answer.success and np.allclose([p.x, p.y, p.z], expected, rtol=0, atol=1e-9):
                break
            if time.monotonic() > deadline:
                raise GraphError(f'arm_controller did not take the reset joint states: target '
                                 f'{[p.x, p.y, p.z]} != {expected.tolist()} ({answer.message})')
            time.sleep(0.05)
        return episode, state

    def _mirror_ee_position(self) -> np.ndarray:
        from openvla_ros.control.kinematics import ArmKinematics

        if not hasattr(self, '_kinematics'):
            self._kinematics = ArmKinematics(self.embodiment)
        q = dict(zip(self._mirror.joint_names, self._mirror.joint_positions().tolist()))
        return self._kinematics.forward(np.array([q[j] for j in self.embodiment.arm_joints])).position

    def _sync_mirror(self, state: dict) -> None:
        import mujoco

        self._mirror.data.qpos[:] = state['qpos']
        mujoco.mj_kinematics(self._mirror.model, self._mirror.data)

    def _controller_counts(self) -> tuple[int, int, int]:
        with self._cond:
            c = self._controller
            return int(c.actions_received), int(c.actions_executed), int(c.actions_rejected)

    def _publish_instruction(self, text: str) -> None:
        from std_msgs.msg import String

        self._instruction_pub.publish(String(data=text))
        try:
            self._wait(lambda: self._vla_status is not None and self._vla_status.instruction == text,
                       5.0, 'vla_node to take the instruction')
        except GraphError:
            self._set_parameters('vla_params', {'instruction': text})   # refused: raises with the reason

    def _publish_action(self, action: np.ndarray, stamp_ns: int, text: str) -> None:
        from openvla_ros.action_message import fill_message, prediction_to_delta_fields
        from openvla_ros.engine.api import PredictionResult
        from openvla_ros.msg import EndEffectorDelta

        result = PredictionResult(action=action, normalized_action=action.copy(),
                                  action_token_ids=np.zeros(len(action), dtype=np.int64), unnorm_key='')
        fields = prediction_to_delta_fields(result, text, stamp_ns, self.embodiment.base_frame_id,
                                            'teleop', sequence=0)
        self._action_pub.publish(fill_message(EndEffectorDelta(), fields))

    def _wait_vla_action(self, step: int, stamp_ns: int, timeout_s: float):
        """vla_node's action for the state stamped ``stamp_ns``, or 'policy error: ...'."""
        from openvla_ros.msg import VlaStatus
        from openvla_ros.stamps import stamp_to_ns

        def ready():
            if len(self._actions) > step:
                return self._actions[step]
            s = self._vla_status
            if s is not None and s.state == VlaStatus.STATE_ERROR:
                return f'policy error: {s.message}'
            return None

        got = self._wait(ready, timeout_s, f'vla_node action {step}')
        if not isinstance(got, str) and stamp_to_ns(got.header.stamp) != stamp_ns:
            raise GraphError(f'vla_node action {step} is for the image stamped {stamp_to_ns(got.header.stamp)} ns, '
                             f'not for the state of this step ({stamp_ns} ns)')
        return got

    def _wait_outcome(self, base: tuple[int, int, int], n: int, refused_before: int,
                      timeout_s: float) -> tuple[str | None, int]:
        """Wait until the controller has handled ``n`` actions since ``base`` (executed or refused;
        a pending one waits for the controller's tick). Returns (the refusal reason of the last
        one or None, refusals since ``base``)."""
        def handled():
            c = self._controller
            r, e, j = (int(c.actions_received) - base[0], int(c.actions_executed) - base[1],
                       int(c.actions_rejected) - base[2])
            return (c, j) if r >= n and e + j >= n else None

        status, rejected = self._wait(handled, timeout_s, f'arm_controller to handle action {n - 1}')
        return (status.last_event if rejected > refused_before else None), rejected

    def _wait_state(self, episode: int, step: int, timeout_s: float) -> dict:
        return self._wait(lambda: self._states.get((episode, step)), timeout_s,
                          f'sim_node state {step} of episode {episode}')

    def _finish(self, episode: int, base: tuple[int, int, int], explicit_steps: int, via_vla: bool) -> None:
        """Stop the policy and wait until the graph is quiet: every action published was handled
        and every command stepped, so nothing of this episode reaches the next one."""
        n_published = None
        if via_vla:
            self._set_parameters('vla_params', {'instruction': ''})
            status = self._wait(lambda: self._vla_status if self._vla_status is not None and
                                self._vla_status.instruction == '' else None, SETTLE_TIMEOUT_S,
                                'vla_node to clear the instruction')
            n_published = int(status.actions_published)

        def quiet():
            c = self._controller
            received = int(c.actions_received) - base[0]
            executed = int(c.actions_executed) - base[1]
            rejected = int(c.actions_rejected) - base[2]
            if via_vla and (len(self._actions) < n_published or received < n_published):
                return False
            if executed + rejected < received:
                return False
            last = max((s for (ep, s) in self._states if ep == episode), default=0)
            return last >= executed + explicit_steps

        self._wait(quiet, SETTLE_TIMEOUT_S, 'the graph to settle after the episode')
        with self._cond:
            for key in [k for k in self._states if k[0] <= episode]:
                del self._states[key]
        if via_vla:
            self._call('vla_reset')    # drops the frame vla_node holds (an image of this episode)
        self._call('arm_reset_target')    # holding: no watchdog between episodes

    def _frames(self, stamps: list[int]) -> list[np.ndarray]:
        try:
            self._wait(lambda: all(s in self._images for s in stamps), SETTLE_TIMEOUT_S, 'the camera images')
        except GraphError:
            pass
        with self._cond:
            frames = [self._images[s] for s in stamps if s in self._images]
            self._images = {}
            self._recording = False
        return frames


def run_graph_episode(graph: EvaluationGraph, policy, task: T.Task | str, seed: int, **kwargs) -> EpisodeResult:
    """One episode through the graph with ``policy`` (:data:`VLA_NODE_POLICY` or a state-reading
    policy object); the same :class:`EpisodeResult` as the in-process runner."""
    return graph.run_episode(policy, task, seed, **kwargs)


__all__ = ['EvaluationGraph', 'GraphError', 'VLA_NODE_POLICY', 'run_graph_episode', 'vla_parameters']
