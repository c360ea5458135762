"""The MuJoCo WidowX 250s workcell (ROS-free): scene model, physics, joint commands, camera."""
from openvla_ros.sim.trajectory import JointTrajectory, TrajectoryError, TrajectoryFollower
from openvla_ros.sim.workcell import CAMERA_NAME, EE_SITE, Pose, WorkcellSim, default_model_path

__all__ = ['WorkcellSim', 'Pose', 'JointTrajectory', 'TrajectoryError', 'TrajectoryFollower',
           'CAMERA_NAME', 'EE_SITE', 'default_model_path']
