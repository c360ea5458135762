"""``builtin_interfaces/Time`` and ``Duration`` <-> seconds / nanoseconds, ROS-free.

Duck-typed on ``.sec`` / ``.nanosec``, so rclpy and rosbags messages work alike. Every
conversion of a stamp in the package goes through here, so the rounding (nanosec always in
[0, 1e9)) is decided in one place.
"""
from __future__ import annotations

import math

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp) -> int:
    """``Time`` / ``Duration`` -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_to_s(stamp) -> float:
    """``Time`` / ``Duration`` -> float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) with nanosec in [0, 1e9)."""
    return divmod(int(ns), NS_PER_S)


def s_to_sec_nanosec(seconds: float) -> tuple[int, int]:
    """Float seconds -> (sec, nanosec), rounded to the nearest nanosecond, nanosec in [0, 1e9)."""
    if not math.isfinite(seconds):
        raise ValueError(f'time must be finite, got {seconds}')
    return ns_to_sec_nanosec(round(seconds * NS_PER_S))
