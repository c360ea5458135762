"""The node set of openvla_ros, described once.

``launch/openvla.launch.py`` (``ros2 launch`` on a ROS install) and ``openvla-bringup`` (here,
where ``ros2 launch`` is absent) both build their nodes from :func:`node_specs`, and declare
their arguments from :data:`ARGUMENTS`. Arguments are strings, as in ``ros2 launch``
(``name:=value``); an empty string means "keep the value of the params file".

ROS-free: plain data in, plain data out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from openvla_ros import defaults
from openvla_ros.engine.api import DTYPES, QUANTIZATIONS
from openvla_ros.paths import config_file

PACKAGE = 'openvla_ros'
BOOLEAN = ('true', 'false')
DEFAULT_VLA_CONFIG = 'openvla_7b_bridge'
SIM_VLA_CONFIG = 'openvla_tiny_sim'
AGGREGATOR_CONFIG = 'diagnostic_aggregator'
AGGREGATOR_PACKAGE = 'diagnostic_aggregator'

@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument('model_path', '', 'OpenVLA checkpoint directory (empty: the one in the vla_node config)'),
    LaunchArgument('vla_config', '', 'vla_node params file in config/ (name or path; empty: '
                   f'{DEFAULT_VLA_CONFIG}, or {SIM_VLA_CONFIG} with sim:=true)'),
    LaunchArgument('quantization', '', 'quantization of the language model (empty: from the config)',
                   ('',) + QUANTIZATIONS),
    LaunchArgument('dtype', '', 'model dtype (empty: from the config)', ('',) + DTYPES),
    LaunchArgument('device', '', 'torch device: cpu, cuda, cuda:N (empty: from the config)'),
    LaunchArgument('unnorm_key', '', 'dataset statistics that un-normalize actions (empty: from the '
                   f'config, default {defaults.DEFAULT_UNNORM_KEY})'),
    LaunchArgument('embodiment', defaults.DEFAULT_EMBODIMENT, 'embodiment config in config/ (arm_controller; '
                   'also the frame of the actions and the simulator start pose)'),
    LaunchArgument('camera_topic', defaults.CAMERA_TOPIC, 'sensor_msgs/Image topic the policy sees '
                   '(<topic>/compressed with use_compressed)'),
    LaunchArgument('instruction', '', 'initial language instruction (empty: wait for '
                   f'{defaults.INSTRUCTION_TOPIC})'),
    LaunchArgument('namespace', '', 'namespace of every node and of the package topics'),
    LaunchArgument('use_sim_time', '', 'nodes follow /clock (empty: true exactly when sim:=true)',
                   ('',) + BOOLEAN),
    LaunchArgument('sim', 'false', 'also start the MuJoCo workcell (sim_node) with the tiny model config',
                   BOOLEAN),
    LaunchArgument('lockstep', 'false', 'sim_node in lockstep (gym env.step timing: each joint trajectory '
                   'advances one control period of sim time, paused in between; with sim:=true)', BOOLEAN),
    LaunchArgument('diagnostic_aggregator', 'true', 'also start diagnostic_aggregator with '
                   f'config/{AGGREGATOR_CONFIG}.yaml, for rqt_robot_monitor (ros2 launch, where the '
                   'package is installed; openvla-bringup starts only the package\'s own nodes)',
                   BOOLEAN),
)
ARGUMENTS_BY_NAME = {a.name: a for a in ARGUMENTS}


@dataclass
class NodeSpec:
    executable: str
    name: str
    namespace: str = ''
    parameters: list = field(default_factory=list)       # Path (params file) or dict, in order
    remappings: list[tuple[str, str]] = field(default_factory=list)
    package: str = PACKAGE

    def params_files(self) -> list[Path]:
        return [p for p in self.parameters if isinstance(p, Path)]

    def param_values(self) -> dict:
        """The dict parameters merged (later wins), as launch_ros applies them after the files."""
        out: dict = {}
        for p in self.parameters:
            if isinstance(p, dict):
                out.update(p)
        return out

    def ros_args(self) -> list[str]:
        """The ``--ros-args`` rclpy understands, equivalent to what launch_ros passes."""
        args = ['--ros-args', '-r', f'__node:={self.name}']
        if self.namespace:
            args += ['-r', f'__ns:={self.namespace}']
        for p in self.parameters:
            if isinstance(p, Path):
                args += ['--params-file', str(p)]
            else:
                for k, v in p.items():
                    args += ['-p', f'{k}:={_param_literal(v)}']
        for src, dst in self.remappings:
            args += ['-r', f'{src}:={dst}']
        return args


def _param_literal(v) -> str:
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, str):
        # rclpy parses -p values as YAML: quote strings that would become another type.
        import yaml

        return v if isinstance(yaml.safe_load(v) if v else None, str) else _yaml_quote(v)
    return str(v)


def _yaml_quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def resolve_arguments(values: Mapping[str, str] | None = None) -> dict[str, str]:
    """Defaults plus ``values``; raises ValueError for unknown names or values outside the choices."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(ARGUMENTS_BY_NAME))
    if unknown:
        raise ValueError(f'unknown argument(s) {", ".join(unknown)}; known: {", ".join(ARGUMENTS_BY_NAME)}')
    out = {}
    for a in ARGUMENTS:
        v = str(values.get(a.name, a.default))
        if a.choices is not None and v not in a.choices:
            raise ValueError(f'{a.name}:={v!r} is not one of {", ".join(repr(c) for c in a.choices)}')
        out[a.name] = v
    return out


def node_specs(values: Mapping[str, str] | None = None) -> list[NodeSpec]:
    """The nodes to start for the given launch arguments."""
    a = resolve_arguments(values)
    sim = a['sim'] == 'true'
    use_sim_time = (a['use_sim_time'] or a['sim']) == 'true'
    ns = a['namespace'].strip('/')
    ns = f'/{ns}' if ns else ''
    topics = _topic_remappings(a['camera_topic'])

    vla_overrides: dict = {'use_sim_time': use_sim_time, 'embodiment': a['embodiment']}
    for k in ('model_path', 'quantization', 'dtype', 'device', 'unnorm_key', 'instruction'):
        if a[k]:
            vla_overrides[k] = a[k]
    vla_config = a['vla_config'] or (SIM_VLA_CONFIG if sim else DEFAULT_VLA_CONFIG)
    specs = [
        NodeSpec(defaults.VLA_NODE, defaults.VLA_NODE, ns, [config_file(vla_config), vla_overrides], topics),
        NodeSpec(defaults.ARM_CONTROLLER_NODE, defaults.ARM_CONTROLLER_NODE, ns,
                 [{'embodiment': a['embodiment'], 'use_sim_time': use_sim_time}], topics),
    ]
    if sim:
        # The simulator owns /clock, so it runs on its own (wall) clock.
        specs.append(NodeSpec(defaults.SIM_NODE, defaults.SIM_NODE, ns,
                              [{'embodiment': a['embodiment'], 'lockstep': a['lockstep'] == 'true'}], topics))
    return specs


def _topic_remappings(camera_topic: str) -> list[tuple[str, str]]:
    """The chosen camera topic, taken as given (absolute stays absolute). Nothing else: the nodes
    use relative names, so the namespace alone moves the package topics."""
    if camera_topic == defaults.CAMERA_TOPIC:
        return []
    return [(defaults.relative(defaults.CAMERA_TOPIC), camera_topic),
            (defaults.relative(defaults.COMPRESSED_CAMERA_TOPIC), camera_topic.rstrip('/') + '/compressed')]


def aggregator_spec(values: Mapping[str, str] | None = None) -> NodeSpec | None:
    """The diagnostic_aggregator node (another package: started by the launch file where it is
    installed), or None when ``diagnostic_aggregator:=false``. One per graph: it reads the global
    /diagnostics, so it runs outside the robot namespace."""
    a = resolve_arguments(values)
    if a['diagnostic_aggregator'] != 'true':
        return None
    use_sim_time = (a['use_sim_time'] or a['sim']) == 'true'
    return NodeSpec('aggregator_node', 'analyzers', '',
                    [config_file(AGGREGATOR_CONFIG), {'use_sim_time': use_sim_time}],
                    package=AGGREGATOR_PACKAGE)


def parse_cli_arguments(argv: list[str]) -> dict[str, str]:
    """``name:=value`` words (the ``ros2 launch`` syntax) -> dict; raises ValueError otherwise."""
    out = {}
    for word in argv:
        name, sep, value = word.partition(':=')
        if not sep or not name:
            raise ValueError(f'expected name:=value, got {word!r}')
        out[name] = value
    return out
