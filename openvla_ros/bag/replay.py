"""``openvla-bag replay-actions``: a bag's commanded actions, open loop, through the safety core into the simulator.

The bag's actions (on the control-period grid of :func:`openvla_ros.learning.from_bags.resample`:
step k is the command in effect at ``t0 + k * control_period_s``) are handed one per control
period to the evaluation's lockstep episode runner (:func:`openvla_ros.evaluation.runner.run_episode`:
arm_controller's :class:`SafetyController` and sim_node's :class:`WorkcellSim`, without DDS),
starting from the joint state recorded at the first action. The reached end-effector trajectory
is compared with the recorded one (forward kinematics of the recorded joint states on the same
grid): max/mean position error in metres, max rotation error, refused actions. A small error says
the bag's actions, its joint states and the simulator agree (a bag from the simulator replays
to within millimetres); a large one points at lag, refusals or a model that differs from the arm.

The replay's controller starts with its target on the measured pose (as after ``~/reset_target``);
a recording taken mid-run continues from the recorded controller's target, which may have run
away from the arm. ``recorded_target_offset_m`` (when ``/arm_controller/target_pose`` was
recorded) says by how much, and so how much of a large error is that start.

Writes ``replay.json`` and ``replay.png`` into ``--out`` (default ``<bag>_replay``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openvla_ros import defaults
from openvla_ros.bag.storage import BagError, check_not_input

REPORT_FILE = 'replay.json'
PLOT_FILE = 'replay.png'
DEFAULT_TASK = 'reach_red_block'     # the scene the actions are replayed in (objects only matter on contact)


@dataclass
class ReplayOptions:
    bag: str
    out: str | None = None
    episode: int = 0
    task: str | None = None
    seed: int | None = None
    embodiment: str = defaults.DEFAULT_EMBODIMENT
    force: bool = False
    json: bool = False


class RecordedActions:
    """A policy (``predict`` API of :mod:`openvla_ros.evaluation.policies`) that gives the recorded
    actions in order and, at the start, puts the arm where the recording started."""

    model_id = 'recorded-actions'
    uses_image = False

    def __init__(self, actions: np.ndarray, start_joints: dict[str, float], keep_scene: bool, seed: int | None):
        self.actions = np.asarray(actions, np.float64)
        self.start_joints = start_joints
        self.keep_scene = keep_scene
        self.seed = seed
        self.start_note = ''
        self._i = 0

    def start_episode(self, env, task) -> None:
        self._i = 0
        now = env.joint_state()
        off = max(abs(now[n] - v) for n, v in self.start_joints.items() if n in now)
        if self.keep_scene and off < 1e-3:
            self.start_note = f'the task start pose matches the recorded start ({off:.2e} rad)'
            return
        # the recorded start: the arm as recorded, the objects at their seeded (or nominal) poses
        env.sim.reset(seed=self.seed, joint_positions={n: v for n, v in self.start_joints.items()
                                                       if n in env.sim.joint_names})
        self.start_note = 'the arm reset to the recorded start joints' + (
            f' (the task layout was replaced: the recorded start is {off:.3f} rad from the task start)'
            if self.keep_scene else '')

    def predict(self, image, instruction: str, unnorm_key: str | None = None):
        from openvla_ros.engine.api import PredictionResult

        action = self.actions[self._i]
        self._i += 1
        return PredictionResult(action=action.copy(), normalized_action=action.copy(),
                                action_token_ids=np.zeros(len(action), dtype=np.int64), unnorm_key=unnorm_key or '')


def replay(opts: ReplayOptions) -> dict:
    """Replay the bag's actions; returns the report (also written to ``--out``)."""
    from openvla_ros.control.embodiment import load_embodiment
    from openvla_ros.evaluation.runner import EpisodeEnv, run_episode
    from openvla_ros.learning.dataset import DatasetError
    from openvla_ros.learning.from_bags import read_bag, resample

    bag = Path(opts.bag)
    out = Path(opts.out) if opts.out else bag.with_suffix('').parent / f'{bag.with_suffix("").name}_replay'
    check_not_input(out, [bag], '--out')
    if out.exists() and not out.is_dir():
        raise BagError(f'--out {out} exists and is not a directory')
    existing = [p for p in (out / REPORT_FILE, out / PLOT_FILE) if p.exists()]
    if existing and not opts.force:
        raise BagError(f'{existing[0]} already exists; pass --force to replace it')
    if opts.task is not None:
        from openvla_ros.evaluation.tasks import UnknownTaskError, get_task
        try:
            get_task(opts.task)
        except UnknownTaskError as exc:
            raise BagError(str(exc)) from None
    embodiment = load_embodiment(opts.embodiment)
    env = EpisodeEnv(embodiment=embodiment, image_size=(32, 32))
    try:
        try:
            recordings = read_bag(bag, images=False, instruction='')
            if not 0 <= opts.episode < len(recordings):
                raise DatasetError(f'{bag}: episode {opts.episode} requested, the bag has {len(recordings)}')
            rec = recordings[opts.episode]
            rec.instruction = rec.instruction or 'replay'
            r = resample(rec, env.embodiment, env.kinematics)
        except DatasetError as exc:
            raise BagError(str(exc)) from None
        start = dict(zip(r.joint_names, r.joint_positions[0].tolist()))
        policy = RecordedActions(r.actions, start, keep_scene=opts.task is not None, seed=opts.seed)
        try:
            result = run_episode(policy, opts.task or DEFAULT_TASK, opts.seed if opts.seed is not None else 0,
                                 max_steps=r.steps, env=env, stop_on_success=False)
        except ValueError as exc:   # e.g. recorded start joints outside the model's ranges
            raise BagError(f'{r.source}: cannot start the replay: {exc}') from None
    finally:
        env.close()
    if result.steps != r.steps:
        raise BagError(f'{bag}: the replay stopped after {result.steps} of {r.steps} steps ({result.reason})')
    err = np.linalg.norm(result.ee_positions - r.ee_positions, axis=1)
    rel = np.einsum('tij,tkj->tik', result.ee_rotations, r.ee_rotations)
    rot_err = np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0))
    report = {
        'bag': str(bag), 'source': r.source, 'steps': r.steps, 'control_period_s': r.control_period_s,
        'embodiment': opts.embodiment, 'task_scene': opts.task or DEFAULT_TASK, 'seed': opts.seed,
        'start': policy.start_note, 'start_joints': start,
        'position_error_m': {'max': float(err.max()), 'mean': float(err.mean()), 'final': float(err[-1])},
        'rotation_error_rad': {'max': float(rot_err.max()), 'mean': float(rot_err.mean())},
        'recorded_target_offset_m': _target_offset(bag, r),
        'refused_actions': len(result.refusals),
        'refusals': [{'step': s, 'reason': why} for s, why in result.refusals[:20]],
        'per_step_position_error_m': err.tolist(),
    }
    out.mkdir(parents=True, exist_ok=True)
    plot = _plot(r.times_s, r.ee_positions, result.ee_positions, err, out / PLOT_FILE, str(bag))
    report['plot'] = str(plot)
    tmp = out / f'.{REPORT_FILE}.partial'
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / REPORT_FILE)
    report['report'] = str(out / REPORT_FILE)
    return report


def _target_offset(bag: Path, r) -> float | None:
    """How far the recorded controller's commanded target (``/arm_controller/target_pose`` at
    the first step, when recorded) was from the measured end effector. The replay's controller
    starts with its target on the measured pose, as after ``~/reset_target``; a recording taken
    mid-run whose target had run away from the arm (refusals, clipping, lag) composes the same
    deltas onto another target, and the replay diverges by about this much."""
    from openvla_ros.bag.storage import BagSource, project_typestore
    from openvla_ros.stamps import stamp_to_ns

    store = project_typestore()
    best = None
    with BagSource(bag) as src:
        info = src.topics.get(defaults.TARGET_POSE_TOPIC)
        if info is None or info.msgtype != 'geometry_msgs/msg/PoseStamped':
            return None
        for m in src.messages([defaults.TARGET_POSE_TOPIC]):
            msg = store.deserialize_cdr(m.raw, info.msgtype)
            if stamp_to_ns(msg.header.stamp) <= r.t0_ns:
                p = msg.pose.position
                best = np.array([p.x, p.y, p.z])
    return None if best is None else float(np.linalg.norm(best - r.ee_positions[0]))


def _plot(t, recorded, replayed, err, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    for i, name in enumerate('xyz'):
        axes[i].plot(t, recorded[:, i], 'k-', label='recorded')
        axes[i].plot(t, replayed[:, i], 'C1--', label='replayed')
        axes[i].set_ylabel(f'{name} (m)')
    axes[0].legend(loc='best')
    axes[3].plot(t, err * 1000, 'C3-')
    axes[3].set_ylabel('error (mm)')
    axes[3].set_xlabel('time since the first action (s)')
    fig.suptitle(f'end-effector: recorded vs replayed actions\n{title}', fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f'.{path.name}.partial.png')
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def summary_line(report: dict) -> str:
    p, rot = report['position_error_m'], report['rotation_error_rad']
    return (f'{report["source"]}: {report["steps"]} steps replayed, position error max {p["max"] * 1000:.2f} mm / '
            f'mean {p["mean"] * 1000:.2f} mm, rotation error max {rot["max"]:.4f} rad, '
            f'{report["refused_actions"]} refused; {report["report"]}, {report["plot"]}')
