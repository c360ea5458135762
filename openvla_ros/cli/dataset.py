"""``openvla-dataset``: training datasets from recorded bags, and what a dataset holds.

  openvla-dataset build BAGS... --out DIR [--resume | --force] [--instruction TEXT] [--image-size N]
  openvla-dataset info DIR
  openvla-dataset export DIR --format lerobot --out OUT
  openvla-dataset grounding --frames N --out DIR [--image-size N] [--seed S] [--workers N] [--near-fraction F]

``build`` converts each bag (a bag directory with metadata.yaml, or a single .mcap) into one
episode (or one per episode marker), labelled from the reached end-effector states, and writes the
dataset layout of :mod:`openvla_ros.learning.dataset` (episode files, upstream-format
``dataset_statistics.json``, ``meta/info.json``). A bag that cannot be converted is named with
the reason and the build goes on; the episodes written stay, and ``--resume`` continues a build
(bags already converted are skipped). ``--force`` replaces only what an earlier build wrote.

``export`` writes a dataset in the LeRobotDataset v2.1 layout (:mod:`openvla_ros.learning.export`)
into a new or empty OUT; ``info`` summarises either kind of dataset. ``grounding`` renders
labelled workcell scenes (:mod:`openvla_ros.learning.grounding`) into a new or empty OUT: the
pre-training data of a small policy trained from scratch.

Exit status: 0 every bag converted and the statistics written (export: written); 2 bad input (a
bag failed, the statistics are degenerate, the output is refused, the input is not a dataset);
141 the output pipe was closed (``info D | head``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from openvla_ros import defaults

EXIT_OK, EXIT_BAD_INPUT = 0, 2
EXIT_BROKEN_PIPE = 128 + 13      # the shell's status for a writer killed by SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    from openvla_ros.learning.dataset import DEFAULT_DATASET_KEY
    from openvla_ros.learning.from_bags import DEFAULT_MAX_GAP_PERIODS

    parser = argparse.ArgumentParser(prog='openvla-dataset', description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    b = sub.add_parser('build', help='build a training dataset from bags')
    b.add_argument('bags', nargs='+', help='bag directories (metadata.yaml + .db3/.mcap) or .mcap files')
    b.add_argument('--out', required=True, help='dataset directory to create')
    mode = b.add_mutually_exclusive_group()
    mode.add_argument('--resume', action='store_true', help='continue a build in --out: skip bags already converted')
    mode.add_argument('--force', action='store_true',
                      help='replace what an earlier build wrote in --out (never other files)')
    b.add_argument('--instruction', help=f'instruction for every episode (default: {defaults.INSTRUCTION_TOPIC})')
    b.add_argument('--image-topic', help=f'Image or CompressedImage topic (default {defaults.CAMERA_TOPIC}, '
                   f'else {defaults.COMPRESSED_CAMERA_TOPIC})')
    b.add_argument('--image-size', type=int, help='resize frames to N x N (default: as recorded)')
    b.add_argument('--embodiment', default=defaults.DEFAULT_EMBODIMENT,
                   help='embodiment (control period, arm joints, kinematics) the bags were recorded with')
    b.add_argument('--dataset-key', default=DEFAULT_DATASET_KEY, help='key in dataset_statistics.json')
    b.add_argument('--include-failed', action='store_true',
                   help=f'keep episodes whose end marker on {defaults.EPISODE_TOPIC} says failure')
    b.add_argument('--max-gap-periods', type=float, default=DEFAULT_MAX_GAP_PERIODS,
                   help='a gap of more control periods between two stamps of a topic is a clock jump')
    i = sub.add_parser('info', help='episodes, steps, instructions, action histograms and statistics')
    i.add_argument('dataset', help='dataset directory')
    i.add_argument('--bins', type=int, default=10, help='histogram bins per action dimension')
    i.add_argument('--json', action='store_true', help='print meta/info.json and the statistics as JSON')
    e = sub.add_parser('export', help='write a dataset in a standard format (LeRobotDataset v2.1)')
    e.add_argument('dataset', help='dataset directory (openvla-dataset build / openvla-collect)')
    e.add_argument('--format', default='lerobot', choices=['lerobot'], help='output format')
    e.add_argument('--out', required=True, help='directory to create (must not exist or be empty)')
    g = sub.add_parser('grounding', help='render labelled workcell scenes: pre-training data for a small policy')
    g.add_argument('--frames', type=int, required=True, help='scenes to render (one frame each)')
    g.add_argument('--out', required=True, help='directory to create (must not exist or be empty)')
    g.add_argument('--image-size', type=int, default=128, help='camera frames, N x N pixels')
    g.add_argument('--seed', type=int, default=None, help='first scene seed (default: clear of the '
                   'demonstration and evaluation seeds)')
    g.add_argument('--nouns-per-scene', type=int, default=1, metavar='K',
                   help='label each scene for K different objects (K samples of the same image that only '
                        'the instruction tells apart; at most the number of objects)')
    g.add_argument('--nouns', default=None, metavar='NOUN,NOUN',
                   help='name only these objects, comma-separated (default all: red block, green can, purple '
                        'block, spoon, towel); every object is in every scene either way')
    g.add_argument('--labels', default='offset', metavar='LAYOUT',
                   help='offset (default): per named object, its offset from the finger tips first; position: its place '
                        'first; objects: one instruction, "where are the objects", every reach object in a '
                        "fixed slot, then the finger tips' y (a pre-training step before the choice by the noun); "
                        "relative: as objects, each slot the object's offset from the finger tips, then the tips' "
                        "height")
    g.add_argument('--key', default=None, help='statistics key (default sim_grounding; another one lets two '
                   'grounding datasets be mixed into one fine-tune)')
    g.add_argument('--workers', type=int, default=1, help='rendering processes (the dataset is the same for any '
                   'number)')
    g.add_argument('--near-fraction', type=float, default=0.0, metavar='F',
                   help='share of the scenes with the finger tips within 8 cm of one named object and 1-10 cm '
                        'above its top (default 0: every arm pose uniform over the workspace)')
    return parser


def _grounding(args) -> int:
    from openvla_ros.learning import grounding
    from openvla_ros.learning.dataset import DatasetError

    out = Path(args.out)
    if args.frames < 1 or args.image_size < 1:
        raise DatasetError(f'--frames and --image-size must be >= 1, got {args.frames}, {args.image_size}')
    if args.labels not in grounding.LABELS:
        raise DatasetError(f'--labels must be one of {", ".join(grounding.LABELS)}, got {args.labels!r}')
    nouns = None if args.nouns is None else [n.strip() for n in args.nouns.split(',') if n.strip()]
    try:
        grounding.check_nouns(args.nouns_per_scene)          # --nouns-per-scene's range for any layout
        grounding.check_layout_nouns(args.labels, args.nouns_per_scene, nouns)
    except ValueError as exc:
        raise DatasetError(f'--nouns / --nouns-per-scene: {exc}') from None
    try:
        grounding.check_near_fraction(args.near_fraction)
    except ValueError as exc:
        raise DatasetError(f'--near-fraction: {exc}') from None
    if args.workers < 1:
        raise DatasetError(f'--workers must be >= 1, got {args.workers}')
    from tqdm import tqdm

    with tqdm(total=args.frames, desc='grounding', unit='frame') as bar:
        info = grounding.build_dataset(out, args.frames, args.image_size,
                                       grounding.SEED_BASE if args.seed is None else args.seed,
                                       progress=lambda n: bar.update(1),
                                       nouns_per_scene=args.nouns_per_scene, labels=args.labels,
                                       key=args.key or grounding.GROUNDING_KEY, workers=args.workers,
                                       nouns=nouns, near_fraction=args.near_fraction)
    print(f'{out}: {info["transitions"]} labelled frames, {info["episodes"]} instruction(s) '
          f'(statistics key {info["dataset_key"]})')
    return EXIT_OK


def info_text(directory, bins: int = 10) -> str:
    """``openvla-dataset info``: the dataset summary, quantiles, idle-filter counts and statistics."""
    from openvla_ros.action_layout import dim_names
    from openvla_ros.learning.dataset import INFO_FILE, iter_episodes, load_statistics, summary
    from openvla_ros.learning.export import is_lerobot_dataset, lerobot_summary

    if is_lerobot_dataset(directory):
        return lerobot_summary(directory, bins=bins)
    lines = [summary(directory, bins=bins)]
    actions = np.concatenate([e.actions for e in iter_episodes(directory)])
    names = dim_names(actions.shape[1])
    qs = (0.01, 0.25, 0.5, 0.75, 0.99)
    lines.append('  quantiles ' + ' '.join(f'{f"q{round(q * 100):02d}":>9s}' for q in qs))
    for i, name in enumerate(names):
        lines.append(f'  {name:>8s}  ' + ' '.join(f'{v:+9.4f}' for v in np.quantile(actions[:, i], qs)))
    info_path = Path(directory) / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if 'idle_steps_dropped' in info:
        f = info.get('idle_filter')
        how = (f' (idle: < {f["translation_m"]:g} m and < {f["rotation_rad"]:g} rad with the gripper unchanged, '
               f'runs longer than {f["keep_steps"]} steps dropped)') if f else ''
        lines.append(f'  idle steps dropped: {info["idle_steps_dropped"]}{how}')
    for key in ('failed_bags', 'failed_demonstrations', 'left_out_episodes'):
        failed = info.get(key)
        if failed:
            items = failed.items() if isinstance(failed, dict) else ((str(x[:2]), x[-1]) for x in failed)
            lines.append(f'  {key.replace("_", " ")}: {len(failed)}')
            lines += [f'    {v}' if str(v).startswith(str(k)) else f'    {k}: {v}' for k, v in items]
    try:
        stats = load_statistics(directory)
    except ValueError as exc:
        lines.append(f'  statistics: none ({exc})')
        return '\n'.join(lines)
    for key, entry in stats.items():
        a = entry['action']
        lines.append(f'  statistics [{key}]: {entry["num_trajectories"]} trajectories, '
                     f'{entry["num_transitions"]} transitions')
        lines.append('  ' + ' ' * 8 + ''.join(f'{c:>10s}' for c in ('mean', 'std', 'q01', 'q99', 'mask')))
        for i, name in enumerate(names):
            lines.append(f'  {name:>8s}' + ''.join(f'{a[c][i]:+10.4f}' for c in ('mean', 'std', 'q01', 'q99'))
                         + f'{str(a["mask"][i]):>10s}')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from openvla_ros.learning.dataset import DatasetError

    prog = f'openvla-dataset {args.command}'
    try:
        if args.command == 'grounding':
            return _grounding(args)
        if args.command == 'export':
            from openvla_ros.learning.export import export
            info = export(args.dataset, args.out, args.format)
            print(f'{args.out}: LeRobot dataset {info["codebase_version"]}, {info["total_episodes"]} episodes, '
                  f'{info["total_frames"]} frames, {info["total_tasks"]} tasks, {info["fps"]} fps')
            return EXIT_OK
        if args.command == 'info':
            if args.json:
                from openvla_ros.learning.dataset import INFO_FILE, load_statistics
                from openvla_ros.learning.export import STATS_FILE, is_lerobot_dataset
                info_path = Path(args.dataset) / INFO_FILE
                if not info_path.is_file():
                    raise DatasetError(f'{args.dataset}: no {INFO_FILE} (build the dataset first)')
                if is_lerobot_dataset(args.dataset):
                    stats_path = Path(args.dataset) / STATS_FILE
                    print(json.dumps({'info': json.loads(info_path.read_text()),
                                      'stats': json.loads(stats_path.read_text()) if stats_path.is_file() else None},
                                     indent=2))
                    return EXIT_OK
                print(json.dumps({'info': json.loads(info_path.read_text()),
                                  'statistics': load_statistics(args.dataset)}, indent=2))
            else:
                print(info_text(args.dataset, bins=args.bins))
            sys.stdout.flush()          # here, where a closed pipe is caught
            return EXIT_OK
        from openvla_ros.learning.from_bags import BuildOptions, build

        if args.image_size is not None and args.image_size < 1:
            raise DatasetError(f'--image-size must be >= 1, got {args.image_size}')
        result = build(BuildOptions(
            bags=args.bags, out=args.out, force=args.force, resume=args.resume, instruction=args.instruction,
            image_topic=args.image_topic, image_size=args.image_size, embodiment=args.embodiment,
            dataset_key=args.dataset_key, max_gap_periods=args.max_gap_periods,
            include_failed=args.include_failed),
            log=lambda line: print(f'{prog}: {line}', file=sys.stderr))
    except DatasetError as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader went away (`openvla-dataset info D | head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    if result.info is not None:
        print(f'{result.out}: {result.info["episodes"]} episodes, {result.info["transitions"]} steps '
              f'({len(result.converted)} converted now, {len(result.skipped)} already there), '
              f'{result.info["idle_steps_dropped"]} idle steps dropped')
    if result.errors:
        n = len(result.errors)
        print(f'{prog}: {n} problem(s); the episodes converted stay in {result.out} '
              f'(fix the input and re-run with --resume)', file=sys.stderr)
        if result.info is None:
            print(f'{prog}: error: {result.errors[-1]}', file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
