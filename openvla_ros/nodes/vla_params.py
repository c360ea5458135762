"""vla_node's parameters: one table with default, description, range/choices and whether the
value is fixed once the model is loaded, plus the validation that both the on-set callback and
``on_configure`` use.

The engine and remote-client options are not written here: they come from their one definition
(``PolicyOptions`` / ``RemoteOptions`` fields, through :mod:`openvla_ros.policy.options`), so the
node offers every engine option (``compile``, ``cpu_threads``, ...) with the same default and range
as the command-line tools.
"""
from __future__ import annotations

from dataclasses import dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from openvla_ros import defaults
from openvla_ros.engine.api import InvalidInstructionError
from openvla_ros.engine.prompt import validate_instruction
from openvla_ros.policy.options import POLICY_SPECS, REMOTE_SPECS, OptionSpec

BACKENDS = ('local', 'remote')
# Where the node's default differs from the library's, and why: a robot should not start on a
# model that ignores its camera, so the node self-tests at load (the CLIs leave it to the user).
NODE_DEFAULTS = {'self_test': True}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: object
    description: str
    load_time: bool                      # read-only once configured (needs cleanup + configure)
    choices: tuple[str, ...] | None = None
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    option: OptionSpec | None = None     # the PolicyOptions / RemoteOptions field it comes from

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, description=self.description)
        constraints = []
        if self.choices:
            constraints.append('one of: ' + ', '.join(self.choices))
        if self.option is not None and self.option.pattern:
            constraints.append(f'matches {self.option.pattern}')
        d.additional_constraints = '; '.join(constraints)
        if self.float_range:
            d.floating_point_range = [FloatingPointRange(from_value=float(self.float_range[0]),
                                                         to_value=float(self.float_range[1]), step=0.0)]
        if self.int_range:
            d.integer_range = [IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=1)]
        return d


def _from_option(o: OptionSpec) -> ParamSpec:
    default = NODE_DEFAULTS.get(o.field, o.default)
    rng = o.range
    return ParamSpec(o.ros_name, default, o.help, True, choices=o.choices,
                     float_range=(float(rng[0]), float(rng[1])) if rng and o.type is float else None,
                     int_range=(int(rng[0]), int(rng[1])) if rng and o.type is int else None,
                     option=o)


PARAMS: tuple[ParamSpec, ...] = (
    # ---- load time: read when configuring, fixed until cleanup ----
    ParamSpec('backend', 'local', 'where the policy runs: local (this process) or remote (an OpenVLA '
              'server over HTTP: openvla-serve or any deploy.py-style POST /act server)',
              True, choices=BACKENDS),
    ParamSpec('model_path', '', 'OpenVLA checkpoint directory (Hugging Face layout); local backend', True),
    ParamSpec('model_id', '', 'display name of the model (default: what the backend reports, '
              'usually the checkpoint directory name; a remote server that names its model wins)', True),
    *(_from_option(o) for o in POLICY_SPECS if o.ros_name),
    ParamSpec('unnorm_key', defaults.DEFAULT_UNNORM_KEY,
              'dataset statistics used to un-normalize actions (must be in the checkpoint)', True),
    *(_from_option(o) for o in REMOTE_SPECS),
    ParamSpec('use_compressed', False, 'subscribe to sensor_msgs/CompressedImage on <camera>/compressed '
              'instead of sensor_msgs/Image', True),
    ParamSpec('embodiment', defaults.DEFAULT_EMBODIMENT, 'embodiment config in config/ (name or YAML path) '
              'whose base frame the actions are expressed in', True),
    ParamSpec('base_frame_id', '', 'frame_id of published actions (empty: base_frame_id of the embodiment config)',
              True),
    ParamSpec('publish_twist', False, 'also publish geometry_msgs/TwistStamped = delta / control_period_s', True),
    ParamSpec('control_period_s', 0.2, 'time one action is meant to take (Bridge: 5 Hz), seconds; '
              'divides the delta for the twist output', True, float_range=(0.001, 10.0)),
    # ---- runtime: may change while active ----
    ParamSpec('max_rate_hz', 0.0, 'upper bound of the inference rate, Hz (0: as fast as the model runs)',
              False, float_range=(0.0, 1000.0)),
    ParamSpec('max_image_age_s', 1.0, 'images older than this (node clock minus stamp) are skipped as '
              'stale, seconds (0: no limit)', False, float_range=(0.0, 60.0)),
    ParamSpec('enabled', True, 'run inference (false: paused, model stays loaded); also ~/enable', False),
    ParamSpec('instruction', '', 'current language instruction (also /openvla/instruction); empty: none',
              False),
    ParamSpec('publish_debug_image', True, 'publish ~/debug_image (model input with the action drawn) '
              'when someone subscribes', False),
)
BY_NAME = {p.name: p for p in PARAMS}
LOAD_TIME = frozenset(p.name for p in PARAMS if p.load_time)


def check_value(name: str, value) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name`` (None when it is)."""
    spec = BY_NAME.get(name)
    if spec is None:
        return None
    if spec.option is not None:
        return spec.option.problem(value)
    if spec.choices and value not in spec.choices:
        return f'{name}={value!r} is not one of {", ".join(spec.choices)}'
    if spec.float_range and not (spec.float_range[0] <= float(value) <= spec.float_range[1]):
        return f'{name}={value} is outside [{spec.float_range[0]}, {spec.float_range[1]}]'
    if spec.int_range and not (spec.int_range[0] <= int(value) <= spec.int_range[1]):
        return f'{name}={value} is outside [{spec.int_range[0]}, {spec.int_range[1]}]'
    if name == 'instruction' and value:   # empty: no instruction
        try:
            validate_instruction(value)
        except InvalidInstructionError as exc:
            return str(exc)
    return None


def check_all(values: dict) -> list[str]:
    """Every problem with a complete set of values, including combinations."""
    problems = [r for n, v in values.items() if (r := check_value(n, v))]
    if values.get('backend') == 'local' and not values.get('model_path'):
        problems.append('model_path is empty (the local backend needs a checkpoint directory)')
    return problems
