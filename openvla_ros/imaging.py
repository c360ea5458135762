"""Image decoding for every path that feeds the model: ROS messages and encoded files to RGB uint8.

One entry point, :func:`decode_image`, serves the node, the bag tools and the server. It takes a
``sensor_msgs/Image``, a ``sensor_msgs/CompressedImage`` (rclpy or ``rosbags`` objects alike: only
``height, width, encoding, is_bigendian, step, data`` or ``format, data`` are read) or the bytes of
an encoded file, and returns an H x W x 3 uint8 RGB array or raises :class:`ImageConversionError`
(and nothing else, whatever the decoder underneath raised).

Pixels are what upstream's ``PIL.Image.open(f).convert("RGB")`` gives for the same pixels:

- encoded files (CompressedImage, bytes) are decoded by PIL itself, so palette, LA/RGBA, 16-bit,
  CMYK and EXIF (not applied) are exactly PIL's;
- raw images follow the PIL mode the same pixels would have in a PNG file: alpha is dropped, mono
  is replicated, ``mono16`` is clipped at 255 (PIL's ``I;16`` -> ``RGB``), and 16-bit colour keeps
  the high byte (PIL reads 16-bit colour PNGs that way);
- the one exception is the camera encodings PIL has no mode for (YUV 4:2:2, NV12/NV21, Bayer):
  they go through OpenCV's colour conversions with cv_bridge's conversion codes, and 16-bit Bayer
  then keeps the high byte like 16-bit colour.

Every image is bounded by :data:`MAX_IMAGE_PIXELS`, the single limit the engine applies too;
encoded files are refused on the size their header declares, before anything is decoded.
This module is the project's replacement for cv_bridge, which does not install against numpy 2.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass

import numpy as np

# 8192 x 8192: a 12 MP (4608 x 2592) frame is 18% of it, and the largest decoded frame stays
# under 0.55 GB even as 16-bit RGBA.
MAX_IMAGE_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class _Layout:
    channels: int                   # samples per pixel as stored (yuv422: 2, nv21/bayer: 1)
    itemsize: int                   # bytes per sample
    order: tuple[int, ...] | None   # direct encodings: channel order giving RGB; None: mono
    cv_code: str | None = None      # OpenCV conversion to RGB (attribute name of cv2)
    planar_420: bool = False        # NV12/NV21: height rows of Y, then height/2 rows of UV


def _encoding_table() -> dict[str, _Layout]:
    """Every raw encoding, each layout once for both sample depths (8 and 16 bit)."""
    direct = {'rgb': (3, (0, 1, 2)), 'bgr': (3, (2, 1, 0)), 'rgba': (4, (0, 1, 2)),
              'bgra': (4, (2, 1, 0)), 'mono': (1, None)}
    # OpenCV type names (16-bit: one channel only); by its convention 3 and 4 channels are BGR(A)
    cv_types = {'C1': (1, None), 'C3': (3, (2, 1, 0)), 'C4': (4, (2, 1, 0))}
    # cv_bridge's codes; OpenCV names a Bayer pattern after the second row's first two pixels
    bayer = {'rggb': 'BG', 'bggr': 'RG', 'gbrg': 'GR', 'grbg': 'GB'}
    table: dict[str, _Layout] = {}
    for bits in (8, 16):
        size = bits // 8
        table.update({f'{name}{bits}': _Layout(ch, size, order) for name, (ch, order) in direct.items()})
        table.update({f'{bits}U{name}': _Layout(ch, size, order) for name, (ch, order) in cv_types.items()
                      if bits == 8 or name == 'C1'})
    table.update({
        'yuv422': _Layout(2, 1, None, 'COLOR_YUV2RGB_UYVY'),
        'uyvy': _Layout(2, 1, None, 'COLOR_YUV2RGB_UYVY'),
        'yuv422_yuy2': _Layout(2, 1, None, 'COLOR_YUV2RGB_YUYV'),
        'yuyv': _Layout(2, 1, None, 'COLOR_YUV2RGB_YUYV'),
        'nv21': _Layout(1, 1, None, 'COLOR_YUV2RGB_NV21', planar_420=True),
        'nv12': _Layout(1, 1, None, 'COLOR_YUV2RGB_NV12', planar_420=True),
    })
    for bits in (8, 16):
        table.update({f'bayer_{tile}{bits}': _Layout(1, bits // 8, None, f'COLOR_Bayer{cv}2RGB')
                      for tile, cv in bayer.items()})
    return table


_ENCODINGS = _encoding_table()
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)
# where each colour sits in a 2x2 Bayer tile, row-major: the pattern named by the ROS encoding
_BAYER_TILES = {'rggb': 'RGGB', 'bggr': 'BGGR', 'gbrg': 'GBRG', 'grbg': 'GRBG'}


class ImageConversionError(ValueError):
    """The message cannot be turned into an RGB image (the reason is in the text)."""


def image_size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` is refused (empty or over the bound), else None."""
    if width <= 0 or height <= 0:
        return f'empty image: {width}x{height}'
    if width * height > MAX_IMAGE_PIXELS:
        return (f'image too large: {width}x{height} = {width * height} pixels, more than the limit '
                f'of {MAX_IMAGE_PIXELS} pixels')
    return None


def decode_image(source, format: str = '') -> np.ndarray:
    """H x W x 3 uint8 RGB (a new array) from an Image, a CompressedImage or an encoded file.

    ``source`` is a ``sensor_msgs/Image`` or ``CompressedImage`` message (rclpy or rosbags), or
    the ``bytes`` of an encoded file (then ``format`` only names it in error messages). Every
    failure, decoder errors and memory exhaustion included, is an :class:`ImageConversionError`.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return _decode_encoded(source, format)
        if hasattr(source, 'format'):
            return _decode_encoded(_as_bytes(source.data), str(source.format))
        return _decode_raw(source)
    except ImageConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad frame must never escape as another type
        raise ImageConversionError(f'cannot decode image: {type(exc).__name__}: {exc}') from None


def image_msg_to_rgb(msg) -> np.ndarray:
    """H x W x 3 uint8 RGB (a copy) from an Image message; see :func:`decode_image`."""
    return decode_image(msg)


def compressed_msg_to_rgb(msg) -> np.ndarray:
    """H x W x 3 uint8 RGB from a CompressedImage message; see :func:`decode_image`."""
    return decode_image(msg)


def _decode_raw(msg) -> np.ndarray:
    enc = str(msg.encoding)
    layout = _ENCODINGS.get(enc)
    if layout is None:
        raise ImageConversionError(
            f'unsupported image encoding {enc!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    problem = image_size_problem(w, h)
    if problem:
        raise ImageConversionError(problem)
    if layout.planar_420 and (h % 2 or w % 2):
        raise ImageConversionError(f'{enc} needs an even width and height, got {w}x{h}')
    if layout.cv_code and layout.channels == 2 and w % 2:
        raise ImageConversionError(f'{enc} needs an even width, got {w}')
    rows = h + h // 2 if layout.planar_420 else h
    row_bytes = w * layout.channels * layout.itemsize
    if step < row_bytes:
        raise ImageConversionError(f'step {step} is smaller than width*channels*bytes = {row_bytes}')
    buf = _as_bytes(msg.data)
    needed = step * (rows - 1) + row_bytes   # the last row may come without its padding
    if len(buf) < needed:
        raise ImageConversionError(
            f'data has {len(buf)} bytes, expected {step * rows} for {w}x{h} {enc} with step {step}')
    dtype = np.dtype(np.uint8) if layout.itemsize == 1 else \
        np.dtype('>u2' if msg.is_bigendian else '<u2')
    samples = np.ndarray((rows, w * layout.channels), dtype, buf, strides=(step, layout.itemsize))
    if layout.cv_code:
        return _opencv_to_rgb(samples, layout, h, w)
    px = samples.reshape(h, w, layout.channels)
    if layout.itemsize == 2:
        # PIL: I;16 -> RGB clips; 16-bit colour is read as its high byte
        px = np.minimum(px, 255) if layout.order is None else px >> 8
    px = px.astype(np.uint8, copy=False)
    if layout.channels == 3 and layout.order == (0, 1, 2):
        return np.array(px)
    import cv2

    # OpenCV's channel shuffles are exact copies, ~100x faster than numpy's fancy indexing
    code = {1: 'COLOR_GRAY2RGB', 3: 'COLOR_BGR2RGB',
            4: 'COLOR_RGBA2RGB' if layout.order == (0, 1, 2) else 'COLOR_BGRA2RGB'}[layout.channels]
    return cv2.cvtColor(px[:, :, 0] if layout.channels == 1 else px, getattr(cv2, code))


def _opencv_to_rgb(samples: np.ndarray, layout: _Layout, h: int, w: int) -> np.ndarray:
    import cv2

    src = np.ascontiguousarray(samples, dtype=samples.dtype.newbyteorder('='))
    if layout.channels == 2:
        src = src.reshape(h, w, 2)
    rgb = cv2.cvtColor(src, getattr(cv2, layout.cv_code))
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _decode_encoded(data, fmt: str) -> np.ndarray:
    from PIL import Image

    if len(data) == 0:
        raise ImageConversionError('compressed image has no data')
    if 'compresseddepth' in fmt.lower():
        raise ImageConversionError(f'format {fmt!r} is a compressed depth map, not a camera image')
    try:
        image = Image.open(io.BytesIO(bytes(data)))   # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageConversionError(f'compressed image ({fmt}) refused before decoding: {exc}') from None
    except Exception as exc:  # noqa: BLE001 - not an image PIL knows
        raise ImageConversionError(
            f'cannot decode compressed image (format {fmt!r}): {type(exc).__name__}: {exc}') from None
    w, h = image.size
    problem = image_size_problem(w, h)
    if problem:
        raise ImageConversionError(f'compressed image ({fmt}) refused before decoding: its header '
                                   f'declares {w}x{h}; {problem}')
    try:
        # convert('RGB') of an RGB image is a plain copy: np.array makes that copy already
        return np.array(image if image.mode == 'RGB' else image.convert('RGB'), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data, decoder limits
        raise ImageConversionError(
            f'cannot decode compressed image (format {fmt!r}, {w}x{h}): {type(exc).__name__}: '
            f'{exc}') from None
    finally:
        image.close()


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = 'rgb8') -> dict:
    """Fields of an Image message holding ``rgb`` (H x W x 3 uint8) in ``encoding``.

    Returns ``dict(height, width, encoding, is_bigendian, step, data)``; ``data`` is ``bytes``.
    Decoding the result gives ``rgb`` back for the direct encodings (mono: the rounded mean);
    YUV and Bayer encodings are lossy by nature (chroma subsampling, one colour per pixel).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageConversionError(f'expected H x W x 3 uint8, got {rgb.shape} {rgb.dtype}')
    layout = _ENCODINGS.get(encoding)
    if layout is None:
        raise ImageConversionError(f'unsupported image encoding {encoding!r}')
    h, w = rgb.shape[:2]
    if layout.cv_code:
        px = _encode_camera(rgb, encoding, layout)
    elif layout.order is None:
        px = rgb.mean(axis=2, keepdims=True).round().astype(np.uint8)
    else:
        px = rgb[:, :, list(np.argsort(layout.order))]   # RGB -> encoding order
        if layout.channels == 4:
            px = np.concatenate([px, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    if layout.itemsize == 2:
        # the inverse of the decoding rule: mono16 is clipped, 16-bit colour keeps the high byte
        scale = 1 if layout.order is None and not layout.cv_code else 257
        px = px.astype(np.uint16) * scale
    px = np.ascontiguousarray(px)
    big = sys.byteorder == 'big' and layout.itemsize == 2
    return dict(height=h, width=w, encoding=encoding, is_bigendian=int(big),
                step=w * layout.channels * layout.itemsize, data=px.tobytes())


def _encode_camera(rgb: np.ndarray, encoding: str, layout: _Layout) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    if encoding.startswith('bayer_'):
        tile = _BAYER_TILES[encoding[len('bayer_'):len('bayer_') + 4]]
        mosaic = np.empty((h, w), np.uint8)
        for dy in (0, 1):
            for dx in (0, 1):
                mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, 'RGB'.index(tile[2 * dy + dx])]
        return mosaic
    odd = (h % 2 or w % 2) if layout.planar_420 else w % 2
    if odd:
        raise ImageConversionError(f'{encoding} needs an even size, got {w}x{h}')
    if layout.planar_420:
        i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)   # Y, then the U plane, then the V plane
        y, chroma = i420[:h], i420[h:].reshape(2, h // 2, w // 2)
        first, second = (chroma[1], chroma[0]) if encoding == 'nv21' else (chroma[0], chroma[1])
        interleaved = np.stack([first, second], axis=2).reshape(h // 2, w)
        return np.concatenate([y, interleaved], axis=0)
    code = 'COLOR_RGB2YUV_UYVY' if layout.cv_code.endswith('UYVY') else 'COLOR_RGB2YUV_YUYV'
    return cv2.cvtColor(rgb, getattr(cv2, code))


def _as_bytes(data) -> bytes | memoryview:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, np.ndarray):   # rosbags: a view, not a copy of the frame
        return memoryview(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1))
    # rclpy gives array.array('B') for uint8[]
    try:
        return memoryview(data).cast('B')
    except TypeError:
        return bytes(data)
