"""``openvla-collect``: demonstrations of the scripted expert, in process, as a training dataset.

  openvla-collect --task reach_red_block [--task ...] --episodes N [--seed S] --out DIR [--image-size 56]

Runs :func:`openvla_ros.learning.collect.collect_in_process`: each task for seeds S … S+N-1 in the
evaluation's lockstep workcell (the simulator and arm-controller cores, no ROS graph), labelled
from the reached end-effector states, written in the dataset layout of
:mod:`openvla_ros.learning.dataset`. Failed demonstrations are left out (and listed in
``meta/info.json``) unless ``--include-failed``.

Exit status: 0 written; 2 bad input (unknown task, output refused, no demonstration succeeded).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2


class CollectError(Exception):
    """Bad input to openvla-collect: one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from openvla_ros.evaluation import tasks as T

    parser = argparse.ArgumentParser(prog='openvla-collect', description=__doc__.split('\n\n')[0])
    parser.add_argument('--task', action='append', required=True, metavar='TASK',
                        help=f'task to demonstrate (repeatable, or "all"): {", ".join(T.TASKS)}')
    parser.add_argument('--episodes', type=int, required=True, help='episodes (seeds) per task')
    parser.add_argument('--seed', type=int, default=0, help='first seed (default 0)')
    parser.add_argument('--out', required=True, help='dataset directory to create')
    parser.add_argument('--image-size', type=int, default=56, help='camera frames of N x N pixels (default 56)')
    parser.add_argument('--include-failed', action='store_true', help='keep demonstrations that did not succeed')
    parser.add_argument('--force', action='store_true',
                        help='replace a dataset an earlier openvla-collect wrote in --out (never other files)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar on stderr')
    return parser


def _prepare_out(out: Path, force: bool) -> None:
    from openvla_ros.learning.dataset import EPISODES_DIR, INFO_FILE, STATISTICS_FILE

    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CollectError(f'--out {out} exists and is not a directory; refusing to touch it')
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise CollectError(f'--out {out} exists and is not empty; pass --force to replace a dataset '
                           'openvla-collect wrote there')
    info = out / INFO_FILE
    try:
        ours = 'failed_demonstrations' in json.loads(info.read_text())
    except (OSError, ValueError):
        ours = False
    others = [p.name for p in out.iterdir() if p.name not in (EPISODES_DIR, INFO_FILE.parts[0], STATISTICS_FILE)]
    if not ours or others:
        raise CollectError(f'--out {out} is not a dataset written by openvla-collect'
                           + (f' (it holds {", ".join(sorted(others)[:5])})' if others else '')
                           + '; refusing to replace it even with --force: choose another --out')
    shutil.rmtree(out / EPISODES_DIR, ignore_errors=True)
    for rel in (Path(STATISTICS_FILE), INFO_FILE):
        (out / rel).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from openvla_ros.evaluation import tasks as T
    from openvla_ros.learning.dataset import DatasetError

    try:
        tasks = list(T.TASKS) if 'all' in args.task else list(dict.fromkeys(args.task))
        unknown = [t for t in tasks if t not in T.TASKS]
        if unknown:
            raise CollectError(f'unknown task(s) {unknown}; known: {", ".join(T.TASKS)}')
        if args.episodes < 1:
            raise CollectError(f'--episodes must be >= 1, got {args.episodes}')
        if args.seed < 0:
            raise CollectError(f'--seed must be >= 0, got {args.seed}')
        if args.image_size < 1:
            raise CollectError(f'--image-size must be >= 1, got {args.image_size}')
        out = Path(args.out)
        _prepare_out(out, args.force)
        from openvla_ros.learning.collect import collect_in_process

        seeds = list(range(args.seed, args.seed + args.episodes))
        info = collect_in_process(tasks, seeds, out, image_size=args.image_size, progress=not args.no_progress,
                                  only_successful=not args.include_failed)
    except (CollectError, DatasetError) as exc:
        print(f'openvla-collect: error: {exc}', file=sys.stderr)
        return EXIT_BAD_INPUT
    failed = info.get('failed_demonstrations', [])
    print(f'{out}: {info["episodes"]} episodes, {info["transitions"]} steps, '
          f'{info["idle_steps_dropped"]} idle steps dropped, {len(failed)} demonstration(s) left out')
    for task, seed, why in failed:
        print(f'openvla-collect: note: {task} seed {seed} left out: {why}', file=sys.stderr)
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
