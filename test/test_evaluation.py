"""The evaluation core without ROS: tasks as data, seeded episodes, the scripted expert, the runner."""
from __future__ import annotations

import numpy as np
import pytest

from openvla_ros.evaluation import tasks as T
from openvla_ros.evaluation.expert import SPEED_M_PER_STEP
from openvla_ros.evaluation.policies import ExpertPolicy, shuffled_instruction
from openvla_ros.evaluation.runner import EpisodeEnv, run_episode


@pytest.fixture(scope='module')
def env():
    e = EpisodeEnv(image_size=(64, 48))
    yield e
    e.close()


def test_registry_has_the_bridge_like_tasks():
    reach = [t for t in T.TASKS.values() if t.kind == 'reach']
    assert len(reach) >= 3 and len({t.target for t in reach}) == len(reach)
    assert 'spoon_on_towel' in T.TASKS and T.TASKS['spoon_on_towel'].instruction == 'put the spoon on the towel'
    assert any(t.kind == 'place' and t.support.startswith('obj_') for t in T.TASKS.values())
    for t in T.TASKS.values():
        assert t.paraphrases and t.max_steps > 0 and t.target in t.objects


def test_every_reach_target_is_present_in_every_reach_episode():
    objects = {t.objects for t in T.TASKS.values()}
    assert len(objects) == 1, 'the instruction alone must decide: every episode shows the same objects'
    assert {T.TASKS[n].target for n in T.REACH_TASKS} <= set(next(iter(objects)))


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(T.UnknownTaskError) as err:
        T.get_task('open_the_drawer')
    for name in T.TASKS:
        assert name in str(err.value)


def test_reset_is_seeded_and_varies_with_the_seed(env):
    task = T.TASKS['reach_red_block']
    a = T.reset_episode(env.sim, task, 7)
    qpos_a = env.sim.data.qpos.copy()
    b = T.reset_episode(env.sim, task, 8)
    c = T.reset_episode(env.sim, task, 7)
    assert a == c and a != b
    np.testing.assert_array_equal(env.sim.data.qpos, qpos_a)
    for body, (x, y, yaw) in a.object_poses.items():
        p = task.placements[body]
        assert p.x_range_m[0] <= x <= p.x_range_m[1] and p.y_range_m[0] <= y <= p.y_range_m[1]
        np.testing.assert_allclose(env.sim.body_position(body)[:2], (x, y), atol=1e-9)
    with pytest.raises(ValueError, match='seed'):
        T.reset_episode(env.sim, task, -1)


def test_jittered_start_is_seeded_bounded_and_keeps_the_layout(env):
    """Demonstrations may start away from the start pose: the end effector within the jitter
    (half of it vertically), in the start orientation, the same for the same seed, and the
    seed's object layout unchanged; the expert still succeeds from there."""
    task = T.TASKS['reach_red_block']
    e = env.embodiment
    plain = run_episode(ExpertPolicy(), task, 3, env=env)
    starts = []
    for seed in (3, 3, 4):
        result = run_episode(ExpertPolicy(), task, seed, env=env, start_jitter_m=0.06)
        assert result.success
        offset = result.ee_positions[0] - e.start_pose.position
        assert np.all(np.abs(offset) <= [0.06 + 2e-3, 0.06 + 2e-3, 0.03 + 2e-3]), offset
        np.testing.assert_allclose(result.ee_rotations[0], e.start_pose.rotation, atol=0.02)
        starts.append(result.ee_positions[0])
    np.testing.assert_allclose(starts[0], starts[1])
    assert np.linalg.norm(starts[0] - starts[2]) > 1e-3
    assert np.linalg.norm(starts[0] - plain.ee_positions[0]) > 1e-3
    layout = T.reset_episode(env.sim, task, 3).object_poses
    assert env.reset(task, 3, start_jitter_m=0.06).object_poses == layout


def test_near_start_is_seeded_clear_of_the_target_and_keeps_the_layout(env):
    """Demonstrations may start with the finger tips near the target: within the radius of its
    grasp point along x and y, 1 cm to the radius above its top, the same for the same seed, the
    seed's layout unchanged; the expert still succeeds from there, in fewer steps."""
    task = T.TASKS['red_block_on_purple_block']
    plain = run_episode(ExpertPolicy(), task, 3, env=env)
    starts = []
    for seed in (3, 3, 4):
        result = run_episode(ExpertPolicy(), task, seed, env=env, near_start_m=0.05)
        assert result.success and result.steps < plain.steps + 5
        layout = T.reset_episode(env.sim, task, seed)
        grasp, top = T.grasp_point(env.sim, task.target), T.top_z(env.sim, task.target)
        tip = result.tip_positions[0]
        assert np.all(np.abs(tip[:2] - grasp[:2]) <= 0.05 + 2e-3), tip - grasp
        assert top + T.NEAR_START_ABOVE_TOP_M - 2e-3 <= tip[2] <= top + 0.05 + 2e-3, (tip[2], top)
        assert env.reset(task, seed, near_start_m=0.05).object_poses == layout.object_poses
        starts.append(tip)
    np.testing.assert_allclose(starts[0], starts[1])
    assert np.linalg.norm(starts[0] - plain.tip_positions[0]) > 0.05


def test_an_unsteady_expert_is_seeded_and_still_succeeds(env):
    """Action noise (demonstrations only): the commanded translations differ from the clean
    expert's, the same seed gives the same episode, and the expert corrects its way to the goal."""
    task = T.TASKS['reach_green_can']
    clean = run_episode(ExpertPolicy(), task, 5, env=env)
    noisy = [run_episode(ExpertPolicy(action_noise_m=0.006, seed=9), task, 5, env=env) for _ in range(2)]
    assert clean.success and all(r.success for r in noisy)
    np.testing.assert_array_equal(noisy[0].actions, noisy[1].actions)
    n = min(len(clean.actions), len(noisy[0].actions))
    assert np.abs(noisy[0].actions[:n, :3] - clean.actions[:n, :3]).max() > 1e-3
    # rotation and gripper as the clean expert's (the reach holds both)
    np.testing.assert_array_equal(noisy[0].actions[:, 3:], np.tile(clean.actions[0, 3:], (len(noisy[0].actions), 1)))
    other = run_episode(ExpertPolicy(action_noise_m=0.006, seed=10), task, 5, env=env)
    assert not np.array_equal(other.actions[:2], noisy[0].actions[:2])


def test_a_slipping_expert_lists_its_slips_and_recovers(env):
    """Slips (demonstrations only): seeded uniform moves in place of some steps, listed per
    episode so a dataset can leave them out; the expert recovers and still succeeds."""
    task = T.TASKS['red_block_on_purple_block']
    clean = run_episode(ExpertPolicy(), task, 3, env=env)
    runs = []
    for _ in range(2):
        expert = ExpertPolicy(seed=4, slip_probability=0.3, slip_m=0.02)
        runs.append((run_episode(expert, task, 3, env=env), list(expert.slips)))
    (r, slips), (again, slips_again) = runs
    assert r.success and slips and slips == slips_again
    np.testing.assert_array_equal(r.actions, again.actions)
    assert np.abs(r.actions[slips, :3]).max() <= 0.02
    assert not np.array_equal(r.actions[:len(clean.actions)], clean.actions[:len(r.actions)])
    # every step a slip: the list is the episode's own, one entry per step
    expert = ExpertPolicy(seed=1, slip_probability=1.0, slip_m=0.01)
    for seed in (3, 4):
        run_episode(expert, task, seed, env=env, max_steps=4)
        assert expert.slips == [0, 1, 2, 3]


def test_paraphrases_are_selectable(env):
    task = T.TASKS['spoon_on_towel']
    assert T.reset_episode(env.sim, task, 0).instruction == task.instruction
    assert T.reset_episode(env.sim, task, 0, paraphrase=2).instruction == task.instructions[2]
    seeded = {T.reset_episode(env.sim, task, s, paraphrase='seeded').instruction for s in range(20)}
    assert len(seeded) > 1 and seeded <= set(task.instructions)


def test_nothing_succeeds_at_the_start(env):
    for task in T.TASKS.values():
        for seed in range(5):
            T.reset_episode(env.sim, task, seed)
            assert not task.success(env.sim), (task.name, seed)


@pytest.mark.parametrize('name', list(T.TASKS))
def test_expert_succeeds_smoothly_within_the_limits(env, name):
    task = T.TASKS[name]
    r = run_episode(ExpertPolicy(), task, 3, env=env)
    assert r.success and r.reason == 'success', r.summary()
    assert not r.refusals, r.refusals
    assert np.all(np.abs(r.actions[:, :3]) <= SPEED_M_PER_STEP + 1e-12)
    assert np.all(r.actions[:, 3:6] == 0.0) and set(np.unique(r.actions[:, 6])) <= {0.0, 1.0}
    assert r.ee_positions.shape == (r.steps + 1, 3) and r.actions.shape == (r.steps, 7)
    assert r.sim_time_s == pytest.approx(r.steps * env.embodiment.control_period_s, abs=1e-6)


def test_same_seed_gives_identical_episodes(env):
    a = run_episode(ExpertPolicy(), 'red_block_on_purple_block', 11, env=env)
    b = run_episode(ExpertPolicy(), 'red_block_on_purple_block', 11, env=EpisodeEnv(image_size=(64, 48)))
    assert a.steps == b.steps and a.success == b.success
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.ee_positions, b.ee_positions)


def test_policy_errors_end_the_episode_with_the_reason(env):
    class Broken:
        uses_image = True

        def predict(self, image, instruction, unnorm_key=None):
            assert image.shape == (48, 64, 3)
            raise ConnectionError('server went away')

    r = run_episode(Broken(), 'reach_green_can', 0, env=env)
    assert not r.success and r.steps == 0 and 'server went away' in r.reason


def test_shuffled_instruction_names_another_target():
    for task in T.TASKS.values():
        other = shuffled_instruction(task)
        assert other != task.instruction
        assert T.TASKS[next(n for n, t in T.TASKS.items() if t.instruction == other)].target != task.target


@pytest.mark.slow
@pytest.mark.parametrize('name', list(T.TASKS))
def test_expert_reaches_95_percent_over_50_seeds(env, name):
    results = [run_episode(ExpertPolicy(), name, seed, env=env) for seed in range(50)]
    failures = [r.summary() for r in results if not r.success]
    assert len(failures) <= 2, failures


def test_wilson_interval_matches_known_values():
    from openvla_ros.evaluation.stats import wilson_interval
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
