"""Grounding pre-training data for a small policy trained from scratch: rendered workcell scenes
labelled with where each object is, in the dataset format fine-tuning reads.

OpenVLA's own vision backbones come pre-trained (DINOv2 and SigLIP on web-scale images); a small
model trained from scratch on a few hundred demonstrations has no such start, and learns to
read the instruction and its own preceding action tokens long before it learns to find the
instructed object in the image. This module makes the equivalent of that pre-training for the
simulated workcell: many random scenes (object layouts as the tasks sample them, the arm at
random reachable poses in the start orientation, the gripper random between open and closed),
each rendered once and labelled, for one object named in the instruction
``where is the {noun}``, with seven numbers in the base frame (metres)::

    [ox - tx, oy - ty, oz - tz, ox, oy, tx, gripper]

for the object's grasp point ``o``, the finger tips ``t`` and the gripper's opening (1 = open,
0 = closed, the Bridge gripper convention: the seventh dimension is not normalised). Fine-tuning on these first
(``openvla-finetune --dataset GROUNDING``, upstream's objective, its own statistics key), then on
the demonstrations, gives the small model a vision pathway that localises the objects and the
gripper. No demonstration and no expert action is involved: the scenes are not episodes, and the
labels come from the simulator state, as a detector's training labels would.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openvla_ros.evaluation import tasks as T

GROUNDING_KEY = 'sim_grounding'
# the objects of the workcell tasks, by the nouns their instructions use
NOUNS = {'red block': 'obj_cube', 'green can': 'obj_can', 'purple block': 'obj_block',
         'spoon': 'obj_spoon', 'towel': T.TOWEL}
# scene seeds start here: clear of the demonstration (0-299) and evaluation (1000+) seeds
SEED_BASE = 100_000
# where the end-effector site is put (base frame, metres): over the table, from just above the
# objects (finger tips ~0.1 m below the site) up to above the start height
EE_X_M = (0.15, 0.45)
EE_Y_M = (-0.22, 0.22)
EE_Z_M = (0.12, 0.30)
# Close-range scenes (``near_fraction``): the finger tips within NEAR_RADIUS_M horizontally of one
# named object's grasp point (uniform over the disc) and NEAR_ABOVE_TOP_M above its top, where a
# reach ends and where the last centimetres are decided. Uniform poses put the tips that close to
# a given object in about 1 scene in 25.
NEAR_RADIUS_M = 0.08
NEAR_ABOVE_TOP_M = (0.01, 0.10)


def instruction(noun: str) -> str:
    return f'where is the {noun}'


# Label layouts (``build_dataset(labels=...)``): which numbers a scene is labelled with.
#   offset:   per noun, [ox - tx, oy - ty, oz - tz, ox, oy, tx, gripper] (the module docstring);
#   position: per noun, [ox, oy, ox - tx, oy - ty, oz - tz, tx, gripper]: the first token is the
#             named object's own place, with nothing to subtract;
#   objects:  one fixed instruction, OBJECTS_INSTRUCTION, and every reach object in a fixed slot,
#             [x, y] of each of SLOT_NOUNS, then the finger tips' y: no choice by the instruction,
#             so each slot is a single-object lookup (which a small model learns far sooner than
#             the choice among objects; BENCHMARKS.md, "Learning proof"). The tips' y is
#             labelled nowhere else on its own (the offset layout holds it only inside oy - ty,
#             and labels the tips' x); every dimension is normalised (OBJECTS_MASK).
#   relative: as objects, but each slot holds the object's offset from the finger tips,
#             [ox - tx, oy - ty] of each of SLOT_NOUNS, then the tips' height tz: the quantity
#             the reach actions are made of, per object, before any choice by the noun.
LABELS = ('offset', 'position', 'objects', 'relative')
# the layouts with one sample per scene under OBJECTS_INSTRUCTION, every slot normalised
SLOT_LAYOUTS = ('objects', 'relative')
OBJECTS_INSTRUCTION = 'where are the objects'
OBJECTS_MASK = [True] * 7       # positions only: no absolute gripper dimension to leave as it is
SLOT_NOUNS = ('red block', 'green can', 'purple block')
_POSITION_ORDER = [3, 4, 0, 1, 2, 5, 6]


@dataclass
class GroundingFrame:
    image: np.ndarray        # uint8 [H, W, 3]
    noun: str
    label: np.ndarray        # float [7], see the module docstring
    points: dict | None = None   # noun -> grasp point [3] of every object of the scene, m
    tip: np.ndarray | None = None   # the finger tips [3], m


def objects_label(frame: GroundingFrame, labels: str = 'objects') -> np.ndarray:
    """The ``objects`` layout of ``frame``'s scene: [x, y] of each of SLOT_NOUNS, then the
    finger tips' y; the ``relative`` layout: each object's [x, y] offset from the finger tips,
    then the tips' z."""
    if labels == 'relative':
        return np.array([*(v for n in SLOT_NOUNS for v in frame.points[n][:2] - frame.tip[:2]), frame.tip[2]],
                        dtype=np.float64)
    return np.array([*(v for n in SLOT_NOUNS for v in frame.points[n][:2]), frame.tip[1]],
                    dtype=np.float64)


def _arm_pose(ik, embodiment, rng: np.random.Generator, start: dict) -> dict | None:
    """Joint positions for a random end-effector position in the start orientation and a random
    gripper opening (None when the IK does not reach it)."""
    position = [rng.uniform(*EE_X_M), rng.uniform(*EE_Y_M), rng.uniform(*EE_Z_M)]
    joints = T.joints_at(ik, embodiment, position, start)
    g = embodiment.gripper
    if joints is not None and g is not None:
        joints[g.joint] = g.position_m(float(rng.uniform(0.0, 1.0)))
    return joints


def check_nouns(nouns_per_scene: int, nouns=None) -> tuple[str, ...]:
    """The nouns a dataset names (``nouns``: a subset of :data:`NOUNS`, in that order; None: all
    of them), checked together with ``nouns_per_scene``."""
    wanted = set(NOUNS if nouns is None else nouns)
    chosen = tuple(n for n in NOUNS if n in wanted)
    if wanted - set(NOUNS) or not chosen:
        raise ValueError(f'nouns must be among {list(NOUNS)}, got {list(nouns or ())}')
    if not 1 <= nouns_per_scene <= len(chosen):
        raise ValueError(f'nouns_per_scene must be in [1, {len(chosen)}], got {nouns_per_scene}')
    return chosen


def check_layout_nouns(labels: str, nouns_per_scene: int, nouns=None) -> tuple[str, ...]:
    """:func:`check_nouns` for a dataset in the ``labels`` layout; the objects layout names no
    noun (its slots are SLOT_NOUNS, one sample per scene), nor does the relative one, so
    ``nouns`` must be None there."""
    if labels in SLOT_LAYOUTS:
        if nouns is not None:
            raise ValueError(f'the {labels} layout names no noun (its slots are SLOT_NOUNS): nouns must be None')
        nouns_per_scene = 1
    return check_nouns(nouns_per_scene, nouns)


def _scene_task():
    """The task whose seeded layouts the scenes show (every task places the same objects)."""
    return T.TASKS[T.REACH_TASKS[0]]


def _near_pose(sim, ik, embodiment, task, layout_seed: int, joints: dict, rng: np.random.Generator,
               nouns, tip_from_ee: np.ndarray) -> dict | None:
    """``joints`` moved so that the finger tips are close to one of ``nouns``' objects in the
    scene of ``layout_seed`` (NEAR_RADIUS_M, NEAR_ABOVE_TOP_M), the gripper as in ``joints``;
    None when the IK does not reach it."""
    T.reset_episode(sim, task, layout_seed, embodiment=embodiment)
    body = NOUNS[nouns[int(rng.integers(len(nouns)))]]
    angle, r = rng.uniform(0.0, 2 * np.pi), NEAR_RADIUS_M * np.sqrt(rng.uniform())
    tip = T.grasp_point(sim, body)[:2] + r * np.array([np.cos(angle), np.sin(angle)])
    z = T.top_z(sim, body) + rng.uniform(*NEAR_ABOVE_TOP_M)
    near = T.joints_at(ik, embodiment, np.array([tip[0], tip[1], z]) - tip_from_ee, joints)
    if near is not None and embodiment.gripper is not None:
        near[embodiment.gripper.joint] = joints[embodiment.gripper.joint]
    return near


def _posed_scenes(sim, embodiment, seed: int, scenes: list[int] | None, near_fraction: float = 0.0,
                  nouns=None):
    """(scene seed, the scene's layout seed, the joint positions, the scene's generator after
    those draws) for each scene whose arm pose the IK reaches: counting up from ``seed`` (a pose
    it does not reach uses up its seed), or exactly ``scenes`` (one it does not reach is an
    error). A ``near_fraction`` of the scenes
    (drawn from a stream of their own, so the other scenes stay as without it) put the finger
    tips close to one of ``nouns``' objects (:func:`_near_pose`); where the IK does not reach
    that pose, the scene keeps its random one."""
    from openvla_ros.control.kinematics import ArmKinematics

    ik = ArmKinematics(embodiment)
    start = T.start_joint_positions(sim, embodiment)
    task = _scene_task()
    tip_from_ee = None
    if near_fraction > 0:
        sim.reset(joint_positions=start)
        tip_from_ee = T.gripper_point(sim) - np.asarray(sim.ee_pose().position, dtype=float)
    for scene in (itertools.count(seed) if scenes is None else scenes):
        rng = np.random.default_rng(scene)
        joints = _arm_pose(ik, embodiment, rng, start)
        if joints is None:
            if scenes is not None:
                raise ValueError(f'scene seed {scene}: the IK does not reach its arm pose')
            continue
        layout_seed = int(rng.integers(2**31))
        if near_fraction > 0:
            near_rng = np.random.default_rng([scene, 2])
            if near_rng.uniform() < near_fraction:
                joints = _near_pose(sim, ik, embodiment, task, layout_seed, joints, near_rng, nouns,
                                    tip_from_ee) or joints
        yield scene, layout_seed, joints, rng


def render_frames(n_frames: int, image_size: int = 128, seed: int = SEED_BASE, progress=None,
                  nouns_per_scene: int = 1, scenes: list[int] | None = None, nouns=None,
                  near_fraction: float = 0.0):
    """Yield labelled :class:`GroundingFrame` s from ``n_frames`` scenes: each scene rendered once
    and labelled for ``nouns_per_scene`` different objects chosen at random among ``nouns``
    (default all of :data:`NOUNS`; every object is in every scene whichever are named: the
    same image with different instructions and labels, only the noun tells them apart). Scene
    seeds count up from ``seed``, one per arm pose tried (a pose the IK does not reach uses up
    its seed); ``scenes``: exactly these scene seeds instead (from :func:`scene_seeds`).
    ``near_fraction``: the share of scenes with the finger tips close to one of the named objects
    (:func:`_posed_scenes`)."""
    nouns = list(check_nouns(nouns_per_scene, nouns))
    check_near_fraction(near_fraction)
    from openvla_ros.sim.workcell import WorkcellSim

    embodiment = T._embodiment()
    task = _scene_task()
    with WorkcellSim() as sim:
        posed = itertools.islice(_posed_scenes(sim, embodiment, seed, scenes, near_fraction, nouns), n_frames)
        for made, (_, layout_seed, joints, rng) in enumerate(posed, 1):
            T.reset_episode(sim, task, layout_seed, embodiment=embodiment, joint_positions=joints)
            tip = T.gripper_point(sim)
            if nouns_per_scene == 1:        # (the draw of the one-noun scenes as before)
                chosen = [nouns[int(rng.integers(len(nouns)))]]
            else:
                chosen = [nouns[i] for i in rng.permutation(len(nouns))[:nouns_per_scene]]
            opening = T.gripper_open_fraction(sim, embodiment)
            image = np.ascontiguousarray(sim.render(width=image_size, height=image_size), dtype=np.uint8)
            points = {n: T.grasp_point(sim, body) for n, body in NOUNS.items()}
            if progress is not None:
                progress(made)
            for noun in chosen:
                obj = points[noun]
                label = np.array([*(obj - tip), obj[0], obj[1], tip[0], opening], dtype=np.float64)
                yield GroundingFrame(image, noun, label, points, tip)


def check_near_fraction(near_fraction: float) -> float:
    if not 0.0 <= near_fraction <= 1.0:
        raise ValueError(f'near_fraction must be in [0, 1], got {near_fraction}')
    return near_fraction


def scene_seeds(n_frames: int, seed: int = SEED_BASE) -> list[int]:
    """The scene seeds :func:`render_frames` renders for ``n_frames`` from ``seed`` (the arm
    poses the IK reaches), found without rendering."""
    from openvla_ros.sim.workcell import WorkcellSim

    with WorkcellSim() as sim:
        posed = _posed_scenes(sim, T._embodiment(), seed, None)
        return [scene for scene, *_ in itertools.islice(posed, n_frames)]


# scenes per job of a rendering pool: progress advances a job at a time
POOL_JOB_SCENES = 500


def _render_scenes(scenes: list[int], image_size: int, nouns_per_scene: int, nouns, near_fraction) -> list:
    return list(render_frames(len(scenes), image_size, progress=None, nouns_per_scene=nouns_per_scene,
                              scenes=scenes, nouns=nouns, near_fraction=near_fraction))


def _frames(n_frames, image_size, seed, progress, per_scene, workers, nouns=None, near_fraction=0.0):
    """The frames of :func:`render_frames`, rendered here (``workers`` 1) or, the same frames
    in the same order, by a pool of ``workers`` processes, each given a run of the scene seeds."""
    if workers <= 1:
        yield from render_frames(n_frames, image_size, seed, progress, per_scene, nouns=nouns,
                                 near_fraction=near_fraction)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    seeds = scene_seeds(n_frames, seed)
    jobs = [seeds[i:i + POOL_JOB_SCENES] for i in range(0, len(seeds), POOL_JOB_SCENES)]
    render = partial(_render_scenes, image_size=image_size, nouns_per_scene=per_scene, nouns=nouns,
                     near_fraction=near_fraction)
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context('spawn')) as pool:
        done = 0
        for job, frames in zip(jobs, pool.map(render, jobs)):
            for _ in job:
                done += 1
                if progress is not None:
                    progress(done)
            yield from frames


def build_dataset(out: str | Path, n_frames: int, image_size: int = 128, seed: int = SEED_BASE,
                  progress=None, nouns_per_scene: int = 1, labels: str = 'offset',
                  key: str = GROUNDING_KEY, workers: int = 1, nouns=None, near_fraction: float = 0.0) -> dict:
    """Write a grounding dataset (``openvla-dataset`` layout, statistics key ``key``): one
    episode per instruction (per object noun named, ``nouns`` as in :func:`render_frames`; one
    for the slot layouts, :data:`SLOT_LAYOUTS`), its frames in render order, labelled in the ``labels`` layout
    (:data:`LABELS`), rendered by ``workers`` processes (the same dataset for any number);
    ``near_fraction`` as in :func:`render_frames`."""
    from .dataset import Episode, finish_dataset, refuse_used_directory, write_episode

    if labels not in LABELS:
        raise ValueError(f'labels must be one of {LABELS}, got {labels!r}')
    out = Path(out)
    refuse_used_directory(out)
    slots = labels in SLOT_LAYOUTS
    per_scene = 1 if slots else nouns_per_scene
    named = check_layout_nouns(labels, per_scene, nouns)        # here, not first in a worker process
    check_near_fraction(near_fraction)
    texts = [OBJECTS_INSTRUCTION] if slots else [instruction(n) for n in named]
    by_text: dict[str, tuple[list, list]] = {t: ([], []) for t in texts}
    # (the slot layouts label every reach object whichever noun a scene draws; their close-range
    # scenes go to those objects)
    render_nouns = list(SLOT_NOUNS) if slots else nouns
    for frame in _frames(n_frames, image_size, seed, progress, per_scene, workers, render_nouns, near_fraction):
        if slots:
            text, label = OBJECTS_INSTRUCTION, objects_label(frame, labels)
        else:
            text = instruction(frame.noun)
            label = frame.label[_POSITION_ORDER] if labels == 'position' else frame.label
        images, rows = by_text[text]
        images.append(frame.image)
        rows.append(label)
    index = 0
    for text, (images, rows) in by_text.items():
        if not images:
            continue
        write_episode(out, index, Episode(np.stack(images), np.stack(rows), text,
                                          source=f'grounding scenes from seed {seed}'))
        index += 1
    return finish_dataset(out, key, {'grounding_frames': n_frames, 'seeds': [],
                                     'grounding_seed': seed, 'grounding_labels': labels,
                                     'nouns_per_scene': per_scene, 'nouns': list(named),
                                     'near_fraction': near_fraction},
                          mask=OBJECTS_MASK if slots else None)
