"""The training dataset: one file per episode plus upstream-format normalisation statistics.

Layout of a dataset directory::

    dataset_statistics.json          {key: {"action": {mean, std, max, min, q01, q99, mask},
                                            "num_transitions", "num_trajectories"}} (upstream's)
    meta/info.json                   episodes, lengths, instructions, image size, idle counts
    episodes/episode_000000.npz      images uint8 [T, H, W, 3], actions float32 [T, 7],
                                     instruction (str)

Each episode is written to a temporary name and renamed when complete, so an error in a later
episode never loses or corrupts one already converted.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openvla_ros.action_layout import GRIPPER_INDEX, MIN_ACTION_DIM

STATISTICS_FILE = 'dataset_statistics.json'
INFO_FILE = Path('meta') / 'info.json'
EPISODES_DIR = 'episodes'
DEFAULT_DATASET_KEY = 'sim_widowx'
# Bridge's mask: the six pose deltas are normalised with q01/q99, the absolute gripper is not.
BRIDGE_MASK = [True] * GRIPPER_INDEX + [False]


class DatasetError(ValueError):
    """Bad input to the dataset builder or reader; the message names the episode."""


@dataclass
class Episode:
    images: np.ndarray        # uint8 [T, H, W, 3], the frame each action was taken from
    actions: np.ndarray       # float [T, 7]
    instruction: str
    source: str = ''          # where it came from (bag path, seed), for error messages

    def check(self, name: str) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DatasetError(f'{name}: images must be uint8 [T, H, W, 3], got '
                               f'{self.images.dtype} {self.images.shape}')
        if self.actions.ndim != 2 or self.actions.shape[0] != self.images.shape[0]:
            raise DatasetError(f'{name}: {self.actions.shape[0]} actions for '
                               f'{self.images.shape[0]} frames')
        if self.actions.shape[0] < 1:
            raise DatasetError(f'{name}: no steps left')
        if not np.all(np.isfinite(self.actions)):
            raise DatasetError(f'{name}: non-finite actions')
        if not self.instruction.strip():
            raise DatasetError(f'{name}: empty instruction')


def compute_statistics(actions: np.ndarray, num_trajectories: int,
                       mask: list[bool] | None = None) -> dict:
    """Upstream's ``dataset_statistics.json`` entry for one dataset (``get_dataset_statistics``).

    Raises :class:`DatasetError` when a normalised dimension has q01 == q99: every value would
    then map to one bin and un-normalisation could not recover the action.
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise DatasetError(f'no actions to compute statistics from (shape {a.shape})')
    mask = list(BRIDGE_MASK if mask is None and a.shape[1] == MIN_ACTION_DIM
                else mask if mask is not None else [True] * a.shape[1])
    if len(mask) != a.shape[1]:
        raise DatasetError(f'mask has {len(mask)} entries, actions have {a.shape[1]} dimensions')
    q01 = np.quantile(a, 0.01, axis=0)
    q99 = np.quantile(a, 0.99, axis=0)
    flat = [i for i in range(a.shape[1]) if mask[i] and not q99[i] > q01[i]]
    if flat:
        raise DatasetError(f'degenerate action statistics: q01 == q99 in dimension(s) {flat} '
                           f'(values {q01[flat].tolist()}); the demonstrations never vary there, '
                           'so those dimensions cannot be normalised: unmask them or record '
                           'more varied data')
    return {'action': {'mean': a.mean(0).tolist(), 'std': a.std(0).tolist(),
                       'max': a.max(0).tolist(), 'min': a.min(0).tolist(),
                       'q01': q01.tolist(), 'q99': q99.tolist(), 'mask': mask},
            'num_transitions': int(a.shape[0]), 'num_trajectories': int(num_trajectories)}


def refuse_used_directory(out: Path) -> None:
    """A tool writes a new dataset only into an absent or empty ``out``: never over a user's files."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f'{out}: exists and is not a directory (refusing to replace it)')
    if out.is_dir() and any(out.iterdir()):
        raise DatasetError(f'{out}: exists and is not empty (refusing to write into it; '
                           'choose a new directory)')


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(path.name + '.partial')
    with open(tmp, 'wb') as fh:
        write(fh)
    os.replace(tmp, path)


def write_episode(out: Path, index: int, episode: Episode) -> Path:
    name = f'episode_{index:06d}'
    episode.check(f'{name} ({episode.source})' if episode.source else name)
    directory = out / EPISODES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f'{name}.npz'
    _atomic_write_bytes(path, lambda fh: np.savez(
        fh, images=episode.images, actions=episode.actions.astype(np.float32),
        instruction=np.array(episode.instruction), source=np.array(episode.source)))
    return path


def finish_dataset(out: Path, key: str = DEFAULT_DATASET_KEY, extra_info: dict | None = None,
                   mask: list[bool] | None = None) -> dict:
    """Statistics and meta/info.json over every episode file in ``out`` (``mask``: which
    dimensions are normalised, :func:`compute_statistics`'s default when None)."""
    episodes = list(iter_episodes(out))
    if not episodes:
        raise DatasetError(f'{out}: no episodes')
    actions = np.concatenate([e.actions for e in episodes])
    dims = {e.actions.shape[1] for e in episodes}
    if len(dims) != 1:
        raise DatasetError(f'{out}: episodes disagree on the action dimension ({sorted(dims)})')
    stats = {key: compute_statistics(actions, len(episodes), mask)}
    (out / STATISTICS_FILE).write_text(json.dumps(stats, indent=2))
    info = {'format': 'openvla_ros-npz-v1', 'dataset_key': key, 'episodes': len(episodes),
            'transitions': int(actions.shape[0]),
            'lengths': [int(e.actions.shape[0]) for e in episodes],
            'instructions': sorted({e.instruction for e in episodes}),
            'image_shape': list(episodes[0].images.shape[1:]), **(extra_info or {})}
    (out / INFO_FILE).parent.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def iter_episodes(directory: str | Path):
    directory = Path(directory)
    files = sorted((directory / EPISODES_DIR).glob('episode_*.npz'))
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as data:
                yield Episode(images=data['images'], actions=data['actions'].astype(np.float64),
                              instruction=str(data['instruction']), source=str(data['source']))
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f'{path.name}: cannot read ({exc})') from None


def load_statistics(directory: str | Path) -> dict:
    path = Path(directory) / STATISTICS_FILE
    if not path.is_file():
        raise DatasetError(f'{directory}: no {STATISTICS_FILE} (build the dataset first)')
    return json.loads(path.read_text())


def action_histogram_lines(actions: np.ndarray, names: list[str] | None = None, bins: int = 10) -> list[str]:
    """One text line per action dimension: its name, range and a ``bins``-bin histogram."""
    from openvla_ros.action_layout import dim_names

    dims = actions.shape[1] if actions.size else 0
    names = names or dim_names(dims)
    lines = []
    for i in range(dims):
        counts, edges = np.histogram(actions[:, i], bins=bins)
        lines.append(f'  {names[i]:>8s} [{edges[0]:+.4f}, {edges[-1]:+.4f}] ' + ' '.join(f'{c:4d}' for c in counts))
    return lines


def summary(directory: str | Path, bins: int = 10) -> str:
    """Episodes, lengths and per-dimension action histograms as text (``openvla-dataset info``)."""
    episodes = list(iter_episodes(directory))
    if not episodes:
        raise DatasetError(f'{directory}: no episodes')
    lengths = np.array([len(e.actions) for e in episodes])
    actions = np.concatenate([e.actions for e in episodes])
    lines = [f'{directory}: {len(episodes)} episodes, {int(lengths.sum())} steps, length '
             f'min {lengths.min()} / mean {lengths.mean():.1f} / max {lengths.max()}, images '
             f'{episodes[0].images.shape[1:]}']
    for instruction in sorted({e.instruction for e in episodes}):
        lines.append(f'  {sum(e.instruction == instruction for e in episodes):4d} x {instruction!r}')
    lines += action_histogram_lines(actions, bins=bins)
    return '\n'.join(lines)
