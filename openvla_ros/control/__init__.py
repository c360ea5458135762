"""ROS-free arm control: embodiment configs, Bridge delta semantics, kinematics and safety."""
