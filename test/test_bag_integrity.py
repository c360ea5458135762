"""The bag tools lose nothing: outputs never destroy a recording (``--force`` included), one bad
message is skipped with its topic and index instead of a traceback, and every message of a bag
is read even when its metadata.yaml carries QoS profiles as real rosbag2 writes them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_bag_support import T0_NS, TALKER_MESSAGES, write_bag, write_talker_bag

from openvla_ros import defaults
from openvla_ros.bag.cli import main
from openvla_ros.bag.storage import BagSource, project_typestore


def _run_json(capsys, *argv) -> tuple[int, dict, str]:
    code = main(['eval', *map(str, argv), '--json', '--no-progress'])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {}), out.err


def _snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}


def _no_staging_left(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if '.partial-' in p.name]


# ---- --force never destroys a recording ----

def test_output_equal_to_the_input_is_refused_in_every_spelling(tmp_path, capsys, monkeypatch):
    bag = write_bag(tmp_path / 'run', 'mcap', n_frames=2)
    before = _snapshot(bag.path)
    (tmp_path / 'link').symlink_to(bag.path)
    monkeypatch.chdir(tmp_path)
    ck = tmp_path / 'no-checkpoint-needed'
    for output in (bag.path, 'run', './run/', tmp_path / 'link', 'link', bag.path / 'sub'):
        code = main(['eval', str(bag.path), '--checkpoint', str(ck), '--output', str(output), '--force'])
        err = capsys.readouterr().err
        assert code == 2 and 'input' in err and len(err.strip().splitlines()) == 1, (output, err)
    # a report directory inside the recording is refused as well
    assert main(['eval', str(bag.path), '--checkpoint', str(ck), '--output', str(tmp_path / 'o'),
                 '--report-dir', str(bag.path / 'report'), '--force']) == 2
    assert _snapshot(bag.path) == before
    assert _no_staging_left(tmp_path)


def test_force_never_replaces_a_file_or_a_non_bag_directory(tmp_path, capsys):
    bag = write_bag(tmp_path / 'run', 'mcap', n_frames=2)
    ck = tmp_path / 'no-checkpoint-needed'
    document = tmp_path / 'thesis.pdf'
    document.write_bytes(b'%PDF-1.7 keep me')
    code = main(['eval', str(bag.path), '--checkpoint', str(ck), '--output', str(document), '--force'])
    assert code == 2 and 'is a file' in capsys.readouterr().err
    assert document.read_bytes() == b'%PDF-1.7 keep me'
    link = tmp_path / 'link-to-bag'
    link.symlink_to(write_bag(tmp_path / 'other', 'mcap', n_frames=1).path)
    assert main(['eval', str(bag.path), '--checkpoint', str(ck), '--output', str(link), '--force']) == 2
    assert link.is_symlink() and (link / 'metadata.yaml').exists()
    assert _no_staging_left(tmp_path)


def test_a_failed_run_leaves_the_previous_output_intact(tmp_path, tiny_checkpoint, capsys):
    bag = write_bag(tmp_path / 'run', 'mcap', n_frames=3)
    out = tmp_path / 'pred'
    code, report, _ = _run_json(capsys, bag.path, '--checkpoint', tiny_checkpoint, '--output', out)
    assert code == 0 and report['counts']['frames_evaluated'] == 3
    before = _snapshot(out)
    # the checkpoint is missing: refused before anything is replaced
    code = main(['eval', str(bag.path), '--checkpoint', str(tmp_path / 'missing'), '--output', str(out),
                 '--force', '--no-progress'])
    assert code == 2 and 'does not exist' in capsys.readouterr().err
    assert _snapshot(out) == before
    # a run that produces no prediction (no instruction anywhere) does not replace it either
    silent = write_bag(tmp_path / 'silent', 'mcap', n_frames=2, instructions=((0, ''),))
    code, report, _ = _run_json(capsys, silent.path, '--checkpoint', tiny_checkpoint, '--output', out, '--force')
    assert code == 1 and report['output_bag'] is None
    assert _snapshot(out) == before
    # a good run with --force replaces it, in one piece
    code, report, _ = _run_json(capsys, write_bag(tmp_path / 'two', 'mcap', n_frames=2).path,
                                '--checkpoint', tiny_checkpoint, '--output', out, '--force')
    assert code == 0
    with BagSource(out) as src:
        assert src.topics[defaults.ACTION_TOPIC].count == 2
    assert json.loads((out / 'report' / 'report.json').read_text())['counts']['frames_evaluated'] == 2
    assert all(Path(p).parent == out / 'report' for p in report['plots'])
    assert _no_staging_left(tmp_path)


# ---- one bad message is skipped, named by topic and index ----

def _image(store, stamp_s: int, **over):
    T = store.types
    f = dict(height=4, width=4, encoding='rgb8', is_bigendian=0, step=12, data=np.zeros(48, np.uint8))
    f.update(over)
    return T['sensor_msgs/msg/Image'](
        header=T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=stamp_s, nanosec=0),
                                        frame_id='c'), **f)


def test_undecodable_messages_are_skipped_with_topic_and_index(tmp_path, tiny_checkpoint, capsys):
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = project_typestore()
    T = store.types
    path = tmp_path / 'hostile'
    good = store.serialize_cdr(_image(store, 1), 'sensor_msgs/msg/Image')
    string = store.serialize_cdr(T['std_msgs/msg/String'](data='pick up the block'), 'std_msgs/msg/String')
    jpeg_header_only = T['sensor_msgs/msg/CompressedImage'](
        header=T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='c'),
        format='jpeg', data=np.frombuffer(b'\xff\xd8\xff\xe0' + b'\x00' * 40, np.uint8))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cam = w.add_connection(defaults.CAMERA_TOPIC, 'sensor_msgs/msg/Image', typestore=store)
        ins = w.add_connection(defaults.INSTRUCTION_TOPIC, 'std_msgs/msg/String', typestore=store)
        t = T0_NS
        w.write(ins, t, b'\x00\x01\x00\x00\xff\xff\xff\x7f')            # #0: length far past the end
        w.write(ins, t + 1, string)                                    # #1: good
        w.write(cam, t + 2, good)                                      # #0: good
        w.write(cam, t + 3, string)                                    # #1: a String where Image is declared
        w.write(cam, t + 4, good[:30])                                 # #2: truncated
        w.write(cam, t + 5, store.serialize_cdr(_image(store, 2, height=400), 'sensor_msgs/msg/Image'))  # #3
        w.write(cam, t + 6, store.serialize_cdr(_image(store, 2, encoding='no-such'), 'sensor_msgs/msg/Image'))
        w.write(cam, t + 7, good)                                      # #5: good
        w.write(ins, t + 8, b'')                                       # #2: empty
    code, report, err = _run_json(capsys, path, '--checkpoint', tiny_checkpoint, '--output', tmp_path / 'out')
    assert code == 0, report
    c = report['counts']
    assert (c['frames_evaluated'], c['frames_skipped_conversion'], c['instructions_skipped']) == (2, 4, 2)
    skipped = '\n'.join(report['skipped'])
    for index in (1, 2, 3, 4):
        assert f'{defaults.CAMERA_TOPIC} message #{index} ' in skipped
    for index in (0, 2):
        assert f'{defaults.INSTRUCTION_TOPIC} message #{index} ' in skipped
    assert any('skipped 6 undecodable' in w for w in report['warnings'])
    assert 'Traceback' not in err and 'warning: skipped 6' in err

    # a compressed topic whose frames are all corrupt: a clear error, no traceback
    cpath = tmp_path / 'compressed'
    with Writer(cpath, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_img = w.add_connection(defaults.COMPRESSED_CAMERA_TOPIC, 'sensor_msgs/msg/CompressedImage', typestore=store)
        for i in range(2):
            w.write(c_img, T0_NS + i, store.serialize_cdr(jpeg_header_only, 'sensor_msgs/msg/CompressedImage'))
    code, report, err = _run_json(capsys, cpath, '--checkpoint', tiny_checkpoint, '--output', tmp_path / 'c',
                                  '--instruction', 'pick')
    assert code == 1 and report['counts']['frames_skipped_conversion'] == 2
    assert f'{defaults.COMPRESSED_CAMERA_TOPIC} message #1 ' in '\n'.join(report['skipped'])
    assert 'no frame could be evaluated' in err and 'Traceback' not in err


# ---- a real rosbag2 talker recording: every message is read ----

@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_rosbag2_talker_bag_is_read_completely(tmp_path, storage):
    from rosbags.rosbag2 import Reader

    bag = write_talker_bag(tmp_path / f'talker_{storage}', storage)
    # the mechanism: rosbags pairs metadata.yaml's connections with the file's by QoS as well
    with Reader(bag) as reader:
        assert reader.message_count == TALKER_MESSAGES
        assert sum(1 for _ in reader.messages(connections=reader.connections)) == 0
    store = project_typestore()
    with BagSource(bag) as src:
        texts = [store.deserialize_cdr(m.raw, m.msgtype).data for m in src.messages()]
        assert texts == [f'Hello World: {i + 1}' for i in range(TALKER_MESSAGES)]
        assert src.count_warning() is None
        assert src.topics['/chatter'].offered_qos_profiles   # the metadata's profiles are still there


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_fewer_messages_than_the_metadata_lists_is_a_warning_or_with_strict_an_error(
        tmp_path, tiny_checkpoint, storage, capsys):
    bag = write_talker_bag(tmp_path / 'short', storage, listed=TALKER_MESSAGES + 5)
    with BagSource(bag) as src:
        assert sum(1 for _ in src.messages()) == TALKER_MESSAGES
        assert src.shortfall == {'/chatter': (TALKER_MESSAGES + 5, TALKER_MESSAGES)}
        assert f'read {TALKER_MESSAGES} of {TALKER_MESSAGES + 5}' in src.count_warning()

    # the same for eval: a camera bag whose metadata promises more frames than the file holds
    cam = write_bag(tmp_path / 'cam', storage, n_frames=3)
    meta_path = cam.path / 'metadata.yaml'
    meta = yaml.safe_load(meta_path.read_text())
    for topic in meta['rosbag2_bagfile_information']['topics_with_message_count']:
        if topic['topic_metadata']['name'] == defaults.CAMERA_TOPIC:
            topic['message_count'] = 7
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    code, report, err = _run_json(capsys, cam.path, '--checkpoint', tiny_checkpoint, '--output', tmp_path / 'o1')
    assert code == 0 and report['complete']
    assert any(f'{defaults.CAMERA_TOPIC}: read 3 of 7' in w for w in report['warnings'])
    assert 'warning: fewer messages read' in err
    code, report, err = _run_json(capsys, cam.path, '--checkpoint', tiny_checkpoint, '--output', tmp_path / 'o2',
                                  '--strict')
    assert code == 1 and not report['complete']
    assert any('read 3 of 7' in p for p in report['problems'])
    assert report['counts']['frames_evaluated'] == 3        # partial results are kept
    assert (tmp_path / 'o2' / 'report' / 'report.json').exists()


def test_bag_output_commit_replaces_in_one_rename(tmp_path):
    from openvla_ros.bag.storage import BagError, BagOutput

    old = write_bag(tmp_path / 'out', 'mcap', n_frames=1).path
    with pytest.raises(BagError, match='--force'):
        BagOutput(old, force=False)
    with BagOutput(old, force=True) as out:
        assert out.path.parent.parent == tmp_path and not out.path.exists()
        write_bag(out.path, 'sqlite3', n_frames=2)
        assert (old / 'metadata.yaml').exists() and next(old.glob('*.mcap'))   # the old one, untouched
        out.commit()
    assert list(old.glob('*.db3')) and not list(old.glob('*.mcap'))
    with BagOutput(old, force=True) as out:    # abandoned: nothing changes
        write_bag(out.path, 'mcap', n_frames=1)
    assert list(old.glob('*.db3')) and _no_staging_left(tmp_path)
    assert os.listdir(tmp_path) == ['out']
