"""rclpy helpers shared by play and record: message classes and QoS choices.

Imported only by those two sub-commands, so reading, writing and evaluating bags never load rclpy.
"""
from __future__ import annotations

import importlib

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY_CHOICES = ('reliable', 'best_effort')
DEFAULT_DEPTH = 10


def _is_transient_local(profile) -> bool:
    # rosbags Qos and rclpy QoSProfile both carry the rmw enum value (TRANSIENT_LOCAL = 1)
    return int(getattr(profile.durability, 'value', profile.durability)) == int(DurabilityPolicy.TRANSIENT_LOCAL)


def _is_best_effort(profile) -> bool:
    return int(getattr(profile.reliability, 'value', profile.reliability)) == int(ReliabilityPolicy.BEST_EFFORT)


def playback_qos(recorded_profiles, reliability: str | None) -> QoSProfile:
    """QoS for republishing a recorded topic.

    Latched topics (every recorded publisher transient-local, e.g. /openvla/status) stay
    latched; reliability follows ``reliability`` when given, else the recording, else reliable.
    """
    profiles = list(recorded_profiles or ())
    latched = bool(profiles) and all(_is_transient_local(p) for p in profiles)
    if reliability is None:
        best_effort = bool(profiles) and all(_is_best_effort(p) for p in profiles)
    else:
        best_effort = reliability == 'best_effort'
    return QoSProfile(
        depth=1 if latched else DEFAULT_DEPTH, history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def recording_qos(publisher_profiles) -> QoSProfile:
    """A subscription QoS compatible with every current publisher of a topic (as rosbag2 does):
    reliable only when all publishers are reliable, transient-local only when all are."""
    profiles = list(publisher_profiles)
    reliable = bool(profiles) and not any(_is_best_effort(p) for p in profiles)
    latched = bool(profiles) and all(_is_transient_local(p) for p in profiles)
    return QoSProfile(
        depth=100, history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def to_rosbags_qos(profile: QoSProfile):
    """The rosbags ``Qos`` record stored in the bag's metadata for a subscription profile."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                    QosTime)

    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory(int(profile.history)), depth=int(profile.depth),
               reliability=QosReliability(int(profile.reliability)),
               durability=QosDurability(int(profile.durability)),
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.SYSTEM_DEFAULT,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def import_message_class(msgtype: str):
    """The rclpy message class of ``pkg/msg/Type``; raises ImportError saying what is missing."""
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] != 'msg':
        raise ImportError(f'{msgtype!r} is not a message type name (pkg/msg/Type)')
    pkg, _, name = parts
    try:
        module = importlib.import_module(f'{pkg}.msg')
    except ImportError as exc:
        raise ImportError(f'Python package {pkg}.msg is not installed here ({exc})') from exc
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f'{pkg}.msg has no message {name}') from None
