"""Bridge labels from reached states, the idle filter, statistics and the dataset files."""
import json

import numpy as np
import pytest

from openvla_ros.control.delta import StepLimits, apply_bridge_delta
from openvla_ros.control.geometry import Pose, rotation_from_static_xyz
from openvla_ros.learning.dataset import (DatasetError, Episode, compute_statistics, finish_dataset,
                                          iter_episodes, summary, write_episode)
from openvla_ros.learning.labels import LabelError, bridge_labels, idle_mask

LIMITS = StepLimits(0.05, 0.25, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def test_labels_invert_the_controllers_delta_integration():
    rng = np.random.default_rng(0)
    pose = Pose(np.array([0.3, 0.0, 0.2]), rotation_from_static_xyz(0.1, -0.2, 0.3))
    actions = np.column_stack([rng.uniform(-0.02, 0.02, (20, 3)), rng.uniform(-0.1, 0.1, (20, 3)),
                               rng.integers(0, 2, 20)])
    positions, rotations = [pose.position], [pose.rotation]
    for a in actions:
        pose = apply_bridge_delta(pose, a, LIMITS).target
        positions.append(pose.position)
        rotations.append(pose.rotation)
    gripper = np.concatenate([[1.0], actions[:, 6]])
    labels = bridge_labels(np.array(positions), np.array(rotations), gripper)
    np.testing.assert_allclose(labels, actions, atol=1e-9)


def test_labels_refuse_short_or_inconsistent_states():
    with pytest.raises(LabelError, match='at least two'):
        bridge_labels(np.zeros((1, 3)), np.eye(3)[None], np.ones(1))
    with pytest.raises(LabelError, match='shapes'):
        bridge_labels(np.zeros((3, 3)), np.stack([np.eye(3)] * 2), np.ones(3))


def test_idle_runs_longer_than_the_count_are_dropped():
    move = [0.01, 0, 0, 0, 0, 0, 1.0]
    still = [0, 0, 0, 0, 0, 0, 1.0]
    actions = np.array([move] + [still] * 5 + [move])
    np.testing.assert_array_equal(idle_mask(actions, keep_steps=2),
                                  [True, True, True, False, False, False, True])
    close = [0, 0, 0, 0, 0, 0, 0.0]
    assert idle_mask(np.array([still, still, still, close]), keep_steps=0).tolist() == \
        [False, False, False, True]


def test_statistics_match_upstreams_format_and_refuse_degenerate_dimensions():
    rng = np.random.default_rng(1)
    a = np.column_stack([rng.normal(size=(100, 6)), rng.integers(0, 2, 100)])
    stats = compute_statistics(a, 4)
    assert set(stats['action']) == {'mean', 'std', 'max', 'min', 'q01', 'q99', 'mask'}
    assert stats['action']['mask'] == [True] * 6 + [False]
    assert stats['num_transitions'] == 100 and stats['num_trajectories'] == 4
    np.testing.assert_allclose(stats['action']['q01'], np.quantile(a, 0.01, axis=0))
    a[:, 2] = 0.5
    with pytest.raises(DatasetError, match=r'q01 == q99 in dimension\(s\) \[2\]'):
        compute_statistics(a, 4)


def test_dataset_round_trip_and_bad_episode_keeps_what_was_written(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(2):
        write_episode(tmp_path, i, Episode(rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8),
                                           np.column_stack([rng.normal(size=(5, 6)), np.ones(5)]),
                                           'reach the cube', f'seed {i}'))
    bad = Episode(np.zeros((4, 8, 8, 3), np.uint8), np.zeros((3, 7)), 'reach the cube', 'seed 9')
    with pytest.raises(DatasetError, match=r'episode_000002 \(seed 9\): 3 actions for 4 frames'):
        write_episode(tmp_path, 2, bad)
    info = finish_dataset(tmp_path)
    assert info['episodes'] == 2 and info['lengths'] == [5, 5]
    episodes = list(iter_episodes(tmp_path))
    assert [e.source for e in episodes] == ['seed 0', 'seed 1']
    stats = json.loads((tmp_path / 'dataset_statistics.json').read_text())
    assert stats['sim_widowx']['num_trajectories'] == 2
    assert '2 episodes, 10 steps' in summary(tmp_path)


def test_episode_jobs_shared_and_distinct_layouts():
    """A seed is a whole scene: shared layouts show each scene with every task, distinct layouts
    give every demonstration its own scene; both cover every task equally."""
    from openvla_ros.evaluation import tasks as T
    from openvla_ros.evaluation.runner import EpisodeEnv
    from openvla_ros.learning.collect import episode_jobs

    tasks = ['reach_red_block', 'reach_green_can', 'spoon_on_towel']
    shared = episode_jobs(tasks, [0, 1])
    distinct = episode_jobs(tasks, [0, 1], 'distinct')
    assert shared == [(t, s) for s in (0, 1) for t in tasks]
    assert sorted(distinct) == sorted([('reach_red_block', 0), ('reach_red_block', 1), ('reach_green_can', 2),
                                       ('reach_green_can', 3), ('spoon_on_towel', 4), ('spoon_on_towel', 5)])
    env = EpisodeEnv(image_size=(32, 32))
    try:
        def scene(task, seed):
            return env.reset(T.get_task(task), seed).object_poses
        assert scene('reach_red_block', 0) == scene('spoon_on_towel', 0)     # the seed is the scene
        assert len({tuple(sorted(scene(t, s).items())) for t, s in distinct}) == len(distinct)
    finally:
        env.close()
    with pytest.raises(ValueError, match='layouts'):
        episode_jobs(tasks, [0], 'mixed')


def test_near_starts_are_a_seeded_fraction():
    from openvla_ros.learning.collect import starts_near

    near = [starts_near(seed, 0.3) for seed in range(2000)]
    assert near == [starts_near(seed, 0.3) for seed in range(2000)]
    assert 0.27 < np.mean(near) < 0.33
    assert not any(starts_near(seed, 0.0) for seed in range(200))
    assert all(starts_near(seed, 1.0) for seed in range(200))


def test_episode_jobs_per_task_counts():
    """A task may have fewer demonstrations than the others (openvla-collect --task T=N); distinct
    layouts still give each its own scene, and equal counts give the layouts without counts."""
    from openvla_ros.cli.collect import CollectError, task_counts
    from openvla_ros.learning.collect import episode_jobs

    tasks = ['reach_red_block', 'spoon_on_towel', 'reach_green_can']
    seeds = [10, 11, 12]
    counts = {'reach_red_block': 3, 'spoon_on_towel': 1, 'reach_green_can': 2}
    assert episode_jobs(tasks, seeds, 'distinct', counts) == [
        ('reach_red_block', 10), ('spoon_on_towel', 13), ('reach_green_can', 14),
        ('reach_red_block', 11), ('reach_green_can', 15), ('reach_red_block', 12)]
    assert episode_jobs(tasks, seeds, 'shared', counts) == [
        ('reach_red_block', 10), ('spoon_on_towel', 10), ('reach_green_can', 10),
        ('reach_red_block', 11), ('reach_green_can', 11), ('reach_red_block', 12)]
    for layouts in ('shared', 'distinct'):
        assert episode_jobs(tasks, seeds, layouts, dict.fromkeys(tasks, 3)) == episode_jobs(tasks, seeds, layouts)
    with pytest.raises(ValueError, match='episodes per task'):
        episode_jobs(tasks, seeds, 'distinct', {'spoon_on_towel': 4})

    assert task_counts(['reach_red_block=3', 'spoon_on_towel'], 2) == (
        ['reach_red_block', 'spoon_on_towel'], {'reach_red_block': 3, 'spoon_on_towel': 2})
    # a task named twice with the same count is one task
    assert task_counts(['spoon_on_towel=2', 'all'], 2)[1]['spoon_on_towel'] == 2
    for specs, episodes, why in ((['spoon_on_towel'], None, 'give --episodes'),
                                 (['spoon_on_towel=x'], None, 'must be an integer'),
                                 (['spoon_on_towel=0'], None, 'must be >= 1'),
                                 (['all=2'], None, 'no =N'),
                                 (['reach_nothing=2'], None, 'unknown task'),
                                 (['spoon_on_towel=3', 'spoon_on_towel=5'], None, 'given 3 and 5'),
                                 (['all', 'spoon_on_towel=5'], 2, 'given 2 and 5')):
        with pytest.raises(CollectError, match=why):
            task_counts(specs, episodes)
