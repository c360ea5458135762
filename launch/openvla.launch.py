"""Launch the openvla_ros node set: vla_node + arm_controller (+ sim_node with sim:=true), and
diagnostic_aggregator (config/diagnostic_aggregator.yaml) where that package is installed.

Thin on purpose: the arguments and the nodes (names, parameters, params files, remappings) come
from ``openvla_ros.bringup``, which ``openvla-bringup`` runs as well where ``ros2 launch`` is
not installed.

    ros2 launch openvla_ros openvla.launch.py model_path:=/models/openvla-7b instruction:="put the spoon in the pot"
    ros2 launch openvla_ros openvla.launch.py --show-args
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from openvla_ros import bringup


def _installed(package: str) -> bool:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return False
    try:
        get_package_share_directory(package)
    except (PackageNotFoundError, OSError):   # OSError: no AMENT_PREFIX_PATH at all
        return False
    return True


def _nodes(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in bringup.ARGUMENTS}
    specs = bringup.node_specs(values)
    aggregator = bringup.aggregator_spec(values)
    if aggregator is not None and _installed(aggregator.package):
        specs.append(aggregator)
    return [
        Node(package=spec.package, executable=spec.executable, name=spec.name,
             namespace=spec.namespace, output='screen', emulate_tty=True,
             parameters=[str(p) if not isinstance(p, dict) else p for p in spec.parameters],
             remappings=spec.remappings)
        for spec in specs
    ]


def generate_launch_description(overrides=None):
    """``overrides``: argument defaults replaced by a wrapper launch file (e.g. sim.launch.py)."""
    overrides = overrides or {}
    declared = [
        DeclareLaunchArgument(a.name, default_value=overrides.get(a.name, a.default),
                              description=a.description, **({'choices': list(a.choices)} if a.choices else {}))
        for a in bringup.ARGUMENTS
    ]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
