"""The learning loop end to end, in CI size: expert demonstrations collected in process, a short
openvla-finetune run (a fresh small model) whose loss falls, its export loaded by the engine,
and one closed-loop openvla-eval episode with that export."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from openvla_ros.engine.policy import PolicyOptions, load_policy
from openvla_ros.learning.collect import collect_in_process

ROOT = Path(__file__).resolve().parents[1]
TASKS = ['reach_red_block', 'reach_green_can']
SEEDS = [0, 1]
IMAGE = 28
STEPS = 24


def _run(args, timeout):
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env.update(OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_collect_train_export_load_and_evaluate(tmp_path):
    data = tmp_path / 'data'
    info = collect_in_process(TASKS, SEEDS, data, image_size=IMAGE, progress=False)
    assert info['episodes'] == len(TASKS) * len(SEEDS), info['failed_demonstrations']
    assert info['dataset_key'] == 'sim_widowx'

    out = tmp_path / 'run'
    _run(['openvla_ros.cli.finetune', '--small', str(IMAGE), '--dataset', str(data), '--out',
          str(out), '--steps', str(STEPS), '--batch-size', '8', '--learning-rate', '3e-3',
          '--holdout-fraction', '0', '--eval-every', str(STEPS), '--save-every', str(STEPS),
          '--threads', '1', '--no-progress'], timeout=300)
    history = json.loads((out / 'history.json').read_text())
    losses = [s['loss'] for s in history['train']]
    assert len(losses) == STEPS
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses

    export = out / 'checkpoint'
    policy = load_policy(export, PolicyOptions(dtype='float32'))
    assert 'sim_widowx' in policy.unnorm_keys()
    result = policy.predict(np.zeros((56, 56, 3), np.uint8), 'reach the red block')
    assert result.action.shape == (7,) and np.all(np.isfinite(result.action))
    policy.close()

    evaluation = tmp_path / 'eval'
    _run(['openvla_ros.cli.evaluate', '--checkpoint', str(export), '--unnorm-key', 'sim_widowx',
          '--tasks', 'reach_red_block', '--episodes', '1', '--max-steps', '5', '--image-width', '56',
          '--image-height', '56', '--no-video', '--output', str(evaluation)], timeout=300)
    results = json.loads((evaluation / 'summary.json').read_text())['results']
    assert len(results) == 1
    (per_task,) = results.values()
    assert per_task['reach_red_block']['episodes'] == 1
    assert per_task['reach_red_block']['mean_steps'] <= 5


def test_collect_refuses_a_bad_start_jitter_before_writing(tmp_path, capsys):
    from openvla_ros.cli import collect as cli

    base = ['--task', 'reach_red_block', '--episodes', '1']
    for extra, message in ((['--start-jitter-m', '0.5'], 'must be in'),
                           (['--start-jitter-m', '-0.01'], 'must be in'),
                           (['--graph', '--start-jitter-m', '0.05'], 'in-process'),
                           (['--action-noise-m', '0.5'], 'must be in'),
                           (['--action-noise-m', '-0.001'], 'must be in'),
                           (['--graph', '--action-noise-m', '0.005'], 'in-process'),
                           (['--slip-probability', '0.9'], 'must be in'),
                           (['--slip-probability', '0.2', '--slip-m', '0'], 'must be in'),
                           (['--graph', '--slip-probability', '0.2'], 'in-process'),
                           (['--near-start-fraction', '1.5'], 'must be in'),
                           (['--near-start-fraction', '0.5', '--near-start-m', '0'], 'must be in'),
                           (['--graph', '--near-start-fraction', '0.5'], 'in-process')):
        out = tmp_path / 'out'
        assert cli.main(base + ['--out', str(out)] + extra) == cli.EXIT_BAD_INPUT
        assert message in capsys.readouterr().err
        assert not out.exists()
