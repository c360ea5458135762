"""The Bridge / OpenVLA action layout: ``[dx, dy, dz, droll, dpitch, dyaw, gripper]``.

Below both the engine and the controller, so each can name the dimensions without importing
the other.
"""
from __future__ import annotations

ACTION_DIM_NAMES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
TRANSLATION_SLICE = slice(0, 3)
ROTATION_SLICE = slice(3, 6)
GRIPPER_INDEX = 6
MIN_ACTION_DIM = GRIPPER_INDEX + 1


def dim_names(n: int) -> list[str]:
    """Names of the first ``n`` action dimensions (extra dimensions are ``a7``, ``a8``, ...)."""
    return [ACTION_DIM_NAMES[i] if i < len(ACTION_DIM_NAMES) else f'a{i}' for i in range(n)]
