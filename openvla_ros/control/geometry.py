"""End-effector poses and the rotation conventions of the package, in one place.

- Rotation deltas are static-XYZ Euler angles: ``R = Rz(yaw) · Ry(pitch) · Rx(roll)``
  (scipy's lower-case ``'xyz'`` sequence is extrinsic, which is exactly this product).
- ROS messages carry quaternions as x, y, z, w; transforms3d and mink use w, x, y, z. Every
  conversion goes through :func:`quat_xyzw_from_matrix` / :func:`matrix_from_quat_xyzw` so the
  order is decided here only; everything else passes 3x3 rotation matrices around.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


def rotation_from_static_xyz(roll_rad: float, pitch_rad: float, yaw_rad: float) -> np.ndarray:
    """``Rz(yaw) · Ry(pitch) · Rx(roll)`` as a 3x3 matrix."""
    return Rotation.from_euler('xyz', [roll_rad, pitch_rad, yaw_rad]).as_matrix()


def orthonormalize(rotation: np.ndarray) -> np.ndarray:
    """The proper rotation nearest to ``rotation`` (configs quote matrices to 3 decimals)."""
    m = np.asarray(rotation, dtype=float).reshape(3, 3)
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def quat_xyzw_from_matrix(rotation: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(rotation).as_quat()  # scipy order is x, y, z, w


def matrix_from_quat_xyzw(quat_xyzw) -> np.ndarray:
    return Rotation.from_quat(np.asarray(quat_xyzw, dtype=float)).as_matrix()


def rotation_angle_rad(rotation_a: np.ndarray, rotation_b: np.ndarray) -> float:
    """Angle of the relative rotation between two orientations, in [0, pi]."""
    rel = np.asarray(rotation_a).T @ np.asarray(rotation_b)
    return float(np.arccos(np.clip((np.trace(rel) - 1.0) / 2.0, -1.0, 1.0)))


def rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Axis * angle (rad) of a rotation matrix."""
    return Rotation.from_matrix(rotation).as_rotvec()


def delta_to_twist(delta_xyz, delta_rpy, period_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The constant twist that carries out one Bridge delta in ``period_s`` seconds.

    ``delta_rpy`` are static-XYZ Euler angles (the action convention); their rates are not an
    angular velocity, so the rotation is converted to its rotation vector first: turning at
    ``rotvec / period_s`` about a fixed base axis for ``period_s`` yields exactly ``R_d``.
    Both vectors are in the base frame (the frame the delta is expressed in)."""
    if not period_s > 0:
        raise ValueError(f'period_s must be positive, got {period_s!r}')
    linear = np.asarray(delta_xyz, dtype=float).reshape(3) / period_s
    angular = rotation_vector(rotation_from_static_xyz(*np.asarray(delta_rpy, dtype=float).reshape(3))) / period_s
    return linear, angular


@dataclass(frozen=True)
class Pose:
    """An end-effector pose in the base frame: position in metres, orientation as a rotation matrix."""

    position: np.ndarray
    rotation: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, 'position', np.asarray(self.position, dtype=float).reshape(3).copy())
        object.__setattr__(self, 'rotation', np.asarray(self.rotation, dtype=float).reshape(3, 3).copy())

    @classmethod
    def from_position_quat_xyzw(cls, position, quat_xyzw) -> 'Pose':
        return cls(position, matrix_from_quat_xyzw(quat_xyzw))

    def quat_xyzw(self) -> np.ndarray:
        return quat_xyzw_from_matrix(self.rotation)

    def position_error_m(self, other: 'Pose') -> float:
        return float(np.linalg.norm(self.position - other.position))

    def rotation_error_rad(self, other: 'Pose') -> float:
        return rotation_angle_rad(self.rotation, other.rotation)
