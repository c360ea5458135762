"""``openvla-bag eval``: run the policy offline on a bag's camera frames (no ROS graph, no rclpy).

For every camera frame (or at most ``--rate`` frames per second of bag time) the policy is run
with the latest instruction recorded before the frame (or a fixed ``--instruction``). The
predictions are written as ``openvla_ros/EndEffectorDelta`` on /openvla/action into an mcap bag,
stamped with the source image's stamp and logged at the image's time, so the bag can be played
into arm_controller or plotted next to the camera.

When the bag also holds recorded actions (EndEffectorDelta from a live run, or teleoperation
deltas as ``std_msgs/Float64MultiArray``) each prediction is matched with the recorded action of
the same stamp (nearest within ``--match-tolerance-s``) and the report gives per-dimension L1
and RMSE, gripper agreement and, when token ids were recorded, token accuracy.

A bag that breaks midway still gives a report over the frames read, marked ``complete: false``.
A message that cannot be decoded (wrong type, truncated, corrupt image) is skipped, counted and
named by topic and index; the run goes on. The output bag is written beside its final place and
moved there only when the run has produced predictions, so a failed run never costs the previous
output (see :class:`~openvla_ros.bag.storage.BagOutput`).
"""
from __future__ import annotations

import bisect
import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from openvla_ros import defaults
from openvla_ros.action_message import (ENDEFFECTOR_DELTA_TYPE, GRIPPER_INDEX, delta_action_vector,
                                     delta_fields_to_rosbags, dim_names, prediction_to_delta_fields)
from openvla_ros.bag.storage import (BagError, BagOutput, BagSource, check_not_input, one_line, open_writer,
                                     project_typestore)
from openvla_ros.policy.options import policy_options
from openvla_ros.engine.api import PolicyOptions
from openvla_ros.stamps import NS_PER_S, stamp_to_ns

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE_TYPE = 'sensor_msgs/msg/CompressedImage'
STRING_TYPE = 'std_msgs/msg/String'
ARRAY_TYPE = 'std_msgs/msg/Float64MultiArray'
REFERENCE_TYPES = (ENDEFFECTOR_DELTA_TYPE, ARRAY_TYPE)
GRIPPER_OPEN_THRESHOLD = 0.5     # gripper targets are 1 = open, 0 = closed
MAX_LISTED_SKIPS = 10
REPORT_FILE = 'report.json'


@dataclass
class EvalOptions:
    bag: str
    checkpoint: str
    unnorm_key: str | None = None
    instruction: str | None = None
    image_topic: str | None = None
    instruction_topic: str = defaults.INSTRUCTION_TOPIC
    reference_topic: str | None = None
    match_tolerance_s: float = 0.05
    rate_hz: float | None = None
    output: str | None = None
    report_dir: str | None = None
    frame_id: str | None = None
    json: bool = False
    force: bool = False
    strict: bool = False
    progress: bool = True
    policy: PolicyOptions = field(default_factory=PolicyOptions)

    @classmethod
    def from_args(cls, a) -> 'EvalOptions':
        return cls(bag=a.bag, checkpoint=a.checkpoint, unnorm_key=a.unnorm_key, instruction=a.instruction,
                   image_topic=a.image_topic, instruction_topic=a.instruction_topic,
                   reference_topic=a.reference_topic, match_tolerance_s=a.match_tolerance_s, rate_hz=a.rate,
                   output=a.output, report_dir=a.report_dir, frame_id=a.frame_id or None, json=a.json,
                   force=a.force, strict=a.strict, progress=not a.no_progress, policy=policy_options(a))


@dataclass
class Prediction:
    stamp_ns: int          # image header stamp
    log_time_ns: int       # image time in the bag
    action: np.ndarray
    tokens: np.ndarray
    latency_s: float


@dataclass
class Reference:
    key_ns: int            # header stamp (EndEffectorDelta) or log time (plain arrays)
    action: np.ndarray
    tokens: np.ndarray | None


@dataclass
class Counts:
    frames_in_bag: int = 0
    frames_read: int = 0
    frames_selected: int = 0
    frames_evaluated: int = 0
    frames_skipped_conversion: int = 0
    instructions_skipped: int = 0
    references_skipped: int = 0
    frames_without_instruction: int = 0
    inference_errors: int = 0
    references: int = 0
    matched: int = 0
    unmatched: int = 0
    dimension_mismatch: int = 0


@dataclass
class _Topics:
    image: str
    image_type: str
    instruction: str | None
    reference: str | None
    reference_type: str | None
    notes: list[str] = field(default_factory=list)


def default_output_path(bag: Path) -> Path:
    bag = Path(bag)
    base = bag.with_suffix('') if bag.is_file() else bag
    stamp = _dt.datetime.now().strftime('%Y%m%d-%H%M%S')
    return base.parent / f'{base.name}_eval_{stamp}'


def _resolve_topics(src: BagSource, opts: EvalOptions) -> _Topics:
    def need(topic: str, what: str, types: tuple[str, ...]) -> str:
        if topic not in src.topics:
            raise BagError(f'{what} topic {topic} is not in {src.path}; {src.describe()}')
        msgtype = src.topics[topic].msgtype
        if msgtype not in types:
            raise BagError(f'{what} topic {topic} has type {msgtype}; expected {" or ".join(types)}')
        return msgtype

    image_types = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
    image = opts.image_topic
    if image is None:
        image = next((t for t in (defaults.CAMERA_TOPIC, defaults.COMPRESSED_CAMERA_TOPIC) if t in src.topics),
                     defaults.CAMERA_TOPIC)
    image_type = need(image, 'image', image_types)
    instruction = None
    if opts.instruction is None:
        if opts.instruction_topic not in src.topics:
            raise BagError(f'instruction topic {opts.instruction_topic} is not in {src.path} (pass --instruction '
                           f'TEXT or --instruction-topic); {src.describe()}')
        need(opts.instruction_topic, 'instruction', (STRING_TYPE,))
        instruction = opts.instruction_topic
    reference, reference_type, notes = opts.reference_topic, None, []
    if reference is None and defaults.ACTION_TOPIC in src.topics:
        reference = defaults.ACTION_TOPIC
    if reference is not None:
        reference_type = need(reference, 'reference', REFERENCE_TYPES)
    else:
        notes.append(f'no reference actions ({defaults.ACTION_TOPIC} not in the bag): predictions only')
    return _Topics(image, image_type, instruction, reference, reference_type, notes)


def _choose_unnorm_key(policy, requested: str | None) -> str:
    keys = policy.unnorm_keys()
    if requested is not None:
        return requested   # the engine rejects an unknown key with the list of known ones
    if defaults.DEFAULT_UNNORM_KEY in keys:
        return defaults.DEFAULT_UNNORM_KEY
    if len(keys) == 1:
        return next(iter(keys))
    raise BagError(f'the checkpoint has several unnorm keys ({", ".join(keys)}); choose one with --unnorm-key')


def _decode_image(store, msgtype: str, raw) -> tuple[np.ndarray, int]:
    """(H x W x 3 RGB, header stamp in ns) of an Image or CompressedImage."""
    from openvla_ros.imaging import decode_image

    msg = store.deserialize_cdr(raw, msgtype)
    rgb = decode_image(msg)
    stamp = stamp_to_ns(msg.header.stamp)
    return rgb, stamp


def _reference_from(store, msgtype: str, raw, log_time_ns: int) -> Reference:
    msg = store.deserialize_cdr(raw, msgtype)
    if msgtype == ENDEFFECTOR_DELTA_TYPE:
        tokens = np.asarray(msg.action_token_ids, np.int64)
        return Reference(stamp_to_ns(msg.header.stamp), delta_action_vector(msg), tokens if tokens.size else None)
    # plain arrays carry no stamp: they are matched by the time they were recorded
    return Reference(log_time_ns, np.asarray(msg.data, np.float64).reshape(-1), None)


def match_references(predictions: list[Prediction], references: list[Reference], by_stamp: bool,
                     tolerance_ns: int) -> list[Reference | None]:
    """For each prediction, the reference with the nearest key within ``tolerance_ns`` (or None)."""
    refs = sorted(references, key=lambda r: r.key_ns)
    keys = [r.key_ns for r in refs]
    out = []
    for p in predictions:
        k = p.stamp_ns if by_stamp else p.log_time_ns
        i = bisect.bisect_left(keys, k)
        best = min((j for j in (i - 1, i) if 0 <= j < len(refs)), key=lambda j: abs(keys[j] - k), default=None)
        out.append(refs[best] if best is not None and abs(keys[best] - k) <= tolerance_ns else None)
    return out


def compute_metrics(pairs: list[tuple[Prediction, Reference]]) -> dict | None:
    """Per-dimension L1 mean and RMSE, gripper agreement and token accuracy over matched pairs."""
    if not pairs:
        return None
    pred = np.stack([p.action for p, _ in pairs])
    ref = np.stack([r.action for _, r in pairs])
    err = pred - ref
    names = dim_names(pred.shape[1])
    metrics = {
        'pairs': len(pairs),
        'dims': names,
        'l1_mean': dict(zip(names, np.mean(np.abs(err), axis=0).tolist())),
        'rmse': dict(zip(names, np.sqrt(np.mean(err ** 2, axis=0)).tolist())),
        'l1_mean_overall': float(np.mean(np.abs(err))),
        'rmse_overall': float(np.sqrt(np.mean(err ** 2))),
        'gripper_agreement': None,
        'token_accuracy': None,
        'action_exact_token_match': None,
    }
    if pred.shape[1] > GRIPPER_INDEX:
        agree = (pred[:, GRIPPER_INDEX] >= GRIPPER_OPEN_THRESHOLD) == (ref[:, GRIPPER_INDEX] >= GRIPPER_OPEN_THRESHOLD)
        metrics['gripper_agreement'] = float(np.mean(agree))
    token_pairs = [(p.tokens, r.tokens) for p, r in pairs if r.tokens is not None and r.tokens.shape == p.tokens.shape]
    if token_pairs:
        same = np.stack([a == b for a, b in token_pairs])
        metrics['token_accuracy'] = float(np.mean(same))
        metrics['action_exact_token_match'] = float(np.mean(np.all(same, axis=1)))
        metrics['token_pairs'] = len(token_pairs)
    return metrics


def run_eval(opts: EvalOptions) -> int:
    """The eval sub-command; returns the exit status (see ``openvla_ros.bag.cli``)."""
    if opts.rate_hz is not None and opts.rate_hz <= 0:
        raise BagError(f'--rate must be > 0, got {opts.rate_hz}')
    src = BagSource(opts.bag)
    try:
        topics = _resolve_topics(src, opts)
        output = Path(opts.output) if opts.output else default_output_path(src.path)
        if opts.report_dir:
            report_dir = Path(opts.report_dir)
            check_not_input(report_dir, [src.path], 'report directory')
            if (report_dir / REPORT_FILE).exists() and not opts.force:
                raise BagError(f'report {report_dir / REPORT_FILE} already exists; pass --force to overwrite it')
        out = BagOutput(output, opts.force, inputs=[src.path], what='output bag')
    except BagError:
        src.close()
        raise
    with out:
        return _run(opts, src, topics, out)


def _skip_note(topic: str, index: int, log_time_ns: int, exc: BaseException) -> str:
    return f'{topic} message #{index} (bag time {log_time_ns}): {type(exc).__name__}: {one_line(exc)}'


def _run(opts: EvalOptions, src: BagSource, topics: _Topics, out: BagOutput) -> int:
    from tqdm import tqdm

    from openvla_ros.engine import OpenVLAError, load_policy

    output = out.target
    report_dir = Path(opts.report_dir) if opts.report_dir else output / 'report'
    staged_report_dir = Path(opts.report_dir) if opts.report_dir else out.path / 'report'
    try:
        if not Path(opts.checkpoint).is_dir():
            raise BagError(f'checkpoint directory {opts.checkpoint} does not exist')
        try:
            policy = load_policy(opts.checkpoint, opts.policy)
        except OpenVLAError as exc:
            raise BagError(f'cannot load checkpoint {opts.checkpoint}: {exc}') from exc
    except BagError:
        src.close()
        raise
    try:
        unnorm_key = _choose_unnorm_key(policy, opts.unnorm_key)
    except BagError:
        policy.close()
        src.close()
        raise
    frame_id = opts.frame_id
    if frame_id is None:
        from openvla_ros.control.embodiment import load_embodiment
        frame_id = load_embodiment(defaults.DEFAULT_EMBODIMENT).base_frame_id

    store = project_typestore()
    writer = open_writer(out.path, 'mcap')
    action_conn = writer.add_connection(defaults.ACTION_TOPIC, ENDEFFECTOR_DELTA_TYPE, typestore=store)
    counts = Counts(frames_in_bag=src.topics[topics.image].count)
    frame_sizes: dict[str, int] = {}
    skips: list[str] = []
    predictions: list[Prediction] = []
    references: list[Reference] = []
    instruction = opts.instruction
    period_ns = int(NS_PER_S / opts.rate_hz) if opts.rate_hz else 0
    last_selected_ns = None
    wanted = [t for t in (topics.image, topics.instruction, topics.reference) if t]
    index = dict.fromkeys(wanted, -1)
    fatal = None
    bar = tqdm(total=counts.frames_in_bag, file=sys.stderr, unit='frame', disable=not opts.progress,
               desc='openvla-bag eval')
    try:
        for m in src.messages(wanted):
            index[m.topic] += 1
            if m.topic == topics.instruction:
                try:
                    text = store.deserialize_cdr(m.raw, STRING_TYPE).data
                    if not isinstance(text, str):
                        raise TypeError(f'data is {type(text).__name__}, not a string')
                    instruction = text
                except Exception as exc:  # noqa: BLE001 - undecodable: skipped, the last good one stays
                    counts.instructions_skipped += 1
                    skips.append(_skip_note(m.topic, index[m.topic], m.log_time_ns, exc))
                continue
            if m.topic == topics.reference:
                try:
                    references.append(_reference_from(store, m.msgtype, m.raw, m.log_time_ns))
                    counts.references += 1
                except Exception as exc:  # noqa: BLE001 - a bad reference is counted, not fatal
                    counts.references_skipped += 1
                    skips.append(_skip_note(m.topic, index[m.topic], m.log_time_ns, exc))
                continue
            counts.frames_read += 1
            bar.update(1)
            if period_ns and last_selected_ns is not None and m.log_time_ns - last_selected_ns < period_ns:
                continue
            last_selected_ns = m.log_time_ns
            counts.frames_selected += 1
            try:
                rgb, stamp_ns = _decode_image(store, m.msgtype, m.raw)
            except Exception as exc:  # noqa: BLE001 - one bad frame is skipped, never the end of the run
                counts.frames_skipped_conversion += 1
                skips.append(_skip_note(m.topic, index[m.topic], m.log_time_ns, exc))
                continue
            size = f'{rgb.shape[1]}x{rgb.shape[0]}'
            frame_sizes[size] = frame_sizes.get(size, 0) + 1
            if not instruction:
                counts.frames_without_instruction += 1
                continue
            try:
                result = policy.predict(rgb, instruction, unnorm_key)
                fields = prediction_to_delta_fields(result, instruction, stamp_ns, frame_id, policy.model_id,
                                                    sequence=counts.frames_evaluated)
            except OpenVLAError as exc:
                counts.inference_errors += 1
                skips.append(_skip_note(m.topic, index[m.topic], m.log_time_ns, exc))
                continue
            writer.write(action_conn, m.log_time_ns,
                         store.serialize_cdr(delta_fields_to_rosbags(fields, store), ENDEFFECTOR_DELTA_TYPE))
            predictions.append(Prediction(stamp_ns, m.log_time_ns, np.asarray(fields['action']),
                                          np.asarray(fields['action_token_ids'], np.int64),
                                          fields['inference_latency_s']))
            counts.frames_evaluated += 1
    except KeyboardInterrupt:
        fatal = 'interrupted (Ctrl-C)'
    finally:
        bar.close()
        writer.close()
        policy.close()
        src.close()

    by_stamp = topics.reference_type == ENDEFFECTOR_DELTA_TYPE
    matches = match_references(predictions, references, by_stamp, int(opts.match_tolerance_s * NS_PER_S))
    pairs = []
    for p, r in zip(predictions, matches):
        if r is None:
            counts.unmatched += 1
        elif r.action.shape != p.action.shape:
            counts.dimension_mismatch += 1
        else:
            pairs.append((p, r))
    counts.matched = len(pairs)
    problems = [e for e in (src.read_error, fatal) if e]
    warnings = []
    shortfall = src.count_warning()
    if shortfall:
        (problems if opts.strict else warnings).append(shortfall)
    skipped_total = counts.frames_skipped_conversion + counts.instructions_skipped + counts.references_skipped
    if skipped_total:
        warnings.append(f'skipped {skipped_total} undecodable message(s): {counts.frames_skipped_conversion} '
                        f'frame(s), {counts.instructions_skipped} instruction(s), '
                        f'{counts.references_skipped} reference(s); first: {skips[0]}')
    if len(frame_sizes) > 1:
        topics.notes.append(f'frames of different sizes: {frame_sizes}')
    latencies = np.array([p.latency_s for p in predictions])
    report = {
        'bag': str(src.path),
        'output_bag': str(output),
        'report_dir': str(report_dir),
        'checkpoint': str(opts.checkpoint),
        'model_id': policy.model_id,
        'unnorm_key': unnorm_key,
        'image_topic': topics.image,
        'instruction': opts.instruction,
        'instruction_topic': topics.instruction,
        'reference_topic': topics.reference,
        'reference_type': topics.reference_type,
        'match': 'header stamp' if by_stamp else 'bag time',
        'match_tolerance_s': opts.match_tolerance_s,
        'rate_hz': opts.rate_hz,
        'complete': not problems,
        'problems': problems,
        'warnings': warnings,
        'notes': topics.notes,
        'counts': vars(counts),
        'frame_sizes': frame_sizes,
        'skipped': skips[:MAX_LISTED_SKIPS],
        'latency_s': None if not len(latencies) else {
            'mean': float(latencies.mean()), 'p50': float(np.percentile(latencies, 50)),
            'p95': float(np.percentile(latencies, 95))},
        'metrics': compute_metrics(pairs),
        'plots': [],
    }
    from openvla_ros.bag.report import plot_actions, summary_table

    # a run without a single prediction does not replace an earlier output
    keep = bool(predictions) or not output.exists()
    if not keep:
        problems.append(f'no prediction was made; the existing {output} is left as it was')
        report['problems'], report['complete'] = problems, False
        report['output_bag'] = None
    if keep or opts.report_dir:
        staged_report_dir.mkdir(parents=True, exist_ok=True)
        if predictions:
            plots = plot_actions(predictions, matches, staged_report_dir)
            report['plots'] = [str(report_dir / p.name) for p in plots]
        tmp = staged_report_dir / f'.{REPORT_FILE}.partial'
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, staged_report_dir / REPORT_FILE)
    else:
        report['report_dir'] = None
    if keep:
        out.commit()
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print(summary_table(report))
    for note in topics.notes:
        print(f'openvla-bag eval: note: {note}', file=sys.stderr)
    for warning in warnings:
        print(f'openvla-bag eval: warning: {warning}', file=sys.stderr)
    for problem in problems:
        print(f'openvla-bag eval: error: {problem}; the report covers the {counts.frames_read} frames read',
              file=sys.stderr)
    if problems or counts.frames_evaluated == 0:
        if counts.frames_evaluated == 0 and not problems:
            print('openvla-bag eval: error: no frame could be evaluated', file=sys.stderr)
        return 1
    return 0
