"""The bring-up description, the launch files and openvla-bringup agree.

launch/launch_ros are not installed here, so the launch files are loaded with a small stand-in
for those two packages that records what they construct.
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from openvla_ros import bringup, defaults
from openvla_ros.cli import bringup as bringup_cli
from openvla_ros.nodes import vla_params
from openvla_ros.paths import config_file

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_DIR = ROOT / 'launch'


# ---------------------------------------------------------------- the description
def test_every_argument_declared_once_with_description_and_valid_default():
    names = [a.name for a in bringup.ARGUMENTS]
    assert len(names) == len(set(names))
    for required in ('model_path', 'quantization', 'dtype', 'device', 'unnorm_key', 'embodiment',
                     'camera_topic', 'instruction', 'namespace', 'use_sim_time', 'sim'):
        assert required in names
    for a in bringup.ARGUMENTS:
        assert a.description.strip()
        assert a.choices is None or a.default in a.choices


def test_default_node_set():
    specs = bringup.node_specs()
    assert [s.name for s in specs] == [defaults.VLA_NODE, defaults.ARM_CONTROLLER_NODE]
    vla, arm = specs
    assert vla.executable == defaults.VLA_NODE and arm.executable == defaults.ARM_CONTROLLER_NODE
    assert vla.params_files() == [config_file(bringup.DEFAULT_VLA_CONFIG)]
    # empty args keep the file's values; the embodiment (frame of the actions) is shared with the controller
    assert vla.param_values() == {'use_sim_time': False, 'embodiment': defaults.DEFAULT_EMBODIMENT}
    assert arm.param_values() == {'embodiment': defaults.DEFAULT_EMBODIMENT, 'use_sim_time': False}
    assert vla.namespace == '' and vla.remappings == [] and arm.remappings == []


def test_arguments_reach_the_nodes():
    specs = bringup.node_specs({'model_path': '/models/openvla-7b', 'quantization': '4bit',
                                'dtype': 'float16', 'device': 'cuda:1', 'unnorm_key': 'fractal20220817_data',
                                'instruction': 'put the spoon in the pot', 'embodiment': 'other_arm',
                                'camera_topic': '/blue/image_raw'})
    vla, arm = specs
    assert vla.param_values() == {
        'use_sim_time': False, 'embodiment': 'other_arm', 'model_path': '/models/openvla-7b',
        'quantization': '4bit', 'dtype': 'float16', 'device': 'cuda:1', 'unnorm_key': 'fractal20220817_data',
        'instruction': 'put the spoon in the pot'}
    assert arm.param_values()['embodiment'] == 'other_arm'
    # the nodes' own (relative) names are remapped; nothing else: a namespace needs no table
    assert vla.remappings == [(defaults.relative(defaults.CAMERA_TOPIC), '/blue/image_raw'),
                              (defaults.relative(defaults.COMPRESSED_CAMERA_TOPIC),
                               '/blue/image_raw/compressed')]
    assert bringup.node_specs({'namespace': 'robot1'})[0].remappings == []


def test_sim_adds_the_simulator_and_sim_time():
    specs = bringup.node_specs({'sim': 'true'})
    assert [s.name for s in specs] == [defaults.VLA_NODE, defaults.ARM_CONTROLLER_NODE, defaults.SIM_NODE]
    assert specs[0].params_files() == [config_file(bringup.SIM_VLA_CONFIG)]
    assert specs[0].param_values()['use_sim_time'] is True
    assert specs[1].param_values()['use_sim_time'] is True
    assert 'use_sim_time' not in specs[2].param_values()     # the simulator owns /clock
    assert bringup.node_specs({'sim': 'true', 'use_sim_time': 'false'})[0].param_values()['use_sim_time'] is False


def test_bad_arguments_are_refused_with_the_reason():
    with pytest.raises(ValueError, match='quantization'):
        bringup.node_specs({'quantization': '3bit'})
    with pytest.raises(ValueError, match='unknown argument'):
        bringup.node_specs({'modle_path': '/x'})
    with pytest.raises(ValueError, match='name:=value'):
        bringup.parse_cli_arguments(['model_path=/x'])
    assert bringup.parse_cli_arguments(['instruction:=a:=b']) == {'instruction': 'a:=b'}


@pytest.mark.ros
def test_ros_args_are_understood_by_rclpy(ros_context):
    """Name, namespace, parameters and remappings as rclpy resolves them from the arguments."""
    import rclpy

    spec = bringup.node_specs({'namespace': 'robot1', 'camera_topic': '/blue/image_raw',
                               'instruction': 'true', 'model_path': '/m/openvla-7b'})[0]
    argv = spec.ros_args()
    node = rclpy.create_node('placeholder', context=ros_context, cli_args=argv,
                             automatically_declare_parameters_from_overrides=True)
    try:
        assert node.get_name() == defaults.VLA_NODE
        assert node.get_namespace() == '/robot1'
        assert node.get_parameter('instruction').value == 'true'       # a string, not a bool
        assert node.get_parameter('model_path').value == '/m/openvla-7b'
        assert node.get_parameter('unnorm_key').value == defaults.DEFAULT_UNNORM_KEY   # from the file
        assert node.get_parameter('device').value == 'cuda'
        def resolve(topic):   # as the node creates it: by its relative name
            return node.resolve_topic_name(defaults.relative(topic))

        assert resolve(defaults.ACTION_TOPIC) == '/robot1/openvla/action'
        assert resolve(defaults.CAMERA_TOPIC) == '/blue/image_raw'      # absolute camera stays absolute
        assert resolve(defaults.DIAGNOSTICS_TOPIC) == defaults.DIAGNOSTICS_TOPIC
        assert resolve(defaults.DEBUG_IMAGE_TOPIC) == '/robot1/vla_node/debug_image'
    finally:
        node.destroy_node()
    spec = bringup.node_specs({'namespace': 'robot1'})[1]
    node = rclpy.create_node('placeholder', context=ros_context, cli_args=spec.ros_args(),
                             automatically_declare_parameters_from_overrides=True)
    try:
        assert node.get_name() == defaults.ARM_CONTROLLER_NODE
        assert node.get_parameter('embodiment').value == defaults.DEFAULT_EMBODIMENT
        for topic in (defaults.CAMERA_TOPIC, defaults.JOINT_STATES_TOPIC, defaults.CLOCK_TOPIC,
                      defaults.JOINT_TRAJECTORY_TOPIC, defaults.ESTOP_TOPIC):
            assert node.resolve_topic_name(defaults.relative(topic)) == \
                defaults.in_namespace(topic, 'robot1'), topic
        assert defaults.in_namespace(defaults.JOINT_STATES_TOPIC, 'robot1') == '/robot1/joint_states'
        assert defaults.in_namespace(defaults.CLOCK_TOPIC, 'robot1') == '/clock'
    finally:
        node.destroy_node()


def test_config_files_hold_valid_vla_node_parameters():
    for name in (bringup.DEFAULT_VLA_CONFIG, bringup.SIM_VLA_CONFIG):
        doc = yaml.safe_load(config_file(name).read_text())
        params = doc[f'/**/{defaults.VLA_NODE}']['ros__parameters']
        unknown = set(params) - set(vla_params.BY_NAME)
        assert not unknown, f'{name}: unknown parameters {unknown}'
        for k, v in params.items():
            assert vla_params.check_value(k, v) is None, (name, k, v)
            assert type(v) is type(vla_params.BY_NAME[k].default), (name, k, v)


# ---------------------------------------------------------------- launch files
class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorder):
    def perform(self, context):
        return context[self.args[0]]


def _launch_shim(monkeypatch):
    """Stand-ins for the launch and launch_ros modules the launch files import."""
    mods = {name: types.ModuleType(name) for name in
            ('launch', 'launch.actions', 'launch.substitutions', 'launch_ros', 'launch_ros.actions')}
    mods['launch'].LaunchDescription = type('LaunchDescription', (_Recorder,), {})
    mods['launch.actions'].DeclareLaunchArgument = type('DeclareLaunchArgument', (_Recorder,), {})
    mods['launch.actions'].OpaqueFunction = type('OpaqueFunction', (_Recorder,), {})
    mods['launch.substitutions'].LaunchConfiguration = _LaunchConfiguration
    mods['launch_ros.actions'].Node = type('Node', (_Recorder,), {})
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def _load_launch(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace('.', '_'), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.generate_launch_description()


def _declared_and_nodes(ld, values: dict):
    entities = ld.args[0]
    declared = {e.args[0]: e for e in entities if type(e).__name__ == 'DeclareLaunchArgument'}
    opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction']
    assert len(opaque) == 1
    context = {name: values.get(name, d.kwargs['default_value']) for name, d in declared.items()}
    return declared, opaque[0].kwargs['function'](context)


def test_launch_file_uses_the_description():
    tree = ast.parse((LAUNCH_DIR / 'openvla.launch.py').read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == 'openvla_ros'
                for a in n.names}
    assert 'bringup' in imported
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == 'bringup'}
    assert {'ARGUMENTS', 'node_specs'} <= used
    # No topic or node name typed into the launch file.
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & {defaults.VLA_NODE, defaults.ARM_CONTROLLER_NODE, defaults.CAMERA_TOPIC,
                          defaults.ACTION_TOPIC}


@pytest.mark.parametrize('values', [{}, {'sim': 'true', 'namespace': 'r1', 'model_path': '/tmp/tiny'},
                                    {'camera_topic': '/blue/image_raw', 'quantization': '8bit'}])
def test_launch_file_declares_every_argument_and_builds_the_same_nodes(monkeypatch, values):
    _launch_shim(monkeypatch)
    declared, nodes = _declared_and_nodes(_load_launch(LAUNCH_DIR / 'openvla.launch.py'), values)
    assert list(declared) == [a.name for a in bringup.ARGUMENTS]
    for a in bringup.ARGUMENTS:
        kw = declared[a.name].kwargs
        assert kw['default_value'] == a.default and kw['description'] == a.description
        assert kw.get('choices') == (list(a.choices) if a.choices else None)
    specs = bringup.node_specs(values)
    assert len(nodes) == len(specs)
    for node, spec in zip(nodes, specs):
        kw = node.kwargs
        assert (kw['package'], kw['executable'], kw['name'], kw['namespace']) == (
            spec.package, spec.executable, spec.name, spec.namespace)
        assert kw['parameters'] == [str(p) if isinstance(p, Path) else p for p in spec.parameters]
        assert kw['remappings'] == spec.remappings


def test_sim_launch_wrapper_defaults_to_sim(monkeypatch):
    _launch_shim(monkeypatch)
    declared, nodes = _declared_and_nodes(_load_launch(LAUNCH_DIR / 'sim.launch.py'), {})
    assert declared['sim'].kwargs['default_value'] == 'true'
    assert [n.kwargs['name'] for n in nodes] == [s.name for s in bringup.node_specs({'sim': 'true'})]


# ---------------------------------------------------------------- openvla-bringup
def test_bringup_print_shows_the_commands():
    args = ['sim:=true', 'model_path:=/tmp/openvla tiny', 'instruction:=pick up the block']
    out = subprocess.run([sys.executable, '-m', 'openvla_ros.cli.bringup', '--print', *args],
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert out[0].startswith('export ROS_DOMAIN_ID=')
    specs = bringup.node_specs(bringup.parse_cli_arguments(args))
    import shlex
    assert out[1:] == [shlex.join(bringup_cli.executable_command(s.executable) + s.ros_args()) for s in specs]
    vla_line = shlex.split(out[1])
    assert vla_line[:3] == [sys.executable, '-m', 'openvla_ros.nodes.vla_node']
    assert '--params-file' in vla_line and str(config_file(bringup.SIM_VLA_CONFIG)) in vla_line
    assert 'model_path:=/tmp/openvla tiny' in vla_line
    assert 'instruction:=pick up the block' in vla_line
    assert '__node:=sim_node' in shlex.split(out[3])


def test_bringup_refuses_bad_arguments():
    r = subprocess.run([sys.executable, '-m', 'openvla_ros.cli.bringup', '--print', 'dtype:=float8'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and 'dtype' in r.stderr


# ---------------------------------------------------------------- monitoring
def test_diagnostic_aggregator_config_groups_every_node():
    doc = yaml.safe_load(config_file(bringup.AGGREGATOR_CONFIG).read_text())
    (key, body), = doc.items()
    assert key.endswith('/analyzers')           # the aggregator's node name
    params = body['ros__parameters']
    analyzers = {k: v for k, v in params.items() if isinstance(v, dict)}
    assert all(a['type'] == 'diagnostic_aggregator/GenericAnalyzer' for a in analyzers.values())
    matched = {m for a in analyzers.values() for m in a['contains']}
    for node in (defaults.VLA_NODE, defaults.ARM_CONTROLLER_NODE, defaults.SIM_NODE):
        # the status names the nodes publish, in the root namespace and in one
        for status in (f'{node}: model', f'robot1/{node}: model'):
            assert sum(m in status for m in matched) == 1, status
    assert all(a['timeout'] > 0 for a in analyzers.values())


@pytest.mark.parametrize('installed', [False, True])
def test_launch_file_starts_the_aggregator_where_installed(monkeypatch, installed):
    _launch_shim(monkeypatch)
    index = types.ModuleType('ament_index_python.packages')

    class PackageNotFoundError(KeyError):
        pass

    def share(package):
        if installed and package == bringup.AGGREGATOR_PACKAGE:
            return '/opt/ros/share/' + package
        raise PackageNotFoundError(package)

    index.PackageNotFoundError, index.get_package_share_directory = PackageNotFoundError, share
    monkeypatch.setitem(sys.modules, 'ament_index_python', types.ModuleType('ament_index_python'))
    monkeypatch.setitem(sys.modules, 'ament_index_python.packages', index)
    ld = _load_launch(LAUNCH_DIR / 'openvla.launch.py')
    _, nodes = _declared_and_nodes(ld, {})
    packages = [n.kwargs['package'] for n in nodes]
    assert (bringup.AGGREGATOR_PACKAGE in packages) == installed
    if installed:
        agg = nodes[packages.index(bringup.AGGREGATOR_PACKAGE)].kwargs
        assert agg['namespace'] == '' and str(config_file(bringup.AGGREGATOR_CONFIG)) in agg['parameters']
    _, nodes = _declared_and_nodes(ld, {'diagnostic_aggregator': 'false'})
    assert bringup.AGGREGATOR_PACKAGE not in [n.kwargs['package'] for n in nodes]
