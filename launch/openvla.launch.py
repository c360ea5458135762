"""Launch the openvla_ros node set: vla_node + arm_controller (+ sim_node with sim:=true).

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


def _nodes(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in bringup.ARGUMENTS}
    return [
        Node(package=spec.package, executable=spec.executable, name=spec.name,
             namespace=spec.namespace, output='screen', emulate_tty=True,
             parameters=[str(p) if not isinstance(p, dict) else p for p in spec.parameters],
             remappings=spec.remappings)
        for spec in bringup.node_specs(values)
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
