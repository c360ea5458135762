"""A scripted expert for the evaluation tasks: the next Bridge action from the simulator state.

It is meant to be imitated from camera images, so its behaviour is a simple function of what is
visible (where the finger tips, the objects and the gripper are), with no hidden memory:

- moves of the finger tips toward a waypoint, each axis' move the offset to it along that axis
  clipped to a cap per control period (``SPEED_M_PER_STEP``, and all three together below the
  controller's per-step clip): each action value is a function of one offset, as in the reach;
- reach: toward the point just above the object, each axis' move the offset to it along that
  axis clipped to ``REACH_STEP_PER_AXIS_M``. Each action value is then a function of one offset
  (object minus finger tips along that axis: a full step while far, the remaining offset when
  close), and an axis that has arrived stops while the others go on, so within a demonstration
  the action changes with where the finger tips are (a straight line at a capped speed keeps one
  action for the whole way, which a policy can imitate without ever looking at the tips);
- pick and place: from above, inside a cone around the goal (the finger tips' height above it
  grows with the horizontal distance, up to a cruise height), so they come down as they close in;
- a fixed grasp height relative to the object's grasp point, close, lift, carry, lower to a fixed
  release height above the support, open, move up;
- the orientation stays the start orientation (no rotation deltas), so the fingers always close
  along the base y axis; the tasks' yaw ranges keep the graspable parts across that axis.

Actions are ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` in the base frame (metres, static-XYZ
radians, gripper 1 = open, 0 = closed), one per control period, like the Bridge data.
"""
from __future__ import annotations

import numpy as np

from openvla_ros.control.embodiment import Embodiment
from openvla_ros.evaluation import tasks as T
from openvla_ros.sim.workcell import WorkcellSim

SPEED_M_PER_STEP = 0.025       # finger-tip speed cap per axis: 0.125 m/s at 5 Hz
REACH_STEP_PER_AXIS_M = 0.01  # reach: at most this far along each axis per step
CRUISE_Z_M = 0.15              # the approach cone's top: finger-tip height while far (above the can's top)
CONE_SLOPE = 1.0               # approach: height above the goal per metre of horizontal distance
ALIGNED_XY_M = 0.008           # closer than this: straight down
AT_HEIGHT_M = 0.008            # within this of the goal height: act (close / open)
GRASP_BELOW_M = 0.005          # finger tips this far below the grasp point
MIN_TIP_Z_M = 0.006            # finger tips never lower (the table is at 0)
RELEASE_ABOVE_M = 0.012        # drop height of a carried object above its support
HOLD_RADIUS_M = 0.05           # grasp point within this of the finger tips, gripper closed on something: held
CLOSED_BELOW = 0.6             # gripper opening fraction below which it counts as closed
EMPTY_BELOW = 0.04             # ... and below which nothing is between the fingers
OPEN, CLOSED = 1.0, 0.0


def _toward(tip: np.ndarray, goal: np.ndarray, speed: float = SPEED_M_PER_STEP) -> np.ndarray:
    """The move toward ``goal``, each axis' offset clipped to ``speed``."""
    return np.clip(goal - tip, -speed, speed)


def _action(d: np.ndarray, gripper: float) -> np.ndarray:
    return np.array([d[0], d[1], d[2], 0.0, 0.0, 0.0, gripper], dtype=float)


def _approach(tip: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Toward ``goal`` from above, inside a cone: the height to go to is the goal's plus
    ``CONE_SLOPE`` times the horizontal distance left (at most the cruise height), so the finger
    tips come down as they close in and reach the goal's height only over it. The height is a
    smooth function of where the goal is, with no switch for a policy to place exactly."""
    dxy = float(np.linalg.norm(goal[:2] - tip[:2]))
    z = min(goal[2] + CONE_SLOPE * max(dxy - ALIGNED_XY_M, 0.0), max(CRUISE_Z_M, goal[2]))
    return _toward(tip, np.array([goal[0], goal[1], z]))


class ScriptedExpert:
    """``act(sim)`` → the next action for ``task``."""

    def __init__(self, task: T.Task, embodiment: Embodiment | None = None):
        self.task = task
        self.embodiment = embodiment or T._embodiment()

    def act(self, sim: WorkcellSim) -> np.ndarray:
        tip = T.gripper_point(sim)
        if self.task.kind == 'reach':
            goal = T.grasp_point(sim, self.task.target).copy()
            goal[2] = T.top_z(sim, self.task.target) + 0.5 * T.REACH_ABOVE_TOP_M
            return _action(np.clip(goal - tip, -REACH_STEP_PER_AXIS_M, REACH_STEP_PER_AXIS_M), OPEN)
        return self._place(sim, tip)

    def _grasp_height(self, sim: WorkcellSim, body: str) -> float:
        """Height of the grasp point above the object's bottom (for an upright object)."""
        return float(T.grasp_point(sim, body)[2] - sim.body_position(body)[2] + sim.model.body(body).pos[2])

    def _place(self, sim: WorkcellSim, tip: np.ndarray) -> np.ndarray:
        task = self.task
        obj = T.grasp_point(sim, task.target)
        opening = T.gripper_open_fraction(sim, self.embodiment)
        closed = opening < CLOSED_BELOW
        held = EMPTY_BELOW <= opening < CLOSED_BELOW and float(np.linalg.norm(obj - tip)) <= HOLD_RADIUS_M
        if not held:
            if T.on_support(sim, task.target, task.support):
                return _action(np.array([0.0, 0.0, SPEED_M_PER_STEP]), OPEN)   # released: move away
            if closed:
                return _action(np.array([0.0, 0.0, SPEED_M_PER_STEP]), OPEN)   # missed: open, rise
            goal = np.array([obj[0], obj[1], max(obj[2] - GRASP_BELOW_M, MIN_TIP_Z_M)])
            if (float(np.linalg.norm(goal[:2] - tip[:2])) <= ALIGNED_XY_M
                    and abs(tip[2] - goal[2]) <= AT_HEIGHT_M):
                return _action(np.zeros(3), CLOSED)
            return _action(_approach(tip, goal), OPEN)
        support = sim.body_position(task.support)
        support_top = support[2] + sim.top_offset_m(task.support)
        # where the finger tips go so that the object's grasp point ends above the support centre
        goal = np.array([support[0] + tip[0] - obj[0], support[1] + tip[1] - obj[1],
                         support_top + self._grasp_height(sim, task.target) - GRASP_BELOW_M + RELEASE_ABOVE_M])
        if (float(np.linalg.norm(goal[:2] - tip[:2])) <= ALIGNED_XY_M
                and abs(tip[2] - goal[2]) <= AT_HEIGHT_M):
            return _action(np.zeros(3), OPEN)
        return _action(_approach(tip, goal), CLOSED)


__all__ = ['ScriptedExpert', 'SPEED_M_PER_STEP']
