"""Reference policies for the evaluation, behind the same ``predict`` API as a checkpoint.

- ``expert``: the scripted expert (:mod:`.expert`), the upper bound; it reads the simulator state
  (``uses_image = False``), so the runner renders nothing for it unless asked to record;
- ``random``: the tiny untrained OpenVLA checkpoint (the lower bound, see :func:`tiny_checkpoint`);
- ``shuffled``: any policy given another task's instruction (:class:`ShuffledInstruction`), which
  shows whether the language matters.
"""
from __future__ import annotations

import numpy as np

from openvla_ros.engine.api import PredictionResult
from openvla_ros.evaluation import tasks as T
from openvla_ros.evaluation.expert import ScriptedExpert

REFERENCE_POLICIES = ('expert', 'random', 'shuffled')


class ExpertPolicy:
    """The scripted expert as a policy; the runner calls :meth:`start_episode` before each episode."""

    model_id = 'scripted-expert'
    uses_image = False

    def __init__(self, action_noise_m: float = 0.0, seed: int = 0, slip_probability: float = 0.0,
                 slip_m: float = 0.0):
        self._sim = None
        self._expert: ScriptedExpert | None = None
        # a teleoperator's unsteady hand: Gaussian noise (standard deviation per axis, metres)
        # added to each commanded translation; the expert corrects from wherever that leads
        self.action_noise_m = float(action_noise_m)
        self._rng = np.random.default_rng(seed)
        # a teleoperator's slips: with this probability a step's translation is replaced by a
        # uniform one of up to slip_m per axis (the gripper command stays the expert's); the expert
        # recovers from where it leads. ``slips`` lists the episode's slipped steps, so that a
        # dataset can leave them out and keep only the recoveries (DART-style demonstrations).
        self.slip_probability = float(slip_probability)
        self.slip_m = float(slip_m)
        self._slip_rng = np.random.default_rng([seed, 2])
        self.slips: list[int] = []
        self._step = 0

    def start_episode(self, env, task: T.Task) -> None:
        self._sim = env.sim
        self._expert = ScriptedExpert(task, env.embodiment)
        self.slips, self._step = [], 0

    def predict(self, image, instruction: str, unnorm_key: str | None = None) -> PredictionResult:
        if self._expert is None:
            raise RuntimeError('the expert needs start_episode(env, task) first')
        action = self._expert.act(self._sim)
        if self.action_noise_m > 0:
            action = action.copy()
            action[:3] += self._rng.normal(0.0, self.action_noise_m, 3)
        if self.slip_probability > 0 and self._slip_rng.random() < self.slip_probability:
            action = action.copy()
            action[:3] = self._slip_rng.uniform(-self.slip_m, self.slip_m, 3)
            self.slips.append(self._step)
        self._step += 1
        return PredictionResult(action=action, normalized_action=action.copy(),
                                action_token_ids=np.zeros(len(action), dtype=np.int64), unnorm_key=unnorm_key or '')

    def unnorm_keys(self) -> dict[str, int]:
        return {}

    def describe(self) -> dict:
        return {'model_id': self.model_id}

    def close(self) -> None:
        pass


def shuffled_instruction(task: T.Task, tasks: list[str] | None = None) -> str:
    """Another task's instruction, chosen deterministically: the next task in the registry order
    (among ``tasks`` when given) whose target differs, so the control asks for something else."""
    names = list(tasks or T.TASKS)
    if task.name in names:
        names = names[names.index(task.name) + 1:] + names[:names.index(task.name)]
    for name in names + list(T.TASKS):
        other = T.TASKS[name]
        if other.target != task.target:
            return other.instruction
    raise ValueError(f'no task with another target than {task.name}')
