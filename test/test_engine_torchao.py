"""torchao weight-only quantization straight from a bf16 checkpoint: int8 on CPU loads, quantizes
every linear but lm_head, agrees with the float32 reference; int4 is a clear error on CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from openvla_ros.engine import OpenVLAError, PolicyOptions, load_policy

pytest.importorskip('torchao')
pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_int8_loads_quantized_and_agrees(parity_dir, dtype):
    from torchao.quantization import Int8Tensor

    meta = json.loads((parity_dir / 'expected.json').read_text())
    policy = load_policy(parity_dir / 'checkpoint', PolicyOptions(quantization='torchao-int8',
                                                                  dtype=dtype))
    try:
        modules = dict(policy.model.named_modules())
        for name in ('projector.fc1', 'language_model.model.layers.0.self_attn.q_proj',
                     'vision_backbone.featurizer.blocks.0.attn.qkv'):
            assert isinstance(modules[name].weight, Int8Tensor), name
        lm_head = modules['language_model.lm_head']
        assert type(lm_head.weight) is torch.nn.Parameter and lm_head.weight.dtype == getattr(torch, dtype)
        assert policy.describe()['quantization'] == 'torchao-int8'
        agree = total = 0
        for case in meta['cases']:
            image = np.asarray(Image.open(parity_dir / case['image']).convert('RGB'))
            result = policy.predict(image, case['instruction'], case['unnorm_key'])
            assert np.all(np.isfinite(result.action))
            agree += int(np.sum(result.action_token_ids == np.asarray(case['action_token_ids'])))
            total += len(case['action_token_ids'])
        policy.self_test()
    finally:
        policy.close()
    print(f'torchao-int8 {dtype} token agreement with the float32 reference: {agree}/{total}')
    assert agree / total >= 0.5


def test_int4_on_cpu_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(OpenVLAError, match='torchao-int4 needs CUDA.*no CPU kernel'):
        load_policy(tiny_checkpoint, PolicyOptions(quantization='torchao-int4', dtype='bfloat16'))
