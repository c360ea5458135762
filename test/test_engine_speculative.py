"""Speculative decoding with a draft (the previous action's tokens) gives exactly the tokens of
plain greedy decoding: on every parity fixture case with right, partly right and wrong drafts,
batched with mixed drafts, and along a closed-loop trace of simulator frames."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from openvla_ros.engine import OpenVLAError, PolicyOptions, load_policy

pytestmark = pytest.mark.usefixtures('single_torch_thread')
FIRST_ACTION_ID = 31744


@pytest.fixture(scope='module')
def fixture_cases(parity_dir):
    meta = json.loads((parity_dir / 'expected.json').read_text())
    arrays = np.load(parity_dir / 'expected.npz')
    return meta['cases'], arrays


@pytest.fixture(scope='module')
def policies(parity_dir):
    plain = load_policy(parity_dir / 'checkpoint', PolicyOptions(dtype='float32', speculative=False))
    spec = load_policy(parity_dir / 'checkpoint', PolicyOptions(dtype='float32', speculative=True))
    yield plain, spec
    plain.close()
    spec.close()


def _drafts(tokens: list[int]) -> dict[str, list[int]]:
    wrong = [31744 + (t - 31744 + 17) % 256 for t in tokens]
    return {'right': list(tokens), 'first3': tokens[:3] + wrong[3:], 'last_wrong': tokens[:6] + wrong[6:],
            'first_wrong': wrong[:1] + tokens[1:], 'all_wrong': wrong, 'short': tokens[:2]}


def test_every_fixture_case_with_every_draft(policies, fixture_cases, parity_dir):
    plain, spec = policies
    cases, arrays = fixture_cases
    for i, case in enumerate(cases):
        image = np.asarray(Image.open(parity_dir / case['image']).convert('RGB'))
        expected = case['action_token_ids']
        assert plain.predict(image, case['instruction'], case['unnorm_key']) \
            .action_token_ids.tolist() == expected
        for name, draft in _drafts(expected).items():
            r = spec.predict(image, case['instruction'], case['unnorm_key'], draft_token_ids=draft)
            assert r.action_token_ids.tolist() == expected, f'case {i} draft {name}'
            prefix = next((j for j, (a, b) in enumerate(zip(draft, expected)) if a != b),
                          min(len(draft), len(expected)))
            assert r.draft_tokens_accepted == prefix, f'case {i} draft {name}'
            np.testing.assert_allclose(r.action, case['action'], rtol=0, atol=1e-9)
        # a right draft costs one forward pass, and the verification logits are upstream's
        pixels = spec.pixel_values(image)[None]
        ids = [spec.prompt_token_ids(case['instruction'])]
        tokens, logits, _ = spec.generate(pixels, ids, len(expected), return_logits=True,
                                          drafts=[expected])
        assert spec.last_forward_passes == 1
        assert tokens[0].tolist() == expected
        step = torch.stack([l[0, FIRST_ACTION_ID:] for l in logits]).numpy()
        np.testing.assert_allclose(step, arrays[f'step_logits_{i:02d}'], rtol=0, atol=1e-3)


def test_batch_with_mixed_drafts(policies, fixture_cases, parity_dir):
    plain, spec = policies
    cases, _ = fixture_cases
    picked = cases[:4]
    images = [np.asarray(Image.open(parity_dir / c['image']).convert('RGB')) for c in picked]
    texts = [c['instruction'] for c in picked]
    keys = [c['unnorm_key'] for c in picked]
    expected = [c['action_token_ids'] for c in picked]
    drafts = [expected[0], None, _drafts(expected[2])['all_wrong'], _drafts(expected[3])['first3']]
    results = spec.predict_batch(images, texts, keys, draft_token_ids=drafts)
    assert [r.action_token_ids.tolist() for r in results] == expected
    assert [r.draft_tokens_accepted for r in results] == [7, None, 0, 3]
    batch_plain = plain.predict_batch(images, texts, keys)
    assert [r.action_token_ids.tolist() for r in batch_plain] == expected


def test_draft_ignored_when_off_and_bad_drafts_refused(policies, fixture_cases, parity_dir):
    plain, spec = policies
    case = fixture_cases[0][0]
    image = np.asarray(Image.open(parity_dir / case['image']).convert('RGB'))
    r = plain.predict(image, case['instruction'], case['unnorm_key'], draft_token_ids=[1] * 7)
    assert r.action_token_ids.tolist() == case['action_token_ids']
    assert r.draft_tokens_accepted is None
    for bad in ([], [40000] * 7, [-1], ['a'] * 7, [1.5] * 7):
        with pytest.raises(OpenVLAError, match='draft_token_ids'):
            spec.predict(image, case['instruction'], case['unnorm_key'], draft_token_ids=bad)


def test_closed_loop_trace_in_the_simulator(tiny_checkpoint):
    """Frames of the MuJoCo workcell while the arm follows the model's own actions; each frame's
    draft is the previous action, as vla_node gives it."""
    from openvla_ros.sim.workcell import WorkcellSim

    plain = load_policy(tiny_checkpoint)
    spec = load_policy(tiny_checkpoint, PolicyOptions(speculative=True))
    accepted = []
    try:
        with WorkcellSim() as sim:
            sim.reset(seed=3)
            draft = None
            for frame in range(24):
                image = sim.render(width=160, height=120)
                ref = plain.predict(image, 'pick up the block', 'bridge_orig')
                got = spec.predict(image, 'pick up the block', 'bridge_orig', draft_token_ids=draft)
                assert got.action_token_ids.tolist() == ref.action_token_ids.tolist(), frame
                if draft is not None:
                    accepted.append(got.draft_tokens_accepted)
                draft = got.action_token_ids.tolist()
                current = sim.desired_positions()
                names = list(current)[:6]
                step = 0.05 * got.normalized_action[:len(names)]
                sim.set_joint_targets({n: current[n] + float(d) for n, d in zip(names, step)})
                sim.advance(0.2)
    finally:
        plain.close()
        spec.close()
    print(f'closed loop: draft tokens accepted per action {accepted}')
    assert len(accepted) == 23 and all(0 <= a <= 7 for a in accepted)
