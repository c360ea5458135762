"""A fresh small OpenVLA-architecture checkpoint at a chosen image size, to train from scratch.

The engine's tiny layout (:func:`openvla_ros.engine.config.tiny_config`: fused DINOv2 + SigLIP
timm ViTs, the 3-layer projector, a Llama with the full 32064-token vocabulary and the real
tokenizer) with ``image_sizes`` and ``preprocessor_config.json`` set to ``image_size`` so that the
standard inference path resizes camera frames to it, and the ViTs' ``patch_size`` (upstream's
14 by default). Small images make training on a CPU feasible; smaller patches keep enough of them
to localise small objects (56 px in patches of 7 = 8 x 8 patches, 64 image tokens).
"""
from __future__ import annotations

import json
from pathlib import Path

from openvla_ros.engine.config import tiny_config
from openvla_ros.engine.tiny import write_random_checkpoint

PATCH_SIZE = 14
# Placeholder statistics until fine-tuning writes the dataset's own (the export replaces them).
PLACEHOLDER_STATS = {'action': {'q01': [-1.0] * 6 + [0.0], 'q99': [1.0] * 7,
                                'mask': [True] * 6 + [False]}}


def make_small_checkpoint(out_dir: str | Path, image_size: int = 56, seed: int = 0,
                          patch_size: int = PATCH_SIZE, **sizes) -> Path:
    if patch_size < 1 or image_size % patch_size:
        raise ValueError(f'image_size must be a multiple of the patch size {patch_size}, '
                         f'got {image_size}')
    out = Path(out_dir)
    config = tiny_config(**sizes)
    for kwargs in config['timm_model_kwargs']:
        kwargs['patch_size'] = patch_size
    config['image_sizes'] = [image_size, image_size]
    config['norm_stats'] = {'untrained': json.loads(json.dumps(PLACEHOLDER_STATS))}
    write_random_checkpoint(out, config, seed=seed)
    processor_path = out / 'preprocessor_config.json'
    processor = json.loads(processor_path.read_text())
    processor['input_sizes'] = [[3, image_size, image_size] for _ in processor['input_sizes']]
    for params in processor['tvf_resize_params']:
        params['size'] = [image_size, image_size]
    for params in processor['tvf_crop_params']:
        params['output_size'] = [image_size, image_size]
    processor_path.write_text(json.dumps(processor, indent=2))
    return out
