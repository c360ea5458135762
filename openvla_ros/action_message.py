"""PredictionResult <-> ``openvla_ros/EndEffectorDelta``, ROS-free (works on rclpy and rosbags messages).

:func:`prediction_to_delta_fields` is the one definition of how a policy prediction fills an
EndEffectorDelta; vla_node (rclpy messages, through :func:`fill_message`) and the offline
evaluation (rosbags messages, through :func:`delta_fields_to_rosbags`) both use it, so a bag
written offline and one recorded from the live node carry identical fields.
"""
from __future__ import annotations

import math

import numpy as np

# The layout names are re-exported for the modules that have always imported them from here.
from openvla_ros.action_layout import (ACTION_DIM_NAMES, GRIPPER_INDEX, MIN_ACTION_DIM,  # noqa: F401
                                       ROTATION_SLICE, TRANSLATION_SLICE, dim_names)
from openvla_ros.engine.api import InvalidModelOutputError, PredictionResult
from openvla_ros.stamps import ns_to_sec_nanosec

ENDEFFECTOR_DELTA_TYPE = 'openvla_ros/msg/EndEffectorDelta'


def prediction_to_delta_fields(result: PredictionResult, instruction: str, stamp_ns: int, frame_id: str,
                               model_id: str, *, image_age_s: float = 0.0, sequence: int = 0) -> dict:
    """The fields of an EndEffectorDelta for ``result``, as a nested dict of plain Python values.

    ``stamp_ns`` is the source image's stamp (not the time of publishing). Raises
    :class:`InvalidModelOutputError` for an action that must not reach a robot (fewer than 7
    dimensions, NaN or infinite values).
    """
    action = np.asarray(result.action, dtype=np.float64).reshape(-1)
    normalized = np.asarray(result.normalized_action, dtype=np.float64).reshape(-1)
    tokens = np.asarray(result.action_token_ids).reshape(-1)
    if action.size < MIN_ACTION_DIM:
        raise InvalidModelOutputError(
            f'action has {action.size} dimensions; an end-effector delta needs at least {MIN_ACTION_DIM}')
    # Empty normalized values / tokens: a backend that does not report them (a plain /act server).
    if normalized.size not in (0, action.size) or tokens.size not in (0, action.size):
        raise InvalidModelOutputError(
            f'action has {action.size} dimensions but {normalized.size} normalized values and '
            f'{tokens.size} tokens')
    if not (np.all(np.isfinite(action)) and np.all(np.isfinite(normalized))):
        raise InvalidModelOutputError(f'action contains non-finite values: {action.tolist()}')
    latency = float(result.timings.get('total', 0.0))
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    t, r = action[TRANSLATION_SLICE], action[ROTATION_SLICE]
    return {
        'header': {'stamp': {'sec': sec, 'nanosec': nanosec}, 'frame_id': str(frame_id)},
        'action': [float(v) for v in action],
        'translation': {'x': float(t[0]), 'y': float(t[1]), 'z': float(t[2])},
        'rotation': {'x': float(r[0]), 'y': float(r[1]), 'z': float(r[2])},
        'gripper': float(action[GRIPPER_INDEX]),
        'normalized_action': [float(v) for v in normalized],
        'action_token_ids': [int(v) for v in tokens],
        'instruction': str(instruction),
        'unnorm_key': str(result.unnorm_key),
        'model_id': str(model_id),
        'inference_latency_s': latency if math.isfinite(latency) else 0.0,
        'image_age_s': float(image_age_s),
        'sequence': int(sequence),
    }


def fill_message(msg, fields: dict):
    """Set ``fields`` (nested dicts for nested messages) on a message object; returns ``msg``.

    Works for rclpy messages (``fill_message(EndEffectorDelta(), fields)``).
    """
    for name, value in fields.items():
        if isinstance(value, dict):
            fill_message(getattr(msg, name), value)
        else:
            setattr(msg, name, value)
    return msg


def delta_fields_to_rosbags(fields: dict, typestore):
    """A rosbags EndEffectorDelta object (for ``typestore.serialize_cdr``) from the fields."""
    T = typestore.types
    h = fields['header']
    header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](**h['stamp']),
                                      frame_id=h['frame_id'])
    vec = T['geometry_msgs/msg/Vector3']
    return T[ENDEFFECTOR_DELTA_TYPE](
        header=header,
        action=np.asarray(fields['action'], np.float64),
        translation=vec(**fields['translation']),
        rotation=vec(**fields['rotation']),
        gripper=fields['gripper'],
        normalized_action=np.asarray(fields['normalized_action'], np.float64),
        action_token_ids=np.asarray(fields['action_token_ids'], np.int32),
        instruction=fields['instruction'],
        unnorm_key=fields['unnorm_key'],
        model_id=fields['model_id'],
        inference_latency_s=fields['inference_latency_s'],
        image_age_s=fields['image_age_s'],
        sequence=fields['sequence'],
    )


def delta_action_vector(msg) -> np.ndarray:
    """The action vector of an EndEffectorDelta (rclpy or rosbags): ``action`` when filled,
    else rebuilt from translation / rotation / gripper (messages written by other tools)."""
    action = np.asarray(msg.action, dtype=np.float64).reshape(-1)
    if action.size:
        return action
    t, r = msg.translation, msg.rotation
    return np.array([t.x, t.y, t.z, r.x, r.y, r.z, msg.gripper], dtype=np.float64)
