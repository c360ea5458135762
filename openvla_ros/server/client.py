"""Moved to :mod:`openvla_ros.policy.remote` (the remote backend is a policy, not part of the server)."""
from openvla_ros.policy.remote import RETRY_STATUSES, RemoteBackendError, RemotePolicy  # noqa: F401
