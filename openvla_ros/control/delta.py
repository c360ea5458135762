"""Bridge delta semantics: one OpenVLA action ``[dx, dy, dz, droll, dpitch, dyaw, gripper]``
turned into the next end-effector target, exactly as bridge_data_robot's WidowX env does.

bridge_data_robot (``robot_base_env.step`` / ``action2transform_local``) forms
``T_d = Tr(p) · [R_d | d] · Tr(-p)`` with ``p`` the *measured* EE position and composes it onto
the previous *commanded* target ``T_prev = [R_prev | t_prev]``:

    T_next = T_d · T_prev = [ R_d · R_prev | t_prev + d + (R_d - I) · (t_prev - p) ]

so the rotation is about the point ``p`` with base-aligned axes and the translation is in base
axes. When the arm has reached its previous target (``p == t_prev``, the blocking case and the
steady state of the non-blocking one) the last term vanishes and

    position_next = t_prev + d,      rotation_next = R_d · R_prev.

This module implements the general formula with the pivot as a parameter. The controller uses
the previous target as the pivot by default (``rotation_pivot: target``): a rotation delta then
never moves the commanded point, and the tracking lag of the real arm (up to a few cm in
non-blocking 5 Hz control) cannot leak into the position as ``(R_d - I)·(t_prev - p)``, a term
that is an artefact of where the arm happened to be, not of what the policy predicted (the
training labels are differences of reached states: upstream's ``relabel_bridge_actions`` in
``prismatic/vla/datasets/rlds/utils/data_utils.py``). ``rotation_pivot: measured`` reproduces
bridge_data_robot to the letter.

Before composing, each dimension is clipped to the action space (xyz ±max_translation_step_m,
rpy ±max_rotation_step_rad, gripper [0, 1]); afterwards the target position is clipped to the
workspace box (orientation is not clipped, as in Bridge's ``action_clipping="xyz"``). Any NaN or
infinity rejects the whole action.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from openvla_ros.action_layout import (ACTION_DIM_NAMES, GRIPPER_INDEX, MIN_ACTION_DIM, ROTATION_SLICE,
                                       TRANSLATION_SLICE)
from openvla_ros.control.geometry import Pose, rotation_from_static_xyz

ACTION_DIM = MIN_ACTION_DIM  # the controller takes exactly the Bridge layout, no extra dimensions

# Names of the limits reported when they change a command (ControllerStatus.active_limits).
TRANSLATION_CLIP = 'translation_clip'
ROTATION_CLIP = 'rotation_clip'
WORKSPACE_CLIP = 'workspace_clip'
GRIPPER_CLIP = 'gripper_clip'


class InvalidActionError(ValueError):
    """The action has the wrong length or a non-finite value; nothing of it is used."""


@dataclass(frozen=True)
class StepLimits:
    max_translation_step_m: float
    max_rotation_step_rad: float
    workspace_low_m: tuple[float, float, float]
    workspace_high_m: tuple[float, float, float]


@dataclass(frozen=True)
class DeltaResult:
    target: Pose
    gripper: float                      # absolute gripper command, 1 = open, 0 = closed
    clipped_action: np.ndarray          # the action after the per-dimension clip
    active_limits: tuple[str, ...]      # limits that changed the command


def validate_action(values) -> np.ndarray:
    """The action as a float array of length 7, or InvalidActionError saying what is wrong."""
    try:
        a = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidActionError(f'action is not numeric: {exc}') from None
    if a.shape[0] != ACTION_DIM:
        raise InvalidActionError(f'action has {a.shape[0]} values, expected {ACTION_DIM} '
                                 f'[{", ".join(ACTION_DIM_NAMES)}]')
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a)).tolist()
        raise InvalidActionError(f'action has non-finite values at indices {bad}')
    return a


def clip_action(action: np.ndarray, limits: StepLimits) -> tuple[np.ndarray, tuple[str, ...]]:
    a = validate_action(action)
    t, r, g = TRANSLATION_SLICE, ROTATION_SLICE, GRIPPER_INDEX
    out = a.copy()
    out[t] = np.clip(a[t], -limits.max_translation_step_m, limits.max_translation_step_m)
    out[r] = np.clip(a[r], -limits.max_rotation_step_rad, limits.max_rotation_step_rad)
    out[g] = np.clip(a[g], 0.0, 1.0)
    active = []
    if np.any(out[t] != a[t]):
        active.append(TRANSLATION_CLIP)
    if np.any(out[r] != a[r]):
        active.append(ROTATION_CLIP)
    if out[g] != a[g]:
        active.append(GRIPPER_CLIP)
    return out, tuple(active)


def apply_bridge_delta(previous_target: Pose, action, limits: StepLimits,
                       pivot_m: np.ndarray | None = None) -> DeltaResult:
    """Next target from the previous commanded target and one action (see the module docstring).

    ``pivot_m``: the point the rotation is applied about; None means the previous target
    position (position_next = t_prev + d exactly)."""
    clipped, active = clip_action(action, limits)
    d = clipped[TRANSLATION_SLICE]
    r_d = rotation_from_static_xyz(*clipped[ROTATION_SLICE])
    t_prev = previous_target.position
    position = t_prev + d
    if pivot_m is not None:
        position = position + (r_d - np.eye(3)) @ (t_prev - np.asarray(pivot_m, dtype=float))
    low = np.asarray(limits.workspace_low_m, dtype=float)
    high = np.asarray(limits.workspace_high_m, dtype=float)
    clipped_position = np.clip(position, low, high)
    if np.any(clipped_position != position):
        active = active + (WORKSPACE_CLIP,)
    rotation = r_d @ previous_target.rotation
    return DeltaResult(Pose(clipped_position, rotation), float(clipped[GRIPPER_INDEX]), clipped, active)
