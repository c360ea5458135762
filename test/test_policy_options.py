"""Engine and remote options are defined once (the dataclass fields) and every surface agrees:
the command-line flags, vla_node's parameter specs and the remote client's defaults."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from openvla_ros.engine.api import QUANTIZATIONS, PolicyOptions
from openvla_ros.policy import options
from openvla_ros.policy.remote import RemotePolicy


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    options.add_policy_arguments(p)
    return p


def test_flags_come_from_the_fields_with_their_defaults():
    args = _parser().parse_args([])
    cli_fields = [s for s in options.POLICY_SPECS if s.cli]
    assert {'compile', 'cpu_threads', 'speculative', 'quantization'} <= {s.field for s in cli_fields}
    assert options.policy_options(args) == PolicyOptions()
    args = _parser().parse_args(['--quantization', 'torchao-int4', '--cpu-threads', '2', '--compile',
                                 '--speculative', '--center-crop'])
    o = options.policy_options(args)
    assert (o.quantization, o.cpu_threads, o.compile, o.speculative, o.center_crop) == \
        ('torchao-int4', 2, True, True, True)
    assert set(QUANTIZATIONS) >= {'torchao-int4', 'torchao-int8'}


def test_flags_refuse_what_the_field_does_not_allow(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(['--quantization', '3bit'])
    assert '3bit' in capsys.readouterr().err
    with pytest.raises(ValueError, match='cpu_threads=-1 is outside'):
        options.policy_options(_parser().parse_args(['--cpu-threads', '-1']))
    with pytest.raises(ValueError, match='device'):
        options.policy_options(_parser().parse_args(['--device', 'gpu']))


def test_vla_node_parameters_come_from_the_same_fields():
    pytest.importorskip('rcl_interfaces')
    from openvla_ros.nodes import vla_backend, vla_params

    for spec in (*options.POLICY_SPECS, *options.REMOTE_SPECS):
        if spec.ros_name is None:
            continue
        p = vla_params.BY_NAME[spec.ros_name]
        assert p.load_time and p.option is spec
        assert p.default == vla_params.NODE_DEFAULTS.get(spec.field, spec.default)
        assert p.choices == spec.choices
        rng = p.float_range or p.int_range
        assert (tuple(rng) if rng else None) == (tuple(spec.range) if spec.range else None), spec.field
        if spec.type in (int, float):
            assert rng, f'{spec.ros_name} is numeric and needs a range'
    values = {p.name: p.default for p in vla_params.PARAMS}
    built = vla_backend.policy_options(values)
    assert built == dataclasses.replace(PolicyOptions(), **vla_params.NODE_DEFAULTS)
    assert vla_backend.remote_options(values) == options.RemoteOptions()
    assert vla_params.check_value('cpu_threads', 2000) and not vla_params.check_value('cpu_threads', 4)
    assert vla_params.check_value('device', 'gpu') and not vla_params.check_value('device', 'cuda:1')
    assert vla_params.check_value('server_url', 'ftp://x')
    assert 'surrogate' in vla_params.check_value('instruction', 'pick \ud800')


def test_one_remote_default_for_node_and_client():
    d = options.RemoteOptions()
    r = RemotePolicy()
    assert (r.server_url, r.timeout_s, r.retries, r.backoff_s) == (d.server_url, d.timeout_s, d.retries,
                                                                  d.backoff_s)
    r.close()


def test_checkpoint_and_unnorm_key_defined_once_with_per_tool_need():
    from openvla_ros import defaults

    for need, argv, expected in ((options.REQUIRED, ['--unnorm-key', 'k'], 'k'),
                                 (options.OPTIONAL, [], defaults.DEFAULT_UNNORM_KEY),
                                 (options.CHECKPOINT_DEFAULT, [], None)):
        p = argparse.ArgumentParser()
        options.add_checkpoint_argument(p, options.REQUIRED)
        options.add_unnorm_key_argument(p, need)
        a = p.parse_args(['--checkpoint', '/c', *argv])
        assert a.unnorm_key == expected and str(a.checkpoint) == '/c'
    p = argparse.ArgumentParser()
    options.add_checkpoint_argument(p)
    with pytest.raises(SystemExit):
        p.parse_args([])
    p = argparse.ArgumentParser()
    options.add_unnorm_key_argument(p, options.CHECKPOINT_DEFAULT, flag='--unnorm-key-default')
    assert p.parse_args(['--unnorm-key-default', 'k']).unnorm_key_default == 'k'
