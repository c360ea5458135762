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


def instruction(noun: str) -> str:
    return f'where is the {noun}'


@dataclass
class GroundingFrame:
    image: np.ndarray        # uint8 [H, W, 3]
    noun: str
    label: np.ndarray        # float [7], see the module docstring


def _arm_pose(ik, embodiment, rng: np.random.Generator, start: dict) -> dict | None:
    """Joint positions for a random end-effector position in the start orientation and a random
    gripper opening (None when the IK does not reach it)."""
    position = [rng.uniform(*EE_X_M), rng.uniform(*EE_Y_M), rng.uniform(*EE_Z_M)]
    joints = T.joints_at(ik, embodiment, position, start)
    g = embodiment.gripper
    if joints is not None and g is not None:
        joints[g.joint] = g.position_m(float(rng.uniform(0.0, 1.0)))
    return joints


def render_frames(n_frames: int, image_size: int = 128, seed: int = SEED_BASE, progress=None,
                  nouns_per_scene: int = 1):
    """Yield labelled :class:`GroundingFrame` s from ``n_frames`` scenes: each scene rendered once
    and labelled for ``nouns_per_scene`` different objects chosen at random (the same image
    with different instructions and labels: only the noun tells them apart). Scene seeds count
    up from ``seed``, one per arm pose tried (a pose the IK does not reach uses up its seed)."""
    if not 1 <= nouns_per_scene <= len(NOUNS):
        raise ValueError(f'nouns_per_scene must be in [1, {len(NOUNS)}], got {nouns_per_scene}')
    from openvla_ros.control.kinematics import ArmKinematics
    from openvla_ros.sim.workcell import WorkcellSim

    embodiment = T._embodiment()
    task = T.TASKS[T.REACH_TASKS[0]]            # every task places the same objects
    nouns = list(NOUNS)
    with WorkcellSim() as sim:
        ik = ArmKinematics(embodiment)
        start = T.start_joint_positions(sim, embodiment)
        made = 0
        scene = seed
        while made < n_frames:
            rng = np.random.default_rng(scene)
            scene += 1
            joints = _arm_pose(ik, embodiment, rng, start)
            if joints is None:
                continue
            T.reset_episode(sim, task, int(rng.integers(2**31)), embodiment=embodiment,
                            joint_positions=joints)
            tip = T.gripper_point(sim)
            if nouns_per_scene == 1:        # (the draw of the one-noun scenes as before)
                chosen = [nouns[int(rng.integers(len(nouns)))]]
            else:
                chosen = [nouns[i] for i in rng.permutation(len(nouns))[:nouns_per_scene]]
            opening = T.gripper_open_fraction(sim, embodiment)
            image = np.ascontiguousarray(sim.render(width=image_size, height=image_size), dtype=np.uint8)
            made += 1
            if progress is not None:
                progress(made)
            for noun in chosen:
                obj = T.grasp_point(sim, NOUNS[noun])
                label = np.array([*(obj - tip), obj[0], obj[1], tip[0], opening], dtype=np.float64)
                yield GroundingFrame(image, noun, label)


def build_dataset(out: str | Path, n_frames: int, image_size: int = 128, seed: int = SEED_BASE,
                  progress=None, nouns_per_scene: int = 1) -> dict:
    """Write a grounding dataset (``openvla-dataset`` layout, statistics key
    :data:`GROUNDING_KEY`): one episode per object noun, its frames in render order."""
    from .dataset import Episode, finish_dataset, refuse_used_directory, write_episode

    out = Path(out)
    refuse_used_directory(out)
    by_noun: dict[str, tuple[list, list]] = {n: ([], []) for n in NOUNS}
    for frame in render_frames(n_frames, image_size, seed, progress, nouns_per_scene):
        images, labels = by_noun[frame.noun]
        images.append(frame.image)
        labels.append(frame.label)
    index = 0
    for noun, (images, labels) in by_noun.items():
        if len(images) < 1:
            continue
        write_episode(out, index, Episode(np.stack(images), np.stack(labels), instruction(noun),
                                          source=f'grounding scenes from seed {seed}'))
        index += 1
    return finish_dataset(out, GROUNDING_KEY, {'grounding_frames': n_frames, 'seeds': [],
                                               'grounding_seed': seed,
                                               'nouns_per_scene': nouns_per_scene})
