"""bitsandbytes quantization on CPU: 8-bit and 4-bit (nf4, fp4) load and produce valid actions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from openvla_ros.engine import PolicyOptions, load_policy

pytest.importorskip('bitsandbytes')
pytestmark = pytest.mark.usefixtures('single_torch_thread', 'eager_bitsandbytes')


@pytest.fixture(scope='module')
def eager_bitsandbytes():
    """bitsandbytes' CPU fallback torch.compile()s its dequantisation once per weight shape,
    which costs minutes of compiler time on a small machine; the eager functions it falls back
    to compute the same values."""
    import torch._dynamo

    before = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        yield
    finally:
        torch._dynamo.config.disable = before


@pytest.mark.parametrize('quantization, quant_type, dtype', [
    ('8bit', 'nf4', 'bfloat16'),
    ('4bit', 'nf4', 'bfloat16'),
    ('4bit', 'fp4', 'float32'),
])
def test_quantized_tiny_checkpoint(tiny_checkpoint, quantization, quant_type, dtype):
    import bitsandbytes as bnb

    options = PolicyOptions(quantization=quantization, bnb_4bit_quant_type=quant_type, dtype=dtype,
                            bnb_4bit_compute_dtype=dtype)
    policy = load_policy(tiny_checkpoint, options)
    try:
        modules = dict(policy.model.named_modules())
        wanted = bnb.nn.Linear8bitLt if quantization == '8bit' else bnb.nn.Linear4bit
        for name in ('projector.fc1', 'language_model.model.layers.0.self_attn.q_proj',
                     'vision_backbone.featurizer.blocks.0.attn.qkv'):
            assert isinstance(modules[name], wanted), name
        lm_head = modules['language_model.lm_head']
        assert type(lm_head) is torch.nn.Linear and lm_head.weight.dtype == getattr(torch, dtype)
        if quantization == '4bit':
            assert modules['projector.fc1'].weight.quant_state.quant_type == quant_type

        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        result = policy.predict(image, 'pick up the red block', 'bridge_orig')
        assert result.action.shape == (7,) and np.all(np.isfinite(result.action))
        assert np.all((result.action_token_ids >= 31744) & (result.action_token_ids < 32000))
        policy.self_test()  # the image still drives the prefill logits
        info = policy.describe()
        assert info['quantization'] == quantization
        if quantization == '4bit':
            assert info['bnb_4bit_quant_type'] == quant_type
            assert info['bnb_4bit_compute_dtype'] == dtype
    finally:
        policy.close()


def test_8bit_token_agreement_on_parity_fixture(parity_dir):
    meta = json.loads((parity_dir / 'expected.json').read_text())
    policy = load_policy(parity_dir / 'checkpoint', PolicyOptions(quantization='8bit'))
    try:
        agree = total = 0
        for case in meta['cases']:
            image = np.asarray(Image.open(parity_dir / case['image']).convert('RGB'))
            result = policy.predict(image, case['instruction'], case['unnorm_key'])
            agree += int(np.sum(result.action_token_ids == np.asarray(case['action_token_ids'])))
            total += len(case['action_token_ids'])
    finally:
        policy.close()
    print(f'8-bit token agreement with the float32 reference: {agree}/{total} = {agree / total:.1%}')
    assert agree / total >= 0.5
