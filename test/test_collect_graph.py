"""openvla-collect --graph: the scripted expert through arm_controller and sim_node (lockstep, each a
process over loopback DDS) as a teleoperator, one bag per episode, the dataset built from the bags.

The bags must hold what a real teleoperation session recorded with ``openvla-bag record`` holds
(the camera, /joint_states, the controller's target pose, the commanded actions, the instruction,
the episode markers), and the dataset built from them must carry the in-process collection's
labels for the same task and seeds: the expert through the graph agrees with the in-process
expert to ~1e-3 (its mirror's kinematics come from the published qpos, see test_eval_graph).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from openvla_ros import defaults
from openvla_ros.bag.storage import BagSource, project_typestore
from openvla_ros.learning.dataset import INFO_FILE, iter_episodes

TASK, SEED, EPISODES, IMAGE_SIZE = 'reach_green_can', 1002, 2, 32
LABEL_ATOL = 1e-3
BAG_TOPICS = (defaults.CAMERA_TOPIC, defaults.JOINT_STATES_TOPIC, defaults.TARGET_POSE_TOPIC,
              defaults.ACTION_TOPIC, defaults.INSTRUCTION_TOPIC, defaults.EPISODE_TOPIC)


def _strings(bag: Path, topic: str) -> list[str]:
    store = project_typestore()
    with BagSource(bag) as src:
        return [str(store.deserialize_cdr(m.raw, 'std_msgs/msg/String').data) for m in src.messages([topic])]


def _topic_counts(bag: Path) -> dict[str, int]:
    with BagSource(bag) as src:
        return {t: i.count for t, i in src.topics.items()}


def test_markers_say_start_and_the_outcome():
    from openvla_ros.learning.from_bags import FAILURE, SUCCESS, _episode_windows, end_marker, parse_marker

    assert parse_marker('start') == ('start', None, '')
    assert parse_marker(' end ') == ('end', None, '')
    assert parse_marker(end_marker(True)) == ('end', SUCCESS, '')
    assert parse_marker(end_marker(False, 'max_steps')) == ('end', FAILURE, 'max_steps')
    assert parse_marker(end_marker(False, 'policy error:\n  boom')) == ('end', FAILURE, 'policy error: boom')
    assert parse_marker('end maybe') == ('', None, '') and parse_marker('started') == ('', None, '')
    # an end marker closes its window inclusively (a paused sim clock logs the last state at its time)
    windows = _episode_windows([(10, 0, 'start'), (20, 0, 'end success'), (30, 0, 'start'), (40, 0, 'start'),
                                (50, 0, 'end failure dropped the can')])
    assert [(w.lo, w.hi, w.outcome, w.reason) for w in windows] == [
        (10, 20, SUCCESS, ''), (30, 40, None, ''), (40, 50, FAILURE, 'dropped the can')]
    assert windows[0].holds(20) and not windows[1].holds(40) and windows[2].holds(40)


def test_recorder_default_topics_are_what_a_dataset_needs():
    from openvla_ros.bag.record import DEFAULT_RECORD_TOPICS
    from openvla_ros.learning import from_bags

    assert from_bags.EPISODE_TOPIC == defaults.EPISODE_TOPIC
    assert set(BAG_TOPICS) <= set(DEFAULT_RECORD_TOPICS)


def test_collect_refuses_outputs_it_did_not_write(tmp_path, capsys):
    from openvla_ros.cli.collect import main as collect

    base = ['--graph', '--task', TASK, '--episodes', '1', '--no-progress']
    bags = tmp_path / 'mine'
    bags.mkdir()
    (bags / 'notes.txt').write_text('mine')
    assert collect(base + ['--out', str(tmp_path / 'a'), '--bags', str(bags)]) == 2
    assert 'not empty' in capsys.readouterr().err
    assert collect(base + ['--out', str(tmp_path / 'a'), '--bags', str(bags), '--force']) == 2
    assert 'not written by openvla-collect' in capsys.readouterr().err
    assert (bags / 'notes.txt').read_text() == 'mine' and not (tmp_path / 'a').exists()
    assert collect(base + ['--out', str(tmp_path / 'b'), '--bags', str(tmp_path / 'b' / 'x')]) == 2
    assert 'inside' in capsys.readouterr().err
    assert collect(['--task', TASK, '--episodes', '1', '--out', str(tmp_path / 'c'), '--bags', str(bags)]) == 2
    assert '--graph' in capsys.readouterr().err


@pytest.mark.ros
@pytest.mark.slow
def test_collect_through_the_graph(tmp_path, capsys):
    """2 episodes through the graph: one bag each with the required topics and markers, the dataset
    built from them with the in-process labels; --force replaces only openvla-collect's own
    output; a failed episode is marked as such, left out, and kept by --include-failed."""
    from openvla_ros.cli.collect import main as collect
    from openvla_ros.cli.dataset import main as dataset
    from openvla_ros.evaluation import tasks as T
    from openvla_ros.learning.collect import BAGS_MANIFEST, collect_in_process

    out = tmp_path / 'graph'
    seeds = list(range(SEED, SEED + EPISODES))
    rc = collect(['--graph', '--task', TASK, '--episodes', str(EPISODES), '--seed', str(SEED), '--out', str(out),
                  '--image-size', str(IMAGE_SIZE), '--no-progress', '--graph-logs', str(tmp_path / 'logs')])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert f'{out}: {EPISODES} episodes' in captured.out
    assert (tmp_path / 'logs' / f'{defaults.SIM_NODE}.log').is_file()

    # one bag per episode, listed in the bags folder's manifest
    bags = sorted(p for p in (out / 'bags').iterdir() if p.is_dir())
    assert [b.name for b in bags] == [f'{i:04d}_{TASK}_seed{s}' for i, s in enumerate(seeds)]
    assert json.loads((out / 'bags' / BAGS_MANIFEST).read_text())['bags'] == [b.name for b in bags]
    for bag, seed in zip(bags, seeds):
        counts = _topic_counts(bag)
        assert all(counts.get(t, 0) > 0 for t in BAG_TOPICS), (bag.name, counts)
        assert _strings(bag, defaults.EPISODE_TOPIC) == ['start', 'end success']
        assert _strings(bag, defaults.INSTRUCTION_TOPIC) == [T.get_task(TASK).instructions[seed % 4]]

    # the dataset from the bags carries the in-process collection's labels and frames
    info = json.loads((out / INFO_FILE).read_text())
    assert info['source'] == 'bags' and info['outcomes'] == ['success'] * EPISODES
    assert info['failed_demonstrations'] == [] and info['tasks'] == [TASK] and info['seeds'] == [seeds[0], seeds[-1]]
    inproc = tmp_path / 'inproc'
    collect_in_process([TASK], seeds, inproc, image_size=IMAGE_SIZE, progress=False)
    through, expected = list(iter_episodes(out)), list(iter_episodes(inproc))
    assert len(through) == len(expected) == EPISODES
    for a, b in zip(through, expected):
        assert a.instruction == b.instruction
        assert a.actions.shape == b.actions.shape and a.images.shape == b.images.shape
        np.testing.assert_allclose(a.actions, b.actions, rtol=0, atol=LABEL_ATOL)
        assert np.abs(a.images.astype(int) - b.images.astype(int)).mean() < 1.0
    # openvla-dataset build on the same bags (what a real session's bags go through) gives the same dataset
    rebuilt = tmp_path / 'rebuilt'
    assert dataset(['build', *map(str, bags), '--out', str(rebuilt)]) == 0
    for a, b in zip(through, iter_episodes(rebuilt)):
        assert np.array_equal(a.actions, b.actions) and np.array_equal(a.images, b.images)
    capsys.readouterr()

    # an existing output: refused without --force; with --force the new run replaces it. Cut at
    # two steps, the episode fails: its bag says so, and it is left out of the dataset
    argv = ['--graph', '--task', TASK, '--episodes', '1', '--seed', str(SEED), '--out', str(out),
            '--image-size', str(IMAGE_SIZE), '--no-progress', '--max-steps', '2']
    assert collect(argv) == 2
    assert 'pass --force' in capsys.readouterr().err
    assert collect(argv + ['--force']) == 2
    err = capsys.readouterr().err
    assert '1 marked as failures left out' in err, err[-3000:]
    bags = sorted(p for p in (out / 'bags').iterdir() if p.is_dir())
    assert [b.name for b in bags] == [f'0000_{TASK}_seed{SEED}']
    assert _strings(bags[0], defaults.EPISODE_TOPIC) == ['start', 'end failure max_steps']
    assert not list(iter_episodes(out))
    kept = tmp_path / 'kept'
    assert dataset(['build', str(bags[0]), '--out', str(kept), '--include-failed']) == 0
    info = json.loads((kept / INFO_FILE).read_text())
    assert info['outcomes'] == ['failure'] and info['include_failed'] is True
    assert len(next(iter_episodes(kept)).actions) == 2
    # what that run left (its bags, no dataset) is still openvla-collect's own: --force replaces it
    from openvla_ros.cli.collect import CollectError, _prepare_out

    (out / 'bags' / 'notes.txt').write_text('mine')
    with pytest.raises(CollectError, match='did not write'):
        _prepare_out(out, force=True)
    (out / 'bags' / 'notes.txt').unlink()
    _prepare_out(out, force=True)
    assert not (out / 'bags').exists() and not (out / 'meta' / 'build.json').exists()
