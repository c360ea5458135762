"""openvla-bag replay-actions: a bag of a real simulated episode replays to the recorded trajectory.

The bag is written from a scripted-expert episode run in process (see test_learning_from_bags);
its actions go open loop through the safety controller core into the simulator, from the
recorded initial joints, and the reached end-effector path must match the recorded one.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_learning_from_bags import record_episode, write_episode_bag

from openvla_ros import defaults
from openvla_ros.bag.cli import main


@pytest.fixture(scope='module')
def episode():
    return record_episode('reach_red_block', 0)


def test_replay_of_a_real_episode_reaches_the_recorded_trajectory(tmp_path, episode, capsys):
    bag = write_episode_bag(tmp_path / 'bag', episode, storage='sqlite3')
    out = tmp_path / 'replay'
    assert main(['replay-actions', str(bag), '--out', str(out)]) == 0
    line = capsys.readouterr().out
    report = json.loads((out / 'replay.json').read_text())
    assert report['steps'] == episode[0].steps
    assert report['refused_actions'] == 0
    assert report['recorded_target_offset_m'] is None     # the recorded controller started at step 0 too
    # the recorded path spans centimetres; the replay follows it to within a millimetre
    path = np.linalg.norm(episode[0].ee_positions[-1] - episode[0].ee_positions[0])
    assert path > 0.05
    assert report['position_error_m']['max'] < 1e-3
    assert 0 < report['position_error_m']['mean'] <= report['position_error_m']['max']
    assert len(report['per_step_position_error_m']) == episode[0].steps + 1
    png = (out / 'replay.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'position error max' in line and str(out / 'replay.json') in line
    # the same scene as recorded: the task layout kept, the start pose matches
    assert main(['replay-actions', str(bag), '--out', str(out), '--task', 'reach_red_block', '--seed', '0']) == 2
    assert 'pass --force' in capsys.readouterr().err
    assert main(['replay-actions', str(bag), '--out', str(out), '--task', 'reach_red_block', '--seed', '0',
                 '--force', '--json']) == 0
    again = json.loads(capsys.readouterr().out)
    assert 'matches the recorded start' in again['start']
    assert again['position_error_m']['max'] < 1e-3


def test_a_recording_started_mid_run_replays_from_there(tmp_path, episode):
    """A bag whose recording starts at step 3: the replay starts from the joints recorded there;
    the recorded controller's target then (on /arm_controller/target_pose) is reported."""
    bag = write_episode_bag(tmp_path / 'mid_run', episode, first=3)
    assert main(['replay-actions', str(bag), '--out', str(tmp_path / 'r')]) == 0
    report = json.loads((tmp_path / 'r' / 'replay.json').read_text())
    assert report['steps'] == episode[0].steps - 3
    offset = report['recorded_target_offset_m']
    assert offset is not None and offset < 0.02
    assert report['position_error_m']['max'] < offset + 2e-3


def test_replay_shows_actions_that_do_not_match_the_joint_states(tmp_path, episode):
    """Joint states of another episode: the same actions cannot reproduce them."""
    other = record_episode('reach_green_can', 1)
    result, joints, times = episode[:3]
    n = min(result.steps, other[0].steps)
    mixed = (result, other[1][:n + 1], times)
    bag = write_episode_bag(tmp_path / 'mixed', mixed, steps=n)
    assert main(['replay-actions', str(bag), '--out', str(tmp_path / 'r')]) == 0
    report = json.loads((tmp_path / 'r' / 'replay.json').read_text())
    assert report['position_error_m']['max'] > 0.02


def test_replay_refuses_a_bag_without_joint_states(tmp_path, episode, capsys):
    bag = write_episode_bag(tmp_path / 'bag', episode, omit=(defaults.JOINT_STATES_TOPIC,))
    assert main(['replay-actions', str(bag), '--out', str(tmp_path / 'r')]) == 2
    err = capsys.readouterr().err
    assert str(bag) in err and defaults.JOINT_STATES_TOPIC in err
    assert not (tmp_path / 'r').exists()
