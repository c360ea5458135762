"""The embodiment description: everything arm_controller needs to know about one arm set-up,
loaded from ``config/<name>.yaml`` and validated with errors that name the offending key.

Joint limits come from the kinematic model (MJCF); the YAML may only tighten them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import yaml

from openvla_ros import defaults
from openvla_ros.control.delta import StepLimits
from openvla_ros.control.geometry import Pose, orthonormalize
from openvla_ros.paths import config_file, description_dir

GRIPPER_OUTPUTS = ('trajectory', 'float64', 'none')
# Safety limits that parameters may change, and which side of its hard bound each must stay on:
# +1 the value may not exceed the bound (per axis for vectors), -1 it may not go below it.
HARD_LIMIT_SIDES = {
    'max_translation_step_m': 1, 'max_rotation_step_rad': 1, 'max_joint_speed_rad_s': 1,
    'watchdog_timeout_s': 1, 'max_action_age_s': 1, 'max_joint_state_age_s': 1,
    'workspace_low_m': -1, 'workspace_high_m': 1,
}
ROTATION_PIVOTS = ('target', 'measured')


class EmbodimentConfigError(ValueError):
    """The embodiment YAML is missing a key, has an unknown one, or a value out of range."""


@dataclass(frozen=True)
class GripperMapping:
    """Gripper command g in [0, 1] (1 = open) → finger joint position, linear between the two ends.

    Sim wx250s model: 0.015 (closed) … 0.037 (open) m. Real Bridge custom gripper: 0.010 … 0.035 m."""

    joint: str
    closed_position_m: float
    open_position_m: float
    output: str = 'trajectory'   # trajectory: `joint` in the arm trajectory; float64: std_msgs/Float64; none

    def position_m(self, gripper: float) -> float:
        g = float(np.clip(gripper, 0.0, 1.0))
        return self.closed_position_m + g * (self.open_position_m - self.closed_position_m)

    def command_from_position_m(self, position_m: float) -> float:
        """Inverse of :meth:`position_m`: the gripper command in [0, 1] a finger position shows
        (1.0 when the two ends coincide: nothing to infer, report open)."""
        span = self.open_position_m - self.closed_position_m
        if span == 0:
            return 1.0
        return float(np.clip((float(position_m) - self.closed_position_m) / span, 0.0, 1.0))


@dataclass(frozen=True)
class Embodiment:
    name: str
    base_frame_id: str
    model_file: str                          # relative to openvla_ros/description/
    end_effector_site: str
    arm_joints: tuple[str, ...]
    joint_limits_rad: dict = field(default_factory=dict)   # optional tightening: joint -> (lower, upper)
    use_ik: bool = True                      # False: servo-only (moveit_servo solves the IK)
    ik_position_tolerance_m: float = 0.001
    ik_orientation_tolerance_rad: float = 0.01
    ik_max_iterations: int = 100
    max_joint_speed_rad_s: float = 1.0
    control_period_s: float = 0.2
    max_translation_step_m: float = 0.05
    max_rotation_step_rad: float = 0.25
    workspace_low_m: tuple[float, float, float] = (0.1, -0.20, -0.01)
    workspace_high_m: tuple[float, float, float] = (0.45, 0.25, 0.30)
    rotation_pivot: str = 'target'
    start_position_m: tuple[float, float, float] = (0.3, -0.09, 0.26)
    start_rotation: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    gripper: GripperMapping | None = None
    watchdog_timeout_s: float = 1.0
    max_action_age_s: float = 0.5
    max_joint_state_age_s: float = 0.5
    start_enabled: bool = False
    blocking: bool = False
    blocking_timeout_s: float = 1.0
    goal_position_tolerance_m: float = 0.01
    goal_orientation_tolerance_rad: float = 0.05
    output_joint_trajectory: bool = True
    output_servo_twist: bool = False
    servo_rate_hz: float = 50.0
    joint_trajectory_topic: str = defaults.relative(defaults.JOINT_TRAJECTORY_TOPIC)
    servo_twist_topic: str = defaults.relative(defaults.SERVO_TWIST_TOPIC)
    gripper_width_topic: str = defaults.relative(defaults.GRIPPER_WIDTH_TOPIC)
    # The loosest value each HARD_LIMIT_SIDES limit may take (YAML ``hard_limits``; a limit the
    # file gives no hard bound for is bounded by its own value in the file: overrides only tighten).
    hard_limits: dict = field(default_factory=dict)

    def __post_init__(self):
        validate(self)

    @property
    def step_limits(self) -> StepLimits:
        return StepLimits(self.max_translation_step_m, self.max_rotation_step_rad,
                          tuple(self.workspace_low_m), tuple(self.workspace_high_m))

    @property
    def start_pose(self) -> Pose:
        return Pose(self.start_position_m, orthonormalize(np.asarray(self.start_rotation, dtype=float)))

    @property
    def model_path(self) -> Path:
        return description_dir() / self.model_file

    def with_overrides(self, **changes) -> 'Embodiment':
        """A copy with some values replaced (node parameters), validated again."""
        return replace(self, **changes)


def _fail(key: str, why: str):
    raise EmbodimentConfigError(f'embodiment key {key!r}: {why}')


def _positive(e: Embodiment, key: str):
    v = getattr(e, key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v <= 0:
        _fail(key, f'must be a positive number, got {v!r}')


def _vec3(e: Embodiment, key: str):
    v = getattr(e, key)
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        _fail(key, f'must be 3 numbers, got {v!r}')
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        _fail(key, f'must be 3 finite numbers, got {v!r}')


def validate(e: Embodiment) -> None:
    for key in ('base_frame_id', 'model_file', 'end_effector_site'):
        if not isinstance(getattr(e, key), str) or not getattr(e, key):
            _fail(key, 'must be a non-empty string')
    if not e.arm_joints or not all(isinstance(j, str) and j for j in e.arm_joints):
        _fail('arm_joints', f'must be a non-empty list of joint names, got {e.arm_joints!r}')
    if len(set(e.arm_joints)) != len(e.arm_joints):
        _fail('arm_joints', 'has duplicates')
    for key in ('ik_position_tolerance_m', 'ik_orientation_tolerance_rad', 'max_joint_speed_rad_s',
                'control_period_s', 'max_translation_step_m', 'max_rotation_step_rad',
                'watchdog_timeout_s', 'max_action_age_s', 'max_joint_state_age_s', 'blocking_timeout_s',
                'goal_position_tolerance_m', 'goal_orientation_tolerance_rad', 'servo_rate_hz'):
        _positive(e, key)
    if not isinstance(e.ik_max_iterations, int) or e.ik_max_iterations < 1:
        _fail('ik_max_iterations', f'must be a positive integer, got {e.ik_max_iterations!r}')
    for key in ('workspace_low_m', 'workspace_high_m', 'start_position_m'):
        _vec3(e, key)
    if np.any(np.asarray(e.workspace_low_m, float) >= np.asarray(e.workspace_high_m, float)):
        _fail('workspace_high_m', f'must be above workspace_low_m in every axis ({e.workspace_low_m} / {e.workspace_high_m})')
    try:
        r = np.asarray(e.start_rotation, dtype=float)
    except (TypeError, ValueError):
        _fail('start_pose.rotation_matrix', 'must be a 3x3 matrix of numbers')
    if r.shape != (3, 3) or not np.all(np.isfinite(r)):
        _fail('start_pose.rotation_matrix', f'must be a 3x3 matrix, got shape {r.shape}')
    if np.abs(orthonormalize(r) - r).max() > 0.01:
        _fail('start_pose.rotation_matrix', 'is not a rotation matrix (rows must be orthonormal to 0.01)')
    if e.rotation_pivot not in ROTATION_PIVOTS:
        _fail('rotation_pivot', f'must be one of {ROTATION_PIVOTS}, got {e.rotation_pivot!r}')
    for joint, lim in e.joint_limits_rad.items():
        if joint not in e.arm_joints:
            _fail(f'joint_limits_rad.{joint}', f'is not one of arm_joints {list(e.arm_joints)}')
        if (not isinstance(lim, (list, tuple)) or len(lim) != 2
                or not all(isinstance(x, (int, float)) for x in lim) or not lim[0] < lim[1]):
            _fail(f'joint_limits_rad.{joint}', f'must be [lower, upper] with lower < upper, got {lim!r}')
    g = e.gripper
    if g is not None:
        if not g.joint:
            _fail('gripper.joint', 'must be a joint name')
        for key in ('closed_position_m', 'open_position_m'):
            v = getattr(g, key)
            if not isinstance(v, (int, float)) or not np.isfinite(v):
                _fail(f'gripper.{key}', f'must be a number, got {v!r}')
        if g.output not in GRIPPER_OUTPUTS:
            _fail('gripper.output', f'must be one of {GRIPPER_OUTPUTS}, got {g.output!r}')
    for key, bound in e.hard_limits.items():
        if key not in HARD_LIMIT_SIDES:
            _fail(f'hard_limits.{key}', f'unknown key (known: {sorted(HARD_LIMIT_SIDES)})')
        try:
            b = np.asarray(bound, dtype=float)
        except (TypeError, ValueError):
            _fail(f'hard_limits.{key}', f'must be numeric, got {bound!r}')
        v = np.asarray(getattr(e, key), dtype=float)
        if b.shape != v.shape or not np.all(np.isfinite(b)):
            _fail(f'hard_limits.{key}', f'must be finite and shaped like {key}, got {bound!r}')
        side = HARD_LIMIT_SIDES[key]
        if np.any(side * (v - b) > 0):
            _fail(key, f'{getattr(e, key)!r} is outside the hard limit {bound!r} of the embodiment file '
                       f'(it may only be {"lower" if side > 0 else "higher"})')
    if not e.use_ik and e.output_joint_trajectory:
        _fail('outputs.joint_trajectory', 'needs kinematics.use_ik: true (joint targets come from the IK)')
    if not (e.output_joint_trajectory or e.output_servo_twist):
        _fail('outputs', 'enable at least one of joint_trajectory / servo_twist')
    for key in ('joint_trajectory_topic', 'servo_twist_topic', 'gripper_width_topic'):
        if not isinstance(getattr(e, key), str) or not getattr(e, key):
            _fail(f'outputs.{key}', 'must be a topic name')


# YAML layout: section -> {yaml key: Embodiment field}. Unknown keys are errors (typos must not
# silently fall back to a default in a safety configuration).
_SECTIONS = {
    None: {'base_frame_id': 'base_frame_id'},
    'kinematics': {
        'model_file': 'model_file', 'end_effector_site': 'end_effector_site',
        'arm_joints': 'arm_joints', 'joint_limits_rad': 'joint_limits_rad', 'use_ik': 'use_ik',
        'ik_position_tolerance_m': 'ik_position_tolerance_m',
        'ik_orientation_tolerance_rad': 'ik_orientation_tolerance_rad',
        'ik_max_iterations': 'ik_max_iterations', 'max_joint_speed_rad_s': 'max_joint_speed_rad_s',
    },
    'control': {
        'control_period_s': 'control_period_s', 'max_translation_step_m': 'max_translation_step_m',
        'max_rotation_step_rad': 'max_rotation_step_rad', 'workspace_low_m': 'workspace_low_m',
        'workspace_high_m': 'workspace_high_m', 'rotation_pivot': 'rotation_pivot',
        'watchdog_timeout_s': 'watchdog_timeout_s', 'max_action_age_s': 'max_action_age_s',
        'max_joint_state_age_s': 'max_joint_state_age_s',
        'start_enabled': 'start_enabled', 'blocking': 'blocking',
        'blocking_timeout_s': 'blocking_timeout_s',
        'goal_position_tolerance_m': 'goal_position_tolerance_m',
        'goal_orientation_tolerance_rad': 'goal_orientation_tolerance_rad',
    },
    'start_pose': {'position_m': 'start_position_m', 'rotation_matrix': 'start_rotation'},
    'outputs': {
        'joint_trajectory': 'output_joint_trajectory', 'servo_twist': 'output_servo_twist',
        'servo_rate_hz': 'servo_rate_hz', 'joint_trajectory_topic': 'joint_trajectory_topic',
        'servo_twist_topic': 'servo_twist_topic', 'gripper_width_topic': 'gripper_width_topic',
    },
}
_SECTIONS['hard_limits'] = {k: 'hard_limits' for k in HARD_LIMIT_SIDES}
_GRIPPER_KEYS = {'joint', 'closed_position_m', 'open_position_m', 'output'}
_REQUIRED = ('base_frame_id', 'kinematics.model_file', 'kinematics.end_effector_site', 'kinematics.arm_joints')


def _as_tuple(v):
    if isinstance(v, list):
        return tuple(_as_tuple(x) for x in v)
    return v


def embodiment_from_dict(data: dict, name: str) -> Embodiment:
    if not isinstance(data, dict):
        raise EmbodimentConfigError(f'embodiment {name!r}: the YAML must be a mapping of sections')
    values: dict = {}
    for key, value in data.items():
        if key == 'gripper':
            if value is None:
                continue
            if not isinstance(value, dict):
                _fail('gripper', 'must be a mapping')
            unknown = set(value) - _GRIPPER_KEYS
            if unknown:
                _fail(f'gripper.{sorted(unknown)[0]}', f'unknown key (known: {sorted(_GRIPPER_KEYS)})')
            missing = {'joint', 'closed_position_m', 'open_position_m'} - set(value)
            if missing:
                _fail(f'gripper.{sorted(missing)[0]}', 'is required')
            values['gripper'] = GripperMapping(**value)
        elif key in _SECTIONS[None]:
            values[_SECTIONS[None][key]] = value
        elif key in _SECTIONS and key is not None:
            if not isinstance(value, dict):
                _fail(key, 'must be a mapping')
            for sub, v in value.items():
                if sub not in _SECTIONS[key]:
                    _fail(f'{key}.{sub}', f'unknown key (known: {sorted(_SECTIONS[key])})')
                if key == 'hard_limits':
                    values.setdefault('hard_limits', {})[sub] = _as_tuple(v)
                else:
                    values[_SECTIONS[key][sub]] = v if sub == 'joint_limits_rad' else _as_tuple(v)
        else:
            known = sorted([k for k in _SECTIONS if k] + list(_SECTIONS[None]) + ['gripper'])
            _fail(key, f'unknown key (known: {known})')
    for req in _REQUIRED:
        section, _, sub = req.rpartition('.')
        if (sub if not section else _SECTIONS[section][sub]) not in values:
            _fail(req, 'is required')
    if values.get('joint_limits_rad') is None:
        values['joint_limits_rad'] = {}
    if not isinstance(values['joint_limits_rad'], dict):
        _fail('kinematics.joint_limits_rad', 'must be a mapping joint: [lower, upper]')
    values['joint_limits_rad'] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in values['joint_limits_rad'].items()}
    for f in fields(Embodiment):
        if f.name in values and f.type in ('bool',) and not isinstance(values[f.name], bool):
            _fail(f.name, f'must be true or false, got {values[f.name]!r}')
    hard = dict(values.get('hard_limits') or {})
    for key in HARD_LIMIT_SIDES:
        hard.setdefault(key, values.get(key, Embodiment.__dataclass_fields__[key].default))
    values['hard_limits'] = hard
    try:
        return Embodiment(name=name, **values)
    except TypeError as exc:
        raise EmbodimentConfigError(f'embodiment {name!r}: {exc}') from None


def load_embodiment(name: str = defaults.DEFAULT_EMBODIMENT) -> Embodiment:
    """Load ``config/<name>.yaml`` (or a path to a YAML file)."""
    path = config_file(name)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EmbodimentConfigError(f'{path}: not valid YAML: {exc}') from None
    e = embodiment_from_dict(data, Path(path).stem)
    if not e.model_path.is_file():
        _fail('kinematics.model_file', f'no such model {e.model_path}')
    return e
