"""Training episodes from bags recorded from the graph (``openvla-dataset build``).

A bag (sqlite3 ``.db3`` or ``.mcap``, read through :class:`openvla_ros.bag.storage.BagSource`) is
one episode, or several when it carries episode markers. What it must hold:

- the camera: ``sensor_msgs/Image`` on /camera/image_raw or ``CompressedImage`` on
  /camera/image_raw/compressed (``--image-topic``);
- ``sensor_msgs/JointState`` on /joint_states with every arm joint: the *reached* end-effector
  pose is the forward kinematics of the measured joints (:class:`ArmKinematics`, the model the
  controller and the simulator share; the graph publishes no measured pose, only the commanded
  target on /arm_controller/target_pose, which is not what the arm did);
- the commanded actions: ``openvla_ros/EndEffectorDelta`` on /openvla/action (or
  ``std_msgs/Float64MultiArray``): their timing defines the steps and their gripper entry is the
  gripper label (a closed gripper stopped by an object never *reaches* 0);
- the instruction: ``std_msgs/String`` on /openvla/instruction (or ``--instruction``);
- optionally episode markers: ``std_msgs/String`` on /openvla/episode (:data:`defaults.EPISODE_TOPIC`):
  ``start``, then ``end success`` or ``end failure REASON`` (or a plain ``end``: outcome unknown).
  An episode marked as a failure is left out (named in ``meta/info.json``) unless
  ``include_failed`` (``--include-failed``), as ``openvla-collect`` leaves out failed
  demonstrations; every episode's outcome is listed in ``meta/info.json``.

Resampling: step k is at ``t0 + k * control_period_s`` (the embodiment's control period), t0 the
header stamp of the first action with a joint state and a frame at or before it (a recording started
mid-run may begin with actions of older frames). The state of step k is the joints interpolated at that time, its
frame the newest camera frame at most one control period old, its action the newest command at
or before it. The labels are then exactly the in-process collection's
(:func:`openvla_ros.learning.collect.episode_from_result`: :func:`bridge_labels` on the reached
states, the idle filter :func:`idle_mask`).

Bad input raises :class:`DatasetError` naming the bag (and episode) and what is wrong: a missing
topic or joint, fewer than two steps, header stamps going backwards or a gap of more than
``max_gap_periods`` control periods. The build goes on with the next bag; every episode written
stays, and ``meta/build.json`` (this tool's manifest) lets ``--resume`` skip the bags already
converted. Only files listed there are ever replaced (``--force``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from openvla_ros import defaults
from openvla_ros.action_layout import MIN_ACTION_DIM
from openvla_ros.action_message import ENDEFFECTOR_DELTA_TYPE, delta_action_vector
from openvla_ros.bag.storage import BagError, BagSource, check_not_input, project_typestore
from openvla_ros.stamps import NS_PER_S, stamp_to_ns

from .dataset import (DEFAULT_DATASET_KEY, EPISODES_DIR, INFO_FILE, STATISTICS_FILE, DatasetError,
                      finish_dataset, write_episode)
from .labels import (DEFAULT_IDLE_KEEP_STEPS, DEFAULT_IDLE_ROTATION_RAD, DEFAULT_IDLE_TRANSLATION_M,
                     LabelError)

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE_TYPE = 'sensor_msgs/msg/CompressedImage'
JOINT_STATE_TYPE = 'sensor_msgs/msg/JointState'
STRING_TYPE = 'std_msgs/msg/String'
ARRAY_TYPE = 'std_msgs/msg/Float64MultiArray'
ACTION_TYPES = (ENDEFFECTOR_DELTA_TYPE, ARRAY_TYPE)
# Optional episode markers (std_msgs/String, see defaults.EPISODE_TOPIC); a bag without them is one episode.
EPISODE_TOPIC = defaults.EPISODE_TOPIC
SUCCESS, FAILURE = 'success', 'failure'
BUILD_FILE = Path('meta') / 'build.json'
BUILD_FORMAT = 'openvla_ros-bags-build-v1'
DEFAULT_MAX_GAP_PERIODS = 5.0


@dataclass
class Stream:
    """One topic's messages of an episode: header stamps (ns) and decoded values."""
    topic: str
    stamps_ns: np.ndarray
    values: list


@dataclass
class Recording:
    """One episode's decoded messages (before resampling)."""
    source: str                       # "BAG" or "BAG episode N", for messages
    joints: Stream                    # values: {name: position}
    actions: Stream                   # values: action vectors
    images: Stream | None             # values: RGB uint8 (None when not read)
    instruction: str | None
    outcome: str | None = None        # SUCCESS / FAILURE from the end marker; None: not marked
    outcome_reason: str = ''          # what the failure marker says after "failure"


@dataclass
class Resampled:
    """An episode on the control-period grid: ``steps`` actions, ``steps + 1`` states."""
    source: str
    times_s: np.ndarray               # [steps + 1] since the first action
    joint_names: tuple[str, ...]      # every joint the first state carries
    joint_positions: np.ndarray       # [steps + 1, len(joint_names)]
    ee_positions: np.ndarray          # [steps + 1, 3]  forward kinematics of the measured joints
    ee_rotations: np.ndarray          # [steps + 1, 3, 3]
    actions: np.ndarray               # [steps, 7] the command in effect during each step
    frames: list                      # [steps] RGB frames (empty when images were not read)
    instruction: str | None
    control_period_s: float
    t0_ns: int = 0                    # header stamp of step 0

    @property
    def steps(self) -> int:
        return int(self.actions.shape[0])


# ---------------------------------------------------------------- reading
def _need(src: BagSource, topic: str, types: tuple[str, ...], what: str, hint: str = '') -> str:
    if topic not in src.topics:
        raise DatasetError(f'{src.path}: no {what} topic {topic}{hint}; {src.describe()}')
    msgtype = src.topics[topic].msgtype
    if msgtype not in types:
        raise DatasetError(f'{src.path}: {what} topic {topic} has type {msgtype}; expected {" or ".join(types)}')
    if src.topics[topic].count == 0:
        raise DatasetError(f'{src.path}: {what} topic {topic} has no messages')
    return msgtype


def _image_topic(src: BagSource, image_topic: str | None) -> str:
    if image_topic:
        return image_topic
    return next((t for t in (defaults.CAMERA_TOPIC, defaults.COMPRESSED_CAMERA_TOPIC) if t in src.topics),
                defaults.CAMERA_TOPIC)


def read_bag(path: str | Path, *, images: bool = True, image_topic: str | None = None,
             instruction: str | None = None) -> list[Recording]:
    """The episodes of one bag, decoded (one, or one per ``start`` marker)."""
    from openvla_ros.imaging import decode_image

    try:
        src = BagSource(path)
    except BagError as exc:
        raise DatasetError(str(exc)) from None
    with src:
        joint_type = _need(src, defaults.JOINT_STATES_TOPIC, (JOINT_STATE_TYPE,), 'joint states')
        action_type = _need(src, defaults.ACTION_TOPIC, ACTION_TYPES, 'action',
                            ' (the commanded actions define the steps and the gripper labels)')
        cam = None
        if images:
            cam = _image_topic(src, image_topic)
            _need(src, cam, (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE), 'camera')
        if instruction is None:
            _need(src, defaults.INSTRUCTION_TOPIC, (STRING_TYPE,), 'instruction', ' (or pass --instruction TEXT)')
        markers = EPISODE_TOPIC in src.topics and src.topics[EPISODE_TOPIC].msgtype == STRING_TYPE
        store = project_typestore()
        wanted = [defaults.JOINT_STATES_TOPIC, defaults.ACTION_TOPIC, defaults.INSTRUCTION_TOPIC]
        wanted += [cam] if cam else []
        wanted += [EPISODE_TOPIC] if markers else []
        rows: dict[str, list] = {t: [] for t in wanted}    # (log ns, stamp ns, value)
        index = dict.fromkeys(wanted, -1)
        for m in src.messages(wanted):
            index[m.topic] += 1
            try:
                if m.topic == defaults.JOINT_STATES_TOPIC:
                    msg = store.deserialize_cdr(m.raw, joint_type)
                    value = {str(n): float(p) for n, p in zip(msg.name, msg.position)}
                    stamp = stamp_to_ns(msg.header.stamp)
                elif m.topic == defaults.ACTION_TOPIC:
                    msg = store.deserialize_cdr(m.raw, action_type)
                    if action_type == ENDEFFECTOR_DELTA_TYPE:
                        value, stamp = delta_action_vector(msg), stamp_to_ns(msg.header.stamp)
                    else:   # plain arrays carry no stamp: the time they were recorded
                        value, stamp = np.asarray(msg.data, np.float64).reshape(-1), m.log_time_ns
                elif m.topic == cam:
                    msg = store.deserialize_cdr(m.raw, m.msgtype)
                    value, stamp = decode_image(msg), stamp_to_ns(msg.header.stamp)
                else:   # instruction, markers: no header
                    value, stamp = str(store.deserialize_cdr(m.raw, STRING_TYPE).data), m.log_time_ns
            except Exception as exc:  # noqa: BLE001 - any undecodable message is bad input, named
                raise DatasetError(f'{src.path}: {m.topic} message #{index[m.topic]} cannot be decoded: '
                                   f'{type(exc).__name__}: {exc}') from None
            rows[m.topic].append((m.log_time_ns, stamp, value))
        if src.read_error:
            raise DatasetError(f'{src.path}: {src.read_error}')
    windows = _episode_windows(rows.get(EPISODE_TOPIC, []))
    out = []
    for i, window in enumerate(windows):
        lo, hi = window.lo, window.hi
        source = str(path) if len(windows) == 1 and not markers else f'{path} episode {i}'

        def stream(topic, window=window):
            sel = [r for r in rows.get(topic, []) if window.holds(r[0])]
            return Stream(topic, _stamps(sel), [r[2] for r in sel])

        texts = [r for r in rows[defaults.INSTRUCTION_TOPIC] if r[0] < hi]
        acts = stream(defaults.ACTION_TOPIC)
        first_action_log = min((r[0] for r in rows[defaults.ACTION_TOPIC] if window.holds(r[0])), default=hi)
        before = [r for r in texts if r[0] <= first_action_log]
        text = instruction if instruction is not None else (
            before[-1][2] if before else texts[0][2] if texts else None)
        out.append(Recording(source, stream(defaults.JOINT_STATES_TOPIC), acts,
                             stream(cam) if cam else None, text, window.outcome, window.reason))
    return out


def _stamps(rows) -> np.ndarray:
    stamps = np.array([r[1] for r in rows], dtype=np.int64)
    if len(stamps) and not np.any(stamps):   # a publisher that never stamps: the recorded times
        stamps = np.array([r[0] for r in rows], dtype=np.int64)
    return stamps


def parse_marker(text: str) -> tuple[str, str | None, str]:
    """(kind, outcome, reason) of an episode marker: ``start`` -> ('start', None, ''); ``end`` ->
    ('end', None, ''); ``end success`` -> ('end', SUCCESS, ''); ``end failure REASON`` ->
    ('end', FAILURE, REASON). Anything else: ('', None, '') (ignored)."""
    words = text.strip().split(maxsplit=2)
    kind = words[0].lower() if words else ''
    if kind == 'start' and len(words) == 1:
        return 'start', None, ''
    if kind != 'end':
        return '', None, ''
    outcome = words[1].lower() if len(words) > 1 else None
    if outcome not in (None, SUCCESS, FAILURE):
        return '', None, ''
    return 'end', outcome, words[2].strip() if outcome == FAILURE and len(words) > 2 else ''


def end_marker(success: bool, reason: str = '') -> str:
    """The ``end`` marker text for an episode's outcome (what :func:`parse_marker` reads)."""
    if success:
        return f'end {SUCCESS}'
    reason = ' '.join(str(reason).split())
    return f'end {FAILURE} {reason}' if reason else f'end {FAILURE}'


@dataclass
class Window:
    """An episode's log-time window: from its ``start`` to its ``end`` (inclusive: a recording on
    a paused sim clock logs the last state at the end marker's time) or to the next ``start``."""
    lo: float
    hi: float
    closed_by_end: bool = False
    outcome: str | None = None
    reason: str = ''

    def holds(self, log_ns) -> bool:
        return self.lo <= log_ns < self.hi or (self.closed_by_end and log_ns == self.hi)


def _episode_windows(markers) -> list[Window]:
    """Log-time windows: each ``start`` opens one, ``end`` or the next ``start`` closes it."""
    if not markers:
        return [Window(-np.inf, np.inf)]
    windows, start = [], None
    for log_ns, _, text in markers:
        kind, outcome, reason = parse_marker(text)
        if kind == 'start':
            if start is not None:
                windows.append(Window(start, log_ns))
            start = log_ns
        elif kind == 'end' and start is not None:
            windows.append(Window(start, log_ns, True, outcome, reason))
            start = None
    if start is not None:
        windows.append(Window(start, np.inf))
    return windows


# ---------------------------------------------------------------- resampling
def _check_clock(source: str, stream: Stream, period_ns: int, max_gap_periods: float,
                 lo_ns: int, hi_ns: int) -> None:
    """Header stamps never go backwards; no gap over ``max_gap_periods`` inside [lo, hi]."""
    s = stream.stamps_ns
    if len(s) < 2:
        return
    d = np.diff(s)
    back = np.flatnonzero(d < 0)
    if back.size:
        i = int(back[0]) + 1
        raise DatasetError(f'{source}: clock jump: {stream.topic} header stamps go backwards at message #{i} '
                           f'({s[i] / NS_PER_S:.3f} s after {s[i - 1] / NS_PER_S:.3f} s)')
    inside = (s[1:] >= lo_ns) & (s[:-1] <= hi_ns)
    gaps = np.flatnonzero(inside & (d > max_gap_periods * period_ns))
    if gaps.size:
        i = int(gaps[0]) + 1
        raise DatasetError(f'{source}: clock jump: {stream.topic} has a gap of {d[i - 1] / NS_PER_S:.3f} s '
                           f'({d[i - 1] / period_ns:.1f} control periods, more than {max_gap_periods:g}) before '
                           f'message #{i}')


def resample(rec: Recording, embodiment, kinematics, max_gap_periods: float = DEFAULT_MAX_GAP_PERIODS
             ) -> Resampled:
    """``rec`` on the control-period grid, with the reached end-effector states."""
    src = rec.source
    period_s = float(embodiment.control_period_s)
    period_ns = int(round(period_s * NS_PER_S))
    tol_ns = period_ns // 4
    if not len(rec.actions.stamps_ns):
        raise DatasetError(f'{src}: no actions ({defaults.ACTION_TOPIC}) in this episode')
    if not len(rec.joints.stamps_ns):
        raise DatasetError(f'{src}: no joint states ({defaults.JOINT_STATES_TOPIC}) in this episode')
    if rec.images is not None and not len(rec.images.stamps_ns):
        raise DatasetError(f'{src}: no camera frames ({rec.images.topic}) in this episode')
    if not rec.instruction or not rec.instruction.strip():
        raise DatasetError(f'{src}: no instruction ({defaults.INSTRUCTION_TOPIC} before the first action; '
                           'or pass --instruction TEXT)')
    a_t = rec.actions.stamps_ns
    j_t = rec.joints.stamps_ns
    # a recording started mid-run may hold actions from before its first joint state or frame
    # (an action carries its source image's stamp): the episode starts at the first action
    # that has both
    ready = max(int(j_t[0]), int(rec.images.stamps_ns[0]) if rec.images is not None else int(j_t[0])) - tol_ns
    first = int(np.searchsorted(a_t, ready, side='left'))
    if first >= len(a_t):
        raise DatasetError(f'{src}: every action comes before the first joint state ({j_t[0] / NS_PER_S:.3f} s)'
                           + (f' or camera frame ({rec.images.stamps_ns[0] / NS_PER_S:.3f} s)'
                              if rec.images is not None else '') + ': no initial state')
    t0, t_last = int(a_t[first]), int(a_t[-1])
    for s in (rec.actions, rec.joints) + ((rec.images,) if rec.images is not None else ()):
        _check_clock(src, s, period_ns, max_gap_periods, t0 - period_ns, t_last + period_ns)
    short = [i for i, v in enumerate(rec.actions.values) if len(v) < MIN_ACTION_DIM]
    if short:
        raise DatasetError(f'{src}: action #{short[0]} has {len(rec.actions.values[short[0]])} values; '
                           f'an end-effector delta has {MIN_ACTION_DIM}')
    steps = int(np.floor((t_last - t0 + tol_ns) / period_ns)) + 1
    while steps > 0 and t0 + steps * period_ns > j_t[-1] + tol_ns:
        steps -= 1    # no measured state after the last step(s): the bag ended too early
    if steps < 2:
        raise DatasetError(f'{src}: {steps} step(s) of {period_s:g} s between the first action and the last '
                           'joint state; an episode needs at least two')
    grid = t0 + np.arange(steps + 1, dtype=np.int64) * period_ns

    arm = list(embodiment.arm_joints)
    names = tuple(rec.joints.values[0])
    wanted = list(dict.fromkeys(arm + [n for n in names if n not in arm]))
    table = np.full((len(j_t), len(wanted)), np.nan)
    for i, v in enumerate(rec.joints.values):
        for j, n in enumerate(wanted):
            table[i, j] = v.get(n, np.nan)
    missing = [n for j, n in enumerate(wanted[:len(arm)]) if np.all(np.isnan(table[:, j]))]
    if missing:
        raise DatasetError(f'{src}: {defaults.JOINT_STATES_TOPIC} lacks the arm joint(s) {missing} '
                           f'(it names {list(names)}); the end-effector pose needs {arm}')
    rel = (j_t - t0).astype(np.float64)
    q = np.zeros((len(grid), len(wanted)))
    for j in range(len(wanted)):
        ok = np.isfinite(table[:, j])
        q[:, j] = np.interp((grid - t0).astype(np.float64), rel[ok], table[ok, j]) if ok.any() else np.nan
    poses = [kinematics.forward(row[:len(arm)]) for row in q]

    def newest_at_or_before(stamps, t):
        return int(np.searchsorted(stamps, t + tol_ns, side='right')) - 1

    actions = np.stack([np.asarray(rec.actions.values[max(newest_at_or_before(a_t, t), 0)], np.float64)
                        [:MIN_ACTION_DIM] for t in grid[:-1]])
    frames = []
    if rec.images is not None:
        i_t = rec.images.stamps_ns
        for k, t in enumerate(grid[:-1]):
            i = newest_at_or_before(i_t, t)
            if i < 0 or t - i_t[i] > period_ns:
                raise DatasetError(f'{src}: no camera frame ({rec.images.topic}) within one control period '
                                   f'before step {k} ({t / NS_PER_S:.3f} s)')
            frames.append(rec.images.values[i])
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:
            raise DatasetError(f'{src}: camera frames of different sizes {sorted(sizes)}')
    keep = [j for j, n in enumerate(wanted) if np.all(np.isfinite(q[:, j]))]
    return Resampled(source=src, times_s=(grid - t0) / NS_PER_S, joint_names=tuple(wanted[j] for j in keep),
                     joint_positions=q[:, keep], ee_positions=np.array([p.position for p in poses]),
                     ee_rotations=np.array([p.rotation for p in poses]), actions=actions, frames=frames,
                     instruction=rec.instruction, control_period_s=period_s, t0_ns=t0)


def episode_from_resampled(r: Resampled, image_size: int | None = None):
    """(Episode, idle steps dropped): the in-process collection's labelling of the same states."""
    from .collect import episode_from_result

    frames = r.frames
    if image_size:
        import cv2
        frames = [cv2.resize(f, (image_size, image_size), interpolation=cv2.INTER_AREA) for f in frames]
    result = SimpleNamespace(steps=r.steps, actions=r.actions, ee_positions=r.ee_positions,
                             ee_rotations=r.ee_rotations, frames=frames, instruction=r.instruction)
    try:
        return episode_from_result(result, r.source)
    except LabelError as exc:
        raise DatasetError(str(exc) if r.source in str(exc) else f'{r.source}: {exc}') from None


# ---------------------------------------------------------------- the build
@dataclass
class BuildOptions:
    bags: list[str]
    out: str
    force: bool = False
    resume: bool = False
    instruction: str | None = None
    image_topic: str | None = None
    image_size: int | None = None
    embodiment: str = defaults.DEFAULT_EMBODIMENT
    dataset_key: str = DEFAULT_DATASET_KEY
    max_gap_periods: float = DEFAULT_MAX_GAP_PERIODS
    include_failed: bool = False          # keep episodes whose end marker says failure
    extra_info: dict | None = None        # more entries for meta/info.json
    # the bags lie inside --out (openvla-collect --graph keeps them in OUT/bags): allowed, since
    # only the files meta/build.json lists are ever replaced
    bags_inside_out: bool = False


@dataclass
class BuildResult:
    out: Path
    converted: list[dict] = field(default_factory=list)     # this run's episodes
    skipped: list[str] = field(default_factory=list)        # bags already converted (--resume)
    left_out: list[dict] = field(default_factory=list)      # this run's episodes marked as failures
    errors: list[str] = field(default_factory=list)         # one line per bag (or statistics) that failed
    info: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and self.info is not None


def _read_manifest(out: Path) -> dict | None:
    path = out / BUILD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f'{path}: cannot read ({exc})') from None
    if data.get('format') != BUILD_FORMAT:
        raise DatasetError(f'{path} is not a manifest of openvla-dataset build (format {data.get("format")!r})')
    return data


def _write_manifest(out: Path, manifest: dict) -> None:
    path = out / BUILD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.partial')
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)


def _ours(manifest: dict | None) -> set[Path]:
    """The files (relative to the dataset) the manifest says this tool wrote."""
    if manifest is None:
        return set()
    files = {Path(EPISODES_DIR) / e['file'] for e in manifest.get('episodes', [])}
    return files | {Path(STATISTICS_FILE), INFO_FILE, BUILD_FILE}


def _foreign_dataset_files(out: Path, ours: set[Path]) -> list[str]:
    """Dataset files in ``out`` this tool did not write (they would mix into the statistics)."""
    found = [p for p in (out / STATISTICS_FILE, out / INFO_FILE) if p.exists()]
    found += sorted((out / EPISODES_DIR).glob('*')) if (out / EPISODES_DIR).is_dir() else []
    return [str(p.relative_to(out)) for p in found
            if p.relative_to(out) not in ours and not p.name.endswith('.partial')]


def prepare_output(opts: BuildOptions) -> dict:
    """The manifest to continue from (empty for a fresh build); refuses an unsafe ``--out``."""
    out = Path(opts.out)
    inputs = opts.bags
    if opts.bags_inside_out:
        real = Path(os.path.abspath(out)).resolve()
        inputs = [b for b in opts.bags if real not in Path(b).resolve().parents]
    try:
        check_not_input(out, inputs, '--out')
    except BagError as exc:
        raise DatasetError(str(exc)) from None
    fresh = {'format': BUILD_FORMAT, 'episodes': [], 'converted': [], 'failed': {}, 'embodiment': opts.embodiment,
             'dataset_key': opts.dataset_key}
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DatasetError(f'--out {out} exists and is not a directory; refusing to touch it')
    if not out.exists() or not any(out.iterdir()):
        return fresh
    manifest = _read_manifest(out)
    if opts.resume:
        if manifest is None:
            raise DatasetError(f'--out {out} holds no {BUILD_FILE}: it was not written by openvla-dataset build, '
                               'so there is nothing to resume')
        foreign = _foreign_dataset_files(out, _ours(manifest))
        if foreign:
            raise DatasetError(f'--out {out} holds dataset files this tool did not write ({", ".join(foreign[:5])}); '
                               'choose another --out')
        for key in ('embodiment', 'dataset_key'):
            if manifest.get(key) != getattr(opts, key):
                raise DatasetError(f'--resume: {out} was built with {key} {manifest.get(key)!r}, not '
                                   f'{getattr(opts, key)!r}')
        return manifest
    if not opts.force:
        raise DatasetError(f'--out {out} exists and is not empty; pass --resume to continue a build there, '
                           'or --force to replace what openvla-dataset build wrote there')
    ours = _ours(manifest)
    foreign = _foreign_dataset_files(out, ours)
    if foreign:
        raise DatasetError(f'--out {out} holds dataset files this tool did not write ({", ".join(foreign[:5])}); '
                           'refusing to mix or replace them even with --force: choose another --out')
    for rel in sorted(ours, key=lambda p: p != BUILD_FILE):   # the manifest last
        if rel != BUILD_FILE:
            (out / rel).unlink(missing_ok=True)
    (out / BUILD_FILE).unlink(missing_ok=True)
    return fresh


def _drop_unfinished(out: Path, manifest: dict) -> None:
    """Forget (and remove) the episodes of a bag whose conversion was interrupted: it is redone."""
    converted = set(manifest['converted'])
    keep = []
    for e in manifest['episodes']:
        if e['bag'] in converted and (out / EPISODES_DIR / e['file']).is_file():
            keep.append(e)
        else:
            (out / EPISODES_DIR / e['file']).unlink(missing_ok=True)
    if len(keep) != len(manifest['episodes']):
        manifest['episodes'] = keep
        _write_manifest(out, manifest)


def _bag_key(path: str) -> str:
    return str(Path(os.path.abspath(path)).resolve())


def build(opts: BuildOptions, log=print) -> BuildResult:
    """Convert ``opts.bags`` into the dataset ``opts.out``; one bag's failure never stops the rest."""
    from openvla_ros.control.embodiment import load_embodiment
    from openvla_ros.control.kinematics import ArmKinematics

    out = Path(opts.out)
    manifest = prepare_output(opts)
    result = BuildResult(out)
    embodiment = load_embodiment(opts.embodiment)
    kinematics = ArmKinematics(embodiment)
    manifest.setdefault('converted', [])
    _drop_unfinished(out, manifest)
    done = set(manifest['converted'])
    index = 1 + max((int(Path(e['file']).stem.split('_')[-1]) for e in manifest['episodes']), default=-1)
    out.mkdir(parents=True, exist_ok=True)
    for bag in opts.bags:
        key = _bag_key(bag)
        if key in done:
            result.skipped.append(bag)
            log(f'{bag}: already converted (resume), skipped')
            continue
        try:
            recordings = read_bag(bag, images=True, image_topic=opts.image_topic, instruction=opts.instruction)
            episodes, left_out = [], []
            for rec in recordings:
                if rec.outcome == FAILURE and not opts.include_failed:
                    left_out.append({'bag': key, 'source': rec.source, 'outcome': FAILURE,
                                     'reason': rec.outcome_reason or 'marked as a failure'})
                    continue
                r = resample(rec, embodiment, kinematics, opts.max_gap_periods)
                episodes.append((r, rec.outcome, *episode_from_resampled(r, opts.image_size)))
        except DatasetError as exc:
            manifest['failed'][key] = str(exc)
            _write_manifest(out, manifest)
            result.errors.append(str(exc))
            log(f'error: {exc}')
            continue
        # every episode of the bag is checked before the first is written: a bag is converted whole.
        # Each episode is listed before its file is written, so an interrupted build leaves no file
        # the manifest does not know; the bag counts as converted once all its episodes are there.
        manifest['left_out'] = [e for e in manifest.get('left_out', []) if e['bag'] != key] + left_out
        for e in left_out:
            result.left_out.append(e)
            log(f'{e["source"]}: left out, marked as a failure ({e["reason"]})')
        for r, outcome, episode, dropped in episodes:
            entry = {'file': f'episode_{index:06d}.npz', 'bag': key, 'source': r.source,
                     'steps': int(len(episode.actions)), 'resampled_steps': r.steps,
                     'idle_steps_dropped': int(dropped), 'instruction': episode.instruction,
                     'outcome': outcome}
            manifest['episodes'].append(entry)
            _write_manifest(out, manifest)
            path = write_episode(out, index, episode)
            assert path.name == entry['file']
            result.converted.append(entry)
            index += 1
            log(f'{r.source}: {path.name}, {entry["steps"]} steps ({dropped} idle dropped)')
        manifest['failed'].pop(key, None)
        manifest['converted'].append(key)
        done.add(key)
        _write_manifest(out, manifest)
    if not manifest['episodes']:
        n = len(manifest.get('left_out', []))
        result.errors.append(f'{out}: no episode could be converted'
                             + (f' ({n} marked as failures left out; --include-failed keeps them)' if n else ''))
        return result
    idle = sum(e['idle_steps_dropped'] for e in manifest['episodes'])
    extra = {'source': 'bags', 'embodiment': opts.embodiment, 'control_period_s': embodiment.control_period_s,
             'idle_steps_dropped': idle,
             'idle_filter': {'translation_m': DEFAULT_IDLE_TRANSLATION_M, 'rotation_rad': DEFAULT_IDLE_ROTATION_RAD,
                             'keep_steps': DEFAULT_IDLE_KEEP_STEPS},
             'bags': sorted({e['bag'] for e in manifest['episodes']}), 'failed_bags': manifest['failed'],
             'include_failed': opts.include_failed,
             # per episode file, in order: "success", "failure" or null (no end marker says)
             'outcomes': [e.get('outcome') for e in sorted(manifest['episodes'], key=lambda e: e['file'])],
             'left_out_episodes': {e['source']: e['reason'] for e in manifest.get('left_out', [])},
             **(opts.extra_info or {})}
    try:
        result.info = finish_dataset(out, key=opts.dataset_key, extra_info=extra)
    except DatasetError as exc:
        # statistics over other episodes than the ones present would mislead a fine-tuning run
        for rel in (Path(STATISTICS_FILE), INFO_FILE):
            (out / rel).unlink(missing_ok=True)
        sources = ', '.join(e['source'] for e in manifest['episodes'])
        result.errors.append(f'{out}: {exc} (over {len(manifest["episodes"])} episode(s) from {sources}); '
                             'the episodes stay, add bags with --resume')
    return result
