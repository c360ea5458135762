"""Raw camera encodings: the same pixels as upstream's PIL path, and the camera encodings PIL has
no mode for (YUV, NV12/NV21, Bayer) exactly as rosbags-image converts the same messages."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore

from openvla_ros.imaging import (SUPPORTED_ENCODINGS, ImageConversionError, decode_image,
                                 image_msg_to_rgb, rgb_to_image_fields)

TS = get_typestore(Stores.ROS2_KILTED)
Image = TS.types['sensor_msgs/msg/Image']
CompressedImage = TS.types['sensor_msgs/msg/CompressedImage']
Header = TS.types['std_msgs/msg/Header']
Time = TS.types['builtin_interfaces/msg/Time']
HEADER = Header(stamp=Time(sec=1, nanosec=2), frame_id='camera')

YUV_8BIT = ['yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'nv21', 'nv12']
BAYER_8BIT = ['bayer_rggb8', 'bayer_bggr8', 'bayer_gbrg8', 'bayer_grbg8']
BAYER_16BIT = ['bayer_rggb16', 'bayer_bggr16', 'bayer_gbrg16', 'bayer_grbg16']


def _msg(**fields):
    data = np.frombuffer(fields.pop('data'), np.uint8).copy()
    return Image(header=HEADER, data=data, **fields)


def _pil_rgb(encoded: bytes) -> np.ndarray:
    """What upstream's processor is given for an encoded file."""
    return np.asarray(PILImage.open(io.BytesIO(encoded)).convert('RGB'))


def _png(pixels: np.ndarray) -> bytes:
    ok, png = cv2.imencode('.png', pixels)
    assert ok
    return png.tobytes()


def _pad_rows(fields: dict, pad: int, big_endian: bool = False) -> dict:
    rows = np.frombuffer(fields['data'], np.uint8).reshape(-1, fields['step'])
    if big_endian:
        rows = rows.reshape(rows.shape[0], -1, 2)[:, :, ::-1].reshape(rows.shape[0], -1)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return dict(fields, step=fields['step'] + pad, data=padded.tobytes(),
                is_bigendian=int(big_endian))


@pytest.fixture
def rgb():
    return np.random.default_rng(7).integers(0, 256, (6, 10, 3), dtype=np.uint8)


@pytest.fixture
def u16():
    rng = np.random.default_rng(8)
    values = rng.integers(0, 65536, (6, 10), dtype=np.uint16)
    values[0, :6] = [0, 1, 255, 256, 300, 65535]   # both sides of every rounding edge
    return values


# ------------------------------------------------------------------ same pixels as PIL
def _as_opencv(stored: np.ndarray, encoding: str) -> np.ndarray:
    """The buffer in OpenCV's channel order (BGR, BGRA or grey), as imencode wants it."""
    if stored.shape[2] == 1:
        return stored[:, :, 0]
    if encoding.startswith(('bgr', '8UC')):
        return stored
    return stored[:, :, [2, 1, 0, 3][:stored.shape[2]]]


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', '8UC3', 'mono8', '8UC1', 'rgba8', 'bgra8',
                                      '8UC4'])
def test_8bit_raw_equals_pil_on_the_same_pixels(rgb, encoding):
    fields = rgb_to_image_fields(rgb, encoding)
    stored = np.frombuffer(fields['data'], np.uint8).reshape(6, 10, -1).copy()
    if stored.shape[2] == 4:            # a real alpha channel: PIL drops it, it does not blend
        stored[:, :, 3] = np.random.default_rng(1).integers(0, 256, (6, 10), dtype=np.uint8)
    msg = _msg(**dict(fields, data=stored.tobytes()))
    assert np.array_equal(image_msg_to_rgb(msg), _pil_rgb(_png(_as_opencv(stored, encoding))))


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
@pytest.mark.parametrize('big_endian', [False, True])
def test_mono16_is_clipped_as_pil_converts_I16(u16, encoding, big_endian):
    fields = dict(height=6, width=10, encoding=encoding, is_bigendian=0, step=20,
                  data=u16.astype('<u2').tobytes())
    msg = _msg(**_pad_rows(fields, 6, big_endian))
    ours = image_msg_to_rgb(msg)
    assert ours[0, :6, 0].tolist() == [0, 1, 255, 255, 255, 255]   # clipped, not >> 8
    assert np.array_equal(ours, np.asarray(PILImage.fromarray(u16).convert('RGB')))
    assert np.array_equal(ours, _pil_rgb(_png(u16)))                # a 16-bit grey PNG


@pytest.mark.parametrize('encoding', ['rgb16', 'bgr16', 'rgba16', 'bgra16'])
@pytest.mark.parametrize('big_endian', [False, True])
def test_16bit_colour_keeps_the_high_byte_as_pil_reads_16bit_png(u16, encoding, big_endian):
    channels = 4 if 'a' in encoding[3:] else 3
    stored = np.stack([u16, u16[::-1], u16[:, ::-1], u16.T.reshape(6, 10)][:channels], axis=2)
    fields = dict(height=6, width=10, encoding=encoding, is_bigendian=0, step=10 * channels * 2,
                  data=stored.astype('<u2').tobytes())
    ours = image_msg_to_rgb(_msg(**_pad_rows(fields, 4, big_endian)))
    assert np.array_equal(ours, _pil_rgb(_png(_as_opencv(stored, encoding))))
    assert np.array_equal(ours[:, :, 0], (stored[:, :, 0 if encoding.startswith('rgb') else 2] >> 8))


@pytest.mark.parametrize('encoding', ['rgb8', 'bgra8', 'mono8', 'rgb16', 'rgba16', 'mono16'])
def test_raw_and_compressed_frames_of_the_same_pixels_agree(rgb, encoding):
    """A camera sending a frame raw or as PNG (image_transport's compressed) gives one image."""
    fields = rgb_to_image_fields(rgb, encoding)
    raw = _msg(**fields)
    itemsize = 2 if '16' in encoding else 1
    stored = np.frombuffer(fields['data'], '<u2' if itemsize == 2 else np.uint8).reshape(6, 10, -1)
    compressed = CompressedImage(header=HEADER, format=f'{encoding}; png compressed',
                                 data=np.frombuffer(_png(_as_opencv(stored, encoding)), np.uint8))
    assert np.array_equal(decode_image(raw), decode_image(compressed))


# ------------------------------------------------------------------ camera encodings
def _reference_message(msg):
    """The same bytes as rosbags-image expects them: NV12/NV21 with height counting UV rows."""
    if msg.encoding in ('nv21', 'nv12'):
        return Image(header=msg.header, height=msg.height * 3 // 2, width=msg.width,
                     encoding=msg.encoding, is_bigendian=0, step=msg.step, data=msg.data)
    return msg


@pytest.mark.parametrize('encoding', YUV_8BIT + BAYER_8BIT)
def test_camera_encodings_match_rosbags_image(rgb, encoding):
    msg = _msg(**rgb_to_image_fields(rgb, encoding))
    ours = image_msg_to_rgb(msg)
    assert ours.shape == (6, 10, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, message_to_cvimage(_reference_message(msg), 'rgb8'))


@pytest.mark.parametrize('encoding', BAYER_16BIT)
@pytest.mark.parametrize('big_endian', [False, True])
def test_16bit_bayer_matches_rosbags_image_then_keeps_the_high_byte(u16, encoding, big_endian):
    fields = dict(height=6, width=10, encoding=encoding, is_bigendian=0, step=20,
                  data=u16.astype('<u2').tobytes())
    reference = message_to_cvimage(_msg(**fields), 'rgb16')   # rosbags' 16 -> 8 bit scaling differs
    ours = image_msg_to_rgb(_msg(**_pad_rows(fields, 2, big_endian)))
    assert np.array_equal(ours, (reference >> 8).astype(np.uint8))


@pytest.mark.parametrize('encoding', YUV_8BIT + BAYER_8BIT)
def test_camera_encodings_honour_row_padding(rgb, encoding):
    fields = rgb_to_image_fields(rgb, encoding)
    unpadded = image_msg_to_rgb(_msg(**fields))
    assert np.array_equal(image_msg_to_rgb(_msg(**_pad_rows(fields, 6))), unpadded)


@pytest.mark.parametrize('encoding', YUV_8BIT + BAYER_8BIT + BAYER_16BIT)
def test_camera_encodings_carry_the_colours(encoding):
    """A flat coloured frame comes back that colour (the Bayer pattern names are not swapped)."""
    colour = np.array([200, 60, 20], np.uint8)
    flat = np.broadcast_to(colour, (8, 12, 3)).copy()
    decoded = image_msg_to_rgb(_msg(**rgb_to_image_fields(flat, encoding)))
    centre = decoded[2:-2, 2:-2].reshape(-1, 3).astype(int)
    assert np.abs(centre - colour).max() <= 3, (encoding, centre[0])


@pytest.mark.parametrize('encoding, fields, needle', [
    ('yuv422', dict(width=9, step=18), 'even width'),
    ('yuyv', dict(width=9, step=18), 'even width'),
    ('nv21', dict(height=5), 'even width and height'),
    ('nv12', dict(width=7, step=7), 'even width and height'),
    ('nv21', dict(data=b'\x00' * (10 * 6)), 'data has'),   # the UV rows are missing
    ('bayer_rggb16', dict(step=10), 'step'),
])
def test_camera_encodings_refuse_malformed_frames(rgb, encoding, fields, needle):
    good = rgb_to_image_fields(rgb, encoding)
    with pytest.raises(ImageConversionError, match=needle):
        image_msg_to_rgb(_msg(**dict(good, **fields)))


def test_every_supported_encoding_decodes_and_encodes(rgb):
    for encoding in SUPPORTED_ENCODINGS:
        decoded = image_msg_to_rgb(_msg(**rgb_to_image_fields(rgb, encoding)))
        assert decoded.shape == rgb.shape and decoded.dtype == np.uint8, encoding
    for name in ('yuv422', 'yuv422_yuy2', 'nv21', 'bayer_rggb8', 'bayer_grbg16'):
        assert name in SUPPORTED_ENCODINGS
