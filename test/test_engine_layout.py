"""The full-size openvla-7b architecture, built on the meta device from the synthetic config,
has exactly the checkpoint layout upstream's HF conversion writes
(``convert_openvla_weights_to_hf.py``: names, shapes, counts) without any weights."""
from __future__ import annotations

import pytest

from openvla_ros.engine.config import OpenVLAConfig, TextConfig, openvla_7b_config
from openvla_ros.engine.policy import build_model

DINO = 'vision_backbone.featurizer.'
SIGLIP = 'vision_backbone.fused_featurizer.'


@pytest.fixture(scope='module')
def shapes():
    model = build_model(OpenVLAConfig.from_dict(openvla_7b_config()))
    assert all(p.is_meta for p in model.parameters())
    return model.checkpoint_shapes()


def _count(shapes, prefix):
    keys = [k for k in shapes if k.startswith(prefix)]
    return len(keys), sum(_numel(shapes[k]) for k in keys)


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def test_tensor_and_parameter_counts(shapes):
    assert len(shapes) == 982
    assert sum(_numel(s) for s in shapes.values()) == 7_541_237_184
    assert _count(shapes, DINO) == (343, 303_230_976)
    assert _count(shapes, SIGLIP) == (342, 427_680_704)
    assert _count(shapes, 'projector.') == (6, 71_385_600)
    assert _count(shapes, 'language_model.') == (291, 6_738_939_904)


def test_dinov2_shapes(shapes):
    expected = {'cls_token': (1, 1, 1024), 'reg_token': (1, 4, 1024), 'pos_embed': (1, 256, 1024),
                'patch_embed.proj.weight': (1024, 3, 14, 14), 'patch_embed.proj.bias': (1024,),
                'norm.weight': (1024,), 'norm.bias': (1024,)}
    for i in range(24):
        b = f'blocks.{i}.'
        expected.update({
            b + 'norm1.weight': (1024,), b + 'norm1.bias': (1024,),
            b + 'attn.qkv.weight': (3072, 1024), b + 'attn.qkv.bias': (3072,),
            b + 'attn.proj.weight': (1024, 1024), b + 'attn.proj.bias': (1024,),
            b + 'ls1.scale_factor': (1024,), b + 'ls2.scale_factor': (1024,),
            b + 'norm2.weight': (1024,), b + 'norm2.bias': (1024,),
            b + 'mlp.fc1.weight': (4096, 1024), b + 'mlp.fc1.bias': (4096,),
            b + 'mlp.fc2.weight': (1024, 4096), b + 'mlp.fc2.bias': (1024,)})
    got = {k[len(DINO):]: v for k, v in shapes.items() if k.startswith(DINO)}
    assert got == expected


def test_siglip_shapes(shapes):
    expected = {'pos_embed': (1, 256, 1152), 'patch_embed.proj.weight': (1152, 3, 14, 14),
                'patch_embed.proj.bias': (1152,), 'norm.weight': (1152,), 'norm.bias': (1152,),
                'attn_pool.latent': (1, 1, 1152),
                'attn_pool.q.weight': (1152, 1152), 'attn_pool.q.bias': (1152,),
                'attn_pool.kv.weight': (2304, 1152), 'attn_pool.kv.bias': (2304,),
                'attn_pool.proj.weight': (1152, 1152), 'attn_pool.proj.bias': (1152,),
                'attn_pool.norm.weight': (1152,), 'attn_pool.norm.bias': (1152,),
                'attn_pool.mlp.fc1.weight': (4304, 1152), 'attn_pool.mlp.fc1.bias': (4304,),
                'attn_pool.mlp.fc2.weight': (1152, 4304), 'attn_pool.mlp.fc2.bias': (1152,)}
    for i in range(27):
        b = f'blocks.{i}.'
        expected.update({
            b + 'norm1.weight': (1152,), b + 'norm1.bias': (1152,),
            b + 'norm2.weight': (1152,), b + 'norm2.bias': (1152,),
            b + 'attn.qkv.weight': (3456, 1152), b + 'attn.qkv.bias': (3456,),
            b + 'attn.proj.weight': (1152, 1152), b + 'attn.proj.bias': (1152,),
            b + 'mlp.fc1.weight': (4304, 1152), b + 'mlp.fc1.bias': (4304,),
            b + 'mlp.fc2.weight': (1152, 4304), b + 'mlp.fc2.bias': (1152,)})
    got = {k[len(SIGLIP):]: v for k, v in shapes.items() if k.startswith(SIGLIP)}
    assert got == expected


def test_projector_and_llama_shapes(shapes):
    assert {k: v for k, v in shapes.items() if k.startswith('projector.')} == {
        'projector.fc1.weight': (8704, 2176), 'projector.fc1.bias': (8704,),
        'projector.fc2.weight': (4096, 8704), 'projector.fc2.bias': (4096,),
        'projector.fc3.weight': (4096, 4096), 'projector.fc3.bias': (4096,)}
    expected = {'model.embed_tokens.weight': (32064, 4096), 'model.norm.weight': (4096,),
                'lm_head.weight': (32064, 4096)}
    for i in range(32):
        b = f'model.layers.{i}.'
        for name in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
            expected[b + f'self_attn.{name}.weight'] = (4096, 4096)
        expected.update({b + 'mlp.gate_proj.weight': (11008, 4096),
                         b + 'mlp.up_proj.weight': (11008, 4096),
                         b + 'mlp.down_proj.weight': (4096, 11008),
                         b + 'input_layernorm.weight': (4096,),
                         b + 'post_attention_layernorm.weight': (4096,)})
    prefix = 'language_model.'
    assert {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)} == expected


def test_text_config_defaults_are_transformers_4_40_1():
    text = TextConfig.from_dict({'vocab_size': 32064, 'pad_token_id': 32000})
    assert text.rms_norm_eps == 1e-6
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (4096, 11008, 32)
    assert text.num_key_value_heads == text.num_attention_heads == 32
    assert (text.max_position_embeddings, text.rope_theta) == (2048, 10000.0)
    assert text.tie_word_embeddings is False
    cfg = OpenVLAConfig.from_dict(openvla_7b_config())
    assert cfg.action_vocab_size == 32000
