"""A fresh small OpenVLA-architecture checkpoint at a chosen image size, to train from scratch.

The engine's tiny layout (:func:`openvla_ros.engine.config.tiny_config`: fused DINOv2 + SigLIP
timm ViTs, the 3-layer projector, a Llama with the full 32064-token vocabulary and the real
tokenizer) with ``image_sizes`` and ``preprocessor_config.json`` set to ``image_size`` so that the
standard inference path resizes camera frames to it, and the ViTs' ``patch_size`` (upstream's
14 by default). Small images make training on a CPU feasible; smaller patches keep enough of them
to localise small objects (56 px in patches of 7 = 8 x 8 patches, 64 image tokens).

The weights are initialised for training (:func:`training_init`), not with the engine's
random-model initialisation, which is tuned for varied outputs without training (sharp attention,
faint text embeddings) and trains poorly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from openvla_ros.engine.actions import bin_centers, tokens_to_normalized
from openvla_ros.engine.config import tiny_config
from openvla_ros.engine.tiny import ACTION_TOKEN_IDS, write_random_checkpoint

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
    grid = image_size // patch_size
    write_random_checkpoint(out, config, seed=seed, init=training_init(grid, _residual_layers(config)))
    processor_path = out / 'preprocessor_config.json'
    processor = json.loads(processor_path.read_text())
    processor['input_sizes'] = [[3, image_size, image_size] for _ in processor['input_sizes']]
    for params in processor['tvf_resize_params']:
        params['size'] = [image_size, image_size]
    for params in processor['tvf_crop_params']:
        params['output_size'] = [image_size, image_size]
    processor_path.write_text(json.dumps(processor, indent=2))
    return out


# GPT-2 / Llama style: weights N(0, 0.02), residual output projections scaled by 1/sqrt(2 L)
INIT_STD = 0.02
RESIDUAL_OUTPUTS = ('o_proj.weight', 'down_proj.weight', 'attn.proj.weight', 'mlp.fc2.weight')


def _residual_layers(config: dict) -> int:
    return max([config['text_config']['num_hidden_layers']]
               + [k.get('depth', 1) for k in config['timm_model_kwargs']])


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """[grid*grid, dim] fixed 2-D sine-cosine position codes (rows then columns, half the
    channels each): a start in which a patch's place is linearly readable."""
    if dim % 4:
        raise ValueError(f'2-D sine-cosine position codes need a width divisible by 4, got {dim}')
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing='ij')

    def code(pos):
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([code(rows), code(cols)], dim=1).float()


# Width of each ordinal code (see ordinal_rows), in hidden channels, and its scale.
ORDINAL_DIMS = 8
ORDINAL_HEAD_GAIN = 0.5
ORDINAL_EMBED_GAIN = 2 * INIT_STD


def action_token_values() -> torch.Tensor:
    """The normalised value in [-1, 1] that each of the 256 action tokens decodes to."""
    ids = torch.arange(ACTION_TOKEN_IDS.start, ACTION_TOKEN_IDS.stop).numpy()
    return torch.from_numpy(tokens_to_normalized(ids, ACTION_TOKEN_IDS.stop, bin_centers())).float()


def ordinal_rows(weight: torch.Tensor, head: bool) -> torch.Tensor:
    """The action-token rows of ``lm_head`` (``head``) or of the input embeddings, given an
    ordinal start: the bins are neighbours in value, not 256 unrelated classes.

    Head: channels ``[0, K)`` carry ``g * c`` and ``[K, 2K)`` carry ``-g * c^2 / 2`` for the bin
    value ``c``, so the logits of a hidden state with sums ``A`` and ``B`` over those channels
    are ``g (A c - B c^2 / 2)``: a discretised Gaussian with its mode at ``A / B``. The gradient
    of the cross-entropy with respect to ``A`` is then ``g (E[c] - c_label)``, the gradient of
    a regression, so an approximately right prediction is rewarded from the first step on
    (with unrelated random rows, only the exact bin is, and the gradient to the image is
    mostly noise). Embeddings: channels ``[2K, 3K)`` carry the value, so a preceding action
    token's value is linearly readable. The other channels keep their random values; every
    row stays trainable."""
    c = action_token_values().unsqueeze(1)
    k = ORDINAL_DIMS
    rows = weight[ACTION_TOKEN_IDS.start:ACTION_TOKEN_IDS.stop]
    if head:
        rows[:, :k] = ORDINAL_HEAD_GAIN * c
        rows[:, k:2 * k] = -ORDINAL_HEAD_GAIN * c * c / 2
    else:
        rows[:, 2 * k:3 * k] = ORDINAL_EMBED_GAIN * c
    return weight


def training_init(grid: int, layers: int):
    """``init(key, shape, generator)`` for :func:`write_random_checkpoint`: zero biases, unit
    norms and layer scales, N(0, 0.02) weights and embeddings (residual outputs scaled down by
    depth), LeCun-normal patch embeddings and projector, and 2-D sine-cosine patch positions."""
    def init(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        def normal(std):
            return torch.randn(shape, generator=gen) * std

        name = key.rsplit('.', 1)[-1]
        if name == 'bias':
            return torch.zeros(shape)
        if 'norm' in key or name in ('scale_factor', 'gamma'):
            return torch.ones(shape)
        if name == 'pos_embed' and shape[-2] == grid * grid:
            return sincos_2d(grid, shape[-1]).reshape(shape)
        if key.startswith('projector.') or 'patch_embed' in key:
            return normal(1.0 / math.sqrt(math.prod(shape[1:])))
        if key.endswith('lm_head.weight'):
            # only the action tokens start as candidates, as in the engine's random model: the
            # untrained policy decodes action bins (not arbitrary text tokens clipped to the
            # extreme bin), and the loss starts on the 256 action bins; their rows start ordered
            # by the bin's value (see ordinal_rows)
            out = torch.zeros(shape)
            rows = ACTION_TOKEN_IDS
            out[rows] = torch.randn(rows.stop - rows.start, shape[1], generator=gen) * INIT_STD
            return ordinal_rows(out, head=True)
        if key.endswith('embed_tokens.weight'):
            return ordinal_rows(normal(INIT_STD), head=False)
        if key.endswith(RESIDUAL_OUTPUTS):
            return normal(INIT_STD / math.sqrt(2 * layers))
        return normal(INIT_STD)

    return init
