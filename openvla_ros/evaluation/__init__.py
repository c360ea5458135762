"""Closed-loop evaluation in the MuJoCo workcell: tasks, scripted expert, episode runner, reports.

ROS-free except :mod:`.graph`, which runs the same episodes through the real node graph.
"""
