"""Synthetic bags for the openvla-bag tests, written with rosbags exactly as a recorder would.

(No tests here; the other test_bag_* files import these helpers.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer

from openvla_ros import defaults
from openvla_ros.bag.storage import project_typestore
from openvla_ros.imaging import rgb_to_image_fields

T0_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000           # 10 Hz camera
REFERENCE_DELAY_NS = 20_000_000
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
TALKER_MESSAGES = 20


def frame_rgb(i: int, size=(64, 48)) -> np.ndarray:
    """Frame ``i``: deterministic pseudo-random content, different for every frame."""
    w, h = size
    return np.random.default_rng(1000 + i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def frame_stamp_ns(i: int) -> int:
    return T0_NS + i * PERIOD_NS + 1234   # a stamp that is not a round number of the log time


@dataclass
class SyntheticBag:
    path: Path
    stamps_ns: list[int]
    frames: list[np.ndarray]
    encodings: list[str]
    instructions: list[tuple[int, str]] = field(default_factory=list)   # (log time, text)


def write_bag(path: Path, storage: str = 'mcap', n_frames: int = 6, size=(64, 48),
              encodings=('rgb8', 'bgr8'), instructions=((0, 'pick up the block'),),
              image_topic: str = defaults.CAMERA_TOPIC, references=None,
              reference_topic: str = defaults.ACTION_TOPIC, reference_type: str = 'delta',
              extra=None) -> SyntheticBag:
    """Write a camera bag.

    ``instructions``: (frame index at which it is sent, text); sent 1 ms before that frame.
    ``references``: per frame ``(action vector, token ids or None)`` or None for no reference;
    written after the frame with the frame's stamp.
    ``extra``: list of (topic, msgtype, log time, message object) written as well.
    """
    store = project_typestore()
    T = store.types
    Image, Header, Time = T['sensor_msgs/msg/Image'], T['std_msgs/msg/Header'], T['builtin_interfaces/msg/Time']
    String = T['std_msgs/msg/String']
    bag = SyntheticBag(Path(path), [], [], [])
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as w:
        c_img = w.add_connection(image_topic, 'sensor_msgs/msg/Image', typestore=store)
        c_ins = w.add_connection(defaults.INSTRUCTION_TOPIC, 'std_msgs/msg/String', typestore=store) \
            if instructions else None
        c_ref = None
        if references is not None:
            ref_type = ('openvla_ros/msg/EndEffectorDelta' if reference_type == 'delta'
                        else 'std_msgs/msg/Float64MultiArray')
            c_ref = w.add_connection(reference_topic, ref_type, typestore=store)
        extra_conns = {image_topic: c_img}
        for topic, msgtype, _, _ in extra or ():
            if topic not in extra_conns:
                extra_conns[topic] = w.add_connection(topic, msgtype, typestore=store)
        pending_ins = dict(instructions or ())
        for i in range(n_frames):
            log_ns = T0_NS + i * PERIOD_NS
            if i in pending_ins:
                text = pending_ins[i]
                w.write(c_ins, log_ns - 1_000_000, store.serialize_cdr(String(data=text), 'std_msgs/msg/String'))
                bag.instructions.append((log_ns - 1_000_000, text))
            rgb = frame_rgb(i, size if not callable(size) else size(i))
            enc = encodings[i % len(encodings)]
            stamp = frame_stamp_ns(i)
            sec, nsec = divmod(stamp, 10**9)
            f = rgb_to_image_fields(rgb, enc)
            img = Image(header=Header(stamp=Time(sec=sec, nanosec=nsec), frame_id='camera'),
                        height=f['height'], width=f['width'], encoding=enc, is_bigendian=f['is_bigendian'],
                        step=f['step'], data=np.frombuffer(f['data'], np.uint8))
            w.write(c_img, log_ns, store.serialize_cdr(img, 'sensor_msgs/msg/Image'))
            bag.stamps_ns.append(stamp)
            bag.frames.append(rgb)
            bag.encodings.append(enc)
            if references is not None and references[i] is not None:
                vec, tokens = references[i]
                # recorded shortly after the frame, as vla_node's action follows its image
                w.write(c_ref, log_ns + REFERENCE_DELAY_NS,
                        _reference_cdr(store, reference_type, stamp, vec, tokens))
        for topic, msgtype, t, msg in extra or ():
            w.write(extra_conns[topic], t, store.serialize_cdr(msg, msgtype))
    return bag


def _reference_cdr(store, reference_type: str, stamp_ns: int, vec, tokens) -> bytes:
    T = store.types
    vec = np.asarray(vec, np.float64)
    if reference_type == 'array':
        Arr, Layout = T['std_msgs/msg/Float64MultiArray'], T['std_msgs/msg/MultiArrayLayout']
        return store.serialize_cdr(Arr(layout=Layout(dim=[], data_offset=0), data=vec),
                                   'std_msgs/msg/Float64MultiArray')
    from openvla_ros.action_message import delta_fields_to_rosbags
    from openvla_ros.engine.api import PredictionResult

    result = PredictionResult(action=vec, normalized_action=np.zeros_like(vec),
                              action_token_ids=np.asarray(tokens if tokens is not None else [], np.int64),
                              unnorm_key='bridge_orig', timings={'total': 0.01})
    from openvla_ros.action_message import prediction_to_delta_fields
    fields = prediction_to_delta_fields(result, 'recorded', stamp_ns, 'base_link', 'recorded')
    return store.serialize_cdr(delta_fields_to_rosbags(fields, store), 'openvla_ros/msg/EndEffectorDelta')


# what rosbag2 (Jazzy and Kilted) writes for a publisher it discovered: the history and depth
# are not sent over discovery ("unknown", 0) and "infinite" durations are INT64_MAX nanoseconds
ROSBAG2_INFINITE = {'sec': 9223372036, 'nsec': 854775807}
ROSBAG2_OFFERED_QOS = [{
    'history': 'unknown', 'depth': 0, 'reliability': 'reliable', 'durability': 'volatile',
    'deadline': ROSBAG2_INFINITE, 'lifespan': ROSBAG2_INFINITE, 'liveliness': 'automatic',
    'liveliness_lease_duration': ROSBAG2_INFINITE, 'avoid_ros_namespace_conventions': False}]


def write_talker_bag(path: Path, storage: str, listed: int | None = None) -> Path:
    """``ros2 run demo_nodes_cpp talker`` recorded by ``ros2 bag record``: /chatter, String
    "Hello World: N" at 1 Hz, metadata.yaml as rosbag2 writes it (``listed`` overrides the
    count it gives)."""
    store = project_typestore()
    String = store.types['std_msgs/msg/String']
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as w:
        conn = w.add_connection('/chatter', 'std_msgs/msg/String', typestore=store)
        for i in range(TALKER_MESSAGES):
            w.write(conn, T0_NS + i * 10**9,
                    store.serialize_cdr(String(data=f'Hello World: {i + 1}'), 'std_msgs/msg/String'))
    meta_path = path / 'metadata.yaml'
    meta = yaml.safe_load(meta_path.read_text())
    info = meta['rosbag2_bagfile_information']
    for topic in info['topics_with_message_count']:
        topic['topic_metadata']['offered_qos_profiles'] = ROSBAG2_OFFERED_QOS
        if listed is not None:
            topic['message_count'] = listed
    if listed is not None:
        info['message_count'] = listed
    info['ros_distro'] = 'jazzy'
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    return path
