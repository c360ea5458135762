"""openvla-dataset build / info: datasets from real bags of real simulated episodes.

The bags are written with the project's typestore from a scripted-expert episode run in process
(evaluation.runner: the simulator core and the arm controller's safety core): its joint states,
camera frames (raw and JPEG), commanded actions and instruction, stamped on the sim clock as the
graph stamps them. The labels built from the bag must equal the in-process collection's labels of
the same episode (the bag has only joint states: the reached pose is their forward kinematics).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from openvla_ros import defaults
from openvla_ros.action_message import ENDEFFECTOR_DELTA_TYPE, delta_fields_to_rosbags, prediction_to_delta_fields
from openvla_ros.bag.storage import open_writer, project_typestore
from openvla_ros.cli.dataset import main
from openvla_ros.engine.api import PredictionResult
from openvla_ros.imaging import rgb_to_image_fields
from openvla_ros.learning.collect import episode_from_result
from openvla_ros.learning.dataset import INFO_FILE, STATISTICS_FILE, iter_episodes

T0_NS = 1_700_000_000 * 10**9
IMAGE_SIZE = 32


class _RecordingExpert:
    """The scripted expert, noting the joint state and sim time each action is taken at."""

    uses_image = False

    def __init__(self):
        from openvla_ros.evaluation.policies import ExpertPolicy

        self.inner = ExpertPolicy()
        self.joints, self.times, self.targets = [], [], []

    def start_episode(self, env, task):
        self.env = env
        self.inner.start_episode(env, task)

    def predict(self, image, instruction, unnorm_key=None):
        self.joints.append(self.env.joint_state())
        self.times.append(self.env.sim.time_s)
        target = self.env.controller.target    # the commanded target the action composes onto
        self.targets.append(None if target is None else np.array(target.position))
        return self.inner.predict(image, instruction, unnorm_key)


def record_episode(task: str = 'reach_red_block', seed: int = 0):
    """(EpisodeResult with frames, joint states [steps + 1], sim times [steps + 1], the controller's
    target position before each action [steps]) of one expert episode."""
    from openvla_ros.evaluation.runner import EpisodeEnv, run_episode

    env = EpisodeEnv(image_size=(IMAGE_SIZE, IMAGE_SIZE))
    policy = _RecordingExpert()
    try:
        result = run_episode(policy, task, seed, record=True, env=env)
        joints = policy.joints + [env.joint_state()]
        times = policy.times + [env.sim.time_s]
    finally:
        env.close()
    assert result.success and result.steps >= 5
    return result, joints, times, policy.targets


def write_episode_bag(path: Path, episode, storage: str = 'mcap', compressed: bool = False,
                      omit: tuple[str, ...] = (), stamp=None, joints=None, steps: int | None = None,
                      t0_ns: int = T0_NS, writer=None, markers: bool = False, first: int = 0) -> Path:
    """A bag as the graph records it: /joint_states, the camera, /openvla/action, /openvla/instruction.

    ``stamp(topic, k, ns)`` changes header stamps; ``joints`` replaces the joint states;
    ``steps`` keeps only the first actions, ``first`` starts the recording at that step (mid-run);
    ``writer``: (writer, connections) of a bag being written.
    The controller's targets, when the episode has them, go to /arm_controller/target_pose."""
    result, recorded_joints, times = episode[:3]
    targets = episode[3] if len(episode) > 3 else []
    joints = joints or recorded_joints
    store = project_typestore()
    T = store.types
    Header, Time = T['std_msgs/msg/Header'], T['builtin_interfaces/msg/Time']
    n = result.steps if steps is None else steps
    cam_topic = defaults.COMPRESSED_CAMERA_TOPIC if compressed else defaults.CAMERA_TOPIC
    cam_type = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
    topics = {defaults.JOINT_STATES_TOPIC: 'sensor_msgs/msg/JointState', cam_topic: cam_type,
              defaults.ACTION_TOPIC: ENDEFFECTOR_DELTA_TYPE, defaults.INSTRUCTION_TOPIC: 'std_msgs/msg/String',
              defaults.TARGET_POSE_TOPIC: 'geometry_msgs/msg/PoseStamped'}
    if markers:
        topics['/openvla/episode'] = 'std_msgs/msg/String'
    own = writer is None
    if own:
        w = open_writer(path, storage)
        conns = {t: w.add_connection(t, ty, typestore=store) for t, ty in topics.items() if t not in omit}
    else:
        w, conns = writer

    def header(topic, k, ns):
        ns = stamp(topic, k, ns) if stamp else ns
        sec, nsec = divmod(int(ns), 10**9)
        return Header(stamp=Time(sec=sec, nanosec=nsec), frame_id='base_link')

    def put(topic, log_ns, msg):
        if topic in conns:
            w.write(conns[topic], int(log_ns), store.serialize_cdr(msg, topics[topic]))

    put('/openvla/episode', t0_ns - 2_000_000, T['std_msgs/msg/String'](data='start'))
    put(defaults.INSTRUCTION_TOPIC, t0_ns - 1_000_000, T['std_msgs/msg/String'](data=result.instruction))
    for k in range(first, n + 1):
        t = t0_ns + round(times[k] * 1e9) - round(times[first] * 1e9)
        names = list(joints[k])
        put(defaults.JOINT_STATES_TOPIC, t, T['sensor_msgs/msg/JointState'](
            header=header(defaults.JOINT_STATES_TOPIC, k, t), name=names,
            position=np.array([joints[k][j] for j in names], np.float64),
            velocity=np.zeros(0), effort=np.zeros(0)))
        if k == n:
            break
        rgb = result.frames[k]
        if compressed:
            import cv2
            ok, jpg = cv2.imencode('.jpg', rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            img = T['sensor_msgs/msg/CompressedImage'](header=header(cam_topic, k, t), format='jpeg',
                                                      data=np.frombuffer(jpg.tobytes(), np.uint8))
        else:
            f = rgb_to_image_fields(rgb, 'rgb8')
            img = T['sensor_msgs/msg/Image'](header=header(cam_topic, k, t), height=f['height'], width=f['width'],
                                             encoding='rgb8', is_bigendian=f['is_bigendian'], step=f['step'],
                                             data=np.frombuffer(f['data'], np.uint8))
        put(cam_topic, t + 1_000_000, img)
        if k < len(targets) and targets[k] is not None:   # the target action k composes onto
            x, y, z = (float(v) for v in targets[k])
            put(defaults.TARGET_POSE_TOPIC, t - 1_000_000, T['geometry_msgs/msg/PoseStamped'](
                header=header(defaults.TARGET_POSE_TOPIC, k, t - 1_000_000), pose=T['geometry_msgs/msg/Pose'](
                    position=T['geometry_msgs/msg/Point'](x=x, y=y, z=z),
                    orientation=T['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0))))
        action = result.actions[k]
        fields = prediction_to_delta_fields(
            PredictionResult(action=action, normalized_action=action, action_token_ids=np.zeros(7, np.int64),
                             unnorm_key='bridge_orig'), result.instruction, t, 'base_link', 'scripted-expert')
        fields['header']['stamp'] = {'sec': header(defaults.ACTION_TOPIC, k, t).stamp.sec,
                                     'nanosec': header(defaults.ACTION_TOPIC, k, t).stamp.nanosec}
        put(defaults.ACTION_TOPIC, t + 5_000_000, delta_fields_to_rosbags(fields, store))
    if own:
        w.close()
    return path


@pytest.fixture(scope='module')
def episodes():
    return [record_episode('reach_red_block', 0), record_episode('reach_green_can', 1)]


def _run(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _in_process(episode, source='x'):
    return episode_from_result(episode[0], source)


def test_build_gives_the_in_process_labels(tmp_path, episodes, capsys):
    raw = write_episode_bag(tmp_path / 'raw_mcap', episodes[0], storage='mcap')
    jpeg = write_episode_bag(tmp_path / 'jpeg_db3', episodes[1], storage='sqlite3', compressed=True)
    out = tmp_path / 'dataset'
    rc, stdout, err = _run(['build', str(raw), str(jpeg), '--out', str(out)], capsys)
    assert rc == 0, err
    built = list(iter_episodes(out))
    assert len(built) == 2
    idle = 0
    for got, episode in zip(built, episodes):
        want, dropped = _in_process(episode)
        idle += dropped
        assert got.instruction == episode[0].instruction
        assert got.actions.shape == want.actions.shape
        assert np.abs(want.actions[:, :3]).max() > 0.005           # the expert moved
        # the bag's pose is the FK of the joints; the runner's is the simulator site one physics step earlier
        np.testing.assert_allclose(got.actions[:, :3], want.actions[:, :3], atol=1e-3)
        np.testing.assert_allclose(got.actions[:, 3:6], want.actions[:, 3:6], atol=5e-3)
        np.testing.assert_allclose(got.actions[:, 6], want.actions[:, 6], atol=1e-6)
        assert got.images.shape == want.images.shape
    np.testing.assert_array_equal(built[0].images, _in_process(episodes[0])[0].images)   # raw frames: exact
    assert np.abs(built[1].images.astype(int) - _in_process(episodes[1])[0].images).mean() < 8   # JPEG
    stats = json.loads((out / STATISTICS_FILE).read_text())
    entry = stats['sim_widowx']
    assert entry['num_trajectories'] == 2
    assert entry['num_transitions'] == sum(len(e.actions) for e in built)
    assert entry['action']['mask'] == [True] * 6 + [False]
    assert all(len(entry['action'][k]) == 7 for k in ('mean', 'std', 'max', 'min', 'q01', 'q99'))
    info = json.loads((out / INFO_FILE).read_text())
    assert info['idle_steps_dropped'] == idle
    assert info['control_period_s'] == pytest.approx(0.2)
    assert f'{len(built[0].actions)} steps' in err


def test_left_out_steps_are_neither_frames_nor_labels(episodes):
    """The expert's slips are left out of an episode: their frames and labels, nothing else."""
    full, idle = _in_process(episodes[0])
    assert idle == 0
    part, idle_part = episode_from_result(episodes[0][0], 'x', leave_out=[1, 3, 10_000])
    assert idle_part == 0
    np.testing.assert_array_equal(part.actions, np.delete(full.actions, [1, 3], axis=0))
    np.testing.assert_array_equal(part.images, np.delete(full.images, [1, 3], axis=0))


def _shift(topic_to_break, at, delta_ns):
    def stamp(topic, k, ns):
        return ns + delta_ns if topic == topic_to_break and k >= at else ns
    return stamp


def test_each_bad_bag_is_named_and_the_converted_episodes_stay(tmp_path, episodes, capsys):
    good = write_episode_bag(tmp_path / 'good', episodes[0])
    no_joints = write_episode_bag(tmp_path / 'no_joints', episodes[1], omit=(defaults.JOINT_STATES_TOPIC,))
    no_camera = write_episode_bag(tmp_path / 'no_camera', episodes[1], omit=(defaults.CAMERA_TOPIC,))
    short = write_episode_bag(tmp_path / 'short', episodes[1], steps=1)
    backwards = write_episode_bag(tmp_path / 'backwards', episodes[1],
                                  stamp=_shift(defaults.JOINT_STATES_TOPIC, 3, -10**9))
    gap = write_episode_bag(tmp_path / 'gap', episodes[1], stamp=_shift(defaults.CAMERA_TOPIC, 3, 5 * 10**9))
    out = tmp_path / 'dataset'
    bags = [good, no_joints, no_camera, short, backwards, gap]
    rc, _, err = _run(['build', *map(str, bags), '--out', str(out)], capsys)
    assert rc == 2
    lines = [line for line in err.splitlines() if ': error: ' in line]
    expect = {no_joints: f'no joint states topic {defaults.JOINT_STATES_TOPIC}',
              no_camera: f'no camera topic {defaults.CAMERA_TOPIC}',
              short: '1 step(s)',
              backwards: f'{defaults.JOINT_STATES_TOPIC} header stamps go backwards at message #3',
              gap: f'{defaults.CAMERA_TOPIC} has a gap of 5.200 s'}
    for bag, why in expect.items():
        assert any(str(bag) in line and why in line for line in lines), (bag, why, err)
    assert len(lines) == len(expect), err
    # the good episode was converted and its statistics written
    assert [Path(e.source).name for e in iter_episodes(out)] == ['good']
    assert (out / STATISTICS_FILE).is_file()
    manifest = json.loads((out / 'meta' / 'build.json').read_text())
    assert set(manifest['failed']) == {str(b.resolve()) for b in expect}

    # fixed input, --resume: the good bag is not converted again, the new one is added
    fixed = write_episode_bag(tmp_path / 'fixed', episodes[1])
    rc, _, err = _run(['build', str(good), str(fixed), '--out', str(out), '--resume'], capsys)
    assert rc == 0, err
    assert 'already converted' in err
    assert [Path(e.source).name for e in iter_episodes(out)] == ['good', 'fixed']
    assert json.loads((out / STATISTICS_FILE).read_text())['sim_widowx']['num_trajectories'] == 2


def test_degenerate_statistics_name_the_bag_and_keep_the_episode(tmp_path, episodes, capsys):
    result, joints, times = episodes[0][:3]
    frozen = write_episode_bag(tmp_path / 'frozen_arm', episodes[0], joints=[joints[0]] * len(joints))
    out = tmp_path / 'dataset'
    rc, _, err = _run(['build', str(frozen), '--out', str(out)], capsys)
    assert rc == 2
    assert 'degenerate action statistics' in err and str(frozen) in err
    assert len(list(iter_episodes(out))) == 1
    assert not (out / STATISTICS_FILE).exists()


def test_episode_markers_split_one_bag(tmp_path, episodes):
    from openvla_ros.learning.from_bags import read_bag

    store = project_typestore()
    path = tmp_path / 'two_episodes'
    w = open_writer(path, 'mcap')
    topics = {defaults.JOINT_STATES_TOPIC: 'sensor_msgs/msg/JointState',
              defaults.CAMERA_TOPIC: 'sensor_msgs/msg/Image', defaults.ACTION_TOPIC: ENDEFFECTOR_DELTA_TYPE,
              defaults.INSTRUCTION_TOPIC: 'std_msgs/msg/String', '/openvla/episode': 'std_msgs/msg/String'}
    conns = {t: w.add_connection(t, ty, typestore=store) for t, ty in topics.items()}
    write_episode_bag(path, episodes[0], writer=(w, conns), markers=True)
    write_episode_bag(path, episodes[1], writer=(w, conns), markers=True, t0_ns=T0_NS + 100 * 10**9)
    w.close()
    recs = read_bag(path)
    assert [r.source for r in recs] == [f'{path} episode 0', f'{path} episode 1']
    assert [r.instruction for r in recs] == [e[0].instruction for e in episodes]
    assert [len(r.actions.values) for r in recs] == [e[0].steps for e in episodes]


def test_out_is_refused_unless_force_and_force_replaces_only_its_files(tmp_path, episodes, capsys):
    bag = write_episode_bag(tmp_path / 'bag', episodes[0])
    out = tmp_path / 'dataset'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    rc, _, err = _run(['build', str(bag), '--out', str(out)], capsys)
    assert rc == 2 and 'exists and is not empty' in err
    rc, _, err = _run(['build', str(bag), '--out', str(out), '--force'], capsys)
    assert rc == 0, err
    rc, _, err = _run(['build', str(bag), '--out', str(out), '--force'], capsys)   # again: replaces its own
    assert rc == 0, err
    assert (out / 'notes.txt').read_text() == 'mine'
    assert len(list(iter_episodes(out))) == 1
    # an episode file another tool wrote is never mixed in or replaced
    foreign = out / 'episodes' / 'episode_000007.npz'
    foreign.write_bytes(b'not ours')
    rc, _, err = _run(['build', str(bag), '--out', str(out), '--force'], capsys)
    assert rc == 2 and 'did not write' in err and 'episode_000007.npz' in err
    assert foreign.read_bytes() == b'not ours'
    rc, _, err = _run(['build', str(bag), '--out', str(bag)], capsys)
    assert rc == 2 and 'input' in err


def test_info_lists_episodes_quantiles_idle_counts_and_statistics(tmp_path, episodes, capsys):
    bags = [write_episode_bag(tmp_path / f'bag{i}', e) for i, e in enumerate(episodes)]
    out = tmp_path / 'dataset'
    assert _run(['build', *map(str, bags), '--out', str(out)], capsys)[0] == 0
    rc, text, err = _run(['info', str(out)], capsys)
    assert rc == 0, err
    built = list(iter_episodes(out))
    steps = sum(len(e.actions) for e in built)
    assert f'2 episodes, {steps} steps' in text
    for e in episodes:
        assert repr(e[0].instruction) in text
    info = json.loads((out / INFO_FILE).read_text())
    assert f'idle steps dropped: {info["idle_steps_dropped"]}' in text
    stats = json.loads((out / STATISTICS_FILE).read_text())['sim_widowx']['action']
    assert f'{stats["q99"][0]:+10.4f}' in text and 'statistics [sim_widowx]' in text
    assert 'quantiles' in text and text.count('gripper') >= 3
    rc, text, _ = _run(['info', str(out), '--json'], capsys)
    assert rc == 0 and json.loads(text)['statistics']['sim_widowx']['num_trajectories'] == 2
    rc, _, err = _run(['info', str(tmp_path / 'missing')], capsys)
    assert rc == 2 and 'no episodes' in err


def test_collect_cli_writes_a_dataset_info_reads(tmp_path, capsys):
    from openvla_ros.cli.collect import main as collect

    out = tmp_path / 'demos'
    rc = collect(['--task', 'reach_red_block', '--episodes', '2', '--seed', '3', '--out', str(out),
                  '--image-size', '24', '--no-progress'])
    stdout = capsys.readouterr().out
    assert rc == 0
    built = list(iter_episodes(out))
    assert len(built) == 2 and built[0].images.shape[1:] == (24, 24, 3)
    assert f'{out}: 2 episodes' in stdout
    info = json.loads((out / INFO_FILE).read_text())
    assert info['seeds'] == [3, 4] and info['tasks'] == ['reach_red_block']
    rc, text, _ = _run(['info', str(out)], capsys)
    assert rc == 0 and '2 episodes' in text and 'idle steps dropped' in text
    # near starts and slips: counted in info.json, the slips left out of the steps
    near = tmp_path / 'near'
    assert collect(['--task', 'red_block_on_purple_block', '--episodes', '1', '--seed', '3', '--out', str(near),
                    '--image-size', '24', '--no-progress', '--near-start-fraction', '1',
                    '--slip-probability', '0.3']) == 0
    info = json.loads((near / INFO_FILE).read_text())
    assert info['near_starts'] == 1 and info['slip_steps_left_out'] > 0
    assert 'slips left out' in capsys.readouterr().out
    # a reader that has gone away (`openvla-dataset info D | head -1`): no traceback, the shell's status
    import os
    import subprocess
    import sys
    read_end, write_end = os.pipe()
    os.close(read_end)
    writer = subprocess.run([sys.executable, '-m', 'openvla_ros.cli.dataset', 'info', str(out)],
                            stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    assert writer.returncode == 141 and writer.stderr == '', writer.stderr
    # an existing dataset is replaced only with --force, a folder of other files never
    assert collect(['--task', 'reach_red_block', '--episodes', '1', '--out', str(out), '--no-progress']) == 2
    assert 'pass --force' in capsys.readouterr().err
    assert collect(['--task', 'reach_red_block', '--episodes', '1', '--out', str(out), '--no-progress',
                    '--force']) == 0
    assert len(list(iter_episodes(out))) == 1
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    assert collect(['--task', 'reach_red_block', '--episodes', '1', '--out', str(other), '--force',
                    '--no-progress']) == 2
    assert (other / 'notes.txt').read_text() == 'mine'
    assert collect(['--task', 'no_such_task', '--episodes', '1', '--out', str(tmp_path / 'x')]) == 2
    assert 'unknown task' in capsys.readouterr().err


def test_resume_redoes_a_bag_whose_conversion_was_interrupted(tmp_path, episodes, capsys):
    bags = [write_episode_bag(tmp_path / f'bag{i}', e) for i, e in enumerate(episodes)]
    out = tmp_path / 'dataset'
    assert _run(['build', *map(str, bags), '--out', str(out)], capsys)[0] == 0
    manifest_path = out / 'meta' / 'build.json'
    manifest = json.loads(manifest_path.read_text())
    # as if the build had stopped after writing the second bag's episode file, before marking the bag done
    manifest['converted'].remove(str(bags[1].resolve()))
    manifest_path.write_text(json.dumps(manifest))
    (out / 'episodes' / 'episode_000001.npz.partial').write_bytes(b'cut short')
    rc, _, err = _run(['build', *map(str, bags), '--out', str(out), '--resume'], capsys)
    assert rc == 0, err
    assert f'{bags[0]}: already converted' in err and f'{bags[1]}: episode_000001.npz' in err
    assert [Path(e.source).name for e in iter_episodes(out)] == ['bag0', 'bag1']
    assert json.loads((out / STATISTICS_FILE).read_text())['sim_widowx']['num_trajectories'] == 2
