"""openvla-eval: closed-loop success rates in the MuJoCo workcell, seeded and lockstep.

Each episode resets the workcell to the seeded initial state of a task, then alternates: camera
image → policy → arm controller safety core → one control period of physics (lockstep: sim time
stands still while the policy thinks, so a 2-core CPU and a GPU give the same results). Success
is the task's predicate on the simulator state.

Policies: ``--checkpoint DIR`` (with the engine options) or ``--server URL`` is the ``model``
policy; the built-in references are ``expert`` (the scripted expert, the upper bound), ``random``
(the tiny untrained checkpoint) and ``shuffled`` (the model, or the random one, given another
task's instruction: does the language matter?). ``--policy`` picks one or several.

``--graph`` runs the same episodes through the ROS graph instead (vla_node → arm_controller →
sim_node in lockstep, each a process over loopback DDS: :mod:`openvla_ros.evaluation.graph`);
the model runs in vla_node with the same engine options, the expert publishes actions into
arm_controller like a teleoperator. The records and the summary are the same.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from openvla_ros.defaults import TRAINING_SEEDS_FILE
from openvla_ros.evaluation import tasks as T
from openvla_ros.policy.options import (OPTIONAL, add_checkpoint_argument, add_policy_arguments,
                                        add_unnorm_key_argument,
                                        add_remote_arguments, fail, policy_options, remote_options)

DEFAULT_OUTPUT_ROOT = Path('output/eval')
MAX_CONSECUTIVE_POLICY_ERRORS = 3
POLICY_NAMES = ('model', 'expert', 'random', 'shuffled')


class EvalError(Exception):
    """Bad input to openvla-eval: one line on stderr, exit code 2."""


def parse_seed_ranges(text: str) -> list[tuple[int, int]]:
    """'0-299,1000-1049' → [(0, 300), (1000, 1050)] (inclusive ranges as half-open pairs)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(','))):
        lo, sep, hi = part.partition('-')
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise EvalError(f'seed range {part!r} is not N or N-M') from None
        if a < 0 or b < a:
            raise EvalError(f'seed range {part!r}: need 0 <= N <= M')
        out.append((a, b + 1))
    return out


def training_seeds(args) -> list[tuple[int, int]]:
    ranges = parse_seed_ranges(args.training_seeds) if args.training_seeds else []
    if args.checkpoint is not None and (args.checkpoint / TRAINING_SEEDS_FILE).is_file():
        import json
        doc = json.loads((args.checkpoint / TRAINING_SEEDS_FILE).read_text())
        ranges += [(int(a), int(b)) for a, b in doc.get('seeds', [])]
    return ranges


def check_held_out(seeds: list[int], train: list[tuple[int, int]]) -> None:
    overlap = sorted(s for s in seeds if any(a <= s < b for a, b in train))
    if overlap:
        shown = ', '.join(map(str, overlap[:10])) + (' ...' if len(overlap) > 10 else '')
        ranges = ', '.join(f'{a}-{b - 1}' for a, b in train)
        raise EvalError(f'--held-out: {len(overlap)} evaluation seeds are training seeds ({shown}; training: '
                        f'{ranges}); choose --seed above them')


def check_unnorm_key(policy, key: str | None, name: str) -> None:
    try:
        keys = policy.unnorm_keys()
    except Exception:  # noqa: BLE001 - a server without /info: the first prediction will tell
        return
    if not keys:
        return
    if key is None:
        if len(keys) == 1:
            key = next(iter(keys))
        else:
            raise EvalError(f'{name}: the checkpoint has several unnorm keys ({", ".join(keys)}); pass --unnorm-key')
    if key not in keys:
        raise EvalError(f'{name}: unnorm key {key!r} is not in the checkpoint (available: {", ".join(keys)})')
    if keys[key] != 7:
        raise EvalError(f'{name}: unnorm key {key!r} has {keys[key]}-D actions; the WidowX tasks need 7-D '
                        '[dx, dy, dz, droll, dpitch, dyaw, gripper]')


def build_policies(args) -> dict[str, tuple[object, bool]]:
    """name → (policy, shuffled instruction?)."""
    from openvla_ros.evaluation.policies import ExpertPolicy

    names = args.policy or (['model'] if (args.checkpoint or args.server) else ['expert'])
    model = None
    out: dict[str, tuple[object, bool]] = {}

    def load_model():
        nonlocal model
        if model is None:
            if args.checkpoint is not None:
                from openvla_ros.engine.policy import load_policy
                model = load_policy(args.checkpoint, policy_options(args))
                check_unnorm_key(model, args.unnorm_key, str(args.checkpoint))
            elif args.server:
                from openvla_ros.policy.remote import RemotePolicy
                model = RemotePolicy.from_options(remote_options(args, server_url=args.server))
                check_unnorm_key(model, args.unnorm_key, args.server)
            else:
                model = load_random(args)
        return model

    for name in names:
        if name == 'model':
            if args.checkpoint is None and not args.server:
                raise EvalError('--policy model needs --checkpoint DIR or --server URL')
            out['model'] = (load_model(), False)
        elif name == 'expert':
            out['expert'] = (ExpertPolicy(), False)
        elif name == 'random':
            out['random'] = (load_random(args), False)
        elif name == 'shuffled':
            out['shuffled'] = (load_model(), True)
    return out


def load_random(args):
    from openvla_ros.cli.demo import ensure_checkpoint
    from openvla_ros.engine.policy import load_policy
    policy = load_policy(ensure_checkpoint(None), policy_options(args))
    check_unnorm_key(policy, args.unnorm_key, 'random (tiny untrained checkpoint)')
    return policy


def parse_args(argv):
    p = argparse.ArgumentParser(prog='openvla-eval', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_checkpoint_argument(p, OPTIONAL)
    p.add_argument('--server', default=None, metavar='URL', help='an OpenVLA server (openvla-serve or deploy.py)')
    p.add_argument('--policy', nargs='+', choices=POLICY_NAMES, default=None,
                   help='policies to evaluate (default: model with --checkpoint/--server, else expert)')
    add_unnorm_key_argument(p, OPTIONAL)
    p.add_argument('--tasks', default='all', help=f'comma-separated tasks or "all" ({", ".join(T.TASKS)})')
    p.add_argument('--episodes', type=int, default=10, help='episodes per task and policy')
    p.add_argument('--seed', type=int, default=1000, help='first episode seed (seeds SEED .. SEED+N-1)')
    p.add_argument('--max-steps', type=int, default=None, help="steps per episode (default: the task's)")
    p.add_argument('--paraphrase', default=None, help="instruction variant: an index, or 'seeded'")
    p.add_argument('--held-out', action='store_true',
                   help='fail when an evaluation seed is a training seed (--training-seeds, or '
                        f'{TRAINING_SEEDS_FILE} in the checkpoint)')
    p.add_argument('--training-seeds', default='', metavar='RANGES', help="training seeds, e.g. '0-299'")
    p.add_argument('--graph', action='store_true',
                   help='run through the ROS graph (vla_node -> arm_controller -> sim_node, lockstep)')
    p.add_argument('--image-width', type=int, default=224, help='camera image width (pixels)')
    p.add_argument('--image-height', type=int, default=224, help='camera image height (pixels)')
    p.add_argument('--video', action=argparse.BooleanOptionalAction, default=True,
                   help='write a camera video and a trajectory plot per episode')
    p.add_argument('--output', type=Path, default=None, help='output directory (default: output/eval/<time>)')
    p.add_argument('--resume', action='store_true', help='continue in --output, skipping finished episodes')
    p.add_argument('--compare', nargs='+', type=Path, default=None, metavar='SUMMARY',
                   help='only plot these summary.json files (or output directories) against each other')
    add_policy_arguments(p)
    add_remote_arguments(p)
    return p.parse_args(argv)


def compare(paths: list[Path], out: Path) -> int:
    import json

    from openvla_ros.evaluation.report import SUMMARY_JSON, plot_comparison
    merged: dict = {}
    for path in paths:
        f = path / SUMMARY_JSON if path.is_dir() else path
        if not f.is_file():
            raise EvalError(f'{f}: no such summary')
        doc = json.loads(f.read_text())
        for policy, per_task in doc.get('results', {}).items():
            label = policy if policy not in merged else f'{policy} ({path})'
            merged[label] = per_task
    out.mkdir(parents=True, exist_ok=True)
    print(plot_comparison(out / 'comparison.png', merged))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except (EvalError, T.UnknownTaskError, FileNotFoundError) as exc:
        return fail(str(exc), 2)
    except RuntimeError as exc:
        from openvla_ros.evaluation.graph import GraphError
        if isinstance(exc, GraphError):   # the graph failed mid-run: finished episodes are in --output
            return fail(f'--graph: {exc}', 1)
        raise


def _main(args) -> int:
    out = args.output or DEFAULT_OUTPUT_ROOT / datetime.now().strftime('%Y%m%d-%H%M%S')
    if args.compare:
        return compare(args.compare, out)
    if args.checkpoint is not None and args.server:
        raise EvalError('give --checkpoint or --server, not both')
    if args.episodes < 1:
        raise EvalError('--episodes must be at least 1')
    if args.seed < 0:
        raise EvalError('--seed must be >= 0')
    if args.max_steps is not None and args.max_steps < 1:
        raise EvalError('--max-steps must be at least 1')
    task_names = list(T.TASKS) if args.tasks == 'all' else [t.strip() for t in args.tasks.split(',') if t.strip()]
    tasks = [T.get_task(n) for n in task_names]
    seeds = list(range(args.seed, args.seed + args.episodes))
    if args.held_out:
        train = training_seeds(args)
        if not train:
            raise EvalError('--held-out needs --training-seeds or a checkpoint with ' + TRAINING_SEEDS_FILE)
        check_held_out(seeds, train)
    paraphrase = args.paraphrase if args.paraphrase in (None, 'seeded') else int(args.paraphrase)
    from openvla_ros.evaluation.report import EPISODES_FILE, ResultsWriter
    if (out / EPISODES_FILE).exists() and not args.resume:
        raise EvalError(f'{out} holds results already; pass --resume to continue there or another --output')
    vla = None
    if args.graph:
        policies, vla = build_graph_policies(args)
    else:
        policies = build_policies(args)
    path = 'ROS graph lockstep (vla_node -> arm_controller -> sim_node)' if args.graph else 'in-process lockstep'
    meta = {'policies': ', '.join(policies), 'checkpoint': str(args.checkpoint or args.server or ''),
            'tasks': ', '.join(task_names), 'seeds': f'{seeds[0]}-{seeds[-1]}', 'path': path,
            'unnorm_key': args.unnorm_key, 'image': f'{args.image_width}x{args.image_height}'}
    writer = ResultsWriter(out, meta)
    print(f'[eval] writing to {out}', flush=True)
    return run_all(args, policies, tasks, seeds, paraphrase, writer, vla)


def build_graph_policies(args) -> tuple[dict[str, tuple[object, bool]], dict | None]:
    """name → (graph policy, shuffled instruction?), and the vla_node parameters (None: no
    vla_node needed). One vla_node serves the model policies of a run: the checkpoint or the
    server, else the tiny random checkpoint."""
    from openvla_ros.evaluation.graph import VLA_NODE_POLICY, vla_parameters
    from openvla_ros.evaluation.policies import ExpertPolicy

    names = args.policy or (['model'] if (args.checkpoint or args.server) else ['expert'])
    has_model = args.checkpoint is not None or bool(args.server)
    if 'model' in names and not has_model:
        raise EvalError('--policy model needs --checkpoint DIR or --server URL')
    if 'random' in names and has_model and {'model', 'shuffled'} & set(names):
        raise EvalError('--graph runs one vla_node: evaluate --policy random (the tiny checkpoint) in a run '
                        'of its own, not with the --checkpoint/--server model')
    out: dict[str, tuple[object, bool]] = {}
    for name in names:
        out[name] = (ExpertPolicy(), False) if name == 'expert' else (VLA_NODE_POLICY, name == 'shuffled')
    if all(name == 'expert' for name in names):
        return out, None
    if args.checkpoint is not None and 'random' not in names:
        vla = vla_parameters(model_path=args.checkpoint, options=policy_options(args), unnorm_key=args.unnorm_key)
    elif args.server and 'random' not in names:
        vla = vla_parameters(server_url=args.server, remote=remote_options(args, server_url=args.server),
                             unnorm_key=args.unnorm_key)
    else:
        from openvla_ros.cli.demo import ensure_checkpoint
        vla = vla_parameters(model_path=ensure_checkpoint(None), options=policy_options(args),
                             unnorm_key=args.unnorm_key)
    return out, vla


def _episode_runner(args, vla, out: Path):
    """(run(policy, task, seed, **kw) -> EpisodeResult, the simulator the plots reset, control
    period, close)."""
    if args.graph:
        from openvla_ros.cli import bringup as bringup_cli
        from openvla_ros.evaluation.graph import EvaluationGraph, GraphError

        print('[eval] starting the graph (logs in ' + str(out / 'graph_logs') + ')', flush=True)
        graph = EvaluationGraph(bringup_cli.executable_command, bringup_cli.stop_processes, vla=vla,
                                image_size=(args.image_width, args.image_height), log_dir=out / 'graph_logs')
        try:
            graph.start()
        except GraphError as exc:
            raise EvalError(f'--graph: {exc}') from None
        return graph.run_episode, graph.mirror, graph.period_s, graph.close
    from openvla_ros.evaluation.runner import EpisodeEnv, run_episode

    env = EpisodeEnv(image_size=(args.image_width, args.image_height))
    return ((lambda policy, task, seed, **kw: run_episode(policy, task, seed, env=env, **kw)), env.sim,
            env.embodiment.control_period_s, env.close)


def run_all(args, policies, tasks, seeds, paraphrase, writer, vla=None) -> int:
    from tqdm import tqdm

    from openvla_ros.evaluation.policies import shuffled_instruction
    from openvla_ros.evaluation.report import COMPARISON_PNG, plot_comparison, plot_episode, write_video

    jobs = [(pn, t, s) for pn in policies for t in tasks for s in seeds if not writer.done(pn, t.name, s)]
    run, start_sim, period, close = _episode_runner(args, vla, writer.out)
    done = errors = 0
    tally = {name: [0, 0] for name in policies}     # successes, episodes
    t_start = time.perf_counter()
    bar = tqdm(jobs, unit='episode', dynamic_ncols=True, file=sys.stderr)
    try:
        for name, task, seed in bar:
            policy, shuffle = policies[name]
            text = shuffled_instruction(task, [t.name for t in tasks]) if shuffle else None
            result = run(policy, task, seed, max_steps=args.max_steps, record=args.video,
                         unnorm_key=args.unnorm_key if name != 'expert' else None,
                         paraphrase=paraphrase, instruction=text)
            row = {'policy': name, **result.summary()}
            if args.video and result.frames:
                stem = writer.out / 'episodes' / name / task.name / f'seed_{seed}'
                row['video'] = str(write_video(stem, result.frames, 1.0 / period).relative_to(writer.out))
                start = T.reset_episode(start_sim, task, seed)
                row['plot'] = str(plot_episode(stem.with_suffix('.png'), result, start.object_poses,
                                               period).relative_to(writer.out))
            writer.add(row)
            done += 1
            tally[name][0] += result.success
            tally[name][1] += 1
            bar.set_postfix_str(', '.join(f'{n} {k}/{m} ({100 * k / m:.0f}%)' for n, (k, m) in tally.items() if m))
            errors = errors + 1 if result.reason.startswith('policy error') else 0
            if errors >= MAX_CONSECUTIVE_POLICY_ERRORS:
                bar.close()
                summary = writer.write_summary()
                return fail(f'{errors} episodes in a row failed with a policy error (last: {result.reason}); '
                            f'results so far are in {writer.out}', 1) or 1
    finally:
        bar.close()
        close()
    summary = writer.write_summary()
    if summary:
        plot_comparison(writer.out / COMPARISON_PNG, summary)
    wall = time.perf_counter() - t_start
    print((writer.out / 'summary.md').read_text())
    if done:
        print(f'[eval] {done} episodes in {wall:.1f} s ({60 * done / wall:.1f} episodes/min); results in {writer.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
