"""tools/gpu_check.sh runs end to end on CPU with the tiny preset: one JSON file and a markdown
table, the reference and speculative modes agree token for token, a mode that cannot run here
(torchao-int4 on CPU) is reported and the others still run, and the server is measured."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_on_cpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [str(ROOT / 'tools' / 'gpu_check.sh'), '--device', 'cpu', '--preset', 'tiny', '--modes',
         'eager', 'speculative', 'torchao-int4', 'torchao-int8', 'server', '--frames', '3',
         '--clients', '1', '2', '--server-duration-s', '1', '--budget-s', '50'],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    modes = {r['mode']: r for r in report['modes']}
    assert list(modes) == ['eager', 'speculative', 'torchao-int4', 'torchao-int8', 'server']
    assert modes['eager']['ok'] and modes['eager']['agreement'] == 1.0
    assert modes['speculative']['ok'] and modes['speculative']['agreement'] == 1.0
    assert 0.0 <= modes['speculative']['draft_acceptance'] <= 1.0
    assert not modes['torchao-int4']['ok'] and 'needs CUDA' in modes['torchao-int4']['error']
    assert modes['torchao-int8']['ok'] and modes['torchao-int8']['agreement'] is not None
    server = modes['server']
    if server['ok']:
        assert [row['clients'] for row in server['rows']] == [1, 2]
        assert all(row['actions'] > 0 and row['errors'] == 0 for row in server['rows'])
    else:   # only the budget may stop it on a loaded machine, never an error
        assert server['error'].startswith('skipped')
    for r in modes.values():
        if r.get('ok') and r['mode'] != 'server':
            assert r['actions_per_s'] > 0 and r['stages_ms']['total'] > 0
    table = (tmp_path / 'gpu_check.md').read_text()
    assert '| mode | prefill ms |' in table and '| speculative |' in table
    assert 'needs CUDA' in table
