"""Action tokens -> normalised bins -> un-normalised actions (upstream ``predict_action``).

Quirk kept on purpose: 256 bin *edges* give 255 centres, and a decoded index is clipped to 0..254,
so token 31744 folds onto the same value as 31745 and neither -1 nor +1 can be produced. Ids
outside the action range (text tokens, EOS, padding rows) are clamped to the extreme bins.
"""
from __future__ import annotations

import numpy as np

from .api import InvalidModelOutputError, UnknownUnnormKeyError


def bin_centers(n_action_bins: int = 256) -> np.ndarray:
    edges = np.linspace(-1.0, 1.0, n_action_bins)
    return (edges[:-1] + edges[1:]) / 2.0


def tokens_to_normalized(token_ids: np.ndarray, action_vocab_size: int, centers: np.ndarray) -> np.ndarray:
    index = np.clip(action_vocab_size - np.asarray(token_ids, dtype=np.int64) - 1, 0, len(centers) - 1)
    return centers[index]


def resolve_unnorm_key(norm_stats: dict, unnorm_key: str | None) -> str:
    keys = sorted(norm_stats)
    if unnorm_key is not None and not isinstance(unnorm_key, str):
        raise UnknownUnnormKeyError(f'unnorm_key must be a str or None, got '
                                    f'{type(unnorm_key).__name__}; available keys: {", ".join(keys)}')
    if unnorm_key is None:
        if len(keys) != 1:
            raise UnknownUnnormKeyError(
                f'this checkpoint has {len(keys)} sets of action statistics, so an unnorm_key is '
                f'required; available keys: {", ".join(keys)}')
        return keys[0]
    if unnorm_key not in norm_stats:
        raise UnknownUnnormKeyError(f'unknown unnorm_key {unnorm_key!r}; available keys: '
                                    f'{", ".join(keys)}')
    return unnorm_key


def action_dim(norm_stats: dict, key: str) -> int:
    return len(norm_stats[key]['action']['q01'])


def unnormalize(normalized: np.ndarray, action_stats: dict) -> np.ndarray:
    q01 = np.asarray(action_stats['q01'], dtype=np.float64)
    q99 = np.asarray(action_stats['q99'], dtype=np.float64)
    mask = np.asarray(action_stats.get('mask', np.ones_like(q01, dtype=bool)), dtype=bool)
    scaled = 0.5 * (normalized + 1.0) * (q99 - q01) + q01
    return np.where(mask, scaled, normalized)


def check_action(action: np.ndarray, expected_dim: int) -> np.ndarray:
    if action.shape != (expected_dim,):
        raise InvalidModelOutputError(f'model produced an action of shape {action.shape}, expected '
                                      f'({expected_dim},)')
    if not np.all(np.isfinite(action)):
        raise InvalidModelOutputError(f'model produced a non-finite action {action.tolist()}')
    return action
