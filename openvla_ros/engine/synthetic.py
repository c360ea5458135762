"""Policies with random weights and real shapes, for benchmarks without a download.

``synthetic_policy('full', options)`` builds openvla-7b's exact architecture (the state-dict
layout and ``config.json`` that upstream's ``vla-scripts/extern/convert_openvla_weights_to_hf.py``
writes) and
fills every tensor with random values created directly on the target device in the target dtype
(or quantized as it is created), so a GPU machine can measure full-size latency and memory with
nothing but this package. ``'mid'`` (real-width-ish ViTs, a 1024-wide 8-layer Llama) gives CPU
numbers; ``'tiny'`` is the layout of :mod:`.tiny`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .api import PolicyOptions
from .config import BRIDGE_ORIG_STATS, SYNTHETIC_PRESETS
from .policy import OpenVLAPolicy
from .tiny import init_tensor, write_checkpoint_metadata


def synthetic_policy(preset: str, options: PolicyOptions | None = None, seed: int = 0,
                     workdir: str | Path | None = None) -> OpenVLAPolicy:
    if preset not in SYNTHETIC_PRESETS:
        raise ValueError(f'unknown synthetic preset {preset!r}; choose one of {sorted(SYNTHETIC_PRESETS)}')
    config = SYNTHETIC_PRESETS[preset]()
    config['norm_stats'] = {'bridge_orig': dict(BRIDGE_ORIG_STATS)}
    directory = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix='openvla-synthetic-'))
    write_checkpoint_metadata(directory / f'synthetic-{preset}', config)

    def random_tensors(expected, dtype, device):
        gen = torch.Generator(device=device).manual_seed(seed)
        for key in sorted(expected):
            yield key, init_tensor(key, expected[key], gen, device=device, dtype=dtype)

    return OpenVLAPolicy(directory / f'synthetic-{preset}', options or PolicyOptions(),
                         _tensor_source=random_tensors)
