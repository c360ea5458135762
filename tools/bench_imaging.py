#!/usr/bin/env python3
"""Time openvla_ros.imaging.decode_image per camera encoding and compressed format.

For each frame size, builds one frame of a synthetic scene in every listed encoding (and as JPEG
and PNG), then reports the median and 90th-percentile decode time over --repeat calls. For the
compressed formats it also times cv2.imdecode, the decoder used before decode_image took PIL's.
A header-only refusal of a 12000 x 12000 PNG bomb is timed as well.

    python tools/bench_imaging.py [--sizes 640x480,1920x1080,4608x2592] [--repeat 30] [--json]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import struct
import sys
import time
import types
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openvla_ros.imaging import ImageConversionError, decode_image, rgb_to_image_fields  # noqa: E402

ENCODINGS = ['rgb8', 'bgr8', 'rgba8', 'mono8', 'rgb16', 'mono16', 'yuv422', 'yuv422_yuy2', 'nv21',
             'bayer_rggb8', 'bayer_rggb16']


def _scene(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2)
    return (rgb + rng.integers(0, 16, rgb.shape)).clip(0, 255).astype(np.uint8)


def _png_bomb(side: int) -> bytes:
    def chunk(tag, data):
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))
    packer = zlib.compressobj(9)
    row = b'\x00' * (1 + 3 * side)
    idat = b''.join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


def _time(call, repeat: int) -> dict:
    call()                                   # warm-up (imports, allocator)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {'median_ms': 1e3 * statistics.median(times),
            'p90_ms': 1e3 * times[min(len(times) - 1, int(0.9 * len(times)))]}


def _refused(data: bytes):
    try:
        decode_image(data, 'png')
    except ImageConversionError:
        return
    raise AssertionError('the bomb was not refused')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes', default='640x480,1920x1080,4608x2592')
    p.add_argument('--repeat', type=int, default=30)
    p.add_argument('--json', action='store_true')
    args = p.parse_args(argv)
    import cv2
    from PIL import Image

    rows = []
    for size in args.sizes.split(','):
        w, h = (int(v) for v in size.split('x'))
        rgb = _scene(w, h)
        for encoding in ENCODINGS:
            msg = types.SimpleNamespace(**rgb_to_image_fields(rgb, encoding))
            rows.append({'size': size, 'input': encoding, **_time(lambda: decode_image(msg), args.repeat)})
        for fmt in ('JPEG', 'PNG'):
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format=fmt, **({'quality': 90} if fmt == 'JPEG' else {}))
            data = buf.getvalue()
            rows.append({'size': size, 'input': fmt.lower(), **_time(lambda: decode_image(data), args.repeat)})
            encoded = np.frombuffer(data, np.uint8)
            rows.append({'size': size, 'input': f'{fmt.lower()} (cv2.imdecode)',
                         **_time(lambda: cv2.imdecode(encoded, cv2.IMREAD_COLOR), args.repeat)})
    bomb = _png_bomb(12000)
    rows.append({'size': '12000x12000', 'input': f'png bomb, {len(bomb)} bytes (refused)',
                 **_time(lambda: _refused(bomb), args.repeat)})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f'{"size":>12} {"input":<34} {"median ms":>10} {"p90 ms":>8}')
        for r in rows:
            print(f'{r["size"]:>12} {r["input"]:<34} {r["median_ms"]:>10.2f} {r["p90_ms"]:>8.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
