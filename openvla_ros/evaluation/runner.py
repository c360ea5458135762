"""One evaluation episode in process, in lockstep: policy → SafetyController → WorkcellSim.

The same parts the ROS graph runs (vla_node's policy API, arm_controller's safety core, sim_node's
simulator core) without DDS. Each step is the gym ``env.step`` contract:

1. observe the state at sim time t (joint states to the controller, a camera image if the
   policy needs one, stamped t);
2. ask the policy for an action (physics waits: no sim time passes while it thinks);
3. hand the action to the controller at time t, exactly as arm_controller does on reception;
   a command becomes a joint trajectory for the simulator, a refusal is recorded;
4. advance physics by exactly one control period, then evaluate the task's success predicate.

The episode ends on success (reason ``success``), after ``max_steps`` (``max_steps``) or when the
policy fails (``policy error: ...``, a failed episode with its reason, never a crash of the run).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from openvla_ros.control.embodiment import Embodiment
from openvla_ros.control.kinematics import ArmKinematics
from openvla_ros.control.safety import ActionInput, Command, SafetyController
from openvla_ros.evaluation import tasks as T
from openvla_ros.sim.workcell import CAMERA_NAME, WorkcellSim

DEFAULT_IMAGE_SIZE = (224, 224)      # (width, height); the policy's preprocessing resizes anyway


@dataclass
class EpisodeResult:
    task: str
    seed: int
    instruction: str
    success: bool
    steps: int
    reason: str                                   # 'success', 'max_steps', 'policy error: ...'
    ee_positions: np.ndarray                      # (steps + 1, 3) end-effector positions, m
    ee_rotations: np.ndarray                      # (steps + 1, 3, 3)
    tip_positions: np.ndarray                     # (steps + 1, 3) finger-tip positions, m
    actions: np.ndarray                           # (steps, 7) as the policy gave them
    gripper: np.ndarray                           # (steps + 1,) measured opening fraction
    refusals: list = field(default_factory=list)  # (step, reason) of actions the controller refused
    frames: list = field(default_factory=list)    # RGB frames when recorded
    sim_time_s: float = 0.0
    wall_time_s: float = 0.0
    policy_time_s: float = 0.0

    def summary(self) -> dict:
        return {'task': self.task, 'seed': self.seed, 'instruction': self.instruction,
                'success': self.success, 'steps': self.steps, 'reason': self.reason,
                'refused_actions': len(self.refusals), 'sim_time_s': round(self.sim_time_s, 6),
                'wall_time_s': round(self.wall_time_s, 3), 'policy_time_s': round(self.policy_time_s, 3)}


def uses_image(policy) -> bool:
    return bool(getattr(policy, 'uses_image', True))


def timed_predict(policy, image, text: str, unnorm_key, then: Callable[[np.ndarray], None] | None = None
                  ) -> tuple[np.ndarray | None, str | None, float]:
    """One policy step, timed: ``(action, None, seconds)``, or ``(None, 'policy error: ...',
    seconds)`` when ``policy.predict`` (or ``then(action)``, run inside the same timing and
    handling) raises; any policy failure ends the episode, never the run."""
    p0 = time.perf_counter()
    try:
        action = np.asarray(policy.predict(image, text, unnorm_key).action, dtype=float)
        if then is not None:
            then(action)
    except Exception as exc:  # noqa: BLE001 - any policy failure ends this episode, not the run
        return None, f'policy error: {type(exc).__name__}: {exc}', time.perf_counter() - p0
    return action, None, time.perf_counter() - p0


class EpisodeEnv:
    """The simulator + controller pair an episode runs in (reused across episodes)."""

    def __init__(self, embodiment: Embodiment | None = None, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                 camera: str = CAMERA_NAME):
        e = embodiment or T._embodiment()
        # the episode drives the controller directly: enabled from the start, like `~/enable true`
        self.embodiment = e.with_overrides(start_enabled=True)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.camera = camera
        self.sim = WorkcellSim(max_image_size=self.image_size)
        self.kinematics = ArmKinematics(self.embodiment)
        self.controller: SafetyController | None = None

    def reset(self, task: T.Task, seed: int, paraphrase=None, start_jitter_m: float = 0.0,
              near_start_m: float = 0.0) -> T.EpisodeStart:
        joints = None
        if near_start_m > 0:
            joints = T.near_target_start(self.sim, self.kinematics, task, seed, near_start_m, self.embodiment)
        elif start_jitter_m > 0:
            joints = T.jittered_start(self.sim, self.kinematics, seed, start_jitter_m, self.embodiment)
        start = T.reset_episode(self.sim, task, seed, paraphrase=paraphrase, embodiment=self.embodiment,
                                joint_positions=joints)
        self.controller = SafetyController(self.embodiment, self.kinematics)
        return start

    def joint_state(self) -> dict[str, float]:
        return dict(zip(self.sim.joint_names, self.sim.joint_positions().tolist()))

    def render(self) -> np.ndarray:
        return self.sim.render(self.camera, *self.image_size)

    def apply(self, action, stamp_s: float):
        """The controller's answer to ``action`` at sim time ``stamp_s``; a command starts its
        joint trajectory in the simulator as sim_node does on reception."""
        result = self.controller.on_action(ActionInput(tuple(float(v) for v in action), stamp_s), stamp_s)
        if isinstance(result, Command):
            self.follow(result)
        return result

    def follow(self, cmd: Command) -> None:
        e = self.embodiment
        if cmd.joint_positions is None:
            return
        names = list(e.arm_joints)
        positions = [float(v) for v in cmd.joint_positions]
        if e.gripper is not None and e.gripper.output == 'trajectory':
            names.append(e.gripper.joint)
            positions.append(float(cmd.gripper_position_m))
        self.sim.follow_trajectory(names, [(positions, float(cmd.duration_s))])

    def close(self) -> None:
        self.sim.close()


def run_episode(policy, task: T.Task | str, seed: int, *, max_steps: int | None = None,
                lockstep: bool = True, record: bool = False, unnorm_key: str | None = None,
                env: EpisodeEnv | None = None, paraphrase=None, instruction: str | None = None,
                stop_on_success: bool = True, start_jitter_m: float = 0.0,
                near_start_m: float = 0.0) -> EpisodeResult:
    """Run one seeded episode of ``task`` with ``policy`` (``predict(image, instruction,
    unnorm_key)`` returning an object with ``.action``). ``record``: keep the camera frames.
    ``instruction`` overrides the task's (the instruction-shuffled control). ``start_jitter_m``:
    start the arm away from its start pose (:func:`~openvla_ros.evaluation.tasks.jittered_start`;
    demonstrations only, evaluations start from the start pose); ``near_start_m``: instead, start
    with the finger tips near the target (:func:`~openvla_ros.evaluation.tasks.near_target_start`;
    demonstrations only)."""
    if not lockstep:
        raise ValueError('the in-process runner is lockstep only; real-time runs go through the ROS graph (--graph)')
    task = T.get_task(task) if isinstance(task, str) else task
    own_env = env is None
    env = env or EpisodeEnv()
    try:
        return _run(policy, task, seed, max_steps or task.max_steps, record, unnorm_key, env, paraphrase,
                    instruction, stop_on_success, start_jitter_m, near_start_m)
    finally:
        if own_env:
            env.close()


def _run(policy, task, seed, max_steps, record, unnorm_key, env, paraphrase, instruction, stop_on_success,
         start_jitter_m, near_start_m):
    wall0 = time.perf_counter()
    start = env.reset(task, seed, paraphrase=paraphrase, start_jitter_m=start_jitter_m, near_start_m=near_start_m)
    text = instruction if instruction is not None else start.instruction
    sim, e = env.sim, env.embodiment
    if hasattr(policy, 'start_episode'):
        policy.start_episode(env, task)
    need_image = uses_image(policy) or record
    t0 = sim.time_s
    ee_p, ee_r, tips, grip, actions, refusals, frames = [], [], [], [], [], [], []

    def observe() -> bool:
        obs = T.observe(sim, task, e)
        ee_p.append(obs.ee_position)
        ee_r.append(obs.ee_rotation)
        tips.append(obs.tip_position)
        grip.append(obs.gripper)
        return obs.success

    observe()
    reason, success, steps, policy_s = 'max_steps', False, 0, 0.0
    for step in range(max_steps):
        now = sim.time_s
        env.controller.update_joints(env.joint_state(), now)
        image = env.render() if need_image else None
        if record:
            frames.append(image)
        action, error, seconds = timed_predict(policy, image, text, unnorm_key)
        policy_s += seconds
        if error is not None:
            reason = error
            break
        actions.append(action)
        result = env.apply(action, now)
        if not isinstance(result, Command):
            refusals.append((step, result.reason))
        sim.advance(e.control_period_s)
        env.controller.update_joints(env.joint_state(), sim.time_s)
        env.controller.tick(sim.time_s)
        steps = step + 1
        if observe():
            success, reason = True, 'success'
            if stop_on_success:
                break
    if record and (not frames or steps == len(frames)):
        frames.append(env.render())
    return EpisodeResult(
        task=task.name, seed=int(seed), instruction=text, success=success, steps=steps, reason=reason,
        ee_positions=np.array(ee_p), ee_rotations=np.array(ee_r), tip_positions=np.array(tips),
        actions=np.array(actions).reshape(-1, 7) if actions else np.zeros((0, 7)),
        gripper=np.array(grip), refusals=refusals, frames=frames, sim_time_s=sim.time_s - t0,
        wall_time_s=time.perf_counter() - wall0, policy_time_s=policy_s)


__all__ = ['EpisodeResult', 'EpisodeEnv', 'run_episode', 'timed_predict', 'DEFAULT_IMAGE_SIZE']
