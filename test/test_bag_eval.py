"""openvla-bag eval (offline, tiny checkpoint) and the bag tools' handling of bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_bag_support import PERIOD_NS, T0_NS, frame_rgb, write_bag

from openvla_ros import defaults, runtime_env
from openvla_ros.bag.cli import main
from openvla_ros.bag.storage import BagSource, project_typestore

N_FRAMES = 6
INSTRUCTIONS = ((0, 'pick up the red block'), (3, 'put it in the bowl'))
OFFSET = np.array([0.01, -0.02, 0.003, 0.1, -0.05, 0.2, -0.25])


def _instruction_at(i: int) -> str:
    return [text for start, text in INSTRUCTIONS if start <= i][-1]


@pytest.fixture(scope='module')
def engine_predictions(tiny_checkpoint):
    """What the tiny model predicts for each synthetic frame, computed here through the engine."""
    from openvla_ros.engine import PolicyOptions, load_policy

    policy = load_policy(tiny_checkpoint, PolicyOptions())
    try:
        return [policy.predict(frame_rgb(i), _instruction_at(i), defaults.DEFAULT_UNNORM_KEY)
                for i in range(N_FRAMES)]
    finally:
        policy.close()


def _run_json(capsys, *argv) -> tuple[int, dict]:
    code = main(['eval', *map(str, argv), '--json', '--no-progress'])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_eval_matches_references_from_the_same_model_exactly(tmp_path, tiny_checkpoint, engine_predictions, capsys):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    refs = [(r.action, r.action_token_ids) for r in engine_predictions]
    bag = write_bag(tmp_path / 'run', 'mcap', n_frames=N_FRAMES, instructions=INSTRUCTIONS, references=refs)
    out = tmp_path / 'pred'
    code, report = _run_json(capsys, bag.path, '--checkpoint', tiny_checkpoint, '--output', out)
    assert code == 0, report
    c = report['counts']
    assert (c['frames_evaluated'], c['matched'], c['unmatched']) == (N_FRAMES, N_FRAMES, 0)
    m = report['metrics']
    assert m['l1_mean_overall'] == 0.0 and m['rmse_overall'] == 0.0
    assert all(v == 0.0 for v in m['l1_mean'].values())
    assert m['token_accuracy'] == 1.0 and m['action_exact_token_match'] == 1.0
    assert m['gripper_agreement'] == 1.0
    assert report['complete'] and report['match'] == 'header stamp'
    saved = json.loads((out / 'report' / 'report.json').read_text())
    assert saved['metrics'] == m
    assert {Path(p).name for p in saved['plots']} == {'actions.png', 'error.png'}
    assert all(Path(p).stat().st_size > 1000 for p in saved['plots'])

    # the predictions bag: one EndEffectorDelta per frame, stamped with the image stamps, logged at image time
    store = project_typestore()
    with BagSource(out) as src:
        msgs = [(m.log_time_ns, store.deserialize_cdr(m.raw, m.msgtype)) for m in src.messages([defaults.ACTION_TOPIC])]
    assert [t for t, _ in msgs] == [T0_NS + i * PERIOD_NS for i in range(N_FRAMES)]
    for i, (_, msg) in enumerate(msgs):
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == bag.stamps_ns[i]
        assert msg.instruction == _instruction_at(i)
        np.testing.assert_array_equal(msg.action, engine_predictions[i].action)
        assert list(msg.action_token_ids) == list(engine_predictions[i].action_token_ids)
        assert (msg.translation.x, msg.rotation.z, msg.gripper) == tuple(engine_predictions[i].action[[0, 5, 6]])
        assert msg.unnorm_key == defaults.DEFAULT_UNNORM_KEY and msg.model_id == Path(tiny_checkpoint).name
        assert msg.header.frame_id and msg.sequence == i
    # and an independent decoder reads it from the stored definition
    with open(next(out.glob('*.mcap')), 'rb') as fh:
        decoded = [d for *_, d in make_reader(fh, decoder_factories=[DecoderFactory()]).iter_decoded_messages()]
    assert [list(d.action) for d in decoded] == [list(r.action) for r in engine_predictions]


def test_eval_perturbed_array_references_sizes_rate_and_bad_frames(tmp_path, tiny_checkpoint, engine_predictions,
                                                                   capsys):
    store = project_typestore()
    T = store.types
    bad = T['sensor_msgs/msg/Image'](
        header=T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='c'),
        height=4, width=4, encoding='no-such-encoding', is_bigendian=0, step=8, data=np.zeros(32, np.uint8))
    refs = [(r.action + OFFSET, None) for r in engine_predictions]
    bag = write_bag(tmp_path / 'teleop', 'sqlite3', n_frames=N_FRAMES, instructions=INSTRUCTIONS, references=refs,
                    reference_type='array', reference_topic='/teleop/delta',
                    size=lambda i: (64, 48) if i % 2 == 0 else (80, 60),
                    extra=[(defaults.CAMERA_TOPIC, 'sensor_msgs/msg/Image', T0_NS + 50_000_000, bad)])
    # frames of odd index are 80x60 here: the model gets other pixels, so compare with even frames only
    out = tmp_path / 'pred'
    code, report = _run_json(capsys, bag.path, '--checkpoint', tiny_checkpoint, '--output', out,
                             '--reference-topic', '/teleop/delta', '--rate', '5')
    assert code == 0, report
    c = report['counts']
    assert c['frames_read'] == N_FRAMES + 1
    assert c['frames_skipped_conversion'] == 0   # the bad frame falls between two selected frames at 5 Hz
    assert c['frames_evaluated'] == N_FRAMES // 2 and c['matched'] == N_FRAMES // 2
    assert report['frame_sizes'] == {'64x48': N_FRAMES // 2}
    m = report['metrics']
    for d, name in enumerate(m['dims']):
        assert m['l1_mean'][name] == pytest.approx(abs(OFFSET[d]), abs=1e-9)
        assert m['rmse'][name] == pytest.approx(abs(OFFSET[d]), abs=1e-9)
    assert m['token_accuracy'] is None
    assert report['match'] == 'bag time'

    # every frame: the undecodable one is skipped and counted, different sizes are reported
    code, report = _run_json(capsys, bag.path, '--checkpoint', tiny_checkpoint, '--output', out, '--force',
                             '--reference-topic', '/teleop/delta', '--instruction', 'wave')
    assert code == 0
    c = report['counts']
    assert c['frames_skipped_conversion'] == 1 and c['frames_evaluated'] == N_FRAMES
    assert report['frame_sizes'] == {'64x48': N_FRAMES // 2, '80x60': N_FRAMES // 2}
    assert any('different sizes' in n for n in report['notes'])
    assert any('no-such-encoding' in s for s in report['skipped'])


def test_eval_truncated_mcap_keeps_partial_results(tmp_path, tiny_checkpoint, capsys):
    # 320x240 frames: rosbags closes an mcap chunk every ~1 MiB, so the file has several chunks
    bag = write_bag(tmp_path / 'long', 'mcap', n_frames=14, size=(320, 240))
    mcap = next(bag.path.glob('*.mcap'))
    data = mcap.read_bytes()
    mcap.write_bytes(data[:int(len(data) * 0.7)])
    out = tmp_path / 'pred'
    write_bag(out, 'mcap', n_frames=1)   # an old result: replaced only because of --force
    code, report = _run_json(capsys, bag.path, '--checkpoint', tiny_checkpoint, '--output', out, '--force')
    err = capsys.readouterr().err
    assert code == 1
    assert not report['complete'] and 'damaged' in report['problems'][0]
    c = report['counts']
    assert 0 < c['frames_evaluated'] == c['frames_read'] < 14
    with BagSource(out) as src:
        assert src.topics[defaults.ACTION_TOPIC].count == c['frames_evaluated']
        assert defaults.CAMERA_TOPIC not in src.topics
    assert json.loads((out / 'report' / 'report.json').read_text())['complete'] is False


def _cli(*argv, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'openvla_ros.bag.cli', *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=runtime_env.loopback_env())


def test_bad_bags_give_one_line_errors(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    ck = tmp_path / 'no-checkpoint-needed'
    assert main(['eval', str(empty), '--checkpoint', str(ck)]) == 2
    err = capsys.readouterr().err.strip()
    assert 'empty directory' in err and len(err.splitlines()) == 1

    assert main(['eval', str(tmp_path / 'missing'), '--checkpoint', str(ck)]) == 2
    assert 'does not exist' in capsys.readouterr().err

    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'broken.mcap').write_bytes(b'\x89MCAP0\r\n' + b'\x00' * 20)
    assert main(['eval', str(broken), '--checkpoint', str(ck)]) == 2
    assert 'cannot open bag' in capsys.readouterr().err

    bag = write_bag(tmp_path / 'cam', 'mcap', n_frames=2, instructions=())
    assert main(['eval', str(bag.path), '--checkpoint', str(ck), '--image-topic', '/front/image']) == 2
    err = capsys.readouterr().err
    assert '/front/image' in err and f'{defaults.CAMERA_TOPIC} (sensor_msgs/msg/Image, 2 msgs)' in err
    assert main(['eval', str(bag.path), '--checkpoint', str(ck)]) == 2   # no instruction anywhere
    assert '--instruction' in capsys.readouterr().err
    assert main(['eval', str(bag.path), '--checkpoint', str(ck), '--instruction', 'x',
                 '--image-topic', defaults.CAMERA_TOPIC, '--reference-topic', defaults.CAMERA_TOPIC]) == 2
    assert 'expected openvla_ros/msg/EndEffectorDelta or std_msgs/msg/Float64MultiArray' in capsys.readouterr().err

    # nothing is overwritten without --force
    out = tmp_path / 'out'
    write_bag(out, 'mcap', n_frames=1)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(['eval', str(bag.path), '--checkpoint', str(ck), '--instruction', 'x', '--output', str(out)]) == 2
    assert '--force' in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # and --force never deletes something that is not a bag
    notes = tmp_path / 'notes'
    notes.mkdir()
    (notes / 'todo.txt').write_text('keep me')
    assert main(['eval', str(bag.path), '--checkpoint', str(ck), '--instruction', 'x', '--output', str(notes),
                 '--force']) == 2
    assert (notes / 'todo.txt').read_text() == 'keep me'


def test_play_skips_types_not_importable_here(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_types_from_msg

    store = project_typestore()
    store.register(get_types_from_msg('float64 value', 'vendor_msgs/msg/Reading'))
    path = tmp_path / 'mixed'
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c1 = w.add_connection('/vendor/reading', 'vendor_msgs/msg/Reading', typestore=store)
        c2 = w.add_connection(defaults.INSTRUCTION_TOPIC, 'std_msgs/msg/String', typestore=store)
        w.write(c1, T0_NS, store.serialize_cdr(store.types['vendor_msgs/msg/Reading'](value=1.0),
                                               'vendor_msgs/msg/Reading'))
        w.write(c2, T0_NS + 1, store.serialize_cdr(store.types['std_msgs/msg/String'](data='hi'), 'std_msgs/msg/String'))
    done = _cli('play', path, '--rate', '10')
    assert done.returncode == 0, done.stderr
    assert 'skipping /vendor/reading (vendor_msgs/msg/Reading)' in done.stderr
    assert 'published 1 messages' in done.stderr

    done = _cli('play', path, '--topics', '/vendor/reading')
    assert done.returncode == 2 and 'nothing to play' in done.stderr
    done = _cli('play', path, '--topics', '/nope')
    assert done.returncode == 2 and '/nope' in done.stderr and '/vendor/reading' in done.stderr


def test_reading_writing_and_eval_do_not_import_rclpy():
    code = ('import sys; import openvla_ros.bag.cli, openvla_ros.bag.storage, openvla_ros.bag.evaluate, '
            'openvla_ros.bag.report, openvla_ros.action_message; '
            'openvla_ros.bag.cli.build_parser(); openvla_ros.bag.storage.project_typestore(); '
            'bad = [m for m in sys.modules if m.split(".")[0] in ("rclpy", "rosidl_runtime_py")]; '
            'assert not bad, bad')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60,
                          env=runtime_env.loopback_env())
    assert done.returncode == 0, done.stderr
