"""compile=True compiles the one-token decode step once per batch bucket at most: dynamo's
counters do not move across decode steps, predictions, batch sizes within a bucket, instruction
lengths within the cache or speculative drafts, and the tokens are the eager path's."""
from __future__ import annotations

import numpy as np
import pytest

from openvla_ros.engine import PolicyOptions, load_policy

pytestmark = [pytest.mark.usefixtures('single_torch_thread'), pytest.mark.slow]


def _compiles() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return counters['frames']['total'], counters['stats']['unique_graphs']


def test_no_recompilation(tiny_checkpoint):
    import torch

    torch._dynamo.reset()
    rng = np.random.default_rng(1)
    scenes = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
    texts = ['wipe', 'pick up the red block', 'open the drawer and then close it again slowly',
             'put the carrot on the plate']
    eager = load_policy(tiny_checkpoint)
    compiled = load_policy(tiny_checkpoint, PolicyOptions(compile=True, speculative=True))
    try:
        after_load = _compiles()
        assert after_load[1] >= 1, 'the warm-up at load compiled the decode step'
        for image, text in zip(scenes, texts):          # steps, predictions, prompt lengths
            want = eager.predict(image, text, 'bridge_orig').action_token_ids.tolist()
            assert compiled.predict(image, text, 'bridge_orig').action_token_ids.tolist() == want
            wrong = [31744 + (t - 31744 + 9) % 256 for t in want]
            assert compiled.predict(image, text, 'bridge_orig', draft_token_ids=wrong[:2] + want[2:]) \
                .action_token_ids.tolist() == want
        assert _compiles() == after_load
        first = compiled.predict_batch(scenes[:3], texts[:3], ['bridge_orig'] * 3)   # bucket 4
        in_bucket = _compiles()
        assert in_bucket[1] == after_load[1] + 1
        second = compiled.predict_batch(scenes, texts, ['bridge_orig'] * 4)          # bucket 4
        again = compiled.predict_batch(scenes[1:], texts[1:], ['bridge_orig'] * 3)
        assert _compiles() == in_bucket
        want = [r.action_token_ids.tolist() for r in eager.predict_batch(scenes, texts, ['bridge_orig'] * 4)]
        assert [r.action_token_ids.tolist() for r in second] == want
        assert [r.action_token_ids.tolist() for r in first] == want[:3]
        assert [r.action_token_ids.tolist() for r in again] == want[1:]
    finally:
        eager.close()
        compiled.close()
