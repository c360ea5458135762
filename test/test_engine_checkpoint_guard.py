"""Broken checkpoints are refused before anything is built, each with a one-line CheckpointError
(never a traceback) from load_policy and from openvla-predict: absurd dimensions, a model too
large for the machine, shard paths outside the checkpoint, and statistics that can never give a
finite action."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from openvla_ros.cli import predict
from openvla_ros.engine import PolicyOptions, load_policy
from openvla_ros.engine.api import CheckpointError

pytestmark = pytest.mark.usefixtures('single_torch_thread')


def _text(**kw):
    return lambda c: c['text_config'].update(kw)


def _timm(**kw):
    return lambda c: c['timm_model_kwargs'][0].update(kw)


def _set(**kw):
    return lambda c: c.update(kw)


def _stats(action_update):
    def edit(c):
        c['norm_stats']['bridge_orig']['action'].update(action_update)
    return edit


CONFIG_CASES = {
    'layers 1e6': (_text(num_hidden_layers=10**6), 'num_hidden_layers = 1000000 is outside'),
    'timm depth 1e6': (_timm(depth=10**6), 'depth = 1000000 is outside'),
    'hidden 2^40': (_text(hidden_size=2**40), 'hidden_size = 1099511627776 is outside'),
    'bins 1e12': (_set(n_action_bins=10**12), 'n_action_bins = 1000000000000 is outside'),
    'bins 0': (_set(n_action_bins=0), 'n_action_bins = 0 is outside'),
    'heads 0': (_text(num_attention_heads=0), 'num_attention_heads = 0 is outside'),
    'vocab 0': (_text(vocab_size=0), 'vocab_size = 0 is outside'),
    'kv heads not dividing': (_text(num_key_value_heads=3), 'multiple of num_key_value_heads'),
    'float layers': (_text(num_hidden_layers=2.5), 'must be an integer'),
    'eps nan': (_text(rms_norm_eps=float('nan')), 'rms_norm_eps must be a finite number'),
    'image size 0': (_set(image_sizes=[0, 0]), 'image_sizes[0] = 0 is outside'),
    'timm dim 2^40': (_timm(embed_dim=2**40), 'embed_dim = 1099511627776 is outside'),
    'unknown timm id': (_set(timm_model_ids=['no_such_vit', 'no_such_vit']), 'cannot be built'),
    'text_config a list': (_set(text_config=[1, 2]), 'malformed'),
    'too big for the machine': (_text(hidden_size=16384, num_hidden_layers=512,
                                      num_attention_heads=128, num_key_value_heads=128),
                                'needs about'),
    'stats nan': (_stats({'q01': [float('nan')] * 7}), 'q01 must hold finite numbers'),
    'stats strings': (_stats({'q99': ['a'] * 7}), 'q99 must hold finite numbers'),
    'stats mask strings': (_stats({'mask': ['yes'] * 7}), 'mask must hold true/false'),
}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(ckpt, edit):
    path = ckpt / 'config.json'
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _predict_cli(ckpt, tmp_path, capsys) -> tuple[int, str]:
    image = tmp_path / 'scene.png'
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    rc = predict.main(['--checkpoint', str(ckpt), '--image', str(image), '--instruction', 'wipe'])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize('case', sorted(CONFIG_CASES))
def test_broken_config_refused(case, tiny_checkpoint, tmp_path, capsys):
    edit, message = CONFIG_CASES[case]
    ckpt = _copy(tiny_checkpoint, tmp_path / 'ckpt')
    _edit_config(ckpt, edit)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_policy(ckpt)
    rc, err = _predict_cli(ckpt, tmp_path, capsys)
    assert rc == 1
    assert err.startswith('error: ') and message in err and err.count('\n') == 1, err
    assert 'Traceback' not in err


def test_dataset_statistics_file_checked_too(tiny_checkpoint, tmp_path):
    ckpt = _copy(tiny_checkpoint, tmp_path / 'ckpt')
    stats = {'mine': {'action': {'q01': [0.0] * 7, 'q99': [float('nan')] * 7}}}
    (ckpt / 'dataset_statistics.json').write_text(json.dumps(stats))
    with pytest.raises(CheckpointError, match="'mine' are malformed: q99 must hold finite"):
        load_policy(ckpt)


def test_memory_refusal_gives_the_numbers(tiny_checkpoint, tmp_path):
    ckpt = _copy(tiny_checkpoint, tmp_path / 'ckpt')
    CONFIG_CASES['too big for the machine'][0](config := json.loads((ckpt / 'config.json').read_text()))
    (ckpt / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r'has [\d,]+ parameters and needs about [\d.]+ GiB '
                                              r'on cpu, but available RAM is [\d.]+ GiB'):
        load_policy(ckpt, PolicyOptions())


@pytest.mark.parametrize('shard', ['../etc/hostname', '/etc/hostname', '', 7])
def test_shard_outside_the_checkpoint_refused(shard, tmp_path, capsys):
    from openvla_ros.engine.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / 'sharded', shards=2)
    (tmp_path / 'etc').mkdir()
    (tmp_path / 'etc' / 'hostname').write_text('not a shard')
    index_path = ckpt / 'model.safetensors.index.json'
    index = json.loads(index_path.read_text())
    first = sorted(index['weight_map'])[0]
    index['weight_map'][first] = shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match='outside the checkpoint|must be file names'):
        load_policy(ckpt)
    rc, err = _predict_cli(ckpt, tmp_path, capsys)
    assert rc == 1 and err.startswith('error: ') and err.count('\n') == 1


def test_sharded_checkpoint_still_loads(tmp_path):
    from openvla_ros.engine.tiny import make_tiny_checkpoint

    policy = load_policy(make_tiny_checkpoint(tmp_path / 'sharded', shards=3))
    try:
        r = policy.predict(np.zeros((32, 32, 3), np.uint8), 'wipe', 'bridge_orig')
        assert np.all(np.isfinite(r.action))
    finally:
        policy.close()
