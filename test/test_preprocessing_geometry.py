"""Every image geometry gives upstream's pixel_values: the processor against the torchvision calls
upstream's PrismaticImageProcessor makes (pad, resize, center_crop, to_tensor, normalize)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TVF
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import InterpolationMode

from openvla_ros.engine.api import InvalidImageError
from openvla_ros.engine.config import v01_preprocessor_config
from openvla_ros.engine.preprocessing import ImageProcessor, letterbox_pad, to_pixel_values
from openvla_ros.imaging import MAX_IMAGE_PIXELS

SIGLIP = {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]}
DINO = {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}


def _config(strategy: str, resize_size, crop=(224, 224), max_size=None, norms=(SIGLIP,),
            fill=None) -> dict:
    n = len(norms)
    return {
        'image_resize_strategy': strategy, 'use_fused_vision_backbone': n == 2,
        'input_sizes': [[3, 224, 224]] * n, 'interpolations': ['bicubic'] * n,
        'means': [p['mean'] for p in norms], 'stds': [p['std'] for p in norms],
        'tvf_resize_params': [{'size': resize_size, 'interpolation': 3, 'max_size': max_size,
                               'antialias': True}] * n,
        'tvf_crop_params': [{'output_size': list(crop)}] * n,
        'tvf_normalize_params': [{'inplace': False, **p} for p in norms],
        'tvf_do_letterbox': strategy == 'letterbox', 'tvf_letterbox_fill': fill,
    }


def _upstream(image: Image.Image, cfg: dict) -> torch.Tensor:
    """The same steps through torchvision, as upstream's processor applies them."""
    if cfg['tvf_do_letterbox']:
        (w, h), side = image.size, max(image.size)
        pad_x, pad_y = int((side - w) / 2), int((side - h) / 2)
        fill = cfg['tvf_letterbox_fill'] or [int(255 * m) for m in cfg['means'][0]]
        image = TVF.pad(image, [pad_x, pad_y, pad_x, pad_y], fill=tuple(fill),
                        padding_mode='constant')
    parts = []
    for resize, crop, norm in zip(cfg['tvf_resize_params'], cfg['tvf_crop_params'],
                                  cfg['tvf_normalize_params']):
        x = TVF.resize(image, resize['size'], interpolation=InterpolationMode.BICUBIC,
                       max_size=resize['max_size'], antialias=True)
        x = TVF.center_crop(x, crop['output_size'])
        parts.append(TVF.normalize(TVF.to_tensor(x), mean=norm['mean'], std=norm['std']))
    return torch.cat(parts, dim=0)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + w * 7 + h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _assert_upstream(image: Image.Image, cfg: dict) -> torch.Tensor:
    ours = ImageProcessor(cfg)(image)
    reference = _upstream(image, cfg)
    assert ours.shape == reference.shape
    assert torch.equal(ours, reference), (image.size, (ours - reference).abs().max().item())
    return ours


LETTERBOX_SIZES = [
    (200, 100), (201, 100), (100, 201), (100, 200),   # even and odd difference, both ways
    (225, 224), (224, 225), (224, 224),                # off by one, and already square
    (1, 6), (6, 1), (1, 7), (7, 1), (1, 1), (2, 1),    # tiny
    (640, 479), (479, 640),
]


@pytest.mark.parametrize('size', LETTERBOX_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_letterbox_matches_upstream(size):
    _assert_upstream(_image(*size), _config('letterbox', 224, fill=[127, 127, 127]))


def test_letterbox_of_an_odd_difference_is_one_pixel_short_of_square():
    assert letterbox_pad(_image(201, 100), (1, 2, 3)).size == (201, 200)
    assert letterbox_pad(_image(100, 201), (1, 2, 3)).size == (200, 201)
    assert letterbox_pad(_image(200, 100), (1, 2, 3)).size == (200, 200)
    padded = np.asarray(letterbox_pad(_image(1, 6), (9, 8, 7)))
    assert padded.shape == (6, 5, 3) and (padded[:, :2] == (9, 8, 7)).all()


@pytest.mark.parametrize('size', [(4608, 2592), (4607, 2592), (2592, 4609)],
                         ids=lambda s: f'{s[0]}x{s[1]}')
def test_letterbox_of_full_resolution_camera_frames_matches_upstream(size):
    _assert_upstream(_image(*size), _config('letterbox', 224))   # default fill: 255 * mean


def test_letterbox_canvas_counts_against_the_pixel_bound():
    side = 8193                                   # a 1-pixel-high strip: its canvas is 8192x8193
    assert side <= MAX_IMAGE_PIXELS and (side - 1) * side > MAX_IMAGE_PIXELS
    with pytest.raises(InvalidImageError, match='letterbox .* more than the limit'):
        ImageProcessor(_config('letterbox', 224))(_image(side, 1))


@pytest.mark.parametrize('size', [(300, 200), (301, 200), (200, 301), (1, 9), (9, 1), (224, 224),
                                  (4608, 2592)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('resize', [224, [224], 256], ids=['int', 'one-element list', 'larger'])
def test_resize_crop_matches_upstream(size, resize):
    _assert_upstream(_image(*size), _config('resize-crop', resize))


@pytest.mark.parametrize('size', [(640, 480), (225, 7), (3, 500)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_shorter_side_resize_honours_max_size(size):
    _assert_upstream(_image(*size), _config('resize-crop', 224, max_size=300))


@pytest.mark.parametrize('size', [(640, 480), (221, 223), (1, 1)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_crop_larger_than_the_resized_image_is_zero_padded_as_upstream(size):
    _assert_upstream(_image(*size), _config('resize-naive', [150, 101]))


@pytest.mark.parametrize('size', [(640, 480), (4608, 2592), (1, 5), (224, 224)],
                         ids=lambda s: f'{s[0]}x{s[1]}')
def test_fused_resize_naive_matches_upstream(size):
    """openvla-7b's geometry: both backbones resize to 224x224, their channels stacked."""
    cfg = _config('resize-naive', [224, 224], norms=(DINO, SIGLIP))
    assert _assert_upstream(_image(*size), cfg).shape == (6, 224, 224)


def test_any_size_within_the_bound_is_accepted_by_the_engine():
    processor = ImageProcessor(_config('resize-naive', [224, 224]))
    strip = np.zeros((9000, 3, 3), np.uint8)                   # beyond the old 4096 per side
    assert to_pixel_values(strip, processor, 'processor', False).shape == (3, 224, 224)
    # np.zeros maps untouched pages, so the over-limit array costs no real memory
    over = np.zeros((MAX_IMAGE_PIXELS // 2 + 1, 2, 3), np.uint8)
    with pytest.raises(InvalidImageError, match='more than the limit'):
        to_pixel_values(over, processor, 'processor', False)


@pytest.mark.parametrize('width, height', [(4608, 2592), (8192, 8192), (8193, 8192), (1, MAX_IMAGE_PIXELS),
                                           (MAX_IMAGE_PIXELS + 1, 1), (12000, 12000)])
def test_the_ros_converter_and_the_engine_apply_one_bound(width, height):
    """No frame passes one check and fails the other (both call imaging.image_size_problem)."""
    from types import SimpleNamespace

    from openvla_ros.engine.preprocessing import validate_image
    from openvla_ros.imaging import ImageConversionError, image_msg_to_rgb

    within = width * height <= MAX_IMAGE_PIXELS
    # no data: a frame within the bound fails later, on its missing bytes, not on its size
    msg = SimpleNamespace(height=height, width=width, encoding='mono8', is_bigendian=0,
                          step=width, data=b'')
    with pytest.raises(ImageConversionError, match='data has' if within else 'too large'):
        image_msg_to_rgb(msg)
    image = np.zeros((height, width, 3), np.uint8)   # untouched pages: no real memory
    if within:
        assert validate_image(image) is image
    else:
        with pytest.raises(InvalidImageError, match='too large'):
            validate_image(image)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 700), height=st.integers(1, 700),
       strategy=st.sampled_from(['letterbox', 'resize-crop']))
def test_any_geometry_matches_upstream(width, height, strategy):
    _assert_upstream(_image(width, height), _config(strategy, 224, fill=[127, 127, 127]))


@pytest.mark.parametrize('size', [(640, 479), (3, 2)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_v01_preprocessor_matches_upstream(size):
    _assert_upstream(_image(*size), v01_preprocessor_config())
