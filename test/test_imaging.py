"""Image message conversion, checked against rosbags-image (an independent, well-kept reference)."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore

from openvla_ros.imaging import (SUPPORTED_ENCODINGS, ImageConversionError, compressed_msg_to_rgb,
                                 image_msg_to_rgb, rgb_to_image_fields)

TS = get_typestore(Stores.ROS2_KILTED)
Image = TS.types['sensor_msgs/msg/Image']
CompressedImage = TS.types['sensor_msgs/msg/CompressedImage']
Header = TS.types['std_msgs/msg/Header']
Time = TS.types['builtin_interfaces/msg/Time']


def _msg(**fields):
    data = np.frombuffer(fields.pop('data'), np.uint8).copy()
    return Image(header=Header(stamp=Time(sec=1, nanosec=2), frame_id='cam'), data=data, **fields)


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'rgb16', 'bgr16',
                                      'rgba16', 'bgra16', 'mono16'])
def test_roundtrip_matches_reference(rgb, encoding):
    msg = _msg(**rgb_to_image_fields(rgb, encoding))
    ours = image_msg_to_rgb(msg)
    assert ours.shape == (5, 7, 3) and ours.dtype == np.uint8
    if encoding.startswith('mono'):
        assert np.array_equal(ours[:, :, 0], ours[:, :, 1])
        assert np.abs(ours[:, :, 0].astype(int) - rgb.mean(axis=2)).max() <= 1
    else:
        assert np.array_equal(ours, rgb)
    if '16' not in encoding:
        # rosbags-image scales 16 bit by 255/65535, PIL (upstream) does not: see
        # test_imaging_encodings for the 16-bit rules
        assert np.array_equal(ours, message_to_cvimage(msg, 'rgb8'))


def test_step_padding_and_big_endian(rgb):
    f = rgb_to_image_fields(rgb, 'rgb16')
    px = np.frombuffer(f['data'], '<u2').reshape(5, 7 * 3)
    big = px.astype('>u2')
    padded = np.zeros((5, 7 * 3 * 2 + 6), np.uint8)
    padded[:, :7 * 3 * 2] = big.view(np.uint8).reshape(5, -1)
    msg = _msg(height=5, width=7, encoding='rgb16', is_bigendian=1, step=padded.shape[1], data=padded.tobytes())
    assert np.array_equal(image_msg_to_rgb(msg), rgb)


def test_rejects_bad_images(rgb):
    good = rgb_to_image_fields(rgb, 'rgb8')
    cases = {
        'unsupported image encoding': dict(good, encoding='yuv444'),
        'empty image': dict(good, height=0, width=0, step=0, data=b''),
        'step': dict(good, step=10),
        'data has': dict(good, data=good['data'][:-10]),
        'too large': dict(good, height=100000, width=100000, step=300000),
    }
    for needle, fields in cases.items():
        with pytest.raises(ImageConversionError, match=needle):
            image_msg_to_rgb(_msg(**fields))
    assert 'rgb8' in SUPPORTED_ENCODINGS


def test_compressed(rgb):
    import cv2

    ok, png = cv2.imencode('.png', rgb[:, :, ::-1])
    msg = CompressedImage(header=Header(stamp=Time(sec=0, nanosec=0), frame_id=''), format='png',
                          data=np.frombuffer(png.tobytes(), np.uint8))
    assert np.array_equal(compressed_msg_to_rgb(msg), rgb)
    bad = CompressedImage(header=msg.header, format='jpeg', data=np.zeros(10, np.uint8))
    with pytest.raises(ImageConversionError):
        compressed_msg_to_rgb(bad)
