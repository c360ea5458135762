"""``openvla-bag record``: write chosen topics of the live graph into an mcap bag.

On a ROS workstation ``ros2 bag record -s mcap`` does the same job; this recorder exists for
machines without rosbag2. Messages are stored as the CDR bytes received (``raw=True``
subscriptions), never deserialised, except the camera when ``--camera-scale`` asks to shrink
it. Each topic's message definition goes into the bag so any tool can decode it.

Topics are subscribed as soon as they appear in the graph, with a QoS compatible with their
publishers (latched topics such as /openvla/status are recorded with their last message).
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field

from openvla_ros import defaults
from openvla_ros.bag.storage import BagError, open_writer, prepare_output, project_typestore

DEFAULT_RECORD_TOPICS = (
    defaults.ACTION_TOPIC,
    defaults.VLA_STATUS_TOPIC,
    defaults.DIAGNOSTICS_TOPIC,
    defaults.CONTROLLER_STATUS_TOPIC,
    defaults.TARGET_POSE_TOPIC,
)
DISCOVERY_PERIOD_S = 0.2
IMAGE_TYPE = 'sensor_msgs/msg/Image'


@dataclass
class RecordOptions:
    output: str
    topics: list[str] = field(default_factory=list)
    camera: bool = False
    camera_scale: float = 1.0
    duration_s: float | None = None
    force: bool = False


def record_topics(opts: RecordOptions) -> list[str]:
    topics = list(opts.topics) or list(DEFAULT_RECORD_TOPICS)
    if opts.camera and defaults.CAMERA_TOPIC not in topics:
        topics.append(defaults.CAMERA_TOPIC)
    return topics


def downscale_image(msg, scale: float):
    """Shrink an rclpy Image by ``scale`` (area averaging), keeping header and encoding."""
    import cv2

    from openvla_ros.imaging import SUPPORTED_ENCODINGS, image_msg_to_rgb, rgb_to_image_fields

    rgb = image_msg_to_rgb(msg)
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    encoding = msg.encoding if msg.encoding in SUPPORTED_ENCODINGS else 'rgb8'
    for name, value in rgb_to_image_fields(small, encoding).items():
        setattr(msg, name, value)
    return msg


class Recorder:
    def __init__(self, node, writer, topics: list[str], camera_scale: float):
        self.node, self.writer = node, writer
        self.wanted = topics
        self.camera_scale = camera_scale
        self.store = project_typestore()
        self.connections: dict[str, object] = {}
        self.counts: dict[str, int] = {t: 0 for t in topics}
        self._subscriptions = []
        self._warned: set[str] = set()

    def discover(self) -> None:
        """Subscribe to every wanted topic that has appeared in the graph since the last call."""
        from rclpy.serialization import serialize_message

        from openvla_ros.bag.graph import import_message_class, recording_qos, to_rosbags_qos

        types = dict(self.node.get_topic_names_and_types())
        for topic in self.wanted:
            if topic in self.connections or topic not in types:
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
            conn = self.writer.add_connection(topic, msgtype, typestore=self.store,
                                              offered_qos_profiles=[to_rosbags_qos(qos)])
            self.connections[topic] = conn
            if topic == defaults.CAMERA_TOPIC and msgtype == IMAGE_TYPE and self.camera_scale != 1.0:
                def on_image(msg, topic=topic, conn=conn):
                    raw = serialize_message(downscale_image(msg, self.camera_scale))
                    self._write(topic, conn, raw)
                sub = self.node.create_subscription(cls, topic, on_image, qos)
            else:
                def on_raw(raw, topic=topic, conn=conn):
                    self._write(topic, conn, raw)
                sub = self.node.create_subscription(cls, topic, on_raw, qos, raw=True)
            self._subscriptions.append(sub)
            self.node.get_logger().info(f'recording {topic} ({msgtype})')

    def _write(self, topic: str, conn, raw: bytes) -> None:
        # receive time on the system clock: the bag's timeline, as rosbag2 records it
        self.writer.write(conn, time.time_ns(), raw)
        self.counts[topic] += 1


def record(opts: RecordOptions) -> int:
    if not 0 < opts.camera_scale <= 1:
        raise BagError(f'--camera-scale must be in (0, 1], got {opts.camera_scale}')
    topics = record_topics(opts)
    out = prepare_output(opts.output, opts.force, what='output bag')

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    writer = open_writer(out, 'mcap')
    rclpy.init()
    node = rclpy.create_node(defaults.BAG_RECORDER_NODE)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    recorder = Recorder(node, writer, topics, opts.camera_scale)
    stop = {'now': False}
    # SIGTERM (service managers, CI) ends the recording as cleanly as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    deadline = time.monotonic() + opts.duration_s if opts.duration_s else None
    node.get_logger().info(f'recording {", ".join(topics)} into {out}')
    try:
        next_discovery = 0.0
        while rclpy.ok() and not stop['now']:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now >= next_discovery:
                recorder.discover()
                next_discovery = now + DISCOVERY_PERIOD_S
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        writer.close()
    never = [t for t in topics if t not in recorder.connections]
    summary = ', '.join(f'{t}: {n}' for t, n in recorder.counts.items())
    print(f'openvla-bag record: wrote {out} ({summary})', file=sys.stderr)
    if never:
        print(f'openvla-bag record: never saw {", ".join(never)}', file=sys.stderr)
    return 0
