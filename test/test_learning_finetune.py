"""Fine-tuning the native model on a small dataset: the loss falls, resume continues the same run,
the export loads in the engine, and bad dataset/checkpoint pairs are refused."""
import json

import numpy as np
import pytest
import torch

from openvla_ros.engine.policy import PolicyOptions, load_policy
from openvla_ros.learning.dataset import Episode, finish_dataset, write_episode
from openvla_ros.learning.finetune import (FinetuneError, Samples, SharedRows, TrainConfig, action_loss,
                                           action_token_ids, label_token_ids, normalize_actions,
                                           train)
from openvla_ros.learning.small import make_small_checkpoint

IMAGE = 28


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return make_small_checkpoint(tmp_path_factory.mktemp('init'), image_size=IMAGE)


def _dataset(directory, dim=7, key=None):
    rng = np.random.default_rng(0)
    for i, colour in enumerate(([255, 0, 0], [0, 0, 255])):
        images = np.broadcast_to(np.array(colour, np.uint8), (4, IMAGE, IMAGE, 3)).copy()
        actions = np.column_stack([rng.normal(0, 0.01, (4, dim - 1)), np.full(4, i % 2)])
        write_episode(directory, i, Episode(images, actions, f'reach the block {i}', f'ep {i}'))
    finish_dataset(directory, *([key] if key else []))
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


def test_samples_keep_one_pixel_tensor_per_distinct_frame(checkpoint, tmp_path):
    """A frame shared by several samples (a grounding scene labelled for several nouns, a
    repeated frame) is preprocessed and stored once; every sample still gets its own image."""
    data = _dataset(tmp_path / 'data')           # 2 episodes of 4 equal frames each
    policy = load_policy(checkpoint, PolicyOptions(dtype='float32'))
    try:
        samples = Samples(policy, data, None)
        assert len(samples) == 8 and samples.pixels.shape[0] == 2
        red = policy.pixel_values(np.full((IMAGE, IMAGE, 3), [255, 0, 0], np.uint8))
        blue = policy.pixel_values(np.full((IMAGE, IMAGE, 3), [0, 0, 255], np.uint8))
        pixels, ids, _ = samples.batch([0, 5], mix=(samples, [3, 7]))
        expected = torch.stack([red, blue, red, blue])
        torch.testing.assert_close(pixels, expected.to(pixels.dtype), rtol=0, atol=0)
        assert ids.shape[0] == 4
    finally:
        policy.close()


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


def _batch(policy, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    size = policy.config.image_sizes[0]
    pixels = torch.randn(n, 6, size, size, generator=gen)
    ids = torch.randint(100, 5000, (n, 12), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[:, 4:11] = torch.randint(31744, 32000, (n, 7), generator=gen)
    labels[:, 11] = 2
    return pixels, ids, labels


def test_equal_head_rows_projected_once_give_the_full_loss_and_gradients(checkpoint):
    """The small model's equal lm_head rows (every token that is never a label) are projected
    once: same loss, accuracy and, after spread_grad, the same gradient as over the whole
    vocabulary; an AdamW step keeps the rows equal. A head whose rows differ is not collapsed."""
    torch.manual_seed(0)
    policy = load_policy(checkpoint, PolicyOptions(dtype='float32'))
    model = policy.model
    for p in model.parameters():
        p.requires_grad_(True)
    head = model.language_model.lm_head
    with torch.no_grad():   # trained-looking label rows, so the accuracy is not trivially 0
        head.weight[31744:32000] += torch.randn(256, head.weight.shape[1]) * 0.5
    shared = SharedRows.detect(head.weight, label_token_ids(policy.config))
    assert shared is not None and len(shared.shared) == head.weight.shape[0] - 257
    batch = _batch(policy)
    grads, results = [], []
    for rows in (None, shared):
        model.zero_grad()
        loss, acc = action_loss(model, *batch, 7, rows)
        loss.backward()
        if rows is not None:
            rows.spread_grad(head.weight)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        results.append((float(loss.detach()), float(acc)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert results[0][1] == results[1][1]
    assert grads[0].keys() == grads[1].keys()
    for name, full in grads[0].items():   # to float32 rounding of another summation order
        assert float((grads[1][name] - full).norm()) <= 1e-4 * float(full.norm()) + 1e-9, name
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.step()
    assert SharedRows.detect(head.weight, label_token_ids(policy.config)) is not None
    with torch.no_grad():
        head.weight[5, 0] += 1.0
    assert SharedRows.detect(head.weight, label_token_ids(policy.config)) is None


def test_a_mixed_in_dataset_joins_every_batch_with_its_own_statistics(checkpoint, tmp_path):
    data = _dataset(tmp_path / 'data')
    other = _dataset(tmp_path / 'other', key='sim_grounding')
    cfg = dict(batch_size=4, learning_rate=3e-3, holdout_fraction=0.0, eval_every=4, save_every=4,
               threads=2)
    history = train(checkpoint, data, tmp_path / 'm', TrainConfig(steps=4, mix_dataset=str(other),
                                                                 mix_fraction=0.5, **cfg), progress=False)
    assert history['train'][-1]['loss'] < history['train'][0]['loss']
    stats = json.loads((tmp_path / 'm' / 'checkpoint' / 'dataset_statistics.json').read_text())
    assert list(stats) == ['sim_widowx']          # the export carries the training dataset's key
    with pytest.raises(FinetuneError, match='statistics key'):
        train(checkpoint, data, tmp_path / 'n', TrainConfig(steps=1, mix_dataset=str(data),
                                                            mix_fraction=0.5, **cfg), progress=False)
    with pytest.raises(FinetuneError, match='fraction'):
        train(checkpoint, data, tmp_path / 'o', TrainConfig(steps=1, mix_dataset=str(other), **cfg),
              progress=False)
