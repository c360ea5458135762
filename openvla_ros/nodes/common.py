"""Small pieces every node of the package shares: QoS presets, rolling statistics,
/diagnostics publishing and the lifecycle ``main()`` driver.

rclpy-only (Humble, Jazzy, Kilted); diagnostic_updater is not available as a wheel, so the
DiagnosticArray is built here following its conventions (hardware_id, one status per concern).
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Callable, Iterable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from openvla_ros import defaults
from openvla_ros.stamps import stamp_to_s  # noqa: F401 (nodes use common.stamp_to_s)
from openvla_ros.rolling_stats import RollingStats  # noqa: F401 (ROS-free; nodes use common.RollingStats)

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable + transient-local: late joiners (rqt, ros2 topic echo) get the last message."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def reliable_qos(depth: int = 10) -> QoSProfile:
    """Reliable + volatile: what `ros2 topic pub` uses by default."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def key_values(values: dict) -> list[KeyValue]:
    out = []
    for k, v in values.items():
        if isinstance(v, float):
            v = f'{v:.6g}'
        out.append(KeyValue(key=str(k), value=str(v)))
    return out


def make_status(name: str, level, message: str, hardware_id: str,
                values: dict | None = None) -> DiagnosticStatus:
    """``level`` is one of OK/WARN/ERROR/STALE (the message constants, bytes) or an int 0..3."""
    if isinstance(level, int):
        level = bytes([level])
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=key_values(values or {}))


class DiagnosticsPublisher:
    """Publishes one DiagnosticArray per call on /diagnostics, stamped with the node clock."""

    def __init__(self, node, hardware_id: str):
        self._node = node
        self.hardware_id = hardware_id
        self._pub = node.create_publisher(DiagnosticArray, defaults.DIAGNOSTICS_TOPIC, 10)

    def status(self, concern: str, level, message: str, values: dict | None = None) -> DiagnosticStatus:
        """A status named ``<node name>: <concern>`` (the diagnostic_updater naming), with the
        namespace in front in one (``robot1/vla_node: model``): /diagnostics is global, and two
        robots' statuses must stay apart there."""
        name = self._node.get_fully_qualified_name().lstrip('/')
        return make_status(f'{name}: {concern}', level, message, self.hardware_id, values)

    def publish(self, statuses: Iterable[DiagnosticStatus]) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = list(statuses)
        self._pub.publish(msg)

    def destroy(self) -> None:
        self._node.destroy_publisher(self._pub)


def now_s(node) -> float:
    """The node clock (sim time under use_sim_time) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


def run_node(node_factory: Callable[[], object], args=None, *, lifecycle: bool = True,
             autostart_param: str = 'autostart', num_threads: int = 4,
             startup_errors: tuple[type[BaseException], ...] = ()) -> int:
    """``main()`` of every node of the package.

    Spins until SIGINT/SIGTERM, then shuts down cleanly and returns 0 (1 after an unhandled
    error, 2 when ``node_factory`` raises one of ``startup_errors``). For a lifecycle node:
    configure + activate unless ``autostart:=false`` first, and on exit walk the node down to
    finalized so its deactivate/cleanup/shutdown callbacks run with a live context.
    """
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = node_factory()
    except startup_errors as exc:
        rclpy.logging.get_logger(getattr(node_factory, '__name__', 'node')).fatal(f'cannot start: {exc}')
        rclpy.try_shutdown()
        return 2
    # num_threads=1: callbacks run in this thread (an OpenGL context is bound to the thread that
    # created it, so a renderer made in the node's constructor must be used from here).
    executor = SingleThreadedExecutor() if num_threads <= 1 else MultiThreadedExecutor(num_threads=num_threads)
    executor.add_node(node)
    code = 0
    try:
        if lifecycle:
            _autostart(node, autostart_param)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except Exception as exc:  # report, then still shut down cleanly
        node.get_logger().fatal(f'unhandled error: {exc!r}')
        code = 1
    finally:
        # Stop the executor first: the transitions below destroy timers and subscriptions.
        # Let the worker threads finish their callbacks before the executor destroys its guard
        # condition (rclpy's MultiThreadedExecutor.shutdown does it the other way round, and a
        # late callback then fails with "destruction was requested").
        executor.remove_node(node)
        pool = getattr(executor, '_executor', None)
        if pool is not None:
            pool.shutdown(wait=True)
        executor.shutdown(timeout_sec=1.0)
        if lifecycle:
            _shutdown_lifecycle(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


def _autostart(node, autostart_param: str) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    if not node.has_parameter(autostart_param):
        # Read once, at start: read-only, so no tool offers a change that could not apply.
        node.declare_parameter(autostart_param, True, ParameterDescriptor(
            description='configure and activate at start (false: wait for lifecycle transitions)',
            read_only=True))
    if not node.get_parameter(autostart_param).value:
        return
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error('configure failed; staying unconfigured (fix and configure again)')
    elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error('activate failed; staying inactive')


def _shutdown_lifecycle(node) -> None:
    """Walk the node down (active → inactive → unconfigured → finalized) so its deactivate and
    cleanup callbacks run; only the transitions valid from the current state are triggered."""
    label = lifecycle_state_label(node)
    steps = {'active': ('trigger_deactivate', 'trigger_cleanup', 'trigger_shutdown'),
             'inactive': ('trigger_cleanup', 'trigger_shutdown'),
             'unconfigured': ('trigger_shutdown',)}.get(label, ())
    for step in steps:
        try:
            getattr(node, step)()
        except Exception as exc:  # keep walking down: the process is exiting anyway
            node.get_logger().warning(f'{step} during shutdown: {exc!r}')


def lifecycle_state_label(node) -> str:
    """'unconfigured' | 'inactive' | 'active' | 'finalized' (the rclpy state machine, Humble+)."""
    return str(node._state_machine.current_state[1])


def wait_for(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())
