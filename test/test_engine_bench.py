"""The benchmark runs end to end on the tiny synthetic preset, and its transformers generate()
baseline (stock LlamaForCausalLM sharing our weights) decodes the same tokens as the engine."""
from __future__ import annotations

import json

import pytest

from openvla_ros.cli import bench
from openvla_ros.engine import PolicyOptions
from openvla_ros.engine.synthetic import synthetic_policy

pytestmark = pytest.mark.usefixtures('single_torch_thread')


def test_benchmark_report_and_generate_baseline(tmp_path):
    policy = synthetic_policy('tiny', PolicyOptions(), workdir=tmp_path)
    try:
        report = bench.run_benchmark(policy, iterations=2, warmup=1)
    finally:
        policy.close()
    for stage in ('preprocess', 'vision', 'projector', 'prefill', 'decode', 'decode_to_action',
                  'postprocess', 'total'):
        assert report['stages'][stage]['median_ms'] >= 0
    assert len(report['decode_steps']) == report['action_dim'] - 1 == 6
    assert report['actions_per_s'] > 0 and report['peak_memory']['bytes'] > 0
    assert report['baseline']['same_tokens'] is True
    json.dumps(report)
    report['machine'] = bench.machine_description()
    assert 'decode step 6' in bench.format_report(report)


def test_bench_cli_rejects_bad_arguments(capsys):
    assert bench.main(['--synthetic', 'tiny', '--iterations', '0']) == 2
    assert capsys.readouterr().err.startswith('error: ')


def test_speculative_comparison_in_one_run(tmp_path):
    policy = synthetic_policy('tiny', PolicyOptions(speculative=True), workdir=tmp_path)
    try:
        r = bench.run_speculative(policy, n_frames=3, rounds=1)
    finally:
        policy.close()
    assert r['same_tokens'] is True and r['actions'] == 2
    assert 0.0 <= r['acceptance'] <= 1.0 and 1 <= r['mean_forward_passes'] <= 7
    assert r['speedup_lm'] > 0
    ties = r['near_ties']
    assert ties['steps'] == 3 * 7 and ties['argmax_flips'] == 0
    json.dumps(r)
