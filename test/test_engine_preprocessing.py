"""Image pipelines other than openvla-7b's resize-naive: letterbox (v01) and resize-crop."""
from __future__ import annotations

import numpy as np
from PIL import Image

from openvla_ros.engine.preprocessing import ImageProcessor, center_crop_90, to_pixel_values

SIGLIP = {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]}


def _config(strategy: str, resize_size, fill=None) -> dict:
    return {
        'image_resize_strategy': strategy,
        'use_fused_vision_backbone': False,
        'input_sizes': [[3, 224, 224]],
        'interpolations': ['bicubic'],
        'means': [SIGLIP['mean']], 'stds': [SIGLIP['std']],
        'tvf_resize_params': [{'size': resize_size, 'interpolation': 3, 'max_size': None,
                               'antialias': True}],
        'tvf_crop_params': [{'output_size': [224, 224]}],
        'tvf_normalize_params': [{'inplace': False, **SIGLIP}],
        'tvf_do_letterbox': strategy == 'letterbox',
        'tvf_letterbox_fill': fill,
    }


def test_letterbox_pads_with_fill_then_resizes():
    processor = ImageProcessor(_config('letterbox', 224, fill=[127, 127, 127]))
    assert processor.channels == 3
    wide = np.full((100, 200, 3), 255, np.uint8)          # 2:1 -> 50 rows of fill above and below
    pixels = processor(Image.fromarray(wide))
    assert pixels.shape == (3, 224, 224)
    fill_value = (127 / 255 - 0.5) / 0.5
    np.testing.assert_allclose(pixels[:, :40].numpy(), fill_value, atol=1e-6)
    np.testing.assert_allclose(pixels[:, -40:].numpy(), fill_value, atol=1e-6)
    np.testing.assert_allclose(pixels[:, 80:140].numpy(), 1.0, atol=1e-6)


def test_letterbox_default_fill_is_255_times_mean():
    processor = ImageProcessor(_config('letterbox', 224))
    assert processor.transforms[0].letterbox_fill == (127, 127, 127)


def test_resize_crop_keeps_the_centre():
    processor = ImageProcessor(_config('resize-crop', 224))
    image = np.zeros((224, 448, 3), np.uint8)
    image[:, :112] = (255, 0, 0)        # left quarter is cropped away
    image[:, 112:336] = (0, 0, 255)
    image[:, 336:] = (0, 255, 0)        # right quarter is cropped away
    pixels = processor(Image.fromarray(image)).numpy()
    assert pixels.shape == (3, 224, 224)
    np.testing.assert_allclose(pixels[2, :, 4:-4], 1.0, atol=1e-6)    # blue everywhere
    np.testing.assert_allclose(pixels[0, :, 4:-4], -1.0, atol=1e-6)


def test_center_crop_keeps_90_percent_of_the_area():
    image = np.zeros((200, 200, 3), np.uint8)
    image[5:195, 5:195] = 255           # a 2.5% black border all round is cut by the crop
    cropped = np.asarray(center_crop_90(Image.fromarray(image)))
    assert cropped.shape == (200, 200, 3)
    assert cropped[2:-2, 2:-2].min() == 255


def test_bridge_eval_pipeline_output_is_224():
    processor = ImageProcessor(_config('resize-naive', [224, 224]))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pixels = to_pixel_values(image, processor, 'bridge_eval', center_crop=True)
    assert pixels.shape == (3, 224, 224) and np.isfinite(pixels.numpy()).all()
