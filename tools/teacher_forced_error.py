#!/usr/bin/env python3
"""Does a trained policy use the image? Teacher-forced error of each decoded action value, with
the true images and with the images shuffled across the batch.

    .venv/bin/python tools/teacher_forced_error.py CHECKPOINT DATASET [--samples 256] [--whole]

For held-out frames (the fine-tune's own episode split: ``--holdout-fraction``, ``--seed``) and
for as many training frames, the model sees the image, the prompt and the true preceding action
tokens; the argmax of each of the 7 action positions is decoded to its normalised value and
compared with the label's (mean |error| in normalised units; one bin is 0.008). A policy that
ignores the image has the same error with shuffled images. BENCHMARKS.md ("Learning proof")
quotes these figures.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from openvla_ros.engine.actions import bin_centers, tokens_to_normalized
from openvla_ros.engine.api import PolicyOptions
from openvla_ros.engine.policy import load_policy
from openvla_ros.learning.finetune import Samples, sequence_logits, split_indices


def errors(policy, samples: Samples, indices, shuffle: bool, batch: int = 64) -> np.ndarray:
    vocab, centers = policy.config.action_vocab_size, bin_centers(policy.config.n_action_bins)
    out = []
    for start in range(0, len(indices), batch):
        chunk = list(indices[start:start + batch])
        pixels, ids, _ = samples.batch(chunk)
        if shuffle:
            pixels = pixels[torch.randperm(len(chunk), generator=torch.Generator().manual_seed(start))]
        with torch.no_grad():
            logits = sequence_logits(policy.model, pixels, ids)
        for row, i in enumerate(chunk):
            first = len(samples.prompts[i]) - 1        # the position that predicts the first action token
            predicted = logits[row, first:first + samples.action_dim].argmax(-1).numpy()
            label = np.asarray(samples.targets[i][:samples.action_dim])
            out.append(np.abs(tokens_to_normalized(predicted, vocab, centers)
                              - tokens_to_normalized(label, vocab, centers)))
    return np.asarray(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('checkpoint')
    p.add_argument('dataset')
    p.add_argument('--samples', type=int, default=256, help='frames per split')
    p.add_argument('--holdout-fraction', type=float, default=0.1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--whole', action='store_true',
                   help='DATASET is held out as a whole (e.g. grounding scenes rendered from other seeds, '
                        'openvla-dataset grounding --seed): its first --samples frames, no split')
    args = p.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint, PolicyOptions(dtype='float32'))
    try:
        samples = Samples(policy, Path(args.dataset), None)
        if args.whole:
            splits = [('held-out', np.arange(min(args.samples, len(samples))))]
        else:
            train, held = split_indices(samples, args.holdout_fraction, args.seed)
            rng = np.random.default_rng(args.seed)
            splits = [('held-out', held[:args.samples])] if len(held) else []
            splits.append(('train', rng.choice(train, min(args.samples, len(train)), replace=False)))
        for name, indices in splits:
            for shuffle in (False, True):
                e = errors(policy, samples, indices, shuffle)
                print(f'{name:8s} {"shuffled" if shuffle else "true":8s} images: mean |error| per '
                      f'dimension {np.round(e.mean(0), 3).tolist()}')
    finally:
        policy.close()


if __name__ == '__main__':
    main()
