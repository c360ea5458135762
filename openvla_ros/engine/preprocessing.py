"""Image checks and the image pipelines that turn an RGB uint8 array into ``pixel_values``.

``processor`` (default) does exactly what the checkpoint's ``preprocessor_config.json`` says (for
openvla-7b: PIL bicubic resize to 224x224 ignoring aspect ratio, /255, per-backbone normalisation,
channels stacked [DINOv2 | SigLIP]); this is what upstream's ``deploy.py`` and README do.

``bridge_eval`` first applies the training-data path of upstream's Bridge/LIBERO eval scripts: a
JPEG round trip, then a Lanczos resize to 224x224. Upstream uses TensorFlow (``encode_jpeg`` at
its default quality 95 and ``tf.image.resize(method='lanczos3', antialias=True)``); here Pillow's
JPEG codec and ``Image.LANCZOS`` (also a 3-lobe antialiased Lanczos) approximate it, so pixels can
differ by a few levels from the TF result.

``center_crop`` takes the centred crop with 90% of the area (side sqrt(0.9)) and resizes it back
with bilinear interpolation, as upstream does at eval for checkpoints trained with random 90%
crops (TF's ``crop_and_resize`` is approximated by Pillow's bilinear resize of the crop box).

The geometry of every strategy is upstream's to the pixel: the letterbox border is
``int((max_side - side) / 2)`` per side (one pixel short of square on an odd difference), and the
resize and centre crop follow torchvision's rules, which upstream's processor calls (an int or
one-element size is the shorter side, ``max_size`` caps the longer one, a crop larger than the
image zero-pads it). Images of any size up to ``imaging.MAX_IMAGE_PIXELS`` are accepted, the bound
the ROS converter applies too.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..imaging import MAX_IMAGE_PIXELS, image_size_problem
from .api import CheckpointError, InvalidImageError

CENTER_CROP_AREA = 0.9
_PIL_FILTERS = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC,
                4: Image.BOX, 5: Image.HAMMING}
_NAMED_FILTERS = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR, 'nearest': Image.NEAREST,
                  'lanczos': Image.LANCZOS, 'box': Image.BOX}
BRIDGE_EVAL_JPEG_QUALITY = 95   # TF encode_jpeg's default


def validate_image(image) -> np.ndarray:
    """Return ``image`` if it is a usable RGB H x W x 3 uint8 array, else raise InvalidImageError."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f'image must be a numpy array (RGB H x W x 3 uint8), got '
                                f'{type(image).__name__}')
    if image.dtype != np.uint8:
        raise InvalidImageError(f'image dtype must be uint8 (RGB H x W x 3), got {image.dtype}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f'image must be RGB H x W x 3, got shape {tuple(image.shape)}')
    h, w = image.shape[:2]
    problem = image_size_problem(w, h)
    if problem:
        raise InvalidImageError(f'{problem} (shape {tuple(image.shape)})')
    return image


@dataclass
class BackboneTransform:
    resize_size: tuple[int, int] | int   # (h, w) exact, or int = shorter side
    resize_filter: int
    crop_size: tuple[int, int]           # (h, w)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    letterbox_fill: tuple[int, int, int] | None
    resize_max_size: int | None = None   # shorter-side resize: cap on the longer side


def _pil_filter(value) -> int:
    if isinstance(value, str):
        if value.lower() not in _NAMED_FILTERS:
            raise CheckpointError(f'preprocessor_config.json: unknown interpolation {value!r}')
        return _NAMED_FILTERS[value.lower()]
    if int(value) not in _PIL_FILTERS:
        raise CheckpointError(f'preprocessor_config.json: unknown interpolation {value!r}')
    return _PIL_FILTERS[int(value)]


def _as_hw(size) -> tuple[int, int] | int:
    """torchvision's reading of a resize size: an int or a 1-list is the shorter side."""
    if isinstance(size, int):
        return size
    size = list(size)
    return int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))


class ImageProcessor:
    """Built from ``preprocessor_config.json`` (upstream's PrismaticImageProcessor, serialised)."""

    def __init__(self, cfg: dict):
        try:
            strategy = cfg.get('image_resize_strategy', 'resize-naive')
            if strategy not in ('resize-naive', 'letterbox', 'resize-crop'):
                raise CheckpointError(f'preprocessor_config.json: image_resize_strategy {strategy!r} '
                                      'is not supported')
            self.strategy = strategy
            n = len(cfg['input_sizes'])
            means = [p['mean'] for p in cfg['tvf_normalize_params']] if cfg.get('tvf_normalize_params') \
                else cfg['means']
            stds = [p['std'] for p in cfg['tvf_normalize_params']] if cfg.get('tvf_normalize_params') \
                else cfg['stds']
            do_letterbox = bool(cfg.get('tvf_do_letterbox', strategy == 'letterbox'))
            fill = cfg.get('tvf_letterbox_fill')
            self.transforms: list[BackboneTransform] = []
            for i in range(n):
                side = int(cfg['input_sizes'][i][-1])
                if cfg.get('tvf_resize_params'):
                    rp = cfg['tvf_resize_params'][i]
                    resize_size, resize_filter = _as_hw(rp['size']), _pil_filter(rp['interpolation'])
                    max_size = rp.get('max_size')
                else:
                    resize_size = (side, side) if strategy == 'resize-naive' else side
                    resize_filter = _pil_filter(cfg.get('interpolations', ['bicubic'] * n)[i])
                    max_size = None
                crop = cfg['tvf_crop_params'][i]['output_size'] if cfg.get('tvf_crop_params') \
                    else [side, side]
                crop_hw = _as_hw(crop)   # a centre crop of one size is square
                crop_hw = (crop_hw, crop_hw) if isinstance(crop_hw, int) else crop_hw
                letterbox_fill = None
                if do_letterbox:
                    letterbox_fill = tuple(int(v) for v in fill) if fill is not None else \
                        tuple(int(255 * m) for m in means[i])
                self.transforms.append(BackboneTransform(
                    resize_size, resize_filter, crop_hw, tuple(float(m) for m in means[i]),
                    tuple(float(s) for s in stds[i]), letterbox_fill,
                    int(max_size) if max_size is not None else None))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise CheckpointError(f'preprocessor_config.json is malformed: {exc!r}') from None
        self.image_size = self.transforms[0].crop_size

    @property
    def channels(self) -> int:
        return 3 * len(self.transforms)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> float32 pixel_values [C, H, W] (C = 3 per backbone, stacked)."""
        # Both openvla-7b backbones resize identically; do the (costly) resize once.
        resized: dict[tuple, torch.Tensor] = {}
        parts = []
        for t in self.transforms:
            geometry = (t.letterbox_fill, t.resize_size, t.resize_max_size, t.resize_filter,
                        t.crop_size)
            if geometry not in resized:
                resized[geometry] = self._resize(image, t)
            x = resized[geometry]
            mean = torch.tensor(t.mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(t.std, dtype=torch.float32).view(3, 1, 1)
            parts.append(x.sub(mean).div(std))
        return torch.cat(parts, dim=0)

    @staticmethod
    def _resize(image: Image.Image, t: BackboneTransform) -> torch.Tensor:
        """Letterbox / resize / centre crop, then uint8 -> float32 in [0, 1], CHW."""
        if t.letterbox_fill is not None:
            image = letterbox_pad(image, t.letterbox_fill)
        image = resize_like_torchvision(image, t.resize_size, t.resize_filter, t.resize_max_size)
        image = center_crop_like_torchvision(image, t.crop_size)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x.float().div(255)


def letterbox_pad(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Upstream's letterbox: a border of ``int((max_side - side) / 2)`` on both sides of each axis.

    An odd difference between width and height therefore leaves the result one pixel short of
    square, as upstream's is. The canvas counts against the same pixel bound as any image.
    """
    w, h = image.size
    side = max(w, h)
    pad_x, pad_y = int((side - w) / 2), int((side - h) / 2)
    size = (w + 2 * pad_x, h + 2 * pad_y)
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise InvalidImageError(f'the letterbox of a {w}x{h} image is {size[0]}x{size[1]} = '
                                f'{size[0] * size[1]} pixels, more than the limit of '
                                f'{MAX_IMAGE_PIXELS} pixels')
    if size == (w, h):
        return image
    padded = Image.new(image.mode, size, fill)
    padded.paste(image, (pad_x, pad_y))
    return padded


def resize_like_torchvision(image: Image.Image, size: tuple[int, int] | int, resample: int,
                            max_size: int | None = None) -> Image.Image:
    """torchvision's ``resize`` of a PIL image: (h, w) exactly, or an int for the shorter side."""
    w, h = image.size
    if isinstance(size, int):
        short, long_ = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long_ / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
        out = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        out = (size[1], size[0])
    return image if out == (w, h) else image.resize(out, resample)


def center_crop_like_torchvision(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """torchvision's ``center_crop`` of a PIL image to (h, w), zero-padding a side that is short."""
    ch, cw = size
    w, h = image.size
    if cw > w or ch > h:
        left, top = max(cw - w, 0) // 2, max(ch - h, 0) // 2
        padded = Image.new(image.mode, (max(w, cw), max(h, ch)), 0)
        padded.paste(image, (left, top))
        image, (w, h) = padded, padded.size
    if (w, h) == (cw, ch):
        return image
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return image.crop((left, top, left + cw, top + ch))


def bridge_eval_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """JPEG round trip then antialiased Lanczos to ``size`` (h, w): the RLDS training-data path."""
    buf = io.BytesIO()
    image.save(buf, format='JPEG', quality=BRIDGE_EVAL_JPEG_QUALITY)
    buf.seek(0)
    decoded = Image.open(buf).convert('RGB')
    return decoded.resize((size[1], size[0]), Image.LANCZOS)


def center_crop_90(image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """Centred crop with 90% of the area, resized (bilinear) to ``size`` (h, w) or the input size."""
    w, h = image.size
    scale = math.sqrt(CENTER_CROP_AREA)
    cw, ch = w * scale, h * scale
    left, top = (w - cw) / 2, (h - ch) / 2
    out_h, out_w = size if size is not None else (h, w)
    return image.resize((out_w, out_h), Image.BILINEAR, box=(left, top, left + cw, top + ch))


def to_pixel_values(image: np.ndarray, processor: ImageProcessor, pipeline: str,
                    center_crop: bool) -> torch.Tensor:
    """Validated RGB uint8 array -> float32 pixel_values [C, H, W] for the chosen pipeline."""
    pil = Image.fromarray(validate_image(image)).convert('RGB')
    if pipeline == 'bridge_eval':
        pil = bridge_eval_resize(pil, processor.image_size)
    elif pipeline != 'processor':
        raise ValueError(f'unknown image pipeline {pipeline!r}')
    if center_crop:
        pil = center_crop_90(pil, processor.image_size if pipeline == 'bridge_eval' else None)
    return processor(pil)
