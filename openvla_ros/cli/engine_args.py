"""Moved to :mod:`openvla_ros.policy.options` (the server and bag tools use the same flags)."""
from openvla_ros.policy.options import add_policy_arguments, fail, policy_options  # noqa: F401
