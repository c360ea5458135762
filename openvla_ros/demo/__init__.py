"""The closed-loop demo's two halves, for ``openvla-demo`` and any tool that records the graph.

:mod:`.recorder` (rclpy): a probe node that records camera frames, actions, joint states,
targets and status, publishes the instruction and enables the arm controller, and the loop that
spins it with a progress line per second. :mod:`.report` (ROS-free): metrics of a
:class:`~.recorder.Recording` (rates, latencies, counts), its plots, camera video and
``summary.json`` / ``summary.md``.
"""
