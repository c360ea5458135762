"""``openvla-collect``: demonstrations of the scripted expert as a training dataset.

  openvla-collect --task reach_red_block [--task ...] --episodes N [--seed S] --out DIR [--image-size 56]
  openvla-collect --task reach_red_block=70 --task red_block_on_purple_block=90 --out DIR
  openvla-collect --graph --task ... --episodes N --out DIR [--bags BAGS]

By default (in process, the fast path for large collections) it runs
:func:`openvla_ros.learning.collect.collect_in_process`: each task for seeds S … S+N-1 in the
evaluation's lockstep workcell (the simulator and arm-controller cores, no ROS graph; ``TASK=N``:
that task for seeds S … S+N-1 instead), labelled
from the reached end-effector states, written in the dataset layout of
:mod:`openvla_ros.learning.dataset`.

``--graph`` runs :func:`openvla_ros.learning.collect.collect_through_graph` instead: arm_controller
and sim_node (lockstep) as processes over loopback DDS, the expert publishing the same
EndEffectorDelta messages into arm_controller a teleoperator would, and the recorder of
``openvla-bag record`` writing one mcap bag per episode into ``BAGS`` (default ``OUT/bags``):
the camera, /joint_states, the controller's target pose, /openvla/action, the instruction and the
episode markers on /openvla/episode (``start``, then ``end success`` or ``end failure REASON``).
The dataset is then built from those bags as ``openvla-dataset build BAGS/* --out OUT`` builds
it (same labels, idle filter and statistics), so a real teleoperation session recorded with
``openvla-bag record`` gives the same dataset shape.

Either way, failed demonstrations are left out (and listed in ``meta/info.json``) unless
``--include-failed``. A non-empty ``--out`` (or ``--bags``) is refused; ``--force`` replaces only
what an earlier openvla-collect wrote there, never other files.

Exit status: 0 written; 1 the ROS graph or the recording failed; 2 bad input (unknown task,
output refused, no demonstration succeeded).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


MAX_START_JITTER_M = 0.1                     # m: beyond it many starts leave the workspace
MAX_ACTION_NOISE_M = 0.02                    # m: twice the reach expert's own 0.01 m per-axis steps
MAX_SLIP_PROBABILITY = 0.5                   # at least every other step is the expert's own
MAX_SLIP_M = 0.05                            # m: the arm controller's per-step clip


class CollectError(Exception):
    """Bad input to openvla-collect: one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from openvla_ros.evaluation import tasks as T

    parser = argparse.ArgumentParser(prog='openvla-collect', description=__doc__.split('\n\n')[0])
    parser.add_argument('--task', action='append', required=True, metavar='TASK[=N]',
                        help=f'task to demonstrate (repeatable, or "all"), with =N its own number of episodes: '
                             f'{", ".join(T.TASKS)}')
    parser.add_argument('--episodes', type=int,
                        help='episodes (seeds) per task without =N (needed unless every task has one)')
    parser.add_argument('--seed', type=int, default=0, help='first seed (default 0)')
    parser.add_argument('--layouts', choices=('shared', 'distinct'), default='shared',
                        help='shared: every task on seeds S … S+N-1 (a seed is a scene: each scene shown '
                             'with every instruction); distinct: task i on seeds S+i*N … (with =N: after the '
                             "seeds of the tasks before it; a scene per demonstration)")
    parser.add_argument('--out', required=True, help='dataset directory to create')
    parser.add_argument('--image-size', type=int, default=56, help='camera frames of N x N pixels (default 56)')
    parser.add_argument('--max-steps', type=int, help="end each episode after N steps (default: the task's)")
    parser.add_argument('--start-jitter-m', type=float, default=0.0, metavar='M',
                        help='in process: start each demonstration with the end effector moved from the start pose '
                             'by a seeded offset of up to M metres along x and y (M/2 along z), so the demonstrations '
                             'cover more of the workspace than lines from one start (default 0: the start pose)')
    parser.add_argument('--action-noise-m', type=float, default=0.0, metavar='SIGMA',
                        help='in process: add Gaussian noise (standard deviation SIGMA metres per axis, seeded) to '
                             "each of the expert's commanded translations, as an unsteady hand would; the expert "
                             'corrects from wherever that leads and the labels are the reached moves, so the '
                             'demonstrations show corrections from off the ideal path (default 0)')
    parser.add_argument('--slip-probability', type=float, default=0.0, metavar='P',
                        help="in process: replace each of the expert's steps with probability P by a slip, a "
                             'uniform move of up to --slip-m along each axis, and leave the slips out of the '
                             'dataset: the demonstrations then show recoveries from off the ideal path, labelled '
                             'with the expert\'s own moves (default 0)')
    parser.add_argument('--slip-m', type=float, default=0.025, metavar='M',
                        help='largest slip along each axis, metres (default 0.025)')
    parser.add_argument('--near-start-fraction', type=float, default=0.0, metavar='F',
                        help='in process: start about this fraction of the demonstrations (seeded per seed) with '
                             "the finger tips near the task's target, within --near-start-m of it along x and y "
                             'and 1 cm to --near-start-m above its top, instead of the (jittered) start pose: many '
                             'more demonstrations of the last centimetres before a grasp (default 0)')
    parser.add_argument('--near-start-m', type=float, default=0.06, metavar='R',
                        help='how near a near start is, metres (default 0.06)')
    parser.add_argument('--include-failed', action='store_true', help='keep demonstrations that did not succeed')
    parser.add_argument('--force', action='store_true',
                        help='replace a dataset an earlier openvla-collect wrote in --out (never other files)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar on stderr')
    parser.add_argument('--graph', action='store_true',
                        help='run the expert through the ROS graph (arm_controller, sim_node), one bag per episode, '
                        'and build the dataset from the bags (default: in process, no ROS graph)')
    parser.add_argument('--bags', metavar='DIR', help='with --graph: where the episode bags go (default OUT/bags)')
    parser.add_argument('--graph-logs', metavar='DIR', help='with --graph: keep the node logs in DIR')
    return parser


def _holds_something(path: Path, flag: str, force: bool, what: str) -> bool:
    """Whether ``path`` (the folder of ``flag``) has contents that ``--force`` would replace;
    False when it is absent or empty. A link or a file there, or contents without ``force``,
    are refused (``what``: what ``--force`` replaces there)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise CollectError(f'{flag} {path} exists and is not a directory; refusing to touch it')
    if not path.exists() or not any(path.iterdir()):
        return False
    if not force:
        raise CollectError(f'{flag} {path} exists and is not empty; pass --force to replace {what}')
    return True


def _prepare_bags(bags: Path, force: bool, inside_out: bool) -> None:
    """A bags folder is used when absent or empty; with ``force`` one that holds only the bags an
    earlier openvla-collect listed in its manifest (those are removed), never other files."""
    from openvla_ros.learning.collect import BAGS_MANIFEST, read_bags_manifest

    where = '--out' if inside_out else '--bags'
    if not _holds_something(bags, where, force, 'the bags openvla-collect wrote there'):
        return
    listed = read_bags_manifest(bags)
    if listed is None:
        raise CollectError(f'{bags} was not written by openvla-collect (no {BAGS_MANIFEST}); refusing to replace it '
                           'even with --force: choose another ' + where)
    names = set(listed) | {BAGS_MANIFEST}
    others = [p.name for p in bags.iterdir() if p.name not in names and
              not (p.name.startswith('.') and '.partial-' in p.name and p.name[1:].split('.partial-')[0] in names)]
    if others:
        raise CollectError(f'{bags} holds files openvla-collect did not write ({", ".join(sorted(others)[:5])}); '
                           'refusing to replace it even with --force')
    for p in bags.iterdir():
        if p.name != BAGS_MANIFEST:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (bags / BAGS_MANIFEST).unlink()
    bags.rmdir()


def _prepare_out(out: Path, force: bool) -> None:
    from openvla_ros.learning.collect import BAGS_DIR, read_bags_manifest
    from openvla_ros.learning.dataset import EPISODES_DIR, INFO_FILE, STATISTICS_FILE
    from openvla_ros.learning.from_bags import BUILD_FILE

    if not _holds_something(out, '--out', force, 'a dataset openvla-collect wrote there'):
        return
    info = out / INFO_FILE
    try:
        ours = 'failed_demonstrations' in json.loads(info.read_text())
    except (OSError, ValueError):
        ours = False
    # a --graph run that stopped before its dataset was written: only its bags (and the build's manifest)
    ours = ours or (not info.exists() and read_bags_manifest(out / BAGS_DIR) is not None)
    others = [p.name for p in out.iterdir()
              if p.name not in (EPISODES_DIR, INFO_FILE.parts[0], STATISTICS_FILE, BAGS_DIR)]
    meta = out / INFO_FILE.parts[0]
    if meta.is_dir():
        others += [f'{meta.name}/{p.name}' for p in meta.iterdir() if p.name not in (INFO_FILE.name, BUILD_FILE.name)]
    if not ours or others:
        raise CollectError(f'--out {out} is not a dataset written by openvla-collect'
                           + (f' (it holds {", ".join(sorted(others)[:5])})' if others else '')
                           + '; refusing to replace it even with --force: choose another --out')
    if (out / BAGS_DIR).exists():
        _prepare_bags(out / BAGS_DIR, force, inside_out=True)
    shutil.rmtree(out / EPISODES_DIR, ignore_errors=True)
    for rel in (Path(STATISTICS_FILE), BUILD_FILE, INFO_FILE):
        (out / rel).unlink(missing_ok=True)


def task_counts(specs: list[str], episodes: int | None) -> tuple[list[str], dict[str, int]]:
    """The tasks of ``--task`` (``TASK`` or ``TASK=N``; ``all``) in order, and each one's number
    of episodes (N, else ``--episodes``)."""
    from openvla_ros.evaluation import tasks as T

    counts: dict[str, int] = {}
    for spec in specs:
        name, sep, n = spec.partition('=')
        if name == 'all' and sep:
            raise CollectError(f'--task all takes no =N, got {spec!r}')
        for task in (T.TASKS if name == 'all' else [name]):
            if task not in T.TASKS:
                raise CollectError(f'unknown task {task!r}; known: {", ".join(T.TASKS)}')
            if not sep and episodes is None:
                raise CollectError(f'--task {task}: give --episodes N or --task {task}=N')
            try:
                count = int(n) if sep else episodes
            except ValueError:
                raise CollectError(f'--task {spec!r}: N must be an integer') from None
            if count < 1:
                raise CollectError(f'--task {task}: episodes must be >= 1, got {count}')
            if counts.setdefault(task, count) != count:
                raise CollectError(f'--task {task} is given {counts[task]} and {count} episodes')
    return list(counts), counts


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from openvla_ros.learning.dataset import DatasetError

    try:
        tasks, counts = task_counts(args.task, args.episodes)
        if args.seed < 0:
            raise CollectError(f'--seed must be >= 0, got {args.seed}')
        if args.max_steps is not None and args.max_steps < 1:
            raise CollectError(f'--max-steps must be >= 1, got {args.max_steps}')
        if args.image_size < 1:
            raise CollectError(f'--image-size must be >= 1, got {args.image_size}')
        if not args.graph and (args.bags or args.graph_logs):
            raise CollectError('--bags and --graph-logs go with --graph')
        if not 0.0 <= args.start_jitter_m <= MAX_START_JITTER_M:
            raise CollectError(f'--start-jitter-m must be in [0, {MAX_START_JITTER_M}] m, got {args.start_jitter_m}')
        if not 0.0 <= args.action_noise_m <= MAX_ACTION_NOISE_M:
            raise CollectError(f'--action-noise-m must be in [0, {MAX_ACTION_NOISE_M}] m, got {args.action_noise_m}')
        if not 0.0 <= args.slip_probability <= MAX_SLIP_PROBABILITY:
            raise CollectError(f'--slip-probability must be in [0, {MAX_SLIP_PROBABILITY}], got {args.slip_probability}')
        if not 0.0 < args.slip_m <= MAX_SLIP_M:
            raise CollectError(f'--slip-m must be in (0, {MAX_SLIP_M}] m, got {args.slip_m}')
        if not 0.0 <= args.near_start_fraction <= 1.0:
            raise CollectError(f'--near-start-fraction must be in [0, 1], got {args.near_start_fraction}')
        if not 0.0 < args.near_start_m <= MAX_START_JITTER_M:
            raise CollectError(f'--near-start-m must be in (0, {MAX_START_JITTER_M}] m, got {args.near_start_m}')
        if args.graph and args.near_start_fraction:
            raise CollectError('--near-start-fraction is for the in-process collection')
        if args.graph and args.slip_probability:
            raise CollectError('--slip-probability is for the in-process collection')
        if args.graph and args.action_noise_m:
            raise CollectError('--action-noise-m is for the in-process collection')
        if args.graph and args.start_jitter_m:
            raise CollectError('--start-jitter-m is for the in-process collection: through the graph the arm '
                               'starts where sim_node resets it')
        out = Path(args.out)
        bags = Path(args.bags) if args.bags else None
        if bags is not None:
            from openvla_ros.bag.storage import BagError, check_not_input

            try:
                check_not_input(bags, [out], '--bags')
            except BagError as exc:
                raise CollectError(str(exc)) from None
            _prepare_bags(bags, args.force, inside_out=False)
        _prepare_out(out, args.force)
        seeds = list(range(args.seed, args.seed + max(counts.values())))
        if args.graph:
            info = _collect_graph(args, tasks, seeds, counts, out, bags)
            if info is None:
                return EXIT_FAILED
        else:
            from openvla_ros.learning.collect import collect_in_process

            info = collect_in_process(tasks, seeds, out, image_size=args.image_size, progress=not args.no_progress,
                                      only_successful=not args.include_failed, max_steps=args.max_steps,
                                      layouts=args.layouts, start_jitter_m=args.start_jitter_m,
                                      action_noise_m=args.action_noise_m, counts=counts,
                                      slip_probability=args.slip_probability, slip_m=args.slip_m,
                                      near_start_fraction=args.near_start_fraction,
                                      near_start_m=args.near_start_m)
    except (CollectError, DatasetError) as exc:
        print(f'openvla-collect: error: {exc}', file=sys.stderr)
        return EXIT_BAD_INPUT
    failed = info.get('failed_demonstrations', [])
    slips = f', {info["slip_steps_left_out"]} slips left out' if info.get('slip_steps_left_out') else ''
    print(f'{out}: {info["episodes"]} episodes, {info["transitions"]} steps, '
          f'{info["idle_steps_dropped"]} idle steps dropped{slips}, {len(failed)} demonstration(s) left out')
    for task, seed, why in failed:
        print(f'openvla-collect: note: {task} seed {seed} left out: {why}', file=sys.stderr)
    return EXIT_OK


def _collect_graph(args, tasks, seeds, counts, out: Path, bags: Path | None) -> dict | None:
    """collect_through_graph with this CLI's arguments; None (the error printed) when the graph or
    the recording failed."""
    from openvla_ros.bag.storage import BagError
    from openvla_ros.cli import bringup as bringup_cli
    from openvla_ros.evaluation.graph import GraphError
    from openvla_ros.learning.collect import collect_through_graph

    try:
        return collect_through_graph(
            tasks, seeds, out, executable_command=bringup_cli.executable_command,
            stop_processes=bringup_cli.stop_processes, bags_dir=bags, image_size=args.image_size,
            progress=not args.no_progress, only_successful=not args.include_failed, graph_log_dir=args.graph_logs,
            max_steps=args.max_steps, layouts=args.layouts, counts=counts,
            log=lambda line: print(f'openvla-collect: {line}', file=sys.stderr))
    except (GraphError, BagError, RuntimeError) as exc:
        print(f'openvla-collect: error: {type(exc).__name__}: {exc}', file=sys.stderr)
        return None


if __name__ == '__main__':
    sys.exit(main())
