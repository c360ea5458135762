"""Demonstrations from the scripted expert, labelled from the reached states.

:func:`collect_in_process` runs the evaluation's lockstep episode runner (the same simulator core
and arm-controller core the ROS nodes wrap, without DDS) with the scripted expert, records the
camera frames and the reached end-effector states, and writes a dataset directly. The expert
reads the simulator's ground truth (object poses), which a teleoperator sees with their eyes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from openvla_ros.action_layout import GRIPPER_INDEX

from .dataset import Episode, finish_dataset, write_episode
from .labels import LabelError, bridge_labels, idle_mask


def episode_from_result(result, source: str) -> tuple[Episode, int]:
    """(Episode, number of idle steps dropped) from an evaluation EpisodeResult with frames.

    Pose labels come from consecutive reached states; the gripper label is the absolute command
    the step was taken with (a closed gripper stopped by an object never *reaches* 0)."""
    if result.steps < 2:
        raise LabelError(f'{source}: {result.steps} step(s); an episode needs at least two')
    commanded = result.actions[:, GRIPPER_INDEX]
    gripper = np.concatenate([[commanded[0]], commanded])
    actions = bridge_labels(result.ee_positions, result.ee_rotations, gripper)
    keep = idle_mask(actions)
    images = np.stack(result.frames[:result.steps])[keep]
    return Episode(images=images.astype(np.uint8), actions=actions[keep],
                   instruction=result.instruction, source=source), int((~keep).sum())


def collect_in_process(tasks: list[str], seeds: list[int], out: str | Path,
                       image_size: int = 56, progress: bool = True,
                       only_successful: bool = True) -> dict:
    from openvla_ros.evaluation.policies import ExpertPolicy
    from openvla_ros.evaluation.runner import EpisodeEnv, run_episode

    out = Path(out)
    env = EpisodeEnv(image_size=(image_size, image_size))
    expert = ExpertPolicy()
    jobs = [(t, s) for s in seeds for t in tasks]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc='collect', unit='episode')
    index, idle, failed = 0, 0, []
    try:
        for task, seed in jobs:
            # a paraphrase per seed, so the policy learns the object noun, not one sentence
            result = run_episode(expert, task, seed, record=True, env=env, paraphrase=seed % 4)
            if bar is not None:
                bar.update(1)
            if only_successful and not result.success:
                failed.append((task, seed, result.reason))
                continue
            try:
                episode, dropped = episode_from_result(result, f'{task} seed {seed}')
            except LabelError as exc:
                failed.append((task, seed, str(exc)))
                continue
            write_episode(out, index, episode)
            index += 1
            idle += dropped
    finally:
        env.close()
        if bar is not None:
            bar.close()
    return finish_dataset(out, extra_info={'idle_steps_dropped': idle,
                                           'failed_demonstrations': failed,
                                           'tasks': tasks, 'seeds': [min(seeds), max(seeds)]})
