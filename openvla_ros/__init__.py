"""openvla_ros: run the OpenVLA vision-language-action model in a ROS 2 graph.

Sub-packages (the ROS-free core imports no rclpy):
  engine/   the native OpenVLA model, checkpoint loading, pre/post-processing (ROS-free)
  control/  embodiment configs, Bridge delta integration, IK and safety (ROS-free)
  sim/      the MuJoCo WidowX 250s workcell (ROS-free)
  server/   the REST inference server and its client (ROS-free)
  nodes/    the rclpy nodes: vla_node, arm_controller, sim_node
  bag/      bag play / record / offline evaluation
  cli/      console entry points
"""
# When the source tree shadows the installed package (running from the repo root), let
# `openvla_ros.msg` and the generated typesupport modules resolve from the installed copy.
__path__ = __import__('pkgutil').extend_path(__path__, __name__)
__version__ = '0.1.0'
