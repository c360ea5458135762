"""Bridge action labels from consecutive *reached* end-effector states (base frame).

Upstream labels Bridge data from what the arm did, not from what it was told
(``relabel_bridge_actions``): ``d = p[t+1] - p[t]``, ``R_d = R[t+1] · R[t]^T`` as static-XYZ Euler
angles (the inverse of :func:`openvla_ros.control.geometry.rotation_from_static_xyz`), and the
gripper as an absolute command with 1 = open. Labelling from commanded targets instead would teach
the policy the controller's lag and clipping, not the motion.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from openvla_ros.action_layout import GRIPPER_INDEX, MIN_ACTION_DIM, ROTATION_SLICE, TRANSLATION_SLICE

# A step moving less than this (and not changing the gripper) counts as idle.
DEFAULT_IDLE_TRANSLATION_M = 1e-3
DEFAULT_IDLE_ROTATION_RAD = 1e-2
# Idle runs shorter than this are kept: a brief pause (e.g. while the gripper closes) is part of
# the behaviour, a long one makes the policy learn to freeze.
DEFAULT_IDLE_KEEP_STEPS = 2


class LabelError(ValueError):
    """The states cannot be labelled (too short, wrong shapes, non-finite)."""


def static_xyz_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """(roll, pitch, yaw) with ``R = Rz(yaw) · Ry(pitch) · Rx(roll)``."""
    return Rotation.from_matrix(rotation).as_euler('xyz')


def bridge_labels(positions_m: np.ndarray, rotations: np.ndarray, gripper_open: np.ndarray) -> np.ndarray:
    """Actions [T-1, 7] from T reached states.

    ``positions_m`` [T, 3] and ``rotations`` [T, 3, 3] in the base frame; ``gripper_open`` [T] the
    gripper state in [0, 1] (1 = open). Action t moves state t to state t+1; its gripper entry is
    the state *after* the step, i.e. the command that produced it (upstream's convention).
    """
    p = np.asarray(positions_m, dtype=np.float64)
    r = np.asarray(rotations, dtype=np.float64)
    g = np.asarray(gripper_open, dtype=np.float64).reshape(-1)
    if p.ndim != 2 or p.shape[1] != 3 or r.shape != (p.shape[0], 3, 3) or g.shape != (p.shape[0],):
        raise LabelError(f'state shapes disagree: positions {p.shape}, rotations {r.shape}, '
                         f'gripper {g.shape} (expected [T,3], [T,3,3], [T])')
    if p.shape[0] < 2:
        raise LabelError(f'{p.shape[0]} state(s): labelling needs at least two steps')
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r)) and np.all(np.isfinite(g))):
        raise LabelError('states contain non-finite values')
    out = np.zeros((p.shape[0] - 1, MIN_ACTION_DIM))
    out[:, TRANSLATION_SLICE] = p[1:] - p[:-1]
    relative = np.einsum('tij,tkj->tik', r[1:], r[:-1])
    out[:, ROTATION_SLICE] = Rotation.from_matrix(relative).as_euler('xyz')
    out[:, GRIPPER_INDEX] = np.clip(g[1:], 0.0, 1.0)
    return out


def idle_mask(actions: np.ndarray, translation_m: float = DEFAULT_IDLE_TRANSLATION_M,
              rotation_rad: float = DEFAULT_IDLE_ROTATION_RAD,
              keep_steps: int = DEFAULT_IDLE_KEEP_STEPS) -> np.ndarray:
    """True for the steps to keep: idle steps are dropped once a run of them exceeds ``keep_steps``.

    A step is idle when its translation and rotation are below the thresholds and the gripper
    command equals the previous step's.
    """
    a = np.asarray(actions, dtype=np.float64)
    still = (np.linalg.norm(a[:, TRANSLATION_SLICE], axis=1) < translation_m) & \
            (np.linalg.norm(a[:, ROTATION_SLICE], axis=1) < rotation_rad)
    gripper = a[:, GRIPPER_INDEX]
    same_gripper = np.concatenate([[True], np.abs(np.diff(gripper)) < 0.5])
    idle = still & same_gripper
    keep = np.ones(len(a), dtype=bool)
    run = 0
    for i, is_idle in enumerate(idle):
        run = run + 1 if is_idle else 0
        if run > keep_steps:
            keep[i] = False
    return keep
