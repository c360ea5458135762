"""Image message <-> numpy conversion, ROS-free and duck-typed.

Works on rclpy ``sensor_msgs/Image`` / ``CompressedImage`` messages and on the message objects
that ``rosbags`` deserializes alike: only the fields ``height, width, encoding, is_bigendian,
step, data`` (or ``format, data``) are read. This is the project's replacement for cv_bridge,
which does not install against numpy 2.
"""
from __future__ import annotations

import sys

import numpy as np

# encoding -> (channels, numpy dtype, channel order to produce RGB)
_ENCODINGS: dict[str, tuple[int, str, tuple[int, ...] | None]] = {
    'rgb8': (3, 'u1', (0, 1, 2)),
    'bgr8': (3, 'u1', (2, 1, 0)),
    'rgba8': (4, 'u1', (0, 1, 2)),
    'bgra8': (4, 'u1', (2, 1, 0)),
    'mono8': (1, 'u1', None),
    '8UC1': (1, 'u1', None),
    '8UC3': (3, 'u1', (2, 1, 0)),   # OpenCV convention: BGR
    'rgb16': (3, 'u2', (0, 1, 2)),
    'bgr16': (3, 'u2', (2, 1, 0)),
    'rgba16': (4, 'u2', (0, 1, 2)),
    'bgra16': (4, 'u2', (2, 1, 0)),
    'mono16': (1, 'u2', None),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)
MAX_IMAGE_PIXELS = 4096 * 4096


class ImageConversionError(ValueError):
    """The message cannot be turned into an RGB image (the reason is in the text)."""


def image_msg_to_rgb(msg) -> np.ndarray:
    """Return an H x W x 3 uint8 RGB array (a copy) from an Image message.

    Honours ``step`` (row padding) and ``is_bigendian``; 16-bit images are scaled to 8 bit
    (value >> 8); alpha is dropped; mono is replicated to three channels.
    """
    enc = str(msg.encoding)
    if enc not in _ENCODINGS:
        raise ImageConversionError(
            f'unsupported image encoding {enc!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    channels, kind, order = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f'empty image: {w}x{h}')
    if h * w > MAX_IMAGE_PIXELS:
        raise ImageConversionError(f'image too large: {w}x{h} > {MAX_IMAGE_PIXELS} pixels')
    itemsize = 1 if kind == 'u1' else 2
    row_bytes = w * channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(f'step {step} is smaller than width*channels*bytes = {row_bytes}')
    buf = _as_bytes(msg.data)
    if len(buf) < step * (h - 1) + row_bytes:
        raise ImageConversionError(
            f'data has {len(buf)} bytes, expected {step * h} for {w}x{h} {enc} with step {step}')
    rows = np.frombuffer(buf, dtype=np.uint8, count=min(len(buf), step * h))
    if rows.size < step * h:  # last row may be unpadded
        rows = np.concatenate([rows, np.zeros(step * h - rows.size, np.uint8)])
    rows = rows.reshape(h, step)[:, :row_bytes]
    if itemsize == 2:
        dt = np.dtype('>u2' if msg.is_bigendian else '<u2')
        px = np.ascontiguousarray(rows).view(dt).reshape(h, w, channels)
        px = (px >> 8).astype(np.uint8)
    else:
        px = rows.reshape(h, w, channels)
    if channels == 1:
        return np.repeat(px, 3, axis=2)
    return np.ascontiguousarray(px[:, :, list(order)])


def compressed_msg_to_rgb(msg) -> np.ndarray:
    """Decode a CompressedImage (jpeg/png) into H x W x 3 uint8 RGB."""
    import cv2

    buf = np.frombuffer(_as_bytes(msg.data), dtype=np.uint8)
    if buf.size == 0:
        raise ImageConversionError('compressed image has no data')
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageConversionError(f'cannot decode compressed image (format {msg.format!r})')
    if img.shape[0] * img.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageConversionError(f'image too large: {img.shape[1]}x{img.shape[0]}')
    return np.ascontiguousarray(img[:, :, ::-1])


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = 'rgb8') -> dict:
    """Fields of an Image message holding ``rgb`` (H x W x 3 uint8) in ``encoding``.

    Returns ``dict(height, width, encoding, is_bigendian, step, data)``; ``data`` is ``bytes``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageConversionError(f'expected H x W x 3 uint8, got {rgb.shape} {rgb.dtype}')
    if encoding not in _ENCODINGS:
        raise ImageConversionError(f'unsupported image encoding {encoding!r}')
    channels, kind, order = _ENCODINGS[encoding]
    if channels == 1:
        px = rgb.mean(axis=2, keepdims=True).round().astype(np.uint8)
    else:
        inv = np.argsort(order)  # RGB -> encoding order
        px = rgb[:, :, list(inv)]
        if channels == 4:
            px = np.concatenate([px, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    big = sys.byteorder == 'big'
    if kind == 'u2':
        px = px.astype(np.uint16) * 257
    px = np.ascontiguousarray(px)
    h, w = rgb.shape[:2]
    return dict(height=h, width=w, encoding=encoding, is_bigendian=int(big and kind == 'u2'),
                step=w * channels * px.itemsize, data=px.tobytes())


def _as_bytes(data) -> bytes | memoryview:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).tobytes()
    # rclpy gives array.array('B') for uint8[]
    try:
        return memoryview(data).cast('B')
    except TypeError:
        return bytes(data)
