"""Bag tools without rosbag2: ``openvla-bag play | record | eval`` (see :mod:`openvla_ros.bag.cli`).

``storage`` (rosbags reading/writing, the project typestore), ``actions`` (PredictionResult ->
EndEffectorDelta fields), ``evaluate`` and ``report`` never import rclpy; ``play``, ``record`` and
``graph`` are the only rclpy users. On a ROS workstation ``ros2 bag play BAG --clock`` and
``ros2 bag record`` work on the same bags.
"""
