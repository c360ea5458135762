"""openvla-eval --graph: episodes through vla_node → arm_controller → sim_node (lockstep), each a
process over loopback DDS, against the in-process runner on the same task and seed.

Tolerance: the actions are compared exactly (the same image bytes, instruction and engine options
reach the same engine). The end-effector states agree to 1e-9 m: joint positions travel as
float64, but sim_node's clock does not restart at 0 with each episode as the in-process
simulator's does, and the trajectory follower samples at (sim time - start time), whose float
rounding depends on the magnitude of the sim time (observed differences ~1e-15 m); a trajectory
duration also travels in whole nanoseconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from openvla_ros import bringup, defaults, runtime_env

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
UNNORM_KEY = 'bridge_orig'
STATE_ATOL = 1e-9


@pytest.fixture(scope='module')
def policy_options():
    from openvla_ros.engine.api import PolicyOptions

    return PolicyOptions()


@pytest.fixture(scope='module')
def graph(tiny_checkpoint, policy_options, tmp_path_factory):
    """One node set for the module: vla_node on the tiny checkpoint, arm_controller, sim_node."""
    from openvla_ros.cli import bringup as bringup_cli
    from openvla_ros.evaluation.graph import EvaluationGraph, vla_parameters

    g = EvaluationGraph(bringup_cli.executable_command, bringup_cli.stop_processes,
                        vla=vla_parameters(model_path=tiny_checkpoint, options=policy_options,
                                           unnorm_key=UNNORM_KEY),
                        log_dir=tmp_path_factory.mktemp('graph_logs'))
    g.start()
    try:
        yield g
    finally:
        g.close()


@pytest.fixture(scope='module')
def tiny_policy(tiny_checkpoint, policy_options):
    import torch

    from openvla_ros.engine.policy import load_policy

    torch.set_num_threads(1)
    policy = load_policy(tiny_checkpoint, policy_options)
    yield policy
    policy.close()


def _assert_same_episode(a, b, exact_actions: bool = True):
    assert (a.task, a.seed, a.instruction, a.steps, a.success, a.reason) == \
        (b.task, b.seed, b.instruction, b.steps, b.success, b.reason)
    assert [r for r, _ in a.refusals] == [r for r, _ in b.refusals]
    assert a.actions.shape == b.actions.shape == (a.steps, 7)
    if exact_actions:
        assert np.array_equal(a.actions, b.actions)
    for name in ('ee_positions', 'ee_rotations', 'tip_positions', 'gripper'):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.shape[0] == a.steps + 1, name
        np.testing.assert_allclose(x, y, rtol=0, atol=STATE_ATOL, err_msg=name)
    assert a.sim_time_s == pytest.approx(b.sim_time_s, abs=1e-6)


@pytest.mark.parametrize('task, seed, steps', [('reach_purple_block', 11, 4), ('spoon_on_towel', 5, 3)])
def test_graph_gives_the_in_process_actions_and_trajectory(graph, tiny_policy, task, seed, steps):
    from openvla_ros.evaluation.graph import VLA_NODE_POLICY
    from openvla_ros.evaluation.runner import run_episode

    inproc = run_episode(tiny_policy, task, seed, max_steps=steps, unnorm_key=UNNORM_KEY)
    through = graph.run_episode(VLA_NODE_POLICY, task, seed, max_steps=steps)
    assert inproc.reason == 'max_steps' and inproc.steps == steps     # the model really acted
    assert np.abs(inproc.actions[:, :3]).max() > 0
    _assert_same_episode(through, inproc)
    assert through.policy_time_s > 0


def test_graph_runs_are_deterministic(graph):
    from openvla_ros.evaluation.graph import VLA_NODE_POLICY

    first = graph.run_episode(VLA_NODE_POLICY, 'reach_red_block', 3, max_steps=4, record=True)
    second = graph.run_episode(VLA_NODE_POLICY, 'reach_red_block', 3, max_steps=4, record=True)
    _assert_same_episode(first, second)
    assert {k: v for k, v in first.summary().items() if not k.endswith('time_s')} == \
        {k: v for k, v in second.summary().items() if not k.endswith('time_s')}
    # the frames the policy saw: one per state, at the evaluation camera size
    assert len(first.frames) == first.steps + 1
    assert first.frames[0].shape == (graph.image_size[1], graph.image_size[0], 3)
    assert all(np.array_equal(x, y) for x, y in zip(first.frames, second.frames))


def test_expert_through_the_graph_as_a_teleoperator(graph):
    """The expert reads a mirror of the workcell set from ~/task_state and publishes actions into
    arm_controller; it solves the episode the in-process expert solves. Its actions agree only
    closely: the mirror's kinematics come from the published qpos, in process the expert reads
    the physics' own (one physics step older)."""
    from openvla_ros.evaluation.policies import ExpertPolicy
    from openvla_ros.evaluation.runner import run_episode

    inproc = run_episode(ExpertPolicy(), 'reach_green_can', 1002, max_steps=20)
    through = graph.run_episode(ExpertPolicy(), 'reach_green_can', 1002, max_steps=20)
    assert inproc.success and through.success
    assert through.steps == inproc.steps and through.refusals == []
    np.testing.assert_allclose(through.actions, inproc.actions, rtol=0, atol=1e-3)
    np.testing.assert_allclose(through.ee_positions, inproc.ee_positions, rtol=0, atol=1e-3)


class _ClimbAndTwist:
    """A state-reading policy with a fixed action (up and rolling): after two steps the IK fails
    and arm_controller refuses, so the refusal path (sim_node's ~/step) is exercised."""

    uses_image = False

    def predict(self, image, instruction, unnorm_key=None):
        from openvla_ros.engine.api import PredictionResult

        a = np.array([0.0, 0.0, 0.05, 0.25, 0.25, 0.0, 1.0])
        return PredictionResult(action=a, normalized_action=a, action_token_ids=np.zeros(7, dtype=np.int64),
                                unnorm_key='')


def test_refused_actions_are_steps_through_the_graph_too(graph):
    from openvla_ros.evaluation.runner import run_episode

    inproc = run_episode(_ClimbAndTwist(), 'reach_red_block', 4, max_steps=5)
    through = graph.run_episode(_ClimbAndTwist(), 'reach_red_block', 4, max_steps=5)
    assert [s for s, _ in inproc.refusals] == [2, 3, 4]
    assert through.refusals == inproc.refusals          # same steps, the controller's own reasons
    _assert_same_episode(through, inproc)


class _StallingExpert:
    """The expert, but before its first action sim_node's process is stopped (SIGSTOP) for
    ``stall_s``, as a loaded machine can starve it, and continued only after the action is out:
    the action reaches arm_controller with joint states ``stall_s`` old on the steady clock."""

    uses_image = False

    def __init__(self, pid: int, stall_s: float):
        from openvla_ros.evaluation.policies import ExpertPolicy

        self._expert, self._pid, self._stall_s, self._steps = ExpertPolicy(), pid, stall_s, 0
        self.resumed = threading.Event()

    def start_episode(self, env, task):
        self._expert.start_episode(env, task)

    def predict(self, image, instruction, unnorm_key=None):
        result = self._expert.predict(image, instruction, unnorm_key)
        if self._steps == 0:
            os.kill(self._pid, signal.SIGSTOP)
            try:
                time.sleep(self._stall_s)
            finally:
                threading.Timer(0.5, self._resume).start()
        self._steps += 1
        return result

    def _resume(self):
        os.kill(self._pid, signal.SIGCONT)
        self.resumed.set()


def test_a_starved_simulator_does_not_refuse_an_evaluation_action(graph):
    """On a loaded machine sim_node's paused re-publication of the joint states can lag (1.7 s was
    seen); the evaluation graph bounds their steady-clock age at LOCKSTEP_MAX_JOINT_STATE_AGE_S
    instead of the embodiment's 0.5 s, so the episode is the in-process one (lockstep: the sim
    time, on which the other bound runs, stands while paused)."""
    from openvla_ros.evaluation.graph import LOCKSTEP_MAX_JOINT_STATE_AGE_S
    from openvla_ros.evaluation.policies import ExpertPolicy
    from openvla_ros.evaluation.runner import run_episode

    stall_s = 1.2
    assert graph.embodiment.max_joint_state_age_s < stall_s < LOCKSTEP_MAX_JOINT_STATE_AGE_S
    controller = [s for s in graph.specs() if s.name == defaults.ARM_CONTROLLER_NODE][0]
    assert controller.param_values()['max_joint_state_age_s'] == LOCKSTEP_MAX_JOINT_STATE_AGE_S
    policy = _StallingExpert(graph.pid(defaults.SIM_NODE), stall_s)
    try:
        through = graph.run_episode(policy, 'reach_green_can', 1002, max_steps=20)
    finally:
        if not policy.resumed.wait(5.0):
            os.kill(graph.pid(defaults.SIM_NODE), signal.SIGCONT)
    inproc = run_episode(ExpertPolicy(), 'reach_green_can', 1002, max_steps=20)
    assert through.refusals == [] and through.success and through.steps == inproc.steps
    np.testing.assert_allclose(through.ee_positions, inproc.ee_positions, rtol=0, atol=1e-3)


def test_cli_graph_run_ci_sized(tiny_checkpoint, tmp_path):
    """openvla-eval --graph: tiny model, 2 tasks x 3 episodes; the summary of the shared writer."""
    out = tmp_path / 'eval'
    tasks = ['reach_red_block', 'spoon_on_towel']
    r = subprocess.run([sys.executable, '-m', 'openvla_ros.cli.evaluate', '--graph', '--checkpoint',
                        str(tiny_checkpoint), '--unnorm-key', UNNORM_KEY, '--tasks', ','.join(tasks),
                        '--episodes', '3', '--seed', '20', '--max-steps', '3', '--no-video',
                        '--output', str(out)], cwd=ROOT, env=runtime_env.loopback_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['meta']['path'].startswith('ROS graph')
    per_task = summary['results']['model']
    assert set(per_task) == set(tasks)
    for task in tasks:
        assert per_task[task]['episodes'] == 3
    rows = [json.loads(line) for line in (out / 'episodes.jsonl').read_text().splitlines()]
    assert sorted((row['task'], row['seed']) for row in rows) == sorted((t, s) for t in tasks for s in (20, 21, 22))
    assert all(row['steps'] == 3 and row['reason'] == 'max_steps' for row in rows)
    assert (out / 'graph_logs' / f'{defaults.SIM_NODE}.log').is_file()


def test_lockstep_launch_argument_reaches_sim_node():
    """The lockstep argument is part of the bring-up description (so openvla.launch.py and
    sim.launch.py declare it) and becomes sim_node's lockstep parameter."""
    assert bringup.ARGUMENTS_BY_NAME['lockstep'].default == 'false'
    for value, expected in (('true', True), ('false', False)):
        sim = [s for s in bringup.node_specs({'sim': 'true', 'lockstep': value}) if s.name == defaults.SIM_NODE][0]
        assert sim.param_values()['lockstep'] is expected
    with pytest.raises(ValueError, match='lockstep'):
        bringup.node_specs({'lockstep': 'yes'})
