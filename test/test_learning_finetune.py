"""Fine-tuning the native model on a small dataset: the loss falls, resume continues the same run,
the export loads in the engine, and bad dataset/checkpoint pairs are refused."""
import json

import numpy as np
import pytest

from openvla_ros.engine.policy import PolicyOptions, load_policy
from openvla_ros.learning.dataset import Episode, finish_dataset, write_episode
from openvla_ros.learning.finetune import (FinetuneError, TrainConfig, action_token_ids,
                                           normalize_actions, train)
from openvla_ros.learning.small import make_small_checkpoint

IMAGE = 28


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return make_small_checkpoint(tmp_path_factory.mktemp('init'), image_size=IMAGE)


def _dataset(directory, dim=7):
    rng = np.random.default_rng(0)
    for i, colour in enumerate(([255, 0, 0], [0, 0, 255])):
        images = np.broadcast_to(np.array(colour, np.uint8), (4, IMAGE, IMAGE, 3)).copy()
        actions = np.column_stack([rng.normal(0, 0.01, (4, dim - 1)), np.full(4, i % 2)])
        write_episode(directory, i, Episode(images, actions, f'reach the block {i}', f'ep {i}'))
    finish_dataset(directory)
    return directory


def test_action_tokens_decode_back_to_the_bin_the_engine_reads():
    stats = {'q01': [-1.0, 0.0], 'q99': [1.0, 1.0], 'mask': [True, False]}
    norm = normalize_actions(np.array([[-1.0, 1.0], [1.0, 0.0], [0.001, 1.0]]), stats)
    tokens = action_token_ids(norm, 32000)
    # +1 normalises to just below 1 (upstream's 1e-8 in the denominator), so bin 255, not 256
    assert tokens[0, 0] == 31999 and tokens[1, 0] == 31745 and tokens[0, 1] == 31744
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    decoded = centers[np.clip(32000 - tokens - 1, 0, 254)]
    assert np.all(np.abs(decoded - norm) <= 1 / 255 + 1e-9)


def test_training_lowers_the_loss_resumes_exactly_and_exports(checkpoint, tmp_path):
    data = _dataset(tmp_path / 'data')
    cfg = dict(batch_size=4, learning_rate=3e-3, holdout_fraction=0.0, eval_every=2, save_every=2,
               threads=2)
    full = train(checkpoint, data, tmp_path / 'a', TrainConfig(steps=4, **cfg), progress=False)
    losses = [s['loss'] for s in full['train']]
    assert losses[-1] < losses[0]
    train(checkpoint, data, tmp_path / 'b', TrainConfig(steps=2, **cfg), progress=False)
    resumed = train(checkpoint, data, tmp_path / 'b', TrainConfig(steps=4, **cfg), resume=True,
                    progress=False)
    np.testing.assert_allclose([s['loss'] for s in resumed['train']], losses, rtol=1e-5)

    exported = tmp_path / 'a' / 'checkpoint'
    stats = json.loads((exported / 'dataset_statistics.json').read_text())
    assert json.loads((exported / 'config.json').read_text())['norm_stats'] == stats
    policy = load_policy(exported, PolicyOptions(dtype='float32'))
    result = policy.predict(np.zeros((40, 60, 3), np.uint8), 'reach the block 0')
    assert result.unnorm_key == 'sim_widowx' and result.action.shape == (7,)


def test_lora_refuses_a_dataset_with_another_action_dimension(checkpoint, tmp_path):
    data = _dataset(tmp_path / 'data8', dim=8)
    with pytest.raises(FinetuneError, match='7.*-D actions, the dataset has 8-D'):
        train(checkpoint, data, tmp_path / 'c', TrainConfig(steps=1, mode='lora'), progress=False)
