"""Parity with upstream OpenVLA on the fixture checkpoint (made with upstream's HF classes):
pixel values within 1e-5, step logits within 1e-3, identical tokens, actions within 1e-9."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from openvla_ros.engine import PolicyOptions, load_policy

STEP_LOGIT_FIRST_ID = 31744
STEP_LOGIT_END_ID = 32064

pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.fixture(scope='module')
def expected(parity_dir):
    return json.loads((parity_dir / 'expected.json').read_text()), np.load(parity_dir / 'expected.npz')


@pytest.fixture(scope='module')
def policy_fp32(parity_dir):
    policy = load_policy(parity_dir / 'checkpoint', PolicyOptions(dtype='float32', device='cpu'))
    yield policy
    policy.close()


def _image(parity_dir, case) -> np.ndarray:
    return np.asarray(Image.open(parity_dir / case['image']).convert('RGB'))


def test_float32_parity_all_cases(policy_fp32, expected, parity_dir):
    meta, arrays = expected
    assert len(meta['cases']) == 8
    for i, case in enumerate(meta['cases']):
        image = _image(parity_dir, case)
        pixels = policy_fp32.pixel_values(image)
        np.testing.assert_allclose(pixels.numpy(), arrays[f'pixel_values_{i:02d}'], rtol=0, atol=1e-5,
                                   err_msg=f'case {i} pixel values')

        ids = policy_fp32.prompt_token_ids(case['instruction'])
        assert ids == case['generation_input_ids'], f'case {i} prompt ids'

        steps = len(case['action_token_ids'])
        tokens, logits, _ = policy_fp32.generate(pixels[None], [ids], steps, return_logits=True)
        step_logits = torch.stack([l[0, STEP_LOGIT_FIRST_ID:STEP_LOGIT_END_ID] for l in logits]).numpy()
        np.testing.assert_allclose(step_logits, arrays[f'step_logits_{i:02d}'], rtol=0, atol=1e-3,
                                   err_msg=f'case {i} step logits')
        assert tokens[0].tolist() == case['action_token_ids'], f'case {i} tokens'

        result = policy_fp32.predict(image, case['instruction'], case['unnorm_key'])
        assert result.action_token_ids.tolist() == case['action_token_ids']
        assert result.unnorm_key == case['unnorm_key']
        assert result.action.dtype == np.float64
        np.testing.assert_allclose(result.normalized_action, case['normalized_action'], rtol=0,
                                   atol=1e-9, err_msg=f'case {i} normalized action')
        np.testing.assert_allclose(result.action, case['action'], rtol=0, atol=1e-9,
                                   err_msg=f'case {i} action')


def test_bfloat16_token_agreement(expected, parity_dir):
    meta, _ = expected
    policy = load_policy(parity_dir / 'checkpoint', PolicyOptions(dtype='bfloat16'))
    try:
        agree = total = 0
        for case in meta['cases']:
            result = policy.predict(_image(parity_dir, case), case['instruction'], case['unnorm_key'])
            assert np.all(np.isfinite(result.action))
            agree += int(np.sum(result.action_token_ids == np.asarray(case['action_token_ids'])))
            total += len(case['action_token_ids'])
    finally:
        policy.close()
    rate = agree / total
    print(f'bfloat16 token agreement with the float32 reference: {agree}/{total} = {rate:.1%}')
    assert rate >= 0.5
