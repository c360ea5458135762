"""Moved to :mod:`openvla_ros.policy.numpy_json` (the remote client below the server uses it too)."""
from openvla_ros.policy.numpy_json import (NUMPY_KEY, PayloadError, PayloadTooLargeError,  # noqa: F401
                                           decode_array, dumps, encode_array, loads)
