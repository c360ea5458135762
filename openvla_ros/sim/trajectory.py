"""Joint-space trajectory following with the semantics of ros2_control's joint_trajectory_controller.

A new trajectory replaces the active one. It starts from the *currently desired* joint positions
(not the measured ones, so the commanded path stays continuous) and moves linearly to each point by
its ``time_from_start``; after the last point the targets hold there. Joints a trajectory does not
name keep their current desired positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


class TrajectoryError(ValueError):
    """A trajectory that cannot be followed (unknown joints, bad sizes, non-finite values, bad timing)."""


@dataclass(frozen=True)
class TrajectoryPoint:
    positions: tuple[float, ...]
    time_from_start_s: float


@dataclass(frozen=True)
class JointTrajectory:
    """A validated trajectory: joint names, and points with strictly increasing times."""
    joint_names: tuple[str, ...]
    points: tuple[TrajectoryPoint, ...]

    @classmethod
    def build(cls, joint_names: Sequence[str], points: Sequence[tuple[Sequence[float], float]],
              known_joints: Sequence[str]) -> 'JointTrajectory':
        """Validate and build; raises ``TrajectoryError`` with the reason on bad input."""
        names = tuple(joint_names)
        if not names:
            raise TrajectoryError('trajectory names no joints')
        if len(set(names)) != len(names):
            raise TrajectoryError(f'duplicate joint names in {list(names)}')
        unknown = [n for n in names if n not in known_joints]
        if unknown:
            raise TrajectoryError(f'unknown joint names {unknown}; known: {list(known_joints)}')
        if not points:
            raise TrajectoryError('trajectory has no points')
        built = []
        last_t = -math.inf
        for i, (positions, t) in enumerate(points):
            pos = tuple(float(p) for p in positions)
            if len(pos) != len(names):
                raise TrajectoryError(f'point {i} has {len(pos)} positions for {len(names)} joints')
            if not all(math.isfinite(p) for p in pos):
                raise TrajectoryError(f'point {i} has non-finite positions {list(pos)}')
            t = float(t)
            if not math.isfinite(t) or t < 0.0:
                raise TrajectoryError(f'point {i} has invalid time_from_start {t}')
            if t <= last_t:
                raise TrajectoryError(f'point {i}: time_from_start {t} s is not after the previous point ({last_t} s)')
            last_t = t
            built.append(TrajectoryPoint(pos, t))
        return cls(names, tuple(built))


class TrajectoryFollower:
    """Produces desired joint positions over time for a set of joints."""

    def __init__(self, joint_names: Sequence[str], initial_positions: Sequence[float]):
        self.joint_names = tuple(joint_names)
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        self._desired = np.asarray(initial_positions, dtype=float).copy()
        if self._desired.shape != (len(self.joint_names),):
            raise ValueError('initial_positions must have one value per joint')
        # Active segment table: times (K,) and positions (K, J) in full-joint space, starting
        # with the desired state at the start time.
        self._times: np.ndarray | None = None
        self._waypoints: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self._times is not None

    def hold(self, positions: Sequence[float] | None = None) -> None:
        """Drop the active trajectory and hold ``positions`` (default: the current desired ones)."""
        if positions is not None:
            self._desired = np.asarray(positions, dtype=float).copy()
        self._times = self._waypoints = None

    def start(self, trajectory: JointTrajectory, now_s: float) -> None:
        """Replace the active trajectory with ``trajectory`` starting at time ``now_s``."""
        self.sample(now_s)  # freeze the desired state at the switch-over instant
        cols = [self._index[n] for n in trajectory.joint_names]
        times = [now_s]
        rows = [self._desired.copy()]
        for p in trajectory.points:
            row = rows[-1].copy()
            row[cols] = p.positions
            if p.time_from_start_s == 0.0:
                # A point due immediately replaces the starting state (a step command).
                rows[-1] = row
                continue
            times.append(now_s + p.time_from_start_s)
            rows.append(row)
        self._times = np.asarray(times)
        self._waypoints = np.stack(rows)
        if len(times) == 1:
            self._desired = rows[0]
            self.hold()

    def sample(self, now_s: float) -> np.ndarray:
        """Desired positions at ``now_s`` (linear interpolation; holds the last point afterwards)."""
        if self._times is None:
            return self._desired.copy()
        t, w = self._times, self._waypoints
        if now_s >= t[-1]:
            self._desired = w[-1].copy()
            self.hold()
        elif now_s <= t[0]:
            self._desired = w[0].copy()
        else:
            k = int(np.searchsorted(t, now_s, side='right')) - 1
            a = (now_s - t[k]) / (t[k + 1] - t[k])
            self._desired = (1.0 - a) * w[k] + a * w[k + 1]
        return self._desired.copy()

    def desired(self) -> Mapping[str, float]:
        return dict(zip(self.joint_names, self._desired.tolist()))
