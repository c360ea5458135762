#!/usr/bin/env python3
"""Seconds per training step of a fresh small model, in one run: with the full-vocabulary
projection, with its equal ``lm_head`` rows projected once (``SharedRows``), and with those rows
and the fused AdamW kernel (``fused=True``, as ``openvla-finetune`` trains).

Each step is ``action_loss`` forward + backward + AdamW on a synthetic batch (random pixels, a
30-token prompt, 7 action tokens + EOS labelled), the model and optimizer of each path built
from the same small checkpoint. The paths alternate step by step (the order swaps every round),
so a change of machine load falls on both alike; warm-up rounds are not counted. Prints the median
seconds per step of each path, the ratios, and the largest relative difference of the losses on
the same batch (the paths compute the same objective; the fused optimizer rounds differently).

    OMP_NUM_THREADS=1 python tools/bench_finetune_step.py [--image 56] [--patch 7]
        [--batch 32] [--rounds 12] [--threads 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openvla_ros.engine.policy import PolicyOptions, load_policy  # noqa: E402
from openvla_ros.learning.finetune import SharedRows, action_loss, label_token_ids  # noqa: E402
from openvla_ros.learning.small import make_small_checkpoint  # noqa: E402

WARMUP_ROUNDS = 2
PROMPT_TOKENS = 30


def _trainable(checkpoint: Path, fused: bool = False):
    policy = load_policy(checkpoint, PolicyOptions(dtype='float32'))
    model = policy.model
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    return policy, model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--image', type=int, default=56, help='small model image size, pixels')
    p.add_argument('--patch', type=int, default=7, help='ViT patch size, pixels')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--rounds', type=int, default=12, help='timed steps per path')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--json', action='store_true')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_small_checkpoint(Path(tmp) / 'small', image_size=args.image, patch_size=args.patch)
        runs = {'full': _trainable(checkpoint), 'shared_rows': _trainable(checkpoint),
                'shared_rows_fused': _trainable(checkpoint, fused=True)}
    policy, model, _ = runs['shared_rows']
    shared = SharedRows.detect(model.language_model.lm_head.weight, label_token_ids(policy.config))
    assert shared is not None, 'a fresh small model has equal non-label rows'
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch, 6, args.image, args.image, generator=gen)
    ids = torch.randint(100, 5000, (args.batch, PROMPT_TOKENS + 8), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[:, PROMPT_TOKENS:-1] = torch.randint(31744, 32000, (args.batch, 7), generator=gen)
    labels[:, -1] = 2

    def step(name: str) -> tuple[float, float]:
        _, m, optimizer = runs[name]
        rows = shared if name.startswith('shared_rows') else None
        t0 = time.perf_counter()
        loss, _ = action_loss(m, pixels, ids, labels, 7, rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if rows is not None:
            rows.spread_grad(m.language_model.lm_head.weight)
        optimizer.step()
        return time.perf_counter() - t0, float(loss.detach())

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    loss_gap = 0.0
    for r in range(WARMUP_ROUNDS + args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        out = {name: step(name) for name in order}
        loss_gap = max([loss_gap] + [abs(out['full'][1] - out[n][1]) / abs(out['full'][1]) for n in runs])
        if r >= WARMUP_ROUNDS:
            for name in runs:
                seconds[name].append(out[name][0])
    result = {'image': args.image, 'patch': args.patch, 'batch': args.batch, 'threads': args.threads,
              'rounds': args.rounds,
              **{f'{name}_s_per_step': round(float(np.median(v)), 4) for name, v in seconds.items()},
              'speedup': round(float(np.median(seconds['full']) / np.median(seconds['shared_rows'])), 2),
              'fused_speedup': round(float(np.median(seconds['shared_rows'])
                                           / np.median(seconds['shared_rows_fused'])), 2),
              'max_relative_loss_difference': float(f'{loss_gap:.2e}')}
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f'{key:>30s}  {value}')


if __name__ == '__main__':
    main()
