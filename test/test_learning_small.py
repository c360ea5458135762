"""The fresh small model: its patch size, its training initialisation, and that the engine loads
and runs it (ROS-free)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openvla_ros.engine.tiny import ACTION_TOKEN_IDS
from openvla_ros.learning.small import (INIT_STD, ORDINAL_DIMS, action_token_values, make_small_checkpoint,
                                        sincos_2d)


def _weights(path):
    out = {}
    for f in sorted(path.glob('*.safetensors')):
        out.update({k: v.float() for k, v in load_file(f).items()})
    return out


def test_sincos_codes_are_distinct_and_bounded():
    codes = sincos_2d(8, 48)
    assert codes.shape == (64, 48) and codes.abs().max() <= 1.0
    d = torch.cdist(codes, codes)
    assert (d + torch.eye(64) * 10).min() > 0.1          # every patch place has its own code
    # rows and columns in separate halves: the same row shares the first half exactly
    assert torch.equal(codes[0, :24], codes[7, :24]) and not torch.equal(codes[0, 24:], codes[7, 24:])
    with pytest.raises(ValueError, match='divisible by 4'):
        sincos_2d(4, 30)


def test_small_checkpoint_patch_size_and_training_init(tmp_path, single_torch_thread):
    from openvla_ros.engine.api import PolicyOptions
    from openvla_ros.engine.policy import load_policy

    out = make_small_checkpoint(tmp_path / 'small', image_size=56, patch_size=7)
    config = json.loads((out / 'config.json').read_text())
    assert [k['patch_size'] for k in config['timm_model_kwargs']] == [7, 7]
    w = _weights(out)
    assert w['vision_backbone.featurizer.pos_embed'].shape == (1, 64, 48)
    torch.testing.assert_close(w['vision_backbone.featurizer.pos_embed'][0],
                               sincos_2d(8, 48).to(torch.bfloat16).float())
    assert all(not v.any() for k, v in w.items() if k.endswith('.bias'))
    head = w['language_model.lm_head.weight']
    rows = list(ACTION_TOKEN_IDS)
    assert not head[:rows[0]].any() and not head[rows[-1] + 1:].any()
    k = ORDINAL_DIMS
    assert abs(float(head[rows][:, 2 * k:].std()) - INIT_STD) < 0.002
    # ordinal head: a hidden state with sums A, B over the two codes peaks at the bin A / B
    values = action_token_values()
    for wanted in (-0.7, 0.0, 0.31, 0.9):
        hidden = torch.zeros(head.shape[1])
        hidden[:k], hidden[k:2 * k] = 4.0 * wanted / k, 4.0 / k
        best = float(values[int((head[rows] @ hidden).argmax())])
        assert abs(best - wanted) < 0.02, (wanted, best)    # bfloat16 weights: ~2 bins
    # the embeddings of the action tokens carry their value linearly
    embed = w['language_model.model.embed_tokens.weight'][rows][:, 2 * k:3 * k].mean(1)
    assert float(torch.corrcoef(torch.stack([embed, values]))[0, 1]) > 0.99
    assert abs(float(w['language_model.model.layers.0.self_attn.q_proj.weight'].std()) - INIT_STD) < 0.002
    # the engine loads it and decodes actions from the 256 action bins
    policy = load_policy(out, PolicyOptions(dtype='float32'))
    try:
        r = policy.predict(np.zeros((128, 128, 3), np.uint8), 'reach the red block', 'untrained')
        assert all(t in ACTION_TOKEN_IDS for t in r.action_token_ids)
    finally:
        policy.close()
    with pytest.raises(ValueError, match='multiple of the patch size 5'):
        make_small_checkpoint(tmp_path / 'bad', image_size=56, patch_size=5)
