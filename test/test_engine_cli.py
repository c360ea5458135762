"""The engine CLIs run as real subprocesses: JSON on stdout, one-line errors, exit codes."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from openvla_ros import runtime_env

pytestmark = pytest.mark.usefixtures('single_torch_thread')

ENV = {**runtime_env.loopback_env(), 'OMP_NUM_THREADS': '1'}


def run(module: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', module, *args], input=stdin, capture_output=True,
                          text=True, env=ENV, timeout=240)


@pytest.fixture(scope='module')
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp('img') / 'scene.png'
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


def _assert_one_line_error(code, stderr):
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), stderr
    assert 'Traceback' not in stderr


def test_predict_single_subprocess(tiny_checkpoint, scene):
    ok = run('openvla_ros.cli.predict', '--checkpoint', str(tiny_checkpoint), '--image', str(scene),
             '--instruction', 'pick up the red block', '--unnorm-key', 'bridge_orig')
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert len(record['action']) == len(record['normalized_action']) == 7
    assert all(31744 <= t < 32000 for t in record['action_token_ids'])
    assert record['unnorm_key'] == 'bridge_orig' and 'total' in record['timings']


@pytest.mark.parametrize('case', ['unknown_key', 'empty_instruction', 'missing_image',
                                  'missing_checkpoint', 'no_request'])
def test_predict_bad_input_exits_non_zero(tiny_checkpoint, scene, tmp_path, capsys, case):
    """The same main() as the console script, in-process (saves a slow interpreter start each)."""
    from openvla_ros.cli import predict

    args = {
        'unknown_key': ['--image', str(scene), '--instruction', 'pick', '--unnorm-key', 'mars_rover'],
        'empty_instruction': ['--image', str(scene), '--instruction', '  ', '--unnorm-key', 'bridge_orig'],
        'missing_image': ['--image', str(tmp_path / 'missing.png'), '--instruction', 'pick'],
        'missing_checkpoint': ['--image', str(scene), '--instruction', 'pick'],
        'no_request': [],
    }[case]
    checkpoint = tmp_path / 'nope' if case == 'missing_checkpoint' else tiny_checkpoint
    code = predict.main(['--checkpoint', str(checkpoint), *args])
    captured = capsys.readouterr()
    _assert_one_line_error(code, captured.err)
    assert captured.out == ''
    expected_word = {'unknown_key': 'bridge_orig', 'empty_instruction': 'empty',
                     'missing_image': 'missing.png', 'missing_checkpoint': 'nope',
                     'no_request': '--jsonl'}[case]
    assert expected_word in captured.err


def test_predict_jsonl_continues_after_bad_lines(tiny_checkpoint, scene, tmp_path, monkeypatch,
                                                capsys):
    garbage = tmp_path / 'garbage.png'
    garbage.write_bytes(b'not an image')
    requests = [
        {'image': str(scene), 'instruction': 'pick up the red block', 'unnorm_key': 'bridge_orig'},
        {'image': str(garbage), 'instruction': 'pick', 'unnorm_key': 'bridge_orig'},
        'this is not json',
        {'image': str(scene), 'instruction': '', 'unnorm_key': 'bridge_orig'},
        {'image': str(scene), 'instruction': 'open the drawer', 'unnorm_key': 'tiny_all_masked'},
    ]
    text = '\n'.join(r if isinstance(r, str) else json.dumps(r) for r in requests) + '\n'
    path = tmp_path / 'requests.jsonl'
    path.write_text(text)
    proc = run('openvla_ros.cli.predict', '--checkpoint', str(tiny_checkpoint), '--jsonl', str(path))
    assert proc.returncode != 0
    out = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(out) == 5
    assert 'action' in out[0] and len(out[0]['action_token_ids']) == 7
    assert [('error' in r) for r in out] == [False, True, True, True, False]
    assert out[4]['unnorm_key'] == 'tiny_all_masked'
    assert 'Traceback' not in proc.stderr
    # '-' reads stdin (in-process: the same main() as the console script)
    from openvla_ros.cli import predict

    monkeypatch.setattr(sys, 'stdin', io.StringIO(json.dumps(requests[0]) + '\n'))
    assert predict.main(['--checkpoint', str(tiny_checkpoint), '--jsonl', '-']) == 0
    assert json.loads(capsys.readouterr().out)['action'] == out[0]['action']


def test_make_tiny_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / 'tiny'
    first = run('openvla_ros.cli.make_tiny', str(out), '--seed', '3', '--shards', '2')
    assert first.returncode == 0, first.stderr
    assert (out / 'model.safetensors.index.json').is_file() and (out / 'tokenizer.json').is_file()
    from openvla_ros.cli import make_tiny

    code = make_tiny.main([str(out)])
    captured = capsys.readouterr()
    _assert_one_line_error(code, captured.err)
    assert 'force' in captured.err
    assert make_tiny.main([str(out), '--force']) == 0
    assert (out / 'model.safetensors').is_file()
    assert not (out / 'model.safetensors.index.json').exists()
