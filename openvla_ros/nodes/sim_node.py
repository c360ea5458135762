"""sim_node: the MuJoCo WidowX 250s workcell as a ROS 2 node.

Publishes the over-the-shoulder camera (sensor_msgs/Image rgb8), /joint_states and /clock (so the
rest of the graph can run with use_sim_time), follows trajectory_msgs/JointTrajectory on the arm
controller's topic like a joint_trajectory_controller, and offers ``~/reset`` (std_srvs/Trigger).

Evaluation tasks: with the ``task`` parameter set, ``~/reset`` puts the workcell into that task's
seeded initial state (``evaluation.tasks.reset_episode``, the in-process runner's reset) and
answers with the episode start as JSON; from then on every joint state comes with
``~/task_state`` (std_msgs/String, JSON): the episode number, the task's observation
(``evaluation.tasks.observe``: end-effector, finger tips, gripper opening, the success
predicate) and the full MuJoCo ``qpos`` (for a policy that reads the state, like the expert).
In lockstep a reset also takes one period of sim time, so every state of a run has its own stamp.

A trajectory starts when it arrives (its header stamp is not used: a sender on wall time and a
simulator on sim time would otherwise disagree about "when"); an empty one stops the active one.
A trajectory naming an unknown joint is rejected as a whole and the current command is kept.

Timing: one wall-clock timer ticks at ``clock_rate_hz``; each tick advances physics to where the
real-time factor says sim time should be, stopping exactly at the camera and joint-state instants
to publish them. Rendering (~80 ms at 640x480 on a laptop CPU) therefore delays a tick but not sim
time: the next tick catches up, and images always show the physics state at their stamp.
"""
from __future__ import annotations

import json
import sys
import time

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose as PoseMsg
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from openvla_ros import defaults
from openvla_ros.imaging import rgb_to_image_fields
from openvla_ros.nodes.common import OK, WARN, DiagnosticsPublisher, latched_qos, reliable_qos, run_node
from openvla_ros.stamps import s_to_sec_nanosec, stamp_to_ns, stamp_to_s
from openvla_ros.sim import CAMERA_NAME, TrajectoryError, WorkcellSim
from openvla_ros.sim.workcell import embodiment_start_positions

# When the node falls further behind real time than this, it gives the backlog up rather than
# running physics in ever longer bursts (the achieved real-time factor then drops below target).
MAX_CATCH_UP_S = 0.25
# Sim time advanced per tick when running as fast as possible (real_time_factor = 0).
FREE_RUN_CHUNK_S = 0.05
LOCKSTEP_IDLE_PERIOD_S = 0.1  # wall period of the re-published state while paused in lockstep
STATS_PERIOD_S = 1.0          # /diagnostics period (wall)
STATS_LOG_EVERY = 5           # ... and a log line every this many periods
WARN_THROTTLE_S = 2.0
# Frame of ~/object_poses without an embodiment: the workcell's world, where the arm base stands.
WORLD_FRAME_ID = 'world'


def _stamp(t_s: float) -> Time:
    sec, nanosec = s_to_sec_nanosec(t_s)
    return Time(sec=sec, nanosec=nanosec)


class SimNode(Node):
    def __init__(self):
        super().__init__(defaults.SIM_NODE)
        p = self._declare
        self.real_time_factor = p('real_time_factor', 1.0,
                                  'sim seconds per wall second; >1 faster than real time, 0 = as fast as possible',
                                  (0.0, 100.0))
        self.camera_rate_hz = p('camera_rate_hz', 10.0, 'camera images per sim second (0 = no camera)', (0.0, 1000.0))
        self.joint_state_rate_hz = p('joint_state_rate_hz', 50.0, 'joint states per sim second', (0.0, 1000.0))
        self.clock_rate_hz = p('clock_rate_hz', 100.0, 'physics ticks and /clock messages per wall second',
                               (1.0, 1000.0))
        self.image_width = p('image_width', 640, 'camera image width, pixels', (16, 4096))
        self.image_height = p('image_height', 480, 'camera image height, pixels', (16, 4096))
        self.camera_name = p('camera_name', CAMERA_NAME, 'MJCF camera rendered to the image topic')
        self.camera_frame_id = p('camera_frame_id', 'over_shoulder_camera', 'frame_id of the images')
        self.model_path = p('model_path', '', 'MJCF workcell file ("" = the package workcell)')
        # An empty list is declared with dynamic typing: rclpy would type it as a byte array and
        # then refuse a double-array override (and a parameter without a value empties every
        # GetParameters answer that names it).
        self.start_joint_positions = p(
            'start_joint_positions', [], 'start positions of the commandable joints in model order (arm joints '
            'in rad, then left_finger in m); [] = the home keyframe', dynamic=True)
        self.embodiment = p('embodiment', '', 'embodiment config whose start pose (reached by its IK, gripper '
                            'open) the arm starts at; "" = the home keyframe; start_joint_positions wins')
        self.seed = p('seed', -1, 'object randomisation seed for start and ~/reset; -1 = nominal poses '
                      '(live: applies to the next ~/reset)', (-1, 2**31 - 1), read_only=False)
        self.lockstep = p('lockstep', False, 'gym env.step timing: each received joint trajectory (or ~/step call) '
                          'advances exactly lockstep_period_s of sim time, then the camera image of the new '
                          'state is published; physics is paused in between (real_time_factor and '
                          'camera_rate_hz are not used)')
        self.lockstep_period_s = p('lockstep_period_s', 0.2, 'sim time per lockstep step (the control period), s',
                                   (0.001, 10.0))
        self.task = p('task', '', 'evaluation task (openvla_ros.evaluation.tasks) that ~/reset sets up with '
                      'seed (>= 0) and reports in ~/task_state; "" = a plain reset (live: applies to the '
                      'next ~/reset)', read_only=False)
        self.publish_object_poses = p('publish_object_poses', True,
                                      'publish ~/object_poses (geometry_msgs/PoseArray, one pose per object '
                                      'in ~/object_names order, base frame) with every joint state')
        for name, value in (('camera_rate_hz', self.camera_rate_hz), ('joint_state_rate_hz', self.joint_state_rate_hz)):
            if value < 0:
                raise ValueError(f'{name} must be >= 0, got {value}')
        if self.clock_rate_hz <= 0 or self.real_time_factor < 0:
            raise ValueError('clock_rate_hz must be > 0 and real_time_factor >= 0')

        self.sim = WorkcellSim(self.model_path or None, max_image_size=(self.image_width, self.image_height))
        self._start_positions = (self._parse_start_positions(self.start_joint_positions)
                                 or self._embodiment_start_positions(self.embodiment))
        self.sim.reset(seed=self.seed, joint_positions=self._start_positions)
        self._frame_id = WORLD_FRAME_ID
        if self.embodiment:
            from openvla_ros.control.embodiment import load_embodiment
            self._frame_id = load_embodiment(self.embodiment).base_frame_id

        self.image_pub = self.create_publisher(Image, defaults.relative(defaults.CAMERA_TOPIC), reliable_qos(1))
        self.joint_state_pub = self.create_publisher(JointState, defaults.relative(defaults.JOINT_STATES_TOPIC),
                                                     reliable_qos(10))
        self.clock_pub = self.create_publisher(Clock, defaults.relative(defaults.CLOCK_TOPIC), reliable_qos(1))
        self.create_subscription(JointTrajectory, defaults.relative(defaults.JOINT_TRAJECTORY_TOPIC), self._on_trajectory,
                                 reliable_qos(10))
        self.create_service(Trigger, '~/reset', self._on_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.task_state_pub = self.create_publisher(String, '~/task_state', reliable_qos(10))
        self._task = None          # the evaluation task of the current episode (set by ~/reset)
        self._episode = 0          # resets so far: tells the states of two episodes apart
        self._episode_steps = 0    # lockstep steps since the last reset
        self.object_pose_pub = None
        if self.publish_object_poses:
            self.object_pose_pub = self.create_publisher(PoseArray, '~/object_poses', reliable_qos(10))
            names = self.create_publisher(String, '~/object_names', latched_qos())
            names.publish(String(data=','.join(self.sim.object_names)))
            self._object_names_pub = names

        self._next_camera_s = 0.0
        self._next_joint_state_s = 0.0
        self._wall_anchor = time.monotonic()
        self._sim_anchor = self.sim.time_s
        self._stats_wall = self._wall_anchor
        self._stats_sim = self.sim.time_s
        self._stats_count = 0
        self._diagnostics = DiagnosticsPublisher(self, hardware_id=defaults.SIM_NODE)
        self._images = 0
        self._render_s = 0.0
        self._trajectories = 0
        self._rejected = 0
        if self.lockstep:
            self.create_service(Trigger, '~/step', self._on_step)
            self._first_image_sent = False
            # while paused: the clock and joint states again (same sim time) so late joiners and
            # freshness checks see the state, and the first image once someone listens
            self.create_timer(LOCKSTEP_IDLE_PERIOD_S, self._lockstep_idle)
        else:
            self.create_timer(1.0 / self.clock_rate_hz if self.real_time_factor > 0 else 0.001, self._tick)
        self.get_logger().info(
            f'workcell {self.sim.model_path.name}: joints {list(self.sim.joint_names)}, objects '
            f'{list(self.sim.object_names)}, camera {self.camera_name} {self.image_width}x{self.image_height} '
            f'@ {self.camera_rate_hz} Hz, real_time_factor {self.real_time_factor}')

    def _declare(self, name, default, description, value_range=None, read_only=True, dynamic=False):
        """Every parameter has a value; numbers have a range; all but ``seed`` are read at start
        (read_only: a live change is refused with a reason instead of being accepted and ignored)."""
        d = ParameterDescriptor(description=description if not read_only else f'{description} (read at start)',
                                read_only=read_only, dynamic_typing=dynamic)
        if value_range is not None:
            lo, hi = value_range
            if isinstance(default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi))]
            else:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        try:
            return self.declare_parameter(name, default, d).value
        except ParameterException as exc:
            raise ValueError(f'parameter {name}: {exc}') from None

    def _parse_start_positions(self, values) -> dict[str, float] | None:
        if values is None or len(values) == 0:
            return None
        if isinstance(values, (str, bytes)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in values):
            raise ValueError(f'start_joint_positions must be a list of numbers, got {values!r}')
        values = [float(v) for v in values]
        names = self.sim.command_joint_names
        if len(values) != len(names):
            raise ValueError(f'start_joint_positions needs {len(names)} values ({list(names)}), got {len(values)}')
        return dict(zip(names, values))

    def _embodiment_start_positions(self, name: str) -> dict[str, float] | None:
        if not name:
            return None
        from openvla_ros.control.embodiment import load_embodiment

        return embodiment_start_positions(self.sim, load_embodiment(name))

    # ------------------------------------------------------------------ physics loop
    def _tick(self) -> None:
        wall = time.monotonic()
        if self.real_time_factor > 0:
            target = self._sim_anchor + self.real_time_factor * (wall - self._wall_anchor)
            if target - self.sim.time_s > MAX_CATCH_UP_S:
                target = self.sim.time_s + MAX_CATCH_UP_S
                self._wall_anchor, self._sim_anchor = wall, target
        else:
            target = self.sim.time_s + FREE_RUN_CHUNK_S
        self._advance_to(target)
        self._publish_clock()
        if wall - self._stats_wall >= STATS_PERIOD_S:
            self._report_stats(wall)

    def _advance_to(self, target_s: float) -> None:
        dt = self.sim.timestep_s
        while True:
            events = [target_s]
            camera = self.camera_rate_hz > 0 and not self.lockstep
            if camera:
                events.append(self._next_camera_s)
            if self.joint_state_rate_hz > 0:
                events.append(self._next_joint_state_s)
            step_to = min(events)
            self.sim.advance_to(step_to)
            now = self.sim.time_s
            # Half a physics step of slack: sim time moves in whole steps.
            if self.joint_state_rate_hz > 0 and now >= self._next_joint_state_s - dt / 2:
                self._publish_joint_state()
                self._next_joint_state_s = max(self._next_joint_state_s + 1.0 / self.joint_state_rate_hz, now)
            if camera and now >= self._next_camera_s - dt / 2:
                self._publish_clock()
                self._publish_image()
                self._next_camera_s = max(self._next_camera_s + 1.0 / self.camera_rate_hz, now)
            if now >= target_s - dt / 2:
                return

    def _publish_clock(self) -> None:
        self.clock_pub.publish(Clock(clock=_stamp(self.sim.time_s)))

    def _publish_joint_state(self) -> None:
        msg = JointState()
        msg.header.stamp = _stamp(self.sim.time_s)
        msg.name = list(self.sim.joint_names)
        msg.position = self.sim.joint_positions().tolist()
        msg.velocity = self.sim.joint_velocities().tolist()
        msg.effort = self.sim.joint_efforts().tolist()
        self.joint_state_pub.publish(msg)
        if self.object_pose_pub is not None:
            poses = PoseArray()
            poses.header.stamp = msg.header.stamp
            poses.header.frame_id = self._frame_id
            for name in self.sim.object_names:
                pose = self.sim.object_pose(name)
                m = PoseMsg()
                m.position.x, m.position.y, m.position.z = (float(v) for v in pose.position)
                m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w = (float(v) for v in pose.quat_xyzw())
                poses.poses.append(m)
            self.object_pose_pub.publish(poses)
        if not self.lockstep:     # lockstep: one task state per step (_lockstep_step)
            self._publish_task_state()

    def _publish_task_state(self) -> None:
        if self._task is None:
            return
        from openvla_ros.evaluation import tasks as T

        obs = T.observe(self.sim, self._task, self._task_embodiment())
        self.task_state_pub.publish(String(data=json.dumps({
            'episode': self._episode, 'task': self._task.name, 'step': self._episode_steps,
            'stamp_ns': stamp_to_ns(_stamp(self.sim.time_s)),
            'sim_time_s': self.sim.time_s, 'success': obs.success, 'ee_position': obs.ee_position.tolist(),
            'ee_rotation': obs.ee_rotation.tolist(), 'tip_position': obs.tip_position.tolist(),
            'gripper': obs.gripper, 'qpos': self.sim.data.qpos.tolist()})))

    def _publish_image(self) -> None:
        t0 = time.perf_counter()
        rgb = self.sim.render(self.camera_name, self.image_width, self.image_height)
        self._render_s += time.perf_counter() - t0
        msg = Image(**rgb_to_image_fields(rgb, 'rgb8'))
        msg.header.stamp = _stamp(self.sim.time_s)
        msg.header.frame_id = self.camera_frame_id
        self.image_pub.publish(msg)
        self._images += 1

    def _report_stats(self, wall: float) -> None:
        wall_dt = wall - self._stats_wall
        rtf = (self.sim.time_s - self._stats_sim) / wall_dt
        images = self._images
        render_ms = 1000 * self._render_s / max(images, 1)
        slow = self.real_time_factor > 0 and rtf < 0.9 * self.real_time_factor
        self._diagnostics.publish([self._diagnostics.status(
            'simulation', WARN if slow else OK,
            f'real-time factor {rtf:.2f} below target {self.real_time_factor:g}' if slow else 'ok',
            {'sim_time_s': self.sim.time_s, 'real_time_factor': rtf, 'target_real_time_factor': self.real_time_factor,
             'camera_rate_hz_wall': images / wall_dt, 'render_ms_per_image': render_ms,
             'trajectories': self._trajectories, 'trajectories_rejected': self._rejected})])
        self._stats_count += 1
        if self._stats_count % STATS_LOG_EVERY == 0:
            self.get_logger().info(
                f'sim time {self.sim.time_s:.1f} s, real-time factor {rtf:.2f} '
                f'(target {self.real_time_factor:g}), camera {images / wall_dt:.1f} Hz wall, '
                f'render {render_ms:.0f} ms/image, trajectories {self._trajectories} (rejected {self._rejected})')
        self._stats_wall, self._stats_sim = wall, self.sim.time_s
        self._images, self._render_s = 0, 0.0

    # ------------------------------------------------------------------ commands
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        if not msg.points:
            self.sim.hold()  # an empty trajectory stops the active one, as in joint_trajectory_controller
            return
        points = [(list(pt.positions), stamp_to_s(pt.time_from_start))
                  for pt in msg.points]
        try:
            self.sim.follow_trajectory(list(msg.joint_names), points)
        except TrajectoryError as exc:
            self._rejected += 1
            self.get_logger().warn(f'trajectory rejected (holding the current command): {exc}',
                                   throttle_duration_sec=WARN_THROTTLE_S)
            if self.lockstep:
                self._lockstep_step()   # a refused command is still one step (of holding)
            return
        self._trajectories += 1
        if self.lockstep:
            self._lockstep_step()

    # ------------------------------------------------------------------ lockstep
    def _lockstep_step(self) -> None:
        self._advance_to(self.sim.time_s + self.lockstep_period_s)
        self._episode_steps += 1
        self._publish_observation()

    def _publish_observation(self) -> None:
        """Lockstep: the state after a step or a reset (clock, joints, task state, image)."""
        self._publish_clock()
        self._publish_joint_state()
        self._publish_task_state()
        self._publish_image()
        self._first_image_sent = True

    def _on_step(self, request, response):
        self._lockstep_step()
        response.success, response.message = True, f'sim time {self.sim.time_s:.3f} s'
        return response

    def _lockstep_idle(self) -> None:
        self._publish_clock()
        self._publish_joint_state()
        self._publish_task_state()
        if not self._first_image_sent and self.image_pub.get_subscription_count() > 0:
            self._publish_image()
            self._first_image_sent = True

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == 'task' and param.value:
                from openvla_ros.evaluation import tasks as T

                try:
                    T.get_task(str(param.value))
                except T.UnknownTaskError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _task_embodiment(self):
        from openvla_ros.evaluation import tasks as T

        return T._embodiment(self.embodiment or None)

    def _on_reset(self, request, response):
        seed = int(self.get_parameter('seed').value)
        task_name = str(self.get_parameter('task').value)
        # lockstep: the reset takes one period, so no state before it shares a stamp with one after
        time_s = self.sim.time_s + (self.lockstep_period_s if self.lockstep else 0.0)
        try:
            if task_name:
                from openvla_ros.evaluation import tasks as T

                task = T.get_task(task_name)
                start = T.reset_episode(self.sim, task, seed, embodiment=self._task_embodiment(), time_s=time_s)
            else:
                task, start = None, None
                self.sim.reset(seed=seed, joint_positions=self._start_positions, time_s=time_s)
        except (ValueError, KeyError) as exc:
            response.success, response.message = False, f'reset failed: {exc}'
            return response
        self._task = task
        self._episode += 1
        self._episode_steps = 0
        self._next_joint_state_s = self.sim.time_s
        response.success = True
        if start is not None:
            response.message = json.dumps({'episode': self._episode, 'task': start.task, 'seed': start.seed,
                                           'instruction': start.instruction, 'sim_time_s': self.sim.time_s,
                                           'object_poses': {k: list(v) for k, v in start.object_poses.items()}})
            self.get_logger().info(f'episode {self._episode}: task {task.name} seed {seed} at sim time '
                                   f'{self.sim.time_s:.3f} s')
        else:
            response.message = f'workcell reset at sim time {self.sim.time_s:.3f} s ' + (
                f'with object seed {seed}' if seed >= 0 else 'with nominal object poses')
            self.get_logger().info(response.message)
        if self.lockstep:    # the observation of the new state, as after a step
            self._publish_observation()
        return response

    def destroy_node(self):
        # also called by the context shutdown on a node whose constructor failed before the sim
        if getattr(self, 'sim', None) is not None:
            self.sim.close()
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(SimNode, args, lifecycle=False, num_threads=1,
                    startup_errors=(ValueError, FileNotFoundError))


if __name__ == '__main__':
    sys.exit(main())
