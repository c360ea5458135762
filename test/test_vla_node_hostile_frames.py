"""A live vla_node fed hostile CompressedImage frames (headers claiming huge sizes, a
decompression bomb, truncated data): each is refused and counted, the node keeps acting on the
good frames that follow, and it exits cleanly at the end."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from test_image_decoding import _black_png, _with_jpeg_size
from test_vla_node import WAIT_S, _ns, _scenes
from test_vla_node_compressed import _publish_compressed, running_compressed_vla_node

pytestmark = [pytest.mark.ros,
              pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')]
INSTRUCTION = 'stack the cups'


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format='JPEG', quality=quality)
    return buf.getvalue()


@pytest.fixture(scope='module')
def node(tmp_path_factory, tiny_checkpoint):
    with running_compressed_vla_node(tmp_path_factory, 'vla_node_hostile', tiny_checkpoint) as (harness, pub):
        # instructed once: a re-sent instruction arriving after a hostile frame would replace the
        # status message that reports the refusal
        harness.instruct(INSTRUCTION)
        harness.wait_status(lambda s: s.instruction == INSTRUCTION)
        yield harness, pub


def _hostile(case: str) -> bytes:
    scene = _scenes(1, 240, 400, seed=21)[0]
    if case == 'jpeg_claiming_65500':
        return _with_jpeg_size(_jpeg(scene[:16, :16], quality=50), 65500, 65500)
    if case == 'png_bomb_12000':
        return _black_png(12000, 12000)
    full = _with_jpeg_size(_jpeg(scene, quality=95), 12000, 12000)
    return full[:len(full) // 2]                     # truncated_jpeg_claiming_12000


@pytest.mark.parametrize('case', ['jpeg_claiming_65500', 'png_bomb_12000',
                                  'truncated_jpeg_claiming_12000'])
def test_hostile_frame_is_refused_and_the_node_carries_on(node, case):
    h, pub = node
    before = h.wait_status(lambda s: True).frames_rejected
    bad = _publish_compressed(h, pub, _hostile(case), 'png' if 'png' in case else 'jpeg')
    status = h.wait_status(lambda s: s.frames_rejected == before + 1)
    assert 'refused before decoding' in status.message, status.message
    good = _publish_compressed(h, pub, _jpeg(_scenes(1, 48, 64, seed=22)[0]), 'jpeg')
    assert h.wait(lambda: any(_ns(m.header.stamp) == good for _, m in h.actions), WAIT_S), \
        h.latest_status()
    assert not any(_ns(m.header.stamp) == bad for _, m in h.actions)
