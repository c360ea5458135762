"""The MuJoCo workcell with the tiny model: openvla.launch.py with sim:=true.

    ros2 launch openvla_ros sim.launch.py model_path:=/tmp/openvla-tiny instruction:="pick up the block"
    ros2 launch openvla_ros sim.launch.py model_path:=/tmp/openvla-tiny lockstep:=true   # gym env.step timing

``lockstep`` (like every argument, from ``openvla_ros.bringup.ARGUMENTS``) becomes sim_node's
``lockstep`` parameter: each joint trajectory advances one control period, paused in between.
"""
import importlib.util
from pathlib import Path


def generate_launch_description():
    spec = importlib.util.spec_from_file_location('openvla_launch', Path(__file__).with_name('openvla.launch.py'))
    main_launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_launch)
    return main_launch.generate_launch_description({'sim': 'true'})
