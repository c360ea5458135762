"""Reading a local OpenVLA Hugging Face checkpoint directory (no ``trust_remote_code``, no hub).

Layout: ``config.json``, ``model.safetensors`` or ``model.safetensors.index.json`` + shards,
``preprocessor_config.json``, ``tokenizer.json`` (Llama-2 + ``<PAD>``) and, optionally,
``dataset_statistics.json`` which replaces ``norm_stats`` (as upstream's ``deploy.py`` does for
fine-tuned local checkpoints).

Weights are loaded without a full-precision copy: the model is built on the ``meta`` device and
each tensor is read from safetensors, converted to the final dtype/device (or quantized) and
assigned. Every tensor is accounted for: unexpected or missing keys raise ``CheckpointError``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import torch

from .api import CheckpointError

CONFIG_FILE = 'config.json'
PREPROCESSOR_FILE = 'preprocessor_config.json'
TOKENIZER_FILE = 'tokenizer.json'
WEIGHTS_FILE = 'model.safetensors'
WEIGHTS_INDEX_FILE = 'model.safetensors.index.json'
STATISTICS_FILE = 'dataset_statistics.json'
MAX_ACTION_DIM = 64     # one decode step per dimension; robots have ~7


def _missing(directory: Path, name: str) -> CheckpointError:
    return CheckpointError(f'checkpoint file {name} not found in {directory}')


def read_json(directory: Path, name: str) -> dict:
    path = directory / name
    if not path.is_file():
        raise _missing(directory, name)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f'cannot parse {name} in {directory}: {exc}') from None


def check_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointError(f'checkpoint directory {directory} does not exist')
    for name in (CONFIG_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE):
        if not (directory / name).is_file():
            raise _missing(directory, name)
    if not (directory / WEIGHTS_FILE).is_file() and not (directory / WEIGHTS_INDEX_FILE).is_file():
        raise CheckpointError(f'checkpoint file {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE}) not found '
                              f'in {directory}')


def load_norm_stats(directory: Path, config: dict) -> dict:
    if (directory / STATISTICS_FILE).is_file():
        stats = read_json(directory, STATISTICS_FILE)
    else:
        stats = config.get('norm_stats') or {}
    if not stats:
        raise CheckpointError(f'no action statistics in {directory} (config.json norm_stats is empty '
                              f'and there is no {STATISTICS_FILE})')
    if not isinstance(stats, dict):
        raise CheckpointError(f'action statistics in {directory} must be a JSON object')
    for key, entry in stats.items():
        try:
            action = entry['action']
            if len(action['q01']) != len(action['q99']) or not action['q01']:
                raise ValueError('q01 and q99 differ in length or are empty')
            if len(action['q01']) > MAX_ACTION_DIM:
                raise ValueError(f'{len(action["q01"])} action dimensions, at most '
                                 f'{MAX_ACTION_DIM} are supported')
            for name in ('q01', 'q99'):
                # a NaN or a string here would reach the robot as a NaN action on every frame
                if not all(_finite_number(v) for v in action[name]):
                    raise ValueError(f'{name} must hold finite numbers, got {action[name]!r}')
            if 'mask' in action:
                if len(action['mask']) != len(action['q01']):
                    raise ValueError('mask length differs from q01')
                if not all(isinstance(m, bool) for m in action['mask']):
                    raise ValueError(f'mask must hold true/false values, got {action["mask"]!r}')
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f'action statistics for {key!r} are malformed: {exc}') from None
    return stats


def _finite_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def weight_files(directory: Path) -> dict[str, Path]:
    """Checkpoint key -> safetensors file holding it (single file or sharded index)."""
    from safetensors import safe_open

    if (directory / WEIGHTS_INDEX_FILE).is_file():
        index = read_json(directory, WEIGHTS_INDEX_FILE)
        try:
            mapping = {k: _inside(directory, v) for k, v in index['weight_map'].items()}
        except (KeyError, AttributeError, TypeError):
            raise CheckpointError(f'{WEIGHTS_INDEX_FILE} in {directory} has no weight_map') from None
        for shard in sorted(set(mapping.values())):
            if not shard.is_file():
                raise _missing(directory, shard.name)
        return mapping
    path = directory / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework='pt', device='cpu') as f:
            return {k: path for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f'cannot read {WEIGHTS_FILE} in {directory}: {exc}') from None


def _inside(directory: Path, name) -> Path:
    """The file ``name`` of the checkpoint, refused unless it lies inside ``directory``."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f'{WEIGHTS_INDEX_FILE}: shard names must be file names, got {name!r}')
    root = directory.resolve()
    path = (root / name).resolve()
    if path == root or root not in path.parents:
        raise CheckpointError(f'{WEIGHTS_INDEX_FILE} names the shard {name!r}, which is outside '
                              f'the checkpoint directory {directory}')
    return path


def iter_tensors(files: dict[str, Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (checkpoint key, CPU tensor) one at a time, one shard open at a time."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    for path, keys in by_file.items():
        with safe_open(str(path), framework='pt', device='cpu') as f:
            available = set(f.keys())
            for key in keys:
                if key not in available:
                    raise CheckpointError(f'tensor {key} is listed in the index but missing from '
                                          f'{path.name}')
                yield key, f.get_tensor(key)


def check_keys(expected: dict[str, tuple[int, ...]], present: set[str]) -> None:
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f'missing tensors ({len(missing)}): {", ".join(missing[:20])}'
                         + (' ...' if len(missing) > 20 else ''))
        if unexpected:
            parts.append(f'unexpected tensors ({len(unexpected)}): {", ".join(unexpected[:20])}'
                         + (' ...' if len(unexpected) > 20 else ''))
        raise CheckpointError('checkpoint does not match the architecture in config.json: '
                              + '; '.join(parts))
