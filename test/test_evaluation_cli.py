"""openvla-eval end to end in process: outputs, incremental results, bad input."""
from __future__ import annotations

import json

import pytest

from openvla_ros.cli.evaluate import main
from openvla_ros.evaluation.report import EPISODES_FILE, load_episodes


def test_expert_evaluation_writes_every_output(tmp_path, capsys):
    out = tmp_path / 'run'
    rc = main(['--policy', 'expert', '--tasks', 'reach_green_can,spoon_on_towel', '--episodes', '2',
               '--seed', '5', '--image-width', '64', '--image-height', '48', '--output', str(out)])
    assert rc == 0
    summary = json.loads((out / 'summary.json').read_text())['results']['expert']
    assert set(summary) == {'reach_green_can', 'spoon_on_towel'}
    for s in summary.values():
        assert s['episodes'] == 2 and s['successes'] == 2 and s['seeds'] == [5, 6]
        assert 0 < s['wilson95_low'] < 1 and s['wilson95_high'] == 1.0
    rows = load_episodes(out)
    assert len(rows) == 4 and all(r['success'] for r in rows)
    for r in rows:
        assert (out / r['video']).stat().st_size > 0 and (out / r['plot']).stat().st_size > 0
    assert (out / 'comparison.png').is_file() and '| expert | spoon_on_towel | 2/2 |' in (out / 'summary.md').read_text()


def test_results_are_kept_and_resume_skips_finished_episodes(tmp_path):
    out = tmp_path / 'run'
    args = ['--policy', 'expert', '--tasks', 'reach_red_block', '--episodes', '1', '--no-video', '--output', str(out)]
    assert main(args) == 0
    before = (out / EPISODES_FILE).read_text()
    assert main(args) == 2, 'an existing run must not be overwritten'
    assert (out / EPISODES_FILE).read_text() == before
    assert main(args[:5] + ['2'] + args[6:] + ['--resume']) == 0
    assert [r['seed'] for r in load_episodes(out)] == [1000, 1001]


@pytest.mark.parametrize('argv, message', [
    (['--tasks', 'fold_the_towel'], 'known tasks: reach_red_block'),
    (['--held-out', '--training-seeds', '0-1500'], '--held-out: 10 evaluation seeds are training seeds'),
    (['--held-out'], '--held-out needs --training-seeds'),
    (['--policy', 'model'], '--policy model needs --checkpoint'),
    (['--episodes', '0'], '--episodes must be at least 1'),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, argv, message):
    assert main(argv + ['--output', str(tmp_path / 'x')]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'x' / EPISODES_FILE).exists()


def test_held_out_seeds_above_training_pass(tmp_path):
    assert main(['--policy', 'expert', '--tasks', 'reach_red_block', '--episodes', '1', '--seed', '300',
                 '--held-out', '--training-seeds', '0-299', '--no-video', '--output', str(tmp_path / 'ok')]) == 0


def test_checkpoint_with_an_unknown_unnorm_key_is_refused(tmp_path, tiny_checkpoint, capsys):
    assert main(['--checkpoint', str(tiny_checkpoint), '--unnorm-key', 'no_such_robot', '--episodes', '1',
                 '--output', str(tmp_path / 'x')]) == 2
    err = capsys.readouterr().err
    assert "'no_such_robot' is not in the checkpoint" in err and 'bridge_orig' in err


@pytest.mark.slow
def test_tiny_model_and_its_shuffled_control_ci_sized(tmp_path, tiny_checkpoint):
    """2 tasks x 3 episodes of a real (untrained) OpenVLA policy, and the same policy given the
    other task's instruction: deterministic, so a second run gives the same records."""
    out = tmp_path / 'run'
    argv = ['--checkpoint', str(tiny_checkpoint), '--policy', 'model', 'shuffled', '--tasks',
            'reach_red_block,reach_green_can', '--episodes', '3', '--max-steps', '8', '--image-width', '96',
            '--image-height', '96', '--no-video']
    assert main(argv + ['--output', str(out)]) == 0
    rows = load_episodes(out)
    assert len(rows) == 12 and {r['policy'] for r in rows} == {'model', 'shuffled'}
    assert all(r['steps'] >= 1 and r['reason'] in ('success', 'max_steps') for r in rows)
    shuffled = [r for r in rows if r['policy'] == 'shuffled']
    assert all(r['instruction'] != 'reach the red block' for r in shuffled if r['task'] == 'reach_red_block')
    assert main(argv + ['--output', str(tmp_path / 'again')]) == 0
    keep = ('policy', 'task', 'seed', 'instruction', 'success', 'steps', 'reason', 'refused_actions', 'sim_time_s')
    assert [{k: r[k] for k in keep} for r in load_episodes(tmp_path / 'again')] == [{k: r[k] for k in keep}
                                                                                   for r in rows]
