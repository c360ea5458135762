"""Evaluation tasks as data: instruction, paraphrases, objects, the seeded initial state and a
success predicate computed from the simulator state.

Modelled on the Bridge / SimplerEnv WidowX tasks, in the MuJoCo workcell
(``openvla_ros/description/workcell.xml``). Every object of the workcell is present in every
episode; the task's ``placement`` ranges randomise where each one lies, and all random choices of
an episode come from its seed (:func:`reset_episode`). In the reach tasks only the instruction
says which of the objects to go to.

Points used by the predicates (and by the scripted expert):
- the gripper point is the model's ``fingertips`` site (between the finger tips);
- an object's grasp point is its site ``<object>_grasp`` when the model has one, else its origin;
- an object's top is the highest point of its geoms above its origin (upright objects).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from openvla_ros.control.embodiment import Embodiment, load_embodiment
from openvla_ros.sim.workcell import WorkcellSim, embodiment_start_positions

FINGERTIP_SITE = 'fingertips'
TOWEL = 'towel'
TOWEL_GEOM = 'towel'

# Reach: the finger tips within this horizontal distance of the object's grasp point, and no
# higher than REACH_ABOVE_TOP_M above its top.
REACH_RADIUS_M = 0.03
REACH_ABOVE_TOP_M = 0.04
# Placed: the object rests (below its start height + PLACED_MAX_LIFT_M above the support), the
# gripper is open (finger at least OPEN_FRACTION of the way open) and it lies on the support.
PLACED_MAX_LIFT_M = 0.015
OPEN_FRACTION = 0.7
STACK_RADIUS_M = 0.025
OBJECT_GAP_M = 0.01
_MAX_PLACEMENT_TRIES = 100
_MAX_LAYOUT_TRIES = 100


@dataclass(frozen=True)
class Placement:
    """Where one body may start: uniform planar position and yaw (rad) about the vertical."""

    x_range_m: tuple[float, float]
    y_range_m: tuple[float, float]
    yaw_range_rad: tuple[float, float] = (-np.pi, np.pi)


# The workcell's free region in front of the arm (inside the controller's workspace box, with
# the finger offset of the start orientation taken into account).
TABLE_X_M = (0.17, 0.43)
TABLE_Y_M = (-0.19, 0.19)
_ANY = Placement(TABLE_X_M, TABLE_Y_M)


def _placements(**overrides: Placement) -> dict[str, Placement]:
    """Every body placed in every episode: the towel first (the others avoid its footprint), then
    the large objects, so rejection sampling rarely fails."""
    base = {TOWEL: Placement((0.22, 0.38), (-0.12, 0.12), (0.0, 0.0)), 'obj_can': _ANY, 'obj_block': _ANY,
            # within +-0.3 rad of square to the fingers: a cube held by its diagonal slips
            'obj_cube': Placement(TABLE_X_M, TABLE_Y_M, (-0.3, 0.3)),
            # the handle along x +- 0.3 rad: the gripper closes along the base y axis
            'obj_spoon': Placement(TABLE_X_M, TABLE_Y_M, (-0.3, 0.3))}
    base.update(overrides)
    return base


@dataclass(frozen=True)
class Task:
    name: str
    kind: str                           # 'reach' or 'place'
    instruction: str
    paraphrases: tuple[str, ...]
    target: str                         # the object to reach / to move
    support: str | None = None          # where a 'place' task puts it (a body name)
    max_steps: int = 60
    placements: dict[str, Placement] = field(default_factory=_placements)

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(self.placements)

    @property
    def instructions(self) -> tuple[str, ...]:
        return (self.instruction,) + self.paraphrases

    def success(self, sim: WorkcellSim) -> bool:
        return SUCCESS[self.kind](sim, self)


# ------------------------------------------------------------------ predicates and points
def gripper_point(sim: WorkcellSim) -> np.ndarray:
    return sim.site_position(FINGERTIP_SITE)


def grasp_point(sim: WorkcellSim, body: str) -> np.ndarray:
    site = f'{body}_grasp'
    try:
        return sim.site_position(site)
    except KeyError:
        return sim.body_position(body)


def top_z(sim: WorkcellSim, body: str) -> float:
    return float(sim.body_position(body)[2] + sim.top_offset_m(body))


def gripper_open_fraction(sim: WorkcellSim, embodiment: Embodiment) -> float:
    g = embodiment.gripper
    q = dict(zip(sim.joint_names, sim.joint_positions()))[g.joint]
    return g.command_from_position_m(q)


def _reached(sim: WorkcellSim, task: Task) -> bool:
    tip = gripper_point(sim)
    goal = grasp_point(sim, task.target)
    return (float(np.linalg.norm(tip[:2] - goal[:2])) <= REACH_RADIUS_M
            and tip[2] <= top_z(sim, task.target) + REACH_ABOVE_TOP_M)


def on_support(sim: WorkcellSim, body: str, support: str) -> bool:
    """``body`` lies on ``support`` (the towel's footprint, or centred on a block's top)."""
    p = sim.body_position(body)
    s = sim.body_position(support)
    if support == TOWEL:
        half = sim.model.geom(TOWEL_GEOM).size[:2]
        inside = bool(np.all(np.abs(p[:2] - s[:2]) <= half))
        base = s[2] + sim.top_offset_m(support)
    else:
        inside = float(np.linalg.norm(p[:2] - s[:2])) <= STACK_RADIUS_M
        base = top_z(sim, support)
    rest_z = base + float(sim.model.body(body).pos[2])  # its origin height when resting on the table
    return inside and base - 0.005 <= p[2] <= rest_z + PLACED_MAX_LIFT_M


def _placed(sim: WorkcellSim, task: Task) -> bool:
    return (on_support(sim, task.target, task.support)
            and gripper_open_fraction(sim, _embodiment()) >= OPEN_FRACTION)


SUCCESS: dict[str, Callable[[WorkcellSim, Task], bool]] = {'reach': _reached, 'place': _placed}


# ------------------------------------------------------------------ the registry
def _reach(name: str, noun: str, body: str) -> Task:
    return Task(name=name, kind='reach', instruction=f'reach the {noun}',
                paraphrases=(f'touch the {noun}', f'move the gripper to the {noun}', f'go to the {noun}'),
                target=body, max_steps=40)


TASKS: dict[str, Task] = {t.name: t for t in (
    _reach('reach_red_block', 'red block', 'obj_cube'),
    _reach('reach_green_can', 'green can', 'obj_can'),
    _reach('reach_purple_block', 'purple block', 'obj_block'),
    Task(name='spoon_on_towel', kind='place', instruction='put the spoon on the towel',
         paraphrases=('place the spoon on the towel', 'move the spoon onto the blue towel',
                      'pick up the spoon and put it on the towel'),
         target='obj_spoon', support=TOWEL, max_steps=60),
    Task(name='red_block_on_purple_block', kind='place', instruction='put the red block on the purple block',
         paraphrases=('stack the red block on the purple block', 'place the red block on top of the purple block',
                      'put the red cube on the purple block'),
         target='obj_cube', support='obj_block', max_steps=60),
)}
REACH_TASKS = tuple(n for n, t in TASKS.items() if t.kind == 'reach')


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f'unknown task {name!r}; known tasks: {", ".join(TASKS)}') from None


@dataclass(frozen=True)
class Observation:
    """What an episode records of the simulator state after each step (and at the start)."""
    ee_position: np.ndarray          # (3,) end-effector site, m
    ee_rotation: np.ndarray          # (3, 3)
    tip_position: np.ndarray         # (3,) finger tips, m
    gripper: float                   # measured opening fraction
    success: bool                    # the task's predicate


def observe(sim: WorkcellSim, task: Task, embodiment: Embodiment | None = None) -> Observation:
    """The one observation of an episode state: the in-process runner records it after every
    step, sim_node publishes it (``~/task_state``) for an evaluation through the graph."""
    pose = sim.ee_pose()
    return Observation(ee_position=np.array(pose.position, dtype=float),
                       ee_rotation=np.array(pose.rotation, dtype=float),
                       tip_position=gripper_point(sim),
                       gripper=float(gripper_open_fraction(sim, embodiment or _embodiment())),
                       success=bool(task.success(sim)))


# ------------------------------------------------------------------ episodes
@dataclass(frozen=True)
class EpisodeStart:
    task: str
    seed: int
    instruction: str
    object_poses: dict[str, tuple[float, float, float]]     # body -> (x, y, yaw)


_EMBODIMENT: dict[str, Embodiment] = {}
_START: dict[tuple[str, str], dict[str, float]] = {}


def _embodiment(name: str | None = None) -> Embodiment:
    key = name or ''
    if key not in _EMBODIMENT:
        _EMBODIMENT[key] = load_embodiment(name) if name else load_embodiment()
    return _EMBODIMENT[key]


def start_joint_positions(sim: WorkcellSim, embodiment: Embodiment | None = None) -> dict[str, float]:
    """The episode start joints (the embodiment's start pose, gripper open), computed once."""
    e = embodiment or _embodiment()
    key = (str(sim.model_path), e.name)
    if key not in _START:
        _START[key] = embodiment_start_positions(sim, e)
    return dict(_START[key])


def joints_at(kinematics, embodiment: Embodiment, position, start: dict[str, float]) -> dict[str, float] | None:
    """Joint positions that put the end-effector site at ``position`` (base frame, m) in the
    start orientation, with the gripper as in ``start``; None when the IK does not reach it."""
    from openvla_ros.control.geometry import Pose

    result = kinematics.solve(Pose(np.asarray(position, dtype=float), embodiment.start_pose.rotation),
                              [start[j] for j in embodiment.arm_joints])
    if not result.success:
        return None
    joints = dict(start)
    joints.update(zip(embodiment.arm_joints, result.joint_positions.tolist()))
    return joints


# a jittered start moves the end effector by at most this fraction of the jitter vertically
START_JITTER_Z_FRACTION = 0.5
_START_JITTER_TRIES = 20


def jittered_start(sim: WorkcellSim, kinematics, seed: int, jitter_m: float,
                   embodiment: Embodiment | None = None) -> dict[str, float]:
    """The episode's start joints with the end effector moved from the start pose by a seeded
    offset, uniform in ``[-jitter_m, jitter_m]`` along x and y and half that along z, in the start
    orientation (demonstrations that start from many places, so a policy learns to act from where
    the arm is, not along the same lines every time). The offset comes from a stream of its own
    (the seed's layout stays the same); a draw the IK does not reach is drawn again, and after
    :data:`_START_JITTER_TRIES` the start pose itself is used."""
    e = embodiment or _embodiment()
    start = start_joint_positions(sim, e)
    if jitter_m <= 0:
        return start
    rng = np.random.default_rng([int(seed), 1])
    scale = np.array([1.0, 1.0, START_JITTER_Z_FRACTION]) * jitter_m
    for _ in range(_START_JITTER_TRIES):
        joints = joints_at(kinematics, e, e.start_pose.position + rng.uniform(-scale, scale), start)
        if joints is not None:
            return joints
    return start


NEAR_START_ABOVE_TOP_M = 0.01   # a near start's finger tips at least this far above the target's top


def near_target_start(sim: WorkcellSim, kinematics, task: Task, seed: int, radius_m: float,
                      embodiment: Embodiment | None = None) -> dict[str, float]:
    """The episode's start joints with the finger tips at a seeded point near the task's target
    (in the start orientation): within ``radius_m`` of its grasp point along x and y, and from
    :data:`NEAR_START_ABOVE_TOP_M` to ``radius_m`` above its top, so they start clear of it.
    Demonstrations that start there show the close range (the last centimetres before a grasp)
    from many more places than those that come from afar. The seed's layout stays the same (the
    point comes from a stream of its own); a draw the IK does not reach is drawn again, and after
    :data:`_START_JITTER_TRIES` the start pose itself is used."""
    e = embodiment or _embodiment()
    start = start_joint_positions(sim, e)
    reset_episode(sim, task, seed, embodiment=e)          # the layout, with the arm at the start pose
    tip_from_ee = gripper_point(sim) - np.asarray(sim.ee_pose().position, dtype=float)
    target = grasp_point(sim, task.target)
    top = top_z(sim, task.target)
    rng = np.random.default_rng([int(seed), 3])
    for _ in range(_START_JITTER_TRIES):
        dx, dy = rng.uniform(-radius_m, radius_m, 2)
        tip = np.array([target[0] + dx, target[1] + dy,
                        top + NEAR_START_ABOVE_TOP_M + rng.uniform(0.0, max(radius_m - NEAR_START_ABOVE_TOP_M, 0.0))])
        joints = joints_at(kinematics, e, tip - tip_from_ee, start)
        if joints is not None:
            return joints
    return start


def sample_layout(task: Task, rng: np.random.Generator, radius: Callable[[str], float]) -> dict:
    """Planar (x, y, yaw) per body, no two footprints closer than OBJECT_GAP_M. A body that finds
    no free place restarts the whole layout (from the same generator, so still seeded)."""
    for _ in range(_MAX_LAYOUT_TRIES):
        placed: dict[str, tuple[float, float, float]] = {}
        for body, p in task.placements.items():
            for _ in range(_MAX_PLACEMENT_TRIES):
                x, y = rng.uniform(*p.x_range_m), rng.uniform(*p.y_range_m)
                lo, hi = p.yaw_range_rad
                yaw = rng.uniform(lo, hi) if lo < hi else lo
                if all(np.hypot(x - ox, y - oy) >= radius(body) + radius(o) + OBJECT_GAP_M
                       for o, (ox, oy, _) in placed.items()):
                    placed[body] = (float(x), float(y), float(yaw))
                    break
            else:
                break
        if len(placed) == len(task.placements):
            return placed
    raise RuntimeError(f'task {task.name}: no layout without overlaps after {_MAX_LAYOUT_TRIES} tries')


def reset_episode(sim: WorkcellSim, task: Task, seed: int, paraphrase: int | str | None = None,
                  embodiment: Embodiment | None = None, time_s: float = 0.0,
                  joint_positions: dict[str, float] | None = None) -> EpisodeStart:
    """Put ``sim`` into the seeded initial state of ``task``; returns the instruction to give.

    ``paraphrase``: None = the canonical instruction, an int = that entry of ``instructions``,
    'seeded' = one chosen by the seed. ``time_s``: the sim time after the reset (sim_node passes
    its clock, which never jumps back; the state does not depend on it). ``joint_positions``:
    the arm's start instead of the embodiment's start pose."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
    rng = np.random.default_rng(int(seed))
    start = start_joint_positions(sim, embodiment) if joint_positions is None else joint_positions
    sim.reset(joint_positions=start, time_s=time_s)
    radius = {b: sim.planar_radius(b) for b in task.placements}
    layout = sample_layout(task, rng, radius.__getitem__)
    for body, (x, y, yaw) in layout.items():
        if body == TOWEL:
            sim.move_fixture(body, x, y)
        else:
            sim.place_object(body, x, y, yaw)
    choice = int(rng.integers(len(task.instructions)))
    if paraphrase is None:
        instruction = task.instruction
    elif paraphrase == 'seeded':
        instruction = task.instructions[choice]
    else:
        instruction = task.instructions[int(paraphrase)]
    return EpisodeStart(task.name, int(seed), instruction, layout)


__all__ = ['Task', 'Placement', 'TASKS', 'REACH_TASKS', 'get_task', 'reset_episode', 'EpisodeStart', 'Observation',
           'observe', 'joints_at', 'jittered_start', 'near_target_start',
           'UnknownTaskError', 'gripper_point', 'grasp_point', 'top_z', 'on_support', 'start_joint_positions']
