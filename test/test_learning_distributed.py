"""Fine-tuning in two processes under torchrun (gloo on the CPU) follows the same run as one
process with the same global batch: the same losses, the same final weights, and a resumed
two-process run continues it exactly.

Tolerance: the two runs differ only in float32 summation order (each rank's half-batch forward,
the gradient all-reduce), relative ~1e-7 per operation, so the losses agree to rtol 1e-5. AdamW
divides each gradient by its own running magnitude, so where a gradient is tiny its rounding
noise becomes a visible step: the weights (which move ~9e-3 in these steps at rate 3e-3) agree to
atol 1e-4 (measured: <= 2.5e-5), except the attention key biases, whose gradient is exactly zero
in exact arithmetic (see _assert_same_run) and so pure noise in both runs."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openvla_ros.learning.dataset import Episode, finish_dataset, write_episode
from openvla_ros.learning.finetune import TrainConfig, train
from openvla_ros.learning.small import make_small_checkpoint

ROOT = Path(__file__).resolve().parents[1]
IMAGE = 28
FLAGS = dict(batch_size=4, grad_accumulation=2, learning_rate=3e-3, holdout_fraction=0.25,
             eval_every=2, save_every=2, threads=1, export_dtype='float32')
STEPS = 3
LORA_RANK = 4


def _random_dataset(data, seed, key=None):
    rng = np.random.default_rng(seed)
    for i in range(4):
        images = rng.integers(0, 256, (4, IMAGE, IMAGE, 3), dtype=np.uint8)
        actions = np.column_stack([rng.normal(0, 0.01, (4, 6)), np.full(4, i % 2)])
        write_episode(data, i, Episode(images, actions, f'reach the block {i}', f'ep {i}'))
    finish_dataset(data, *([key] if key else []))
    return data


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp('dist')
    checkpoint = make_small_checkpoint(base / 'init', image_size=IMAGE)
    return checkpoint, _random_dataset(base / 'data', 1), base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _torchrun(checkpoint, data, out, steps, *extra):
    flags = [f'--{k.replace("_", "-")}={v}' for k, v in FLAGS.items()]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--nnodes', '1',
           '--master-addr', '127.0.0.1', '--master-port', str(_free_port()),
           '-m', 'openvla_ros.cli.finetune', '--checkpoint', str(checkpoint), '--dataset', str(data),
           '--out', str(out), '--steps', str(steps), '--no-progress', *flags, *extra]
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / 'history.json').read_text())


def _weights(out):
    return load_file(str(out / 'checkpoint' / 'model.safetensors'))


def _assert_same_run(history, reference, out, reference_out):
    assert history['world_size'] == 2
    np.testing.assert_allclose([s['loss'] for s in history['train']],
                               [s['loss'] for s in reference['train']], rtol=1e-5)
    np.testing.assert_allclose([s['loss'] for s in history['heldout']],
                               [s['loss'] for s in reference['heldout']], rtol=1e-5)
    a, b = _weights(out), _weights(reference_out)
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if key.endswith('attn.qkv.bias'):
            # the key bias adds q.b to every score of a row, which softmax ignores: its gradient
            # is zero in exact arithmetic, rounding noise in both runs, which AdamW scales up to
            # full-rate steps; the query and value biases are compared
            third = x.shape[0] // 3
            x, y = torch.cat([x[:third], x[2 * third:]]), torch.cat([y[:third], y[2 * third:]])
        torch.testing.assert_close(x, y, rtol=0, atol=1e-4, msg=key)


@pytest.mark.parametrize('strategy, mode', [('ddp', 'full'), ('fsdp', 'full'), ('ddp', 'lora')])
def test_two_processes_follow_the_one_process_run_and_resume(setup, strategy, mode):
    checkpoint, data, base = setup
    reference_out = base / f'one-{mode}'
    if not (reference_out / 'history.json').is_file():
        train(checkpoint, data, reference_out,
              TrainConfig(steps=STEPS, mode=mode, lora_rank=LORA_RANK, **FLAGS), progress=False)
    reference = json.loads((reference_out / 'history.json').read_text())
    losses = [s['loss'] for s in reference['train']]
    assert losses[-1] < losses[0] and len(reference['heldout']) == 2

    flags = [f'--distributed={strategy}', f'--mode={mode}', f'--lora-rank={LORA_RANK}']
    out = base / f'{strategy}-{mode}'
    history = _torchrun(checkpoint, data, out, STEPS, *flags)
    _assert_same_run(history, reference, out, reference_out)
    # the weights did move, by much more than the tolerance
    start = load_file(str(checkpoint / 'model.safetensors'))
    trained = _weights(reference_out)
    assert max(float((trained[k] - start[k].float()).abs().max()) for k in trained if k in start) > 1e-3

    # two steps, then resumed to the end, in two processes: the same run again
    resumed_out = base / f'{strategy}-{mode}-resumed'
    _torchrun(checkpoint, data, resumed_out, 2, *flags)
    resumed = _torchrun(checkpoint, data, resumed_out, STEPS, *flags, '--resume')
    _assert_same_run(resumed, reference, resumed_out, reference_out)


def test_two_processes_share_the_mixed_in_samples_too(setup):
    """With a second dataset drawn into every batch, the two processes split the whole batch
    (drawn and mixed-in samples) and follow the one-process run."""
    checkpoint, data, base = setup
    other = _random_dataset(base / 'other', 2, key='sim_other')
    mix = dict(mix_dataset=str(other), mix_fraction=0.5)
    reference_out = base / 'one-mix'
    reference = train(checkpoint, data, reference_out, TrainConfig(steps=STEPS, **mix, **FLAGS),
                      progress=False)
    out = base / 'ddp-mix'
    history = _torchrun(checkpoint, data, out, STEPS, f'--mix-dataset={other}', '--mix-fraction=0.5')
    _assert_same_run(history, reference, out, reference_out)
