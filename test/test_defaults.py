"""Shared names and values: topic names, stamp conversions."""
from __future__ import annotations

import pytest

from openvla_ros import defaults


def test_topics_are_root_names_and_nodes_use_them_relative():
    for k, v in vars(defaults).items():
        if k.endswith('_TOPIC'):
            # the constants: what a single robot in the root namespace shows (tools, bags, docs)
            assert v.startswith('/') or v.startswith('~/'), (k, v)
            rel = defaults.relative(v)
            if v in defaults.GLOBAL_TOPICS or v.startswith('~/'):
                assert rel == v, k
            else:
                assert not rel.startswith('/') and defaults.in_namespace(v) == v, k
                assert defaults.in_namespace(v, '/robot1/') == '/robot1' + v, k
    assert defaults.in_namespace(defaults.DEBUG_IMAGE_TOPIC, 'robot1', defaults.VLA_NODE) == \
        '/robot1/vla_node/debug_image'
    assert defaults.in_namespace(defaults.CLOCK_TOPIC, 'robot1') == '/clock'


def test_stamp_conversions_keep_nanosec_in_range():
    from types import SimpleNamespace

    from openvla_ros.stamps import ns_to_sec_nanosec, s_to_sec_nanosec, stamp_to_ns, stamp_to_s

    # rounding up to a whole second carries into sec instead of giving nanosec == 1e9
    assert s_to_sec_nanosec(1.9999999999) == (2, 0)
    assert s_to_sec_nanosec(0.25) == (0, 250_000_000)
    assert ns_to_sec_nanosec(-1) == (-1, 999_999_999)
    stamp = SimpleNamespace(sec=12, nanosec=345_000_000)
    assert stamp_to_ns(stamp) == 12_345_000_000
    assert stamp_to_s(stamp) == pytest.approx(12.345)
    with pytest.raises(ValueError):
        s_to_sec_nanosec(float('nan'))
