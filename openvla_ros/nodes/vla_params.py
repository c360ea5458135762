"""vla_node's parameters: one table with default, description, range/choices and whether the
value is fixed once the model is loaded, plus the validation that both the on-set callback and
``on_configure`` use.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from openvla_ros import defaults
from openvla_ros.engine.api import (BNB_4BIT_QUANT_TYPES, DTYPES, IMAGE_PIPELINES, PROMPT_TEMPLATES,
                                    QUANTIZATIONS)

BACKENDS = ('local', 'remote')
_DEVICE_RE = re.compile(r'^(cpu|cuda(:\d+)?)$')


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: object
    description: str
    load_time: bool                      # read-only once configured (needs cleanup + configure)
    choices: tuple[str, ...] | None = None
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, description=self.description)
        if self.choices:
            d.additional_constraints = 'one of: ' + ', '.join(self.choices)
        if self.float_range:
            d.floating_point_range = [FloatingPointRange(from_value=float(self.float_range[0]),
                                                         to_value=float(self.float_range[1]), step=0.0)]
        if self.int_range:
            d.integer_range = [IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=1)]
        return d


PARAMS: tuple[ParamSpec, ...] = (
    # ---- load time: read when configuring, fixed until cleanup ----
    ParamSpec('backend', 'local', 'where the policy runs: local (this process) or remote (openvla-serve over HTTP)',
              True, choices=BACKENDS),
    ParamSpec('model_path', '', 'OpenVLA checkpoint directory (Hugging Face layout); local backend', True),
    ParamSpec('model_id', '', 'display name of the model (default: what the backend reports, '
              'usually the checkpoint directory name)', True),
    ParamSpec('dtype', 'float32', 'weights/compute dtype', True, choices=DTYPES),
    ParamSpec('device', 'cpu', 'torch device: cpu, cuda or cuda:N', True),
    ParamSpec('quantization', 'none', 'bitsandbytes quantization of the language model', True,
              choices=QUANTIZATIONS),
    ParamSpec('bnb_4bit_quant_type', 'nf4', '4-bit quantization type (quantization=4bit)', True,
              choices=BNB_4BIT_QUANT_TYPES),
    ParamSpec('bnb_4bit_compute_dtype', 'bfloat16', 'compute dtype of 4-bit layers', True, choices=DTYPES),
    ParamSpec('unnorm_key', defaults.DEFAULT_UNNORM_KEY,
              'dataset statistics used to un-normalize actions (must be in the checkpoint)', True),
    ParamSpec('image_pipeline', 'processor', 'image preprocessing: processor (preprocessor_config.json) '
              'or bridge_eval (JPEG round trip + Lanczos, as the Bridge eval scripts)', True,
              choices=IMAGE_PIPELINES),
    ParamSpec('center_crop', False, '90%-area centre crop (checkpoints trained with image augmentation)', True),
    ParamSpec('prompt_template', 'openvla', 'prompt format: openvla (openvla-7b) or v01', True,
              choices=PROMPT_TEMPLATES),
    ParamSpec('self_test', True, 'at load, check that the image changes the logits (catches a model '
              'that silently ignores the image)', True),
    ParamSpec('server_url', f'http://{defaults.DEFAULT_SERVER_HOST}:{defaults.DEFAULT_SERVER_PORT}',
              'inference server URL (remote backend)', True),
    ParamSpec('server_timeout_s', 10.0, 'HTTP timeout of one remote prediction, seconds', True,
              float_range=(0.1, 600.0)),
    ParamSpec('server_retries', 1, 'retries of a failed remote prediction', True, int_range=(0, 10)),
    ParamSpec('server_backoff_s', 0.2, 'pause before a remote retry, seconds', True, float_range=(0.0, 30.0)),
    ParamSpec('server_token', '', 'bearer token for the inference server (remote backend; empty: none)', True),
    ParamSpec('use_compressed', False, 'subscribe to sensor_msgs/CompressedImage on <camera>/compressed '
              'instead of sensor_msgs/Image', True),
    ParamSpec('embodiment', defaults.DEFAULT_EMBODIMENT, 'embodiment config in config/ (name or YAML path) '
              'whose base frame the actions are expressed in', True),
    ParamSpec('base_frame_id', '', 'frame_id of published actions (empty: base_frame_id of the embodiment config)',
              True),
    ParamSpec('publish_twist', False, 'also publish geometry_msgs/TwistStamped = delta / control_period_s', True),
    ParamSpec('control_period_s', 0.2, 'time one action is meant to take (Bridge: 5 Hz), seconds; '
              'divides the delta for the twist output', True, float_range=(0.001, 10.0)),
    ParamSpec('test.extra_latency_s', 0.0, 'test hook: extra sleep inside every prediction, seconds', True,
              float_range=(0.0, 10.0)),
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
    if spec.choices and value not in spec.choices:
        return f'{name}={value!r} is not one of {", ".join(spec.choices)}'
    if spec.float_range and not (spec.float_range[0] <= float(value) <= spec.float_range[1]):
        return f'{name}={value} is outside [{spec.float_range[0]}, {spec.float_range[1]}]'
    if spec.int_range and not (spec.int_range[0] <= int(value) <= spec.int_range[1]):
        return f'{name}={value} is outside [{spec.int_range[0]}, {spec.int_range[1]}]'
    if name == 'device' and not _DEVICE_RE.match(str(value)):
        return f'device={value!r} is not cpu, cuda or cuda:N'
    if name == 'instruction' and len(str(value)) > defaults.MAX_INSTRUCTION_CHARS:
        return f'instruction has {len(value)} characters > {defaults.MAX_INSTRUCTION_CHARS}'
    if name == 'server_url':
        u = urlparse(str(value))
        if u.scheme not in ('http', 'https') or not u.netloc:
            return f'server_url={value!r} is not an http(s) URL'
    return None


def check_all(values: dict) -> list[str]:
    """Every problem with a complete set of values, including combinations."""
    problems = [r for n, v in values.items() if (r := check_value(n, v))]
    if values.get('backend') == 'local' and not values.get('model_path'):
        problems.append('model_path is empty (the local backend needs a checkpoint directory)')
    return problems
