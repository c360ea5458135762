"""Demonstrations from the scripted expert, labelled from the reached states.

:func:`collect_in_process` runs the evaluation's lockstep episode runner (the same simulator core
and arm-controller core the ROS nodes wrap, without DDS) with the scripted expert, records the
camera frames and the reached end-effector states, and writes a dataset directly. The expert
reads the simulator's ground truth (object poses), which a teleoperator sees with their eyes.

:func:`collect_through_graph` runs the same expert through the real ROS graph, as a teleoperator
drives a robot: arm_controller and sim_node (lockstep) as processes over loopback DDS
(:class:`openvla_ros.evaluation.graph.EvaluationGraph` without vla_node), the expert publishing
EndEffectorDelta messages into arm_controller. The recorder of ``openvla-bag record``
(:class:`openvla_ros.bag.record.BagSeries`) writes one bag per episode with the camera,
/joint_states, the controller's target pose, the commanded actions, the instruction and the
episode markers (``start``; ``end success`` / ``end failure REASON``), and the dataset is built
from those bags by :func:`openvla_ros.learning.from_bags.build`: the bags a real teleoperation
session records with ``openvla-bag record`` go through the same code.
"""
from __future__ import annotations

import json
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from openvla_ros.action_layout import GRIPPER_INDEX

from .dataset import Episode, finish_dataset, write_episode
from .labels import LabelError, bridge_labels, idle_mask


def episode_from_result(result, source: str, leave_out: list[int] | tuple[int, ...] = ()) -> tuple[Episode, int]:
    """(Episode, number of idle steps dropped) from an evaluation EpisodeResult with frames.

    Pose labels come from consecutive reached states; the gripper label is the absolute command
    the step was taken with (a closed gripper stopped by an object never *reaches* 0).
    ``leave_out``: steps not to learn from (the expert's slips), besides the idle ones."""
    if result.steps < 2:
        raise LabelError(f'{source}: {result.steps} step(s); an episode needs at least two')
    commanded = result.actions[:, GRIPPER_INDEX]
    gripper = np.concatenate([[commanded[0]], commanded])
    actions = bridge_labels(result.ee_positions, result.ee_rotations, gripper)
    keep = idle_mask(actions)
    idle = int((~keep).sum())
    keep[[i for i in leave_out if i < result.steps]] = False
    images = np.stack(result.frames[:result.steps])[keep]
    return Episode(images=images.astype(np.uint8), actions=actions[keep],
                   instruction=result.instruction, source=source), idle


LAYOUTS = ('shared', 'distinct')


def episode_jobs(tasks: list[str], seeds: list[int], layouts: str = 'shared',
                 counts: dict[str, int] | None = None) -> list[tuple[str, int]]:
    """The (task, seed) episodes to demonstrate. A seed decides the whole scene, and every task
    places the same objects, so ``shared``: each task on ``seeds`` (one scene per seed, shown with
    every task's instruction); ``distinct``: each task on ``seeds`` shifted past the seeds of the
    tasks before it (``i * len(seeds)`` when every task has ``len(seeds)``; a scene of its own for
    every demonstration: as many layouts as episodes).

    ``counts``: a task's number of episodes when it is not ``len(seeds)`` (at most that: the task
    takes the first ones). The episodes interleave the tasks, seed by seed."""
    if layouts not in LAYOUTS:
        raise ValueError(f'layouts must be one of {LAYOUTS}, got {layouts!r}')
    counts = counts or {}
    n = [counts.get(t, len(seeds)) for t in tasks]
    if any(not 0 <= k <= len(seeds) for k in n):
        raise ValueError(f'episodes per task must be in [0, {len(seeds)}], got {dict(zip(tasks, n))}')
    shift = [0] * len(tasks)
    if layouts == 'distinct':
        shift = [sum(n[:i]) for i in range(len(tasks))]
    return [(t, seeds[k] + shift[i]) for k in range(len(seeds)) for i, t in enumerate(tasks) if k < n[i]]


def demonstration_paraphrase(task: str, seed: int) -> int:
    """The instruction variant a demonstration is given: one per seed, so the policy learns the
    object noun, not one sentence."""
    from openvla_ros.evaluation import tasks as T

    return seed % len(T.get_task(task).instructions)


def starts_near(seed: int, fraction: float) -> bool:
    """Whether the demonstration of ``seed`` starts near its target (a seeded draw, so about
    ``fraction`` of them do; the same seeds always the same ones)."""
    return fraction > 0 and float(np.random.default_rng([int(seed), 4]).random()) < fraction


def _seed_span(jobs: list[tuple[str, int]]) -> list[int]:
    return [min(s for _, s in jobs), max(s for _, s in jobs)]


def _jobs_info(tasks: list[str], jobs: list[tuple[str, int]], layouts: str) -> dict:
    """What a collection's ``meta/info.json`` says of its episodes, either way it is collected."""
    return {'tasks': tasks, 'seeds': _seed_span(jobs), 'layouts': layouts,
            'episodes_per_task': dict(Counter(t for t, _ in jobs))}


def collect_in_process(tasks: list[str], seeds: list[int], out: str | Path,
                       image_size: int = 56, progress: bool = True,
                       only_successful: bool = True, max_steps: int | None = None,
                       layouts: str = 'shared', start_jitter_m: float = 0.0,
                       action_noise_m: float = 0.0, counts: dict[str, int] | None = None,
                       slip_probability: float = 0.0, slip_m: float = 0.0,
                       near_start_fraction: float = 0.0, near_start_m: float = 0.0) -> dict:
    from openvla_ros.evaluation.policies import ExpertPolicy
    from openvla_ros.evaluation.runner import EpisodeEnv, run_episode

    out = Path(out)
    env = EpisodeEnv(image_size=(image_size, image_size))
    jobs = episode_jobs(tasks, seeds, layouts, counts)
    expert = ExpertPolicy(action_noise_m, seed=_seed_span(jobs)[0] if jobs else 0,
                          slip_probability=slip_probability, slip_m=slip_m)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc='collect', unit='episode')
    index, idle, slipped, near, failed = 0, 0, 0, 0, []
    try:
        for task, seed in jobs:
            near_m = near_start_m if starts_near(seed, near_start_fraction) else 0.0
            near += near_m > 0
            result = run_episode(expert, task, seed, record=True, env=env,
                                 paraphrase=demonstration_paraphrase(task, seed),
                                 max_steps=max_steps, start_jitter_m=start_jitter_m, near_start_m=near_m)
            if bar is not None:
                bar.update(1)
            if only_successful and not result.success:
                failed.append((task, seed, result.reason))
                continue
            try:
                episode, dropped = episode_from_result(result, f'{task} seed {seed}', leave_out=expert.slips)
            except LabelError as exc:
                failed.append((task, seed, str(exc)))
                continue
            write_episode(out, index, episode)
            index += 1
            idle += dropped
            slipped += len(expert.slips)
    finally:
        env.close()
        if bar is not None:
            bar.close()
    return finish_dataset(out, extra_info={'idle_steps_dropped': idle,
                                           'failed_demonstrations': failed,
                                           **_jobs_info(tasks, jobs, layouts),
                                           'start_jitter_m': start_jitter_m,
                                           'action_noise_m': action_noise_m,
                                           'slip_probability': slip_probability, 'slip_m': slip_m,
                                           'slip_steps_left_out': slipped,
                                           'near_start_fraction': near_start_fraction,
                                           'near_start_m': near_start_m, 'near_starts': near})


# ---------------------------------------------------------------- through the ROS graph
BAGS_DIR = 'bags'                            # OUT/bags: the episode bags of openvla-collect --graph
BAGS_MANIFEST = 'openvla-collect.json'       # in the bags folder: the bags openvla-collect wrote there
BAGS_FORMAT = 'openvla_ros-collect-bags-v1'
RECORD_SETTLE_TIMEOUT_S = 10.0               # the recorder has an episode's last messages
MATCH_TIMEOUT_S = 30.0


def _graph_topics():
    from openvla_ros import defaults

    return (defaults.CAMERA_TOPIC, defaults.JOINT_STATES_TOPIC, defaults.TARGET_POSE_TOPIC,
            defaults.ACTION_TOPIC, defaults.INSTRUCTION_TOPIC, defaults.EPISODE_TOPIC)


def bag_name(index: int, task: str, seed: int) -> str:
    return f'{index:04d}_{task}_seed{seed}'


def header_stamp_ns(raw: bytes) -> int | None:
    """The header stamp of a serialized stamped message (CDR: 4 bytes of encapsulation, then
    ``std_msgs/Header`` with ``stamp.sec`` int32 and ``stamp.nanosec`` uint32 first)."""
    b = bytes(raw[:12])
    if len(b) < 12 or b[0] != 0 or b[1] not in (0, 1):
        return None
    sec, nsec = struct.unpack('<iI' if b[1] == 1 else '>iI', b[4:12])
    return sec * 1_000_000_000 + nsec


class _Progress:
    """What the recorder has written into the current bag: message counts and newest stamps."""

    def __init__(self, stamped: tuple[str, ...]):
        self.stamped = stamped
        self.cond = threading.Condition()
        self.reset()

    def reset(self) -> None:
        with self.cond:
            self.counts: dict[str, int] = {}
            self.newest: dict[str, int] = {}

    def __call__(self, topic: str, raw: bytes) -> None:
        stamp = header_stamp_ns(raw) if topic in self.stamped else None
        with self.cond:
            self.counts[topic] = self.counts.get(topic, 0) + 1
            if stamp is not None:
                self.newest[topic] = max(stamp, self.newest.get(topic, stamp))
            self.cond.notify_all()

    def wait(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True


def _episode_recorded(steps: int):
    """The bag has the episode's commanded actions and, after the last one, the reached state and
    its camera frame (the state after the last action has a newer stamp than the action)."""
    from openvla_ros import defaults

    def done(p: _Progress) -> bool:
        if p.counts.get(defaults.ACTION_TOPIC, 0) < steps:
            return False
        last_action = p.newest.get(defaults.ACTION_TOPIC, -1) if steps else -1
        return all(p.newest.get(t, -1) > last_action for t in (defaults.JOINT_STATES_TOPIC, defaults.CAMERA_TOPIC))
    return done


def write_bags_manifest(bags_dir: Path, bags: list[str]) -> None:
    bags_dir.mkdir(parents=True, exist_ok=True)
    path = bags_dir / BAGS_MANIFEST
    tmp = path.with_name(path.name + '.partial')
    tmp.write_text(json.dumps({'format': BAGS_FORMAT, 'bags': bags}, indent=2))
    tmp.replace(path)


def read_bags_manifest(bags_dir: Path) -> list[str] | None:
    """The bag names openvla-collect listed in ``bags_dir``; None when it wrote none there."""
    try:
        data = json.loads((bags_dir / BAGS_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get('format') != BAGS_FORMAT:
        return None
    return [str(b) for b in data.get('bags', [])]


def record_graph_episodes(graph, jobs: list[tuple[str, int]], bags_dir: Path, progress=None,
                          log=print, max_steps: int | None = None) -> list[tuple[str, int, Path, object]]:
    """Run the expert through ``graph`` for each (task, seed), one bag per episode in
    ``bags_dir``; returns (task, seed, bag, EpisodeResult) per episode."""
    from std_msgs.msg import String

    from openvla_ros import defaults
    from openvla_ros.bag.record import DEFAULT_RECORD_TOPICS, BagSeries
    from openvla_ros.evaluation import tasks as T
    from openvla_ros.evaluation.policies import ExpertPolicy
    from openvla_ros.nodes.common import reliable_qos

    from .from_bags import end_marker

    required = _graph_topics()
    topics = list(dict.fromkeys(list(DEFAULT_RECORD_TOPICS) + list(required)))
    done = _Progress((defaults.JOINT_STATES_TOPIC, defaults.CAMERA_TOPIC, defaults.ACTION_TOPIC))
    expert = ExpertPolicy()
    written = list(read_bags_manifest(bags_dir) or [])
    out = []
    with BagSeries(topics, domain_id=graph.domain_id, node_name='openvla_collect_recorder') as series:
        series.recorder.on_write = done
        from rclpy.logging import LoggingSeverity
        series.node.get_logger().set_level(LoggingSeverity.WARN)    # no line per topic subscribed
        # the teleoperator's own topics: the episode markers and the instruction
        markers = series.node.create_publisher(String, defaults.EPISODE_TOPIC, reliable_qos(10))
        instruction = series.node.create_publisher(String, defaults.INSTRUCTION_TOPIC, reliable_qos(10))
        series.wait_matched(required, MATCH_TIMEOUT_S)
        for index, (task, seed) in enumerate(jobs):
            paraphrase = demonstration_paraphrase(task, seed)
            text = T.get_task(task).instructions[paraphrase]
            name = bag_name(index, task, seed)
            written.append(name)
            write_bags_manifest(bags_dir, written)     # listed before it exists: --force may replace it
            done.reset()
            series.begin(bags_dir / name)
            try:
                markers.publish(String(data='start'))
                instruction.publish(String(data=text))
                if not done.wait(lambda p: p.counts.get(defaults.EPISODE_TOPIC, 0) >= 1 and
                                 p.counts.get(defaults.INSTRUCTION_TOPIC, 0) >= 1, RECORD_SETTLE_TIMEOUT_S):
                    raise RuntimeError(f'{name}: the recorder did not get the start marker and the instruction')
                result = graph.run_episode(expert, task, seed, paraphrase=paraphrase, instruction=text,
                                           max_steps=max_steps)
                if not done.wait(_episode_recorded(result.steps), RECORD_SETTLE_TIMEOUT_S):
                    log(f'warning: {name}: the recorder did not get the last state within '
                        f'{RECORD_SETTLE_TIMEOUT_S:.0f} s ({done.counts})')
                markers.publish(String(data=end_marker(result.success, result.reason)))
                if not done.wait(lambda p: p.counts.get(defaults.EPISODE_TOPIC, 0) >= 2, RECORD_SETTLE_TIMEOUT_S):
                    raise RuntimeError(f'{name}: the recorder did not get the end marker')
                bag, _counts = series.end()
            except BaseException:
                series.close()      # discards the unfinished bag
                raise
            out.append((task, seed, bag, result))
            if progress is not None:
                progress(task, seed, result)
    return out


def collect_through_graph(tasks: list[str], seeds: list[int], out: str | Path, *, executable_command,
                          stop_processes, bags_dir: str | Path | None = None, image_size: int = 56,
                          progress: bool = True, only_successful: bool = True,
                          graph_log_dir: str | Path | None = None, max_steps: int | None = None,
                          log=print, layouts: str = 'shared', counts: dict[str, int] | None = None) -> dict:
    """The expert through the ROS graph, one bag per episode in ``bags_dir`` (default
    ``OUT/bags``), then the dataset ``out`` built from those bags (the labels, idle filter and
    statistics of ``openvla-dataset build``). ``executable_command`` / ``stop_processes``: as for
    :class:`EvaluationGraph` (``openvla_ros.cli.bringup`` provides both). Episodes that did not
    succeed are marked ``end failure REASON`` in their bag and left out of the dataset unless
    ``only_successful`` is False; the info lists them as ``failed_demonstrations``."""
    from openvla_ros.evaluation.graph import EvaluationGraph

    from .dataset import INFO_FILE, DatasetError
    from .from_bags import BuildOptions, build

    out = Path(out)
    bags_dir = Path(bags_dir) if bags_dir is not None else out / BAGS_DIR
    jobs = episode_jobs(tasks, seeds, layouts, counts)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc='collect (graph)', unit='episode')
    try:
        graph = EvaluationGraph(executable_command, stop_processes, vla=None, image_size=(image_size, image_size),
                                log_dir=graph_log_dir)
        with graph:
            episodes = record_graph_episodes(graph, jobs, bags_dir, log=log, max_steps=max_steps,
                                             progress=(lambda *_: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    failed = [(t, s, r.reason) for t, s, _, r in episodes if only_successful and not r.success]
    opts = BuildOptions(bags=[str(b) for _, _, b, _ in episodes], out=str(out), force=True,
                        include_failed=not only_successful, bags_inside_out=True,
                        extra_info={'collected': 'ros graph (arm_controller, sim_node lockstep; expert as teleoperator)',
                                    **_jobs_info(tasks, jobs, layouts), 'bags_dir': str(bags_dir)})
    result = build(opts, log=lambda line: log(f'dataset: {line}'))
    by_bag = {str(Path(b).resolve()): (t, s) for t, s, b, _ in episodes}
    for bag, why in (result.info or {}).get('failed_bags', {}).items():
        t, s = by_bag.get(bag, (bag, -1))
        failed.append((t, s, why))
    if result.info is None:
        raise DatasetError('; '.join(result.errors) or f'{out}: no dataset built')
    info = dict(result.info, failed_demonstrations=failed,
                successes=sum(bool(r.success) for *_, r in episodes), attempts=len(episodes))
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info
