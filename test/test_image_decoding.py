"""decode_image, the one entry point for camera frames: encoded frames are exactly upstream's
``PIL.Image.open(f).convert("RGB")``, oversized frames are refused from their header before any
decoding, and no input, however broken, raises anything but ImageConversionError."""
from __future__ import annotations

import io
import struct
import types
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from rosbags.typesys import Stores, get_typestore

from openvla_ros.imaging import (MAX_IMAGE_PIXELS, SUPPORTED_ENCODINGS, ImageConversionError,
                                 compressed_msg_to_rgb, decode_image, image_msg_to_rgb)

TS = get_typestore(Stores.ROS2_KILTED)
CompressedImage = TS.types['sensor_msgs/msg/CompressedImage']
Header = TS.types['std_msgs/msg/Header']
Time = TS.types['builtin_interfaces/msg/Time']
HEADER = Header(stamp=Time(sec=3, nanosec=0), frame_id='camera')
# PIL warns about any header over its own 89 MP threshold, which these tests send on purpose
BOMB = pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compressed(data: bytes, fmt: str = 'jpeg'):
    return CompressedImage(header=HEADER, format=fmt, data=np.frombuffer(data, np.uint8).copy())


def _encode(image: PILImage.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _upstream(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)).convert('RGB'))


@pytest.fixture(scope='module')
def scene() -> PILImage.Image:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (230, 40, 10)            # structure the codecs keep
    return PILImage.fromarray(pixels)


@pytest.fixture(scope='module')
def small_jpeg(scene) -> bytes:
    return _encode(scene.resize((16, 16)), 'JPEG', quality=50)


def _with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same file with its SOF0 header claiming another size."""
    at = jpeg.index(b'\xff\xc0')
    return jpeg[:at + 5] + struct.pack('>HH', height, width) + jpeg[at + 9:]


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))


def _black_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of zeros, compressed row by row so that building it stays small."""
    row = b'\x00' * (1 + 3 * width)
    packer = zlib.compressobj(9)
    idat = b''.join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b'IDAT', idat) + _png_chunk(b'IEND', b''))


# ------------------------------------------------------------------ upstream's pixels
@pytest.mark.parametrize('mode', ['RGB', 'RGBA', 'LA', 'L', 'P', '1', 'I;16', 'I', 'CMYK'])
def test_every_pil_mode_decodes_as_pil_converts_it(scene, mode):
    if mode in ('I;16', 'I'):
        values = np.asarray(scene.convert('L'), np.uint16) * 300   # above 255: PIL clips
        image = PILImage.fromarray(values.astype(np.uint16)).convert(mode)
    else:
        image = scene.convert('RGBA').convert(mode)
    # a transparent palette entry is ignored by convert('RGB'), as is any alpha channel
    fmt = 'JPEG' if mode == 'CMYK' else ('TIFF' if mode == 'I' else 'PNG')
    data = _encode(image, fmt, **({'transparency': 0} if mode == 'P' else {}))
    ours = decode_image(_compressed(data, fmt.lower()))
    assert ours.shape == (24, 40, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, _upstream(data))


def test_exif_orientation_is_not_applied(scene):
    """PIL (upstream) ignores the EXIF orientation; OpenCV's default decoding would rotate."""
    exif = PILImage.Exif()
    exif[0x0112] = 6                             # "rotate 90 degrees clockwise to display"
    data = _encode(scene, 'JPEG', quality=90, exif=exif.tobytes())
    ours = compressed_msg_to_rgb(_compressed(data))
    assert ours.shape == (24, 40, 3)
    assert np.array_equal(ours, _upstream(data))
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (40, 24, 3)


def test_jpeg_pixels_are_pils_not_opencvs(scene):
    data = _encode(scene, 'JPEG', quality=85)
    assert np.array_equal(decode_image(_compressed(data)), _upstream(data))
    assert np.array_equal(decode_image(data, 'jpeg'), _upstream(data))   # bytes in, same out


def test_a_12mp_frame_is_accepted():
    data = _black_png(4608, 2592)
    rgb = decode_image(_compressed(data, 'png'))
    assert rgb.shape == (2592, 4608, 3) and not rgb.any()
    assert 4608 * 2592 <= MAX_IMAGE_PIXELS


# ------------------------------------------------------------------ refused from the header
def test_tiny_jpeg_claiming_a_huge_size_is_refused_before_decoding(small_jpeg):
    data = _with_jpeg_size(small_jpeg, 65500, 65500)
    assert len(data) < 1000
    with pytest.raises(ImageConversionError, match='refused before decoding'):
        decode_image(_compressed(data))


def test_tiny_jpeg_claiming_4097x4097_decodes_as_pil_does(small_jpeg):
    """Within the bound nothing is refused for its size: libjpeg pads the missing data and PIL
    returns the padded image, so upstream gets it too; above all, no other exception escapes."""
    data = _with_jpeg_size(small_jpeg, 4097, 4097)
    assert len(data) < 1000
    try:
        ours = decode_image(_compressed(data))
    except ImageConversionError as exc:
        with pytest.raises(Exception):
            _upstream(data)
        assert 'cannot decode compressed image' in str(exc)
    else:
        assert ours.shape == (4097, 4097, 3)
        assert np.array_equal(ours, _upstream(data))


@BOMB
def test_png_decompression_bomb_is_refused_from_its_header():
    data = _black_png(12000, 12000)
    assert len(data) < 600_000                  # 0.42 MB that would decode to 432 MB
    with pytest.raises(ImageConversionError, match='refused before decoding: its header declares '
                                                   '12000x12000'):
        decode_image(_compressed(data, 'png'))


@BOMB
def test_truncated_jpeg_claiming_12000x12000_is_refused_from_its_header(scene):
    full = _with_jpeg_size(_encode(scene.resize((400, 240)), 'JPEG', quality=95), 12000, 12000)
    assert full.index(b'\xff\xda') < len(full) // 2     # the cut is in the scan data
    with pytest.raises(ImageConversionError, match='header declares 12000x12000'):
        decode_image(_compressed(full[:len(full) // 2]))


def test_truncated_and_corrupt_files_are_conversion_errors(scene, small_jpeg):
    png = _encode(scene, 'PNG')
    bad_crc = bytearray(png)
    bad_crc[40] ^= 0xFF                          # inside IHDR/IDAT: the CRC no longer matches
    cases = {
        'empty': b'',
        'not an image': b'hello world, not an image at all',
        'half a jpeg': small_jpeg[:len(small_jpeg) // 2],
        'half a png': png[:len(png) // 2],
        'png header only': png[:33],
        'bad crc': bytes(bad_crc),
        'jpeg without SOF': small_jpeg[:2] + small_jpeg[small_jpeg.index(b'\xff\xda'):],
    }
    for name, data in cases.items():
        with pytest.raises(ImageConversionError):
            decode_image(_compressed(data))
            pytest.fail(name)
    with pytest.raises(ImageConversionError, match='depth'):
        decode_image(_compressed(png, '16UC1; compressedDepth png'))


# ------------------------------------------------------------------ nothing else escapes
def _survives(call) -> None:
    try:
        rgb = call()
    except ImageConversionError:
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    assert rgb.shape[0] * rgb.shape[1] <= MAX_IMAGE_PIXELS


@BOMB
@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 10_000), which=st.sampled_from(['jpeg', 'png']))
def test_mutated_files_never_raise_anything_else(scene, small_jpeg, edits, cut, which):
    data = bytearray(small_jpeg if which == 'jpeg' else _encode(scene.resize((16, 8)), 'PNG'))
    for at, value in edits:
        data[at % len(data)] = value
    _survives(lambda: decode_image(_compressed(bytes(data[:max(cut, 1)]), which)))


@FUZZ
@given(encoding=st.sampled_from(list(SUPPORTED_ENCODINGS) + ['yuv444', '', '32FC1']),
       height=st.integers(-2, 70_000), width=st.integers(-2, 70_000), step=st.integers(-1, 200_000),
       size=st.integers(0, 4096), big=st.integers(0, 1))
def test_malformed_raw_messages_never_raise_anything_else(encoding, height, width, step, size, big):
    msg = types.SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=big,
                                step=step, data=bytes(range(256)) * (size // 256) + b'\x07' * (size % 256))
    _survives(lambda: image_msg_to_rgb(msg))
