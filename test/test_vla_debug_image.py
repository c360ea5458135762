"""The debug image is the engine's actual model input, for every image pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from openvla_ros.engine import PolicyOptions, load_policy
from openvla_ros.nodes import vla_debug_image


@pytest.fixture(scope='module')
def policies(tiny_checkpoint):
    out = {}
    for name, opts in (('processor', PolicyOptions(self_test=False)),
                       ('bridge_eval', PolicyOptions(self_test=False, image_pipeline='bridge_eval')),
                       ('center_crop', PolicyOptions(self_test=False, center_crop=True))):
        out[name] = load_policy(tiny_checkpoint, opts)
    yield out
    for p in out.values():
        p.close()


def _scene(h=120, w=200, seed=3):
    rng = np.random.default_rng(seed)
    # Smooth structure plus noise: resampling filters and crops give visibly different results.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], axis=2)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('pipeline', ['processor', 'bridge_eval', 'center_crop'])
def test_view_is_the_engine_input_up_to_uint8_rounding(policies, pipeline):
    policy = policies[pipeline]
    rgb = _scene()
    view = vla_debug_image.model_input_view(rgb, policy)
    t = policy.processor.transforms[0]
    assert view.dtype == np.uint8 and view.shape == (*t.crop_size, 3)
    mean = np.asarray(t.mean).reshape(3, 1, 1)
    std = np.asarray(t.std).reshape(3, 1, 1)
    renormalised = (view.transpose(2, 0, 1) / 255.0 - mean) / std
    pv = policy.pixel_values(rgb)[:3].numpy()
    np.testing.assert_allclose(renormalised, pv, atol=0.51 / 255 / std.min() + 1e-6)


def test_pipelines_show_different_inputs(policies):
    rgb = _scene()
    views = {k: vla_debug_image.model_input_view(rgb, p).astype(int) for k, p in policies.items()}
    # bridge_eval (JPEG + Lanczos) and the 90% centre crop are not the plain resize.
    assert np.abs(views['bridge_eval'] - views['processor']).mean() > 0.5
    assert np.abs(views['center_crop'] - views['processor']).mean() > 2.0


def test_render_draws_on_the_engine_view(policies):
    policy = policies['center_crop']
    rgb = _scene()
    base = vla_debug_image.model_input_view(rgb, policy)
    img = vla_debug_image.render(rgb, 'pick up the block', [0.0, 0.03, 0.0], 1.0, policy=policy)
    assert img.shape == base.shape
    changed = np.any(img != base, axis=2)
    assert changed[:16].any() and changed[-16:].any()
    # Away from the drawings the pixels are the model input's.
    np.testing.assert_array_equal(img[40:60, 150:200], base[40:60, 150:200])
