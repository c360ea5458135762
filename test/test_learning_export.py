"""openvla-dataset export --format lerobot: the LeRobotDataset v2.1 layout, read back and compared.

A small dataset is collected with the real in-process collector, exported, and read back with
pyarrow (a project dependency): every step's action, frame, task, timestamp and index must match
the source dataset, the metadata must describe it, and the upstream statistics travel unchanged.

lerobot itself cannot be installed next to the pinned torch (every release for Python 3.11 pins
torch < 2.11), so reading the export with lerobot's own ``LeRobotDataset`` runs only when
OPENVLA_LEROBOT_PYTHON names a Python that imports ``lerobot`` (v2.1 reader: lerobot 0.1 to 0.3);
see the README, "Dataset format".
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openvla_ros.action_layout import ACTION_DIM_NAMES
from openvla_ros.learning.collect import collect_in_process
from openvla_ros.learning.dataset import STATISTICS_FILE, DatasetError, iter_episodes
from openvla_ros.learning.export import (IMAGE_KEY, dataset_fps, export_lerobot, is_lerobot_dataset,
                                         read_lerobot_actions)

pa = pytest.importorskip('pyarrow')
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ['reach_red_block', 'reach_green_can']
SEEDS = [0, 1]
IMAGE = 32
FPS = 5


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, '-m', 'openvla_ros.cli.dataset', *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})


@pytest.fixture(scope='module')
def source(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp('export') / 'data'
    info = collect_in_process(TASKS, SEEDS, data, image_size=IMAGE, progress=False)
    assert info['episodes'] == len(TASKS) * len(SEEDS), info['failed_demonstrations']
    return data


@pytest.fixture(scope='module')
def exported(source) -> Path:
    out = source.parent / 'lerobot'
    r = _cli('export', source, '--format', 'lerobot', '--out', out)
    assert r.returncode == 0, r.stderr
    assert 'LeRobot dataset v2.1' in r.stdout
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_layout_and_metadata(source, exported):
    episodes = list(iter_episodes(source))
    info = json.loads((exported / 'meta' / 'info.json').read_text())
    assert info['codebase_version'] == 'v2.1' and info['fps'] == FPS
    assert info['total_episodes'] == len(episodes) == len(TASKS) * len(SEEDS)
    assert info['total_frames'] == sum(len(e.actions) for e in episodes)
    assert info['video_path'] is None and info['total_videos'] == 0
    assert info['splits'] == {'train': f'0:{len(episodes)}'}
    assert info['features']['action'] == {'dtype': 'float32', 'shape': [7], 'names': list(ACTION_DIM_NAMES)}
    assert info['features'][IMAGE_KEY] == {'dtype': 'image', 'shape': [IMAGE, IMAGE, 3],
                                           'names': ['height', 'width', 'channels']}
    assert set(info['features']) == {IMAGE_KEY, 'action', 'timestamp', 'frame_index', 'episode_index',
                                     'index', 'task_index'}
    files = sorted(p.relative_to(exported).as_posix() for p in exported.rglob('*.parquet'))
    assert files == [info['data_path'].format(episode_chunk=0, episode_index=i) for i in range(len(episodes))]
    assert files[0] == 'data/chunk-000/episode_000000.parquet'

    tasks = _jsonl(exported / 'meta' / 'tasks.jsonl')
    assert [t['task_index'] for t in tasks] == list(range(len(tasks))) == list(range(info['total_tasks']))
    assert {t['task'] for t in tasks} == {e.instruction for e in episodes}
    eps = _jsonl(exported / 'meta' / 'episodes.jsonl')
    assert eps == [{'episode_index': i, 'tasks': [e.instruction], 'length': len(e.actions)}
                   for i, e in enumerate(episodes)]
    ep_stats = _jsonl(exported / 'meta' / 'episodes_stats.jsonl')
    assert [s['episode_index'] for s in ep_stats] == list(range(len(episodes)))
    for s, e in zip(ep_stats, episodes):
        assert s['stats']['action']['count'] == [len(e.actions)]
        np.testing.assert_allclose(s['stats']['action']['mean'], e.actions.mean(0), atol=1e-6)
        assert np.asarray(s['stats'][IMAGE_KEY]['mean']).shape == (3, 1, 1)
    stats = json.loads((exported / 'meta' / 'stats.json').read_text())
    actions = np.concatenate([e.actions for e in episodes])
    np.testing.assert_allclose(stats['action']['mean'], actions.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats['action']['std'], actions.std(0), atol=1e-6)
    np.testing.assert_allclose(stats['action']['min'], actions.min(0), atol=1e-6)
    # upstream's statistics travel unchanged, the source info is kept for provenance
    assert (exported / STATISTICS_FILE).read_bytes() == (source / STATISTICS_FILE).read_bytes()
    assert json.loads((exported / 'meta' / 'openvla_ros_source.json').read_text()) == \
        json.loads((source / 'meta' / 'info.json').read_text())


def test_parquet_rows_match_the_source(source, exported):
    from PIL import Image

    tasks = {t['task_index']: t['task'] for t in _jsonl(exported / 'meta' / 'tasks.jsonl')}
    index = 0
    for i, episode in enumerate(iter_episodes(source)):
        table = pq.read_table(exported / f'data/chunk-000/episode_{i:06d}.parquet')
        # the Hugging Face datasets schema LeRobot loads the files with (images decode to PIL)
        hf = json.loads(table.schema.metadata[b'huggingface'])['info']['features']
        assert hf[IMAGE_KEY] == {'_type': 'Image'}
        assert hf['action'] == {'feature': {'dtype': 'float32', '_type': 'Value'}, 'length': 7, '_type': 'Sequence'}
        assert table.schema.field('action').type == pa.list_(pa.float32(), 7)
        rows = table.to_pydict()
        n = len(episode.actions)
        np.testing.assert_array_equal(np.asarray(rows['action'], np.float32), episode.actions.astype(np.float32))
        frames = np.stack([np.asarray(Image.open(io.BytesIO(r['bytes']))) for r in rows[IMAGE_KEY]])
        np.testing.assert_array_equal(frames, episode.images)
        assert rows['frame_index'] == list(range(n))
        assert rows['episode_index'] == [i] * n
        assert rows['index'] == list(range(index, index + n))
        np.testing.assert_allclose(rows['timestamp'], np.arange(n) / FPS, atol=1e-6)
        assert {tasks[t] for t in rows['task_index']} == {episode.instruction}
        index += n
    info, actions, episode_index = read_lerobot_actions(exported)
    assert actions.shape == (info['total_frames'], 7) and len(np.unique(episode_index)) == info['total_episodes']


def test_info_summarises_the_export(exported):
    assert is_lerobot_dataset(exported)
    r = _cli('info', exported)
    assert r.returncode == 0, r.stderr
    assert 'LeRobot dataset v2.1, 4 episodes' in r.stdout and f'at {FPS} fps' in r.stdout
    for name in ACTION_DIM_NAMES:
        assert name in r.stdout
    assert 'reach the red block' in r.stdout or 'touch the red block' in r.stdout
    r = _cli('info', exported, '--json')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['info']['codebase_version'] == 'v2.1'


def test_fps_is_the_control_rate():
    from openvla_ros import defaults
    from openvla_ros.control.embodiment import load_embodiment

    assert dataset_fps({}) == round(1 / load_embodiment(defaults.DEFAULT_EMBODIMENT).control_period_s) == FPS
    assert dataset_fps({'control_period_s': 0.2}) == 5
    assert dataset_fps({'control_period_s': 0.1}) == 10


def test_refuses_a_non_empty_out_and_keeps_its_files(source, tmp_path):
    out = tmp_path / 'taken'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    r = _cli('export', source, '--out', out)
    assert r.returncode == 2 and 'not empty' in r.stderr
    assert [p.name for p in out.iterdir()] == ['notes.txt'] and (out / 'notes.txt').read_text() == 'mine'
    a_file = tmp_path / 'a_file'
    a_file.write_text('mine')
    with pytest.raises(DatasetError, match='not a directory'):
        export_lerobot(source, a_file)
    assert a_file.read_text() == 'mine'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file', 'taken']   # no partial left behind
    empty = tmp_path / 'empty'
    empty.mkdir()
    info = export_lerobot(source, empty)             # an empty directory is fine
    assert info['total_episodes'] == 4 and is_lerobot_dataset(empty)


def test_refuses_what_is_not_a_dataset(exported, tmp_path):
    (tmp_path / 'nothing').mkdir()
    r = _cli('export', tmp_path / 'nothing', '--out', tmp_path / 'out')
    assert r.returncode == 2 and 'not a training dataset' in r.stderr
    r = _cli('export', exported, '--out', tmp_path / 'out')
    assert r.returncode == 2 and 'already a LeRobot dataset' in r.stderr
    r = _cli('export', tmp_path / 'missing', '--out', tmp_path / 'out')
    assert r.returncode == 2
    assert not (tmp_path / 'out').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['nothing']


def test_info_names_a_broken_export(exported, tmp_path):
    import shutil

    broken = tmp_path / 'broken'
    shutil.copytree(exported, broken)
    (broken / 'meta' / 'tasks.jsonl').unlink()
    r = _cli('info', broken)
    assert r.returncode == 2 and 'cannot read the LeRobot dataset' in r.stderr, r.stderr


READ_WITH_LEROBOT = r'''
import json, sys
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset('local/openvla_ros_export', root=sys.argv[1])
rows = []
for i in range(len(ds)):
    item = ds[i]
    img = item['observation.images.primary']            # float [3, H, W] in [0, 1]
    rows.append({'action': item['action'].tolist(), 'task': item['task'],
                 'episode_index': int(item['episode_index']), 'frame_index': int(item['frame_index']),
                 'timestamp': float(item['timestamp']),
                 'image': (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).tolist()})
print(json.dumps({'fps': ds.fps, 'num_episodes': ds.num_episodes, 'num_frames': ds.num_frames,
                  'camera_keys': ds.meta.camera_keys, 'rows': rows}))
'''


@pytest.mark.skipif(not os.environ.get('OPENVLA_LEROBOT_PYTHON'),
                    reason='OPENVLA_LEROBOT_PYTHON (a Python with lerobot <= 0.3) is not set')
def test_lerobot_reads_the_export(source, exported, tmp_path):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf'), 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([os.environ['OPENVLA_LEROBOT_PYTHON'], '-c', READ_WITH_LEROBOT, str(exported)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    episodes = list(iter_episodes(source))
    assert got['fps'] == FPS and got['num_episodes'] == len(episodes)
    assert got['camera_keys'] == [IMAGE_KEY]
    expected = [(i, k, e) for i, e in enumerate(episodes) for k in range(len(e.actions))]
    assert got['num_frames'] == len(got['rows']) == len(expected)
    for row, (i, k, e) in zip(got['rows'], expected):
        assert (row['episode_index'], row['frame_index'], row['task']) == (i, k, e.instruction)
        np.testing.assert_allclose(row['action'], e.actions[k], atol=1e-6)
        assert row['timestamp'] == pytest.approx(k / FPS, abs=1e-6)
        np.testing.assert_array_equal(np.asarray(row['image'], np.uint8), e.images[k])
