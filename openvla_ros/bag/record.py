"""``openvla-bag record``: write chosen topics of the live graph into an mcap bag.

On a ROS workstation ``ros2 bag record -s mcap`` does the same job; this recorder exists for
machines without rosbag2. Messages are stored as the CDR bytes received (``raw=True``
subscriptions), never deserialised, except the camera when ``--camera-scale`` asks to shrink
it. Each topic's message definition goes into the bag so any tool can decode it.

Topics are subscribed as soon as they appear in the graph, with a QoS compatible with their
publishers (latched topics such as /openvla/status are recorded with their last message). The
default topics are everything ``openvla-bag eval`` reads (camera, instruction, actions) and
everything ``openvla-dataset build`` needs (also /joint_states and the episode markers on
/openvla/episode), plus the status and controller topics (the controller's target pose).

Log times come from the node clock: the wall clock, or ``/clock`` with ``--use-sim-time``, which
is chosen by itself when the graph has a ``/clock`` publisher at the start (the simulator, a
bag replay). Then the bag's timeline is the header stamps' timeline, and ``play --clock``
replays it to ``use_sim_time`` nodes with consistent image ages. Messages that arrive before
the first ``/clock`` message are held and logged at that first time.

The bag is written into a hidden folder beside ``-o`` and moved there when recording stops, so
``--force`` replaces an earlier recording only with a finished one.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from openvla_ros import defaults
from openvla_ros.bag.storage import BagError, BagOutput, open_writer, project_typestore

DEFAULT_RECORD_TOPICS = (
    defaults.CAMERA_TOPIC,
    defaults.INSTRUCTION_TOPIC,
    defaults.ACTION_TOPIC,
    defaults.JOINT_STATES_TOPIC,
    defaults.EPISODE_TOPIC,
    defaults.VLA_STATUS_TOPIC,
    defaults.DIAGNOSTICS_TOPIC,
    defaults.CONTROLLER_STATUS_TOPIC,
    defaults.TARGET_POSE_TOPIC,
)
DISCOVERY_PERIOD_S = 0.2
# "auto" sim time: how long to look for a /clock publisher before choosing the wall clock. Discovery
# of a loaded graph takes seconds, so the search ends early only once another publisher of a
# recorded topic is known (the graph is visible) and /clock still is not, a grace period later.
# The grace is long enough for the rest of a loaded graph's endpoints: discovery announces a
# node's publishers one by one, and on a busy 2-core machine the simulator's /clock was seen more
# than 0.5 s after its camera.
CLOCK_DISCOVERY_S = 5.0
CLOCK_GRACE_S = 2.0
MAX_HELD_BEFORE_CLOCK = 10_000
IMAGE_TYPE = 'sensor_msgs/msg/Image'


@dataclass
class RecordOptions:
    output: str
    topics: list[str] = field(default_factory=list)
    camera: bool | None = None           # None: as the topic list says; True adds, False removes it
    camera_scale: float = 1.0
    duration_s: float | None = None
    force: bool = False
    use_sim_time: bool | None = None     # None: sim time when the graph has a /clock publisher


def record_topics(opts: RecordOptions) -> list[str]:
    topics = list(opts.topics) or list(DEFAULT_RECORD_TOPICS)
    if opts.camera and defaults.CAMERA_TOPIC not in topics:
        topics.append(defaults.CAMERA_TOPIC)
    if opts.camera is False:
        topics = [t for t in topics if t != defaults.CAMERA_TOPIC]
    return topics


def downscale_image(msg, scale: float):
    """Shrink an rclpy Image by ``scale`` (area averaging), keeping header and encoding."""
    import cv2

    from openvla_ros.imaging import SUPPORTED_ENCODINGS, decode_image, rgb_to_image_fields

    rgb = decode_image(msg)
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    encoding = msg.encoding if msg.encoding in SUPPORTED_ENCODINGS else 'rgb8'
    for name, value in rgb_to_image_fields(small, encoding).items():
        setattr(msg, name, value)
    return msg


class Recorder:
    """Subscribes to the wanted topics as they appear and writes what arrives into ``writer``.

    :meth:`start_bag` / :meth:`stop_bag` move the recording to another bag without dropping the
    subscriptions (``openvla-collect --graph`` writes one bag per episode this way); between two
    bags, what arrives is not written. Callbacks may run on another thread than the caller."""

    def __init__(self, node, writer, topics: list[str], camera_scale: float, sim_time: bool = False):
        self.node, self.writer = node, writer
        self.sim_time = sim_time
        self._held: list[tuple[str, bytes]] = []   # received before the first /clock
        self.dropped_before_clock = 0
        self.not_downscaled = 0
        self.wanted = topics
        self.camera_scale = camera_scale
        self.store = project_typestore()
        self.connections: dict[str, object] = {}         # topic -> connection of the current bag
        self.subscribed: dict[str, tuple[str, object]] = {}   # topic -> (msgtype, rosbags QoS)
        self.subscriptions: dict[str, object] = {}
        self.counts: dict[str, int] = {t: 0 for t in topics}
        self.on_write = None      # optional callable(topic, raw) after each message written
        self._lock = threading.RLock()
        self._warned: set[str] = set()

    def discover(self) -> None:
        """Subscribe to every wanted topic that has appeared in the graph since the last call."""
        from openvla_ros.bag.graph import import_message_class, recording_qos, to_rosbags_qos

        types = dict(self.node.get_topic_names_and_types())
        for topic in self.wanted:
            if topic in self.subscribed or topic not in types:
                continue
            msgtype = types[topic][0]
            try:
                cls = import_message_class(msgtype)
                if msgtype not in self.store.types:
                    raise ImportError('no message definition for it in the bag typestore')
            except ImportError as exc:
                if topic not in self._warned:
                    self._warned.add(topic)
                    print(f'openvla-bag record: skipping {topic} ({msgtype}): {exc}', file=sys.stderr)
                continue
            qos = recording_qos(i.qos_profile for i in self.node.get_publishers_info_by_topic(topic))
            with self._lock:
                self.subscribed[topic] = (msgtype, to_rosbags_qos(qos))
                if self.writer is not None:
                    self.connections[topic] = self._add_connection(topic)
            if topic == defaults.CAMERA_TOPIC and msgtype == IMAGE_TYPE and self.camera_scale != 1.0:
                def on_image(raw, topic=topic, cls=cls):
                    self._write(topic, self._downscaled(topic, raw, cls))
                sub = self.node.create_subscription(cls, topic, on_image, qos, raw=True)
            else:
                def on_raw(raw, topic=topic):
                    self._write(topic, raw)
                sub = self.node.create_subscription(cls, topic, on_raw, qos, raw=True)
            self.subscriptions[topic] = sub
            self.node.get_logger().info(f'recording {topic} ({msgtype})')

    def spin(self, executor, running) -> None:
        """Spin ``executor`` while ``running()``, looking for the wanted topics every
        ``DISCOVERY_PERIOD_S``."""
        next_discovery = 0.0
        while running():
            now = time.monotonic()
            if now >= next_discovery:
                self.discover()
                next_discovery = now + DISCOVERY_PERIOD_S
            executor.spin_once(timeout_sec=0.05)

    def matched(self, topics) -> bool:
        """Every one of ``topics`` is subscribed and its subscription matched to a publisher."""
        return all(t in self.subscriptions and self.subscriptions[t].get_publisher_count() > 0 for t in topics)

    def _add_connection(self, topic: str):
        msgtype, qos = self.subscribed[topic]
        return self.writer.add_connection(topic, msgtype, typestore=self.store, offered_qos_profiles=[qos])

    def start_bag(self, writer) -> None:
        """Write from now on into ``writer`` (every topic subscribed so far gets its connection)."""
        with self._lock:
            self.writer = writer
            self._held.clear()
            self.connections = {t: self._add_connection(t) for t in self.subscribed}
            self.counts = {t: 0 for t in self.wanted}

    def stop_bag(self):
        """Stop writing; returns the writer (to close)."""
        with self._lock:
            writer, self.writer, self.connections = self.writer, None, {}
            return writer

    def _downscaled(self, topic: str, raw: bytes, cls) -> bytes:
        """The camera message shrunk by ``camera_scale``; one that cannot be decoded is kept as
        received (a recording loses nothing) and counted."""
        from rclpy.serialization import deserialize_message, serialize_message

        from openvla_ros.imaging import ImageConversionError

        try:
            return serialize_message(downscale_image(deserialize_message(raw, cls), self.camera_scale))
        except ImageConversionError as exc:
            self.not_downscaled += 1
            if self.not_downscaled == 1:
                print(f'openvla-bag record: {topic} message #{self.counts[topic]} kept unscaled: {exc}',
                      file=sys.stderr)
            return raw

    def _write(self, topic: str, raw: bytes) -> None:
        with self._lock:
            if topic not in self.connections:
                return          # between two bags
            # receive time on the node clock (wall, or /clock under sim time): the bag's timeline
            now = self.node.get_clock().now().nanoseconds
            if self.sim_time and now == 0:
                if len(self._held) < MAX_HELD_BEFORE_CLOCK:
                    self._held.append((topic, bytes(raw)))
                else:
                    self.dropped_before_clock += 1
                return
            for held_topic, held_raw in self._held:
                self.writer.write(self.connections[held_topic], now, held_raw)
                self.counts[held_topic] += 1
            self._held.clear()
            self.writer.write(self.connections[topic], now, raw)
            self.counts[topic] += 1
            if self.on_write is not None:
                self.on_write(topic, raw)


def _graph_has_clock(node, executor, topics: list[str], wait_s: float) -> bool:
    start = time.monotonic()
    deadline = start + wait_s
    while True:
        if node.count_publishers(defaults.CLOCK_TOPIC) > 0:
            return True
        now = time.monotonic()
        if any(node.count_publishers(t) > 0 for t in topics):
            deadline = min(deadline, now + CLOCK_GRACE_S)
        if now >= deadline:
            return False
        executor.spin_once(timeout_sec=0.05)


def record(opts: RecordOptions) -> int:
    if not 0 < opts.camera_scale <= 1:
        raise BagError(f'--camera-scale must be in (0, 1], got {opts.camera_scale}')
    topics = record_topics(opts)
    out = BagOutput(opts.output, opts.force, what='output bag')
    with out:
        rc = _record(opts, topics, out)
        out.commit()
    return rc


def _record(opts: RecordOptions, topics: list[str], out: BagOutput) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.parameter import Parameter

    writer = open_writer(out.path, 'mcap')
    rclpy.init()
    node = rclpy.create_node(defaults.BAG_RECORDER_NODE)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    sim_time = opts.use_sim_time
    if sim_time is None:
        sim_time = _graph_has_clock(node, executor, topics, CLOCK_DISCOVERY_S)
    if sim_time:
        node.set_parameters([Parameter('use_sim_time', Parameter.Type.BOOL, True)])
    recorder = Recorder(node, writer, topics, opts.camera_scale, sim_time=sim_time)
    stop = {'now': False}
    # SIGTERM (service managers, CI) ends the recording as cleanly as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    deadline = time.monotonic() + opts.duration_s if opts.duration_s else None
    node.get_logger().info(f'recording {", ".join(topics)} into {out.target} '
                           f'(log times from {defaults.CLOCK_TOPIC if sim_time else "the wall clock"})')
    try:
        recorder.spin(executor, lambda: rclpy.ok() and not stop['now']
                      and (deadline is None or time.monotonic() < deadline))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        writer.close()
    never = [t for t in topics if t not in recorder.subscribed]
    summary = ', '.join(f'{t}: {n}' for t, n in recorder.counts.items())
    print(f'openvla-bag record: wrote {out.target} ({summary})', file=sys.stderr)
    if never:
        print(f'openvla-bag record: never saw {", ".join(never)}', file=sys.stderr)
    if recorder.not_downscaled:
        print(f'openvla-bag record: warning: {recorder.not_downscaled} camera message(s) could not be decoded '
              'and were recorded unscaled, as received', file=sys.stderr)
    lost = len(recorder._held) + recorder.dropped_before_clock
    if lost:
        print(f'openvla-bag record: warning: {lost} message(s) arrived but no {defaults.CLOCK_TOPIC} message '
              'ever did, so they have no log time and are not in the bag', file=sys.stderr)
        return 1
    return 0


class BagSeries:
    """The recorder of ``openvla-bag record`` in this process, on an rclpy node and context of its
    own (``domain_id``), writing one bag after another: :meth:`begin` a bag, :meth:`end` it.

    Log times are the wall clock (the header stamps carry the graph's time). The subscriptions
    stay from one bag to the next, so nothing published after :meth:`begin` is lost to DDS
    matching; :meth:`wait_matched` waits until the topics an episode needs are matched. Other
    code may create publishers on :attr:`node` (episode markers, the instruction): the recorder
    records them as any other topic."""

    def __init__(self, topics: list[str] | None = None, *, domain_id: int | None = None,
                 camera_scale: float = 1.0, node_name: str = defaults.BAG_RECORDER_NODE):
        self.topics = list(topics) if topics else list(DEFAULT_RECORD_TOPICS)
        self.domain_id, self.camera_scale, self.node_name = domain_id, camera_scale, node_name
        self.node = self.recorder = None
        self._ctx = self._executor = self._thread = None
        self._out: BagOutput | None = None
        self._stop = threading.Event()

    def start(self) -> 'BagSeries':
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self._ctx = Context()
        kwargs = {} if self.domain_id is None else {'domain_id': int(self.domain_id)}
        rclpy.init(context=self._ctx, **kwargs)
        self.node = rclpy.create_node(self.node_name, context=self._ctx)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self.node)
        self.recorder = Recorder(self.node, None, self.topics, self.camera_scale, sim_time=False)
        self._thread = threading.Thread(target=self._spin, name='bag_series_spin', daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.recorder.spin(self._executor, lambda: self._ctx.ok() and not self._stop.is_set())
        except (ExternalShutdownException, RuntimeError):
            pass

    def wait_matched(self, topics, timeout_s: float) -> None:
        """Wait until every one of ``topics`` is subscribed and matched to a publisher."""
        deadline = time.monotonic() + timeout_s
        while not self.recorder.matched(topics):
            if time.monotonic() > deadline:
                missing = [t for t in topics if not self.recorder.matched([t])]
                raise BagError(f'recorder: no publisher matched for {", ".join(missing)} after {timeout_s:.0f} s')
            time.sleep(0.05)

    def begin(self, output, force: bool = False) -> None:
        """Start writing the bag ``output`` (written beside it and moved there by :meth:`end`)."""
        if self._out is not None:
            raise BagError(f'recorder: {self._out.target} is still being written')
        out = BagOutput(output, force, what='output bag')
        try:
            self.recorder.start_bag(open_writer(out.path, 'mcap'))
        except BaseException:
            out.discard()
            raise
        self._out = out

    def end(self):
        """Finish the current bag; returns (its path, {topic: messages written})."""
        out, self._out = self._out, None
        writer = self.recorder.stop_bag()
        counts = dict(self.recorder.counts)
        try:
            writer.close()
            path = out.commit()
        except BaseException:
            if not out.committed:
                out.discard()
            raise
        return path, counts

    def close(self) -> None:
        import rclpy

        if self._out is not None:
            writer = self.recorder.stop_bag()
            try:
                writer.close()
            finally:
                out, self._out = self._out, None
                out.discard()
        self._stop.set()
        if self._ctx is not None:
            if self._thread is not None:
                self._thread.join(timeout=5)
            if self.node is not None:
                self.node.destroy_node()
            rclpy.try_shutdown(context=self._ctx)
            self._ctx = None

    def __enter__(self) -> 'BagSeries':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
