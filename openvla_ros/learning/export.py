"""Export a training dataset to the LeRobotDataset v2.1 layout (``openvla-dataset export``).

The layout LeRobot's ``LeRobotDataset`` (lerobot 0.1 to 0.3; lerobot >= 0.4 converts it to v3.0
with its ``convert_dataset_v21_to_v30``) and the trainers built on that format read::

    meta/info.json               codebase_version "v2.1", fps, features, totals, data_path
    meta/tasks.jsonl             {"task_index", "task"} per instruction
    meta/episodes.jsonl          {"episode_index", "tasks", "length"} per episode
    meta/episodes_stats.jsonl    {"episode_index", "stats": {feature: {min, max, mean, std, count}}}
    meta/stats.json              the same statistics over the whole dataset
    data/chunk-000/episode_000000.parquet
                                 one row per step: observation.images.primary (PNG, the frame the
                                 action was taken from), action float32[7] (dx, dy, dz, droll,
                                 dpitch, dyaw, gripper), timestamp, frame_index, episode_index,
                                 index, task_index
    dataset_statistics.json      upstream OpenVLA's normalisation statistics, copied unchanged
    meta/openvla_ros_source.json the source dataset's meta/info.json, for provenance

Images are stored in the parquet files as LeRobot "image" features (PNG bytes, Hugging Face
``datasets.Image`` schema), so no video encoder is needed; only ``pyarrow`` writes the files.
The frame rate is the embodiment's control rate (1 / ``control_period_s``).

The export is written into a temporary sibling directory and renamed to ``out`` when complete,
so a failure never leaves a half-written dataset, and an existing non-empty ``out`` is refused.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from openvla_ros.action_layout import dim_names
from openvla_ros.learning.dataset import (EPISODES_DIR, INFO_FILE, STATISTICS_FILE, DatasetError,
                                          action_histogram_lines, iter_episodes, refuse_used_directory)

CODEBASE_VERSION = 'v2.1'
CHUNKS_SIZE = 1000                                   # episodes per data/chunk-NNN folder (LeRobot's)
IMAGE_KEY = 'observation.images.primary'             # OpenVLA's name for the third-person camera
DATA_PATH = 'data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet'
TASKS_FILE = Path('meta') / 'tasks.jsonl'
EPISODES_FILE = Path('meta') / 'episodes.jsonl'
EPISODES_STATS_FILE = Path('meta') / 'episodes_stats.jsonl'
STATS_FILE = Path('meta') / 'stats.json'
SOURCE_INFO_FILE = Path('meta') / 'openvla_ros_source.json'
INDEX_FEATURES = ('timestamp', 'frame_index', 'episode_index', 'index', 'task_index')
FORMATS = ('lerobot',)


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError('pyarrow is not installed (it is in requirements.txt: run tools/setup.sh)') from None
    return pa, pq


def dataset_fps(info: dict) -> int | float:
    """Frames per second of a dataset: the embodiment's control rate, 1 / ``control_period_s``.

    Taken from the dataset's own ``control_period_s`` (bag builds record it), else from the
    embodiment it names, else from the default embodiment (the in-process collector's).
    """
    period = info.get('control_period_s')
    if period is None:
        from openvla_ros import defaults
        from openvla_ros.control.embodiment import load_embodiment
        name = info.get('embodiment') or defaults.DEFAULT_EMBODIMENT
        try:
            period = load_embodiment(name).control_period_s
        except Exception as exc:              # an unknown or broken embodiment file
            raise DatasetError(f'cannot tell the frame rate: embodiment {name!r}: {exc}') from None
    fps = 1.0 / float(period)
    return int(round(fps)) if abs(fps - round(fps)) < 1e-9 else fps


def is_lerobot_dataset(directory: str | Path) -> bool:
    path = Path(directory) / INFO_FILE
    if not path.is_file():
        return False
    try:
        return 'codebase_version' in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='PNG')
    return buf.getvalue()


def _feature_stats(values: np.ndarray) -> dict:
    """LeRobot's per-episode statistics of one non-image feature (reduced over the steps)."""
    a = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    return {'min': a.min(0).tolist(), 'max': a.max(0).tolist(), 'mean': a.mean(0).tolist(),
            'std': a.std(0).tolist(), 'count': [len(a)]}


def _image_stats(images: np.ndarray) -> dict:
    """LeRobot's image statistics: per channel, in [0, 1], shaped [3, 1, 1]."""
    x = images.astype(np.float64) / 255.0
    shape = lambda v: [[[float(c)]] for c in v]  # noqa: E731
    return {'min': shape(x.min((0, 1, 2))), 'max': shape(x.max((0, 1, 2))),
            'mean': shape(x.mean((0, 1, 2))), 'std': shape(x.std((0, 1, 2))), 'count': [len(x)]}


def _aggregate(stats: list[dict]) -> dict:
    """Statistics over several episodes from theirs (LeRobot's ``aggregate_stats``)."""
    out = {}
    for key in stats[0]:
        entries = [s[key] for s in stats]
        counts = np.array([e['count'][0] for e in entries], dtype=np.float64)
        means = np.array([e['mean'] for e in entries])
        variances = np.array([e['std'] for e in entries]) ** 2
        w = counts.reshape((-1,) + (1,) * (means.ndim - 1))
        total = counts.sum()
        mean = (means * w).sum(0) / total
        var = ((variances + (means - mean) ** 2) * w).sum(0) / total
        out[key] = {'min': np.min([e['min'] for e in entries], axis=0).tolist(),
                    'max': np.max([e['max'] for e in entries], axis=0).tolist(),
                    'mean': mean.tolist(), 'std': np.sqrt(var).tolist(), 'count': [int(total)]}
    return out


def export_lerobot(dataset: str | Path, out: str | Path, robot_type: str | None = None,
                   log=None) -> dict:
    """Write ``dataset`` (an ``openvla-dataset build`` / ``openvla-collect`` directory) to ``out``
    in the LeRobotDataset v2.1 layout; returns the written ``meta/info.json``."""
    dataset, out = Path(dataset), Path(out)
    if is_lerobot_dataset(dataset):
        raise DatasetError(f'{dataset}: is already a LeRobot dataset')
    if not any((dataset / EPISODES_DIR).glob('episode_*.npz')):
        raise DatasetError(f'{dataset}: not a training dataset (no {EPISODES_DIR}/episode_*.npz; '
                           'build one with openvla-dataset build or openvla-collect)')
    refuse_used_directory(out)
    pa, pq = _pyarrow()
    info_path = dataset / INFO_FILE
    source_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    fps = dataset_fps(source_info)
    robot_type = robot_type or source_info.get('embodiment')
    if robot_type is None:
        from openvla_ros import defaults
        robot_type = defaults.DEFAULT_EMBODIMENT

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.partial-', dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)                 # mkdtemp's 0700 would stay on the renamed directory
    try:
        tasks: dict[str, int] = {}
        episodes, episode_stats = [], []
        features = None
        total = 0
        for ep_index, episode in enumerate(iter_episodes(dataset)):
            n, dim = episode.actions.shape
            height, width = episode.images.shape[1:3]
            ep_features = {
                IMAGE_KEY: {'dtype': 'image', 'shape': [int(height), int(width), 3],
                            'names': ['height', 'width', 'channels']},
                'action': {'dtype': 'float32', 'shape': [int(dim)], 'names': dim_names(dim)},
                **{k: {'dtype': 'float32' if k == 'timestamp' else 'int64', 'shape': [1], 'names': None}
                   for k in INDEX_FEATURES}}
            if features is None:
                features = ep_features
            elif ep_features != features:
                raise DatasetError(f'{dataset}: episode {ep_index} ({episode.source}) has images '
                                   f'{ep_features[IMAGE_KEY]["shape"]} / action {ep_features["action"]["shape"]}, '
                                   f'episode 0 {features[IMAGE_KEY]["shape"]} / {features["action"]["shape"]}')
            task_index = tasks.setdefault(episode.instruction, len(tasks))
            frame_index = np.arange(n, dtype=np.int64)
            columns = {
                IMAGE_KEY: [{'bytes': _png(img), 'path': None} for img in episode.images],
                'action': episode.actions.astype(np.float32),
                'timestamp': (frame_index / fps).astype(np.float32),
                'frame_index': frame_index,
                'episode_index': np.full(n, ep_index, dtype=np.int64),
                'index': np.arange(total, total + n, dtype=np.int64),
                'task_index': np.full(n, task_index, dtype=np.int64)}
            table = _arrow_table(pa, columns, dim)
            path = tmp / DATA_PATH.format(episode_chunk=ep_index // CHUNKS_SIZE, episode_index=ep_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            stats = {IMAGE_KEY: _image_stats(episode.images),
                     **{k: _feature_stats(columns[k]) for k in columns if k != IMAGE_KEY}}
            episode_stats.append(stats)
            episodes.append({'episode_index': ep_index, 'tasks': [episode.instruction], 'length': int(n)})
            total += n
            if log is not None:
                log(f'episode {ep_index}: {n} steps, task {task_index}')
        meta = tmp / 'meta'
        meta.mkdir()
        info = {'codebase_version': CODEBASE_VERSION, 'robot_type': robot_type,
                'total_episodes': len(episodes), 'total_frames': int(total), 'total_tasks': len(tasks),
                'total_videos': 0, 'total_chunks': (len(episodes) - 1) // CHUNKS_SIZE + 1,
                'chunks_size': CHUNKS_SIZE, 'fps': fps, 'splits': {'train': f'0:{len(episodes)}'},
                'data_path': DATA_PATH, 'video_path': None, 'features': features}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=4))
        _write_jsonl(tmp / TASKS_FILE, [{'task_index': i, 'task': t} for t, i in tasks.items()])
        _write_jsonl(tmp / EPISODES_FILE, episodes)
        _write_jsonl(tmp / EPISODES_STATS_FILE, [{'episode_index': i, 'stats': s}
                                                 for i, s in enumerate(episode_stats)])
        (tmp / STATS_FILE).write_text(json.dumps(_aggregate(episode_stats), indent=4))
        (tmp / SOURCE_INFO_FILE).write_text(json.dumps(source_info, indent=2))
        if (dataset / STATISTICS_FILE).is_file():
            shutil.copyfile(dataset / STATISTICS_FILE, tmp / STATISTICS_FILE)
        refuse_used_directory(out)
        if out.is_dir():
            out.rmdir()                       # empty (checked): the rename needs the name free
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _arrow_table(pa, columns: dict, dim: int):
    """One episode's table with Hugging Face ``datasets`` feature metadata, as LeRobot writes it."""
    hf_features = {
        IMAGE_KEY: {'_type': 'Image'},
        'action': {'feature': {'dtype': 'float32', '_type': 'Value'}, 'length': int(dim), '_type': 'Sequence'},
        **{k: {'dtype': 'float32' if k == 'timestamp' else 'int64', '_type': 'Value'} for k in INDEX_FEATURES}}
    image_type = pa.struct([('bytes', pa.binary()), ('path', pa.string())])
    arrays = {
        IMAGE_KEY: pa.array(columns[IMAGE_KEY], type=image_type),
        'action': pa.FixedSizeListArray.from_arrays(pa.array(columns['action'].reshape(-1)), int(dim)),
        **{k: pa.array(columns[k]) for k in INDEX_FEATURES}}
    metadata = {b'huggingface': json.dumps({'info': {'features': hf_features}}).encode()}
    return pa.table(arrays).replace_schema_metadata(metadata)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))


def read_lerobot_actions(directory: str | Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """``meta/info.json``, every step's action and episode index of an exported dataset (pyarrow)."""
    _, pq = _pyarrow()
    directory = Path(directory)
    info = json.loads((directory / INFO_FILE).read_text())
    files = sorted((directory / 'data').glob('chunk-*/episode_*.parquet'))
    if not files:
        return info, np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    tables = [pq.read_table(f, columns=['action', 'episode_index']) for f in files]
    actions = np.concatenate([np.asarray(t.column('action').to_pylist(), dtype=np.float32) for t in tables])
    episode = np.concatenate([t.column('episode_index').to_numpy() for t in tables])
    return info, actions, episode


def lerobot_summary(directory: str | Path, bins: int = 10) -> str:
    """``openvla-dataset info`` of an exported LeRobot dataset: totals, tasks, features, actions."""
    directory = Path(directory)
    try:
        info, actions, episode_index = read_lerobot_actions(directory)
        tasks = [json.loads(line) for line in (directory / TASKS_FILE).read_text().splitlines() if line.strip()]
        episodes = [json.loads(line) for line in (directory / EPISODES_FILE).read_text().splitlines()
                    if line.strip()]
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f'{directory}: cannot read the LeRobot dataset ({exc})') from None
    lengths = np.array([e['length'] for e in episodes]) if episodes else np.zeros(1, int)
    lines = [f'{directory}: LeRobot dataset {info["codebase_version"]}, {info["total_episodes"]} episodes, '
             f'{info["total_frames"]} frames at {info["fps"]} fps, length min {lengths.min()} / mean '
             f'{lengths.mean():.1f} / max {lengths.max()}, robot {info.get("robot_type")}']
    for t in tasks:
        n = sum(t['task'] in e['tasks'] for e in episodes)
        lines.append(f'  task {t["task_index"]:3d}: {n:4d} x {t["task"]!r}')
    for key, ft in info['features'].items():
        names = f' {ft["names"]}' if ft.get('names') else ''
        lines.append(f'  feature {key}: {ft["dtype"]} {ft["shape"]}{names}')
    lines += action_histogram_lines(actions, info['features'].get('action', {}).get('names'), bins)
    if len(np.unique(episode_index)) != info['total_episodes'] or len(actions) != info['total_frames']:
        lines.append(f'  warning: the parquet files hold {len(actions)} frames of '
                     f'{len(np.unique(episode_index))} episodes, meta/info.json says '
                     f'{info["total_frames"]} / {info["total_episodes"]}')
    if (directory / STATISTICS_FILE).is_file():
        lines.append(f'  upstream statistics: {directory / STATISTICS_FILE}')
    return '\n'.join(lines)


def export(dataset: str | Path, out: str | Path, fmt: str = 'lerobot', log=None) -> dict:
    if fmt != 'lerobot':
        raise DatasetError(f'unknown export format {fmt!r} (one of: {", ".join(FORMATS)})')
    return export_lerobot(dataset, out, log=log)
