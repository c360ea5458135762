"""The demo's probe node: records the closed loop, publishes the instruction, enables the arm
controller; and the loop that spins it for a while with a progress line per second.

rclpy and the message packages are imported only when a :class:`LoopRecorder` is made, so
:class:`Recording` (what the report reads) needs no ROS.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from openvla_ros import defaults
from openvla_ros.stamps import stamp_to_s

VIDEO_MAX_FRAMES = 600          # longest video kept (frames); older frames are thinned out
VIDEO_DOWNSCALE = 2             # video pixels = camera pixels / this, per axis


@dataclass
class Recording:
    """What the demo keeps from the graph. Times: ``*_sim`` sim seconds, ``*_wall`` monotonic."""
    frames: list = field(default_factory=list)          # (stamp_sim, rgb downscaled)
    frame_times: list = field(default_factory=list)     # (stamp_sim, receipt_wall)
    actions: list = field(default_factory=list)         # (stamp_sim, receipt_wall, receipt_sim, action[7], inference_s)
    joint_states: list = field(default_factory=list)    # (stamp_sim, {name: position})
    targets: list = field(default_factory=list)         # (stamp_sim, xyz)
    trajectories: int = 0
    controller_status: object = None
    vla_status: object = None
    clock_sim: float = 0.0


class LoopRecorder:
    """A probe node in its own context: records the closed loop, publishes the instruction and
    enables / disables the arm controller. Spin it with :meth:`spin_for` from one thread."""

    def __init__(self, context, keep_frames: bool = True, namespace: str = ''):
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from std_srvs.srv import SetBool
        from trajectory_msgs.msg import JointTrajectory

        from openvla_ros.msg import ControllerStatus, EndEffectorDelta, VlaStatus
        from openvla_ros.nodes.common import latched_qos, reliable_qos

        self.rec = Recording()
        self.keep_frames = keep_frames
        self.node = rclpy.create_node('openvla_demo_recorder', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        n = self.node
        n.create_subscription(Image, defaults.CAMERA_TOPIC, self._on_image, qos_profile_sensor_data)
        n.create_subscription(EndEffectorDelta, defaults.ACTION_TOPIC, self._on_action, reliable_qos(50))
        n.create_subscription(JointState, defaults.JOINT_STATES_TOPIC, self._on_joint_state, reliable_qos(50))
        n.create_subscription(PoseStamped, defaults.TARGET_POSE_TOPIC, self._on_target, reliable_qos(50))
        n.create_subscription(JointTrajectory, defaults.JOINT_TRAJECTORY_TOPIC, self._on_trajectory, reliable_qos(50))
        n.create_subscription(Clock, defaults.CLOCK_TOPIC, self._on_clock, reliable_qos(1))
        n.create_subscription(ControllerStatus, defaults.CONTROLLER_STATUS_TOPIC,
                              lambda m: setattr(self.rec, 'controller_status', m), latched_qos())
        n.create_subscription(VlaStatus, defaults.VLA_STATUS_TOPIC,
                              lambda m: setattr(self.rec, 'vla_status', m), latched_qos())
        self.instruction_pub = n.create_publisher(String, defaults.INSTRUCTION_TOPIC, reliable_qos(10))
        self._string = String
        self._set_bool = SetBool
        self.enable_client = n.create_client(SetBool, f'/{defaults.ARM_CONTROLLER_NODE}/enable')

    # ---------------------------------------------------------------- callbacks
    def _on_image(self, msg) -> None:
        stamp = stamp_to_s(msg.header.stamp)
        self.rec.frame_times.append((stamp, time.monotonic()))
        if self.keep_frames:
            from openvla_ros.imaging import ImageConversionError, image_msg_to_rgb
            try:
                rgb = image_msg_to_rgb(msg)
            except ImageConversionError:
                return
            self.rec.frames.append((stamp, rgb[::VIDEO_DOWNSCALE, ::VIDEO_DOWNSCALE].copy()))
            if len(self.rec.frames) > VIDEO_MAX_FRAMES:
                self.rec.frames = self.rec.frames[::2]

    def _on_action(self, msg) -> None:
        self.rec.actions.append((stamp_to_s(msg.header.stamp), time.monotonic(), self.rec.clock_sim,
                                 np.asarray(msg.action, dtype=float), float(msg.inference_latency_s)))

    def _on_joint_state(self, msg) -> None:
        self.rec.joint_states.append((stamp_to_s(msg.header.stamp), dict(zip(msg.name, msg.position))))

    def _on_target(self, msg) -> None:
        p = msg.pose.position
        self.rec.targets.append((stamp_to_s(msg.header.stamp), (p.x, p.y, p.z)))

    def _on_trajectory(self, msg) -> None:
        self.rec.trajectories += 1

    def _on_clock(self, msg) -> None:
        self.rec.clock_sim = stamp_to_s(msg.clock)

    # ---------------------------------------------------------------- actions
    def spin_until(self, predicate, timeout_s: float, step_s: float = 0.02) -> bool:
        from openvla_ros.nodes.common import wait_for

        def spun() -> bool:
            self.executor.spin_once(timeout_sec=step_s)
            return predicate()
        return predicate() or wait_for(spun, timeout_s, step_s=0.0)

    def spin_for(self, duration_s: float, stop: threading.Event | None = None) -> None:
        self.spin_until(lambda: stop is not None and stop.is_set(), duration_s)

    def graph_ready(self) -> bool:
        """The model is loaded (vla_node past configuring), the controller offers ~/enable, the
        instruction has a subscriber and the simulator publishes."""
        from openvla_ros.msg import VlaStatus
        s = self.rec.vla_status
        return (s is not None and s.state in (VlaStatus.STATE_IDLE, VlaStatus.STATE_RUNNING)
                and self.enable_client.service_is_ready()
                and self.instruction_pub.get_subscription_count() > 0
                and bool(self.rec.frame_times))

    def send_instruction(self, text: str) -> None:
        self.instruction_pub.publish(self._string(data=text))

    def set_enabled(self, enabled: bool, timeout_s: float = 10.0) -> tuple[bool, str]:
        if not self.enable_client.wait_for_service(timeout_sec=timeout_s):
            return False, 'arm_controller ~/enable not available'
        fut = self.enable_client.call_async(self._set_bool.Request(data=enabled))
        if not self.spin_until(fut.done, timeout_s):
            return False, 'arm_controller ~/enable timed out'
        res = fut.result()
        return bool(res.success), res.message

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def run_loop(recorder: LoopRecorder, duration_s: float, stop: threading.Event, procs) -> None:
    """Spin ``recorder`` for ``duration_s``, or until ``stop`` is set or one of ``procs`` ((name,
    Popen) pairs) exits, printing a progress line per second."""
    rec = recorder.rec
    t0 = time.monotonic()
    next_print = t0 + 1.0
    last_actions = 0
    while not stop.is_set() and time.monotonic() - t0 < duration_s:
        recorder.spin_until(lambda: time.monotonic() >= next_print or stop.is_set(), next_print - time.monotonic() + 0.05)
        dead = [n for n, p in procs if p.poll() is not None]
        cs = rec.controller_status
        print(f'[demo] t={time.monotonic() - t0:5.1f} s | sim {rec.clock_sim:6.1f} s | frames {len(rec.frame_times):4d} | '
              f'actions {len(rec.actions):4d} (+{len(rec.actions) - last_actions}/s) | '
              f'trajectories {rec.trajectories:4d} | controller {cs.state_name if cs else "?"}'
              + (f' | EXITED: {dead}' if dead else ''), flush=True)
        last_actions = len(rec.actions)
        next_print += 1.0
        if dead:
            break
