#!/usr/bin/env python3
"""Seconds per step of openvla-eval's two paths on the same episodes, in one run.

  in process: policy -> SafetyController -> WorkcellSim in this process (``run_episode``);
  --graph:    vla_node -> arm_controller -> sim_node in lockstep, each its own process over
              loopback DDS (``EvaluationGraph.run_episode`` with vla_node as the policy).

Both paths run the same checkpoint (default: a fresh tiny random one) with the same engine
options, the same tasks, seeds and number of steps (every episode runs all --steps: stop on
success off), 224 x 224 camera images, no recording. The paths alternate episode by episode (the
order swaps for each task and seed), so a change of machine load falls on both alike; one short
warm-up episode per path is not counted. Per path: wall seconds per step (each episode's own
``wall_time_s`` over its steps, reset included), the policy's share (``policy_time_s``: the
forward pass in process, vla_node's ``inference_latency_s`` through the graph) and the rest; the
ratio graph / in process; whether the two paths gave the same actions.

    OMP_NUM_THREADS=1 python tools/bench_eval_graph.py [--checkpoint DIR] [--tasks a,b]
        [--episodes 3] [--steps 10] [--seed 20] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openvla_ros import runtime_env  # noqa: E402

runtime_env.apply()

UNNORM_KEY = 'bridge_orig'
PATHS = ('in_process', 'graph')


def _per_step(results) -> dict:
    steps = sum(r.steps for r in results)
    wall = sum(r.wall_time_s for r in results)
    policy = sum(r.policy_time_s for r in results)
    return {'episodes': len(results), 'steps': steps, 'wall_s': wall,
            'wall_s_per_step': wall / steps, 'policy_s_per_step': policy / steps,
            'rest_s_per_step': (wall - policy) / steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--checkpoint', type=Path, help='checkpoint directory (default: a fresh tiny one)')
    ap.add_argument('--tasks', default='reach_red_block,spoon_on_towel')
    ap.add_argument('--episodes', type=int, default=3, help='seeds per task (default %(default)s)')
    ap.add_argument('--steps', type=int, default=10, help='steps per episode (default %(default)s)')
    ap.add_argument('--seed', type=int, default=20, help='first seed (default %(default)s)')
    ap.add_argument('--cpu-threads', type=int, default=1,
                    help='torch threads, in this process and in vla_node (default %(default)s)')
    ap.add_argument('--json', action='store_true')
    args = ap.parse_args(argv)

    from openvla_ros.cli import bringup as bringup_cli
    from openvla_ros.engine.api import PolicyOptions
    from openvla_ros.engine.policy import load_policy
    from openvla_ros.evaluation import tasks as T
    from openvla_ros.evaluation.graph import VLA_NODE_POLICY, EvaluationGraph, vla_parameters
    from openvla_ros.evaluation.runner import EpisodeEnv, run_episode

    tasks = [T.get_task(name) for name in args.tasks.split(',')]
    ckpt = args.checkpoint
    if ckpt is None:
        from openvla_ros.engine.tiny import make_tiny_checkpoint
        ckpt = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / 'openvla-tiny', seed=0)
    options = PolicyOptions(cpu_threads=args.cpu_threads)

    t0 = time.perf_counter()
    policy = load_policy(ckpt, options)
    env = EpisodeEnv()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = EvaluationGraph(bringup_cli.executable_command, bringup_cli.stop_processes,
                            vla=vla_parameters(model_path=ckpt, options=options, unnorm_key=UNNORM_KEY))
    graph.start()
    graph_start_s = time.perf_counter() - t0

    def run(path: str, task, seed: int, steps: int):
        if path == 'graph':
            return graph.run_episode(VLA_NODE_POLICY, task, seed, max_steps=steps, stop_on_success=False)
        return run_episode(policy, task, seed, max_steps=steps, unnorm_key=UNNORM_KEY, env=env,
                           stop_on_success=False)

    results: dict[str, list] = {p: [] for p in PATHS}
    same_actions = 0
    t_run = time.perf_counter()
    try:
        for path in PATHS:                      # warm-up, not counted
            run(path, tasks[0], args.seed - 1, 2)
        k = 0
        for task in tasks:
            for seed in range(args.seed, args.seed + args.episodes):
                pair = {}
                for path in (PATHS if k % 2 == 0 else PATHS[::-1]):
                    r = run(path, task, seed, args.steps)
                    if r.steps != args.steps:
                        print(f'{path} {task.name} seed {seed}: {r.steps} steps ({r.reason})', file=sys.stderr)
                        return 1
                    pair[path] = r
                    results[path].append(r)
                same_actions += bool(np.array_equal(pair['graph'].actions, pair['in_process'].actions))
                k += 1
    finally:
        graph.close()
        env.close()
        policy.close()
    per = {p: _per_step(results[p]) for p in PATHS}
    report = {
        'checkpoint': str(ckpt), 'tasks': [t.name for t in tasks], 'episodes_per_task': args.episodes,
        'steps_per_episode': args.steps, 'cpu_threads': args.cpu_threads,
        'load_s': load_s, 'graph_start_s': graph_start_s, 'measured_run_s': time.perf_counter() - t_run,
        **per,
        'ratio_wall_per_step': per['graph']['wall_s_per_step'] / per['in_process']['wall_s_per_step'],
        'same_actions': f"{same_actions}/{len(results['graph'])}",
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{len(tasks)} tasks x {args.episodes} episodes x {args.steps} steps per path; "
          f"policy load {load_s:.1f} s, graph start {graph_start_s:.1f} s")
    print(f"{'path':>11}  {'s/step':>7}  {'policy s/step':>13}  {'rest s/step':>11}")
    for p in PATHS:
        print(f"{p:>11}  {per[p]['wall_s_per_step']:7.3f}  {per[p]['policy_s_per_step']:13.3f}  "
              f"{per[p]['rest_s_per_step']:11.3f}")
    print(f"graph / in process: {report['ratio_wall_per_step']:.2f}x; same actions: {report['same_actions']} episodes")
    return 0


if __name__ == '__main__':
    sys.exit(main())
