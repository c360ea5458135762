"""A tiny random OpenVLA checkpoint in the real layout, for tests and demos without the 7B weights.

Same files and tensor names as openvla-7b (fused DINOv2 + SigLIP timm ViTs shrunk through
``timm_model_kwargs``, the 3-layer projector, a Llama with the full 32064-token vocabulary, the
real Llama-2 tokenizer with ``<PAD>``=32000, weights in bfloat16), so everything that loads a real
checkpoint loads this one. The random initialisation is scaled so that the image drives the
decoded tokens (different scenes give different actions) and only the 256 action-token rows of
``lm_head`` are non-zero (greedy decoding then always lands on an action token). Deterministic
for a given seed.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from .config import (BRIDGE_ORIG_STATS, OpenVLAConfig, openvla_7b_preprocessor_config, tiny_config,
                     v01_preprocessor_config, v01_tiny_config)
from .modeling import OpenVLAModel

TOKENIZER_ASSETS = Path(__file__).resolve().parent / 'assets' / 'llama2_tokenizer'
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json')
ACTION_TOKEN_IDS = range(31744, 32000)
GENERATION_CONFIG = {'bos_token_id': 1, 'eos_token_id': 2, 'pad_token_id': 32000,
                     '_from_model_config': True}
# A second statistics key with every dimension masked, so unnorm_key resolution is exercised.
EXTRA_STATS_KEY = 'tiny_all_masked'
TEXT_EMBED_STD = 0.1
QK_GAIN = 4.0


def init_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator | None = None,
                device: torch.device | str = 'cpu', dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale-preserving random values for checkpoint tensor ``key`` (unit-variance activations
    through every layer), created directly on ``device`` in ``dtype``."""
    def randn(*size):
        return torch.randn(size, generator=gen, device=device, dtype=dtype)

    name = key.rsplit('.', 1)[-1]
    if name == 'bias':
        return randn(*shape) * 0.1
    if 'norm' in key or key.endswith(('.gamma', '.scale_factor')):
        return 1.0 + 0.1 * randn(*shape)
    if key.endswith('lm_head.weight'):
        out = torch.zeros(shape, device=device, dtype=dtype)
        first, end = ACTION_TOKEN_IDS.start, ACTION_TOKEN_IDS.stop
        out[first:end] = randn(end - first, shape[1]) / math.sqrt(shape[1])
        return out
    if key.endswith('embed_tokens.weight'):
        # Small text embeddings: the residual stream of the last prompt position is then
        # dominated by what attention gathers from the image patches.
        return randn(*shape) * TEXT_EMBED_STD
    if key.endswith(('q_proj.weight', 'k_proj.weight')):
        # Sharper attention (larger q.k) makes the output depend on individual patches
        # instead of their average, so different scenes decode to different tokens.
        return randn(*shape) * (QK_GAIN / math.sqrt(shape[1]))
    if len(shape) >= 2 and not key.endswith(('pos_embed', 'cls_token', 'reg_token', 'latent')):
        return randn(*shape) / math.sqrt(math.prod(shape[1:]))
    return randn(*shape)


def _write_weights(tensors: dict[str, torch.Tensor], out: Path, shards: int) -> None:
    from safetensors.torch import save_file

    keys = sorted(tensors)
    if shards <= 1:
        save_file({k: tensors[k] for k in keys}, str(out / 'model.safetensors'),
                  metadata={'format': 'pt'})
        return
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    total = 0
    for i in range(shards):
        chunk = keys[i * per:(i + 1) * per]
        name = f'model-{i + 1:05d}-of-{shards:05d}.safetensors'
        save_file({k: tensors[k] for k in chunk}, str(out / name), metadata={'format': 'pt'})
        weight_map.update({k: name for k in chunk})
        total += sum(tensors[k].numel() * tensors[k].element_size() for k in chunk)
    index = {'metadata': {'total_size': total}, 'weight_map': weight_map}
    (out / 'model.safetensors.index.json').write_text(json.dumps(index, indent=2))


VARIANTS = ('openvla', 'v01')


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, shards: int = 1,
                         variant: str = 'openvla', **sizes) -> Path:
    """Write a tiny random OpenVLA checkpoint to ``out_dir`` and return its path.

    ``sizes`` are the keyword arguments of :func:`openvla_ros.engine.config.tiny_config`
    (``vit_dim``, ``vit_depth``, ``vit_heads``, ``llm_dim``, ``llm_layers``, ``llm_heads``,
    ``llm_mlp``). ``shards`` > 1 writes ``model.safetensors.index.json`` plus that many files.
    ``variant='v01'`` gives the openvla-v01 layout (SigLIP only, 2-layer projector, letterbox).
    """
    if variant not in VARIANTS:
        raise ValueError(f'unknown variant {variant!r}; choose one of {VARIANTS}')
    out = Path(out_dir)
    config = (v01_tiny_config if variant == 'v01' else tiny_config)(**sizes)
    extra = {'action': {'q01': [-1.0] * 7, 'q99': [1.0] * 7, 'mask': [True] * 7}}
    config['norm_stats'] = {'bridge_orig': json.loads(json.dumps(BRIDGE_ORIG_STATS)),
                            EXTRA_STATS_KEY: extra}
    return write_random_checkpoint(out, config, seed=seed, shards=shards)


def write_random_checkpoint(out: Path, config: dict, seed: int = 0, shards: int = 1,
                            init=init_tensor) -> Path:
    """A whole checkpoint directory for ``config`` with weights from ``init(key, shape,
    generator)`` (default :func:`init_tensor`) in bfloat16 (the model is laid out on the meta
    device, so nothing but the weights is allocated)."""
    with torch.device('meta'):
        model = OpenVLAModel(OpenVLAConfig.from_dict(config))
    shapes = model.checkpoint_shapes()
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: init(k, shapes[k], gen).to(torch.bfloat16).contiguous()
               for k in sorted(shapes)}
    write_checkpoint_metadata(out, config)
    _write_weights(tensors, out, shards)
    return out


def write_checkpoint_metadata(out: Path, config: dict) -> Path:
    """Everything of a checkpoint directory except the weights."""
    out.mkdir(parents=True, exist_ok=True)
    (out / 'config.json').write_text(json.dumps(config, indent=2))
    fused = config.get('use_fused_vision_backbone', True)
    processor = openvla_7b_preprocessor_config() if fused else v01_preprocessor_config()
    (out / 'preprocessor_config.json').write_text(json.dumps(processor, indent=2))
    (out / 'generation_config.json').write_text(json.dumps(GENERATION_CONFIG, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_ASSETS / name, out / name)
    return out
