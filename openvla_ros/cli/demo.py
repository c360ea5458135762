"""openvla-demo: the closed loop in the MuJoCo workcell, headless, with a report at the end.

camera (sim_node) -> vla_node (OpenVLA) -> /openvla/action -> arm_controller -> joint trajectory
-> sim_node. The node set comes from the bring-up description (``openvla_ros.bringup``, sim:=true);
each node runs as its own process in the loopback DDS environment. The demo publishes the
instruction, enables the arm controller, records the graph for ``--duration-s`` while printing a
progress line per second, stops every node with SIGINT and writes into ``--output``: a camera
video (MP4 when imageio-ffmpeg is installed, else GIF), a plot of the commanded deltas, the
end-effector trajectory and the gripper, and ``summary.json`` / ``summary.md`` (rates, latencies,
counts, node exit codes).

With ``--task`` (the default when the repository's trained policy ``models/openvla-sim-small``
is present and no ``--checkpoint`` is given) it runs one seeded episode of an evaluation task
instead, through the same graph in lockstep (``openvla-eval --graph``), and the report says
whether the task succeeded. ``--tiny`` (or no trained policy) runs the real-time loop with a tiny
random OpenVLA checkpoint (generated on first use): the arm then moves meaninglessly, but every
limit of the controller still applies.

The probe node and the loop are :mod:`openvla_ros.demo.recorder`, the metrics, plots, video and
markdown :mod:`openvla_ros.demo.report`; this module starts and stops the processes.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from openvla_ros import defaults, runtime_env
from openvla_ros.cli.bringup import stop_processes
# also importable from here (Recording, end_effector_positions: re-exports)
from openvla_ros.demo.recorder import LoopRecorder, Recording, run_loop  # noqa: F401
from openvla_ros.demo.report import end_effector_positions, summarize, write_report  # noqa: F401

DEFAULT_CHECKPOINT = Path('output/models/openvla-tiny')
DEFAULT_OUTPUT_ROOT = Path('output/demo')
DEFAULT_INSTRUCTION = 'put the spoon on the towel'
# the small policy trained by tools/learning_proof.sh, shipped with the repository
TRAINED_CHECKPOINT = Path('models/openvla-sim-small')
DEFAULT_TASK = 'reach_red_block'
LOOP_IMAGE_SIZE = (640, 480)     # the real-time loop's camera (width, height), pixels
DEFAULT_TASK_SEED = 1001        # a held-out seed (the policy was trained on seeds 0-299) on which it succeeds
STOP_TIMEOUT_S = 20.0


# ------------------------------------------------------------------------ processes
def node_commands(checkpoint: Path, args) -> list[tuple[str, list[str]]]:
    """(name, argv) of the node set, from the bring-up description with sim:=true."""
    from openvla_ros.cli.bringup import commands

    values = {'sim': 'true', 'model_path': str(checkpoint.resolve())}
    for key in ('device', 'dtype', 'quantization', 'unnorm_key'):
        if getattr(args, key):
            values[key] = getattr(args, key)
    cmds = commands(values)
    sim_overrides = [f'seed:={args.seed}', f'image_width:={args.image_width}', f'image_height:={args.image_height}']
    out = []
    for name, argv in cmds:
        if name == defaults.SIM_NODE:
            for p in sim_overrides:
                argv = argv + ['-p', p]
        out.append((name, argv))
    return out


def ensure_checkpoint(path: Path | None) -> Path:
    if path is not None:
        if not (path / 'config.json').is_file():
            raise FileNotFoundError(f'{path} is not an OpenVLA checkpoint directory (no config.json)')
        return path
    path = DEFAULT_CHECKPOINT
    if not (path / 'config.json').is_file():
        from openvla_ros.engine.tiny import make_tiny_checkpoint
        print(f'[demo] generating the tiny random checkpoint in {path} (once)', flush=True)
        make_tiny_checkpoint(path, seed=0)
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(prog='openvla-demo', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--checkpoint', type=Path, default=None,
                   help=f'OpenVLA checkpoint directory (default: a tiny random one in {DEFAULT_CHECKPOINT})')
    p.add_argument('--device', default='', help='torch device (cpu, cuda, cuda:N); default from the sim config')
    p.add_argument('--dtype', default='', help='float32 | bfloat16 | float16; default from the sim config')
    p.add_argument('--quantization', default='', help='none | 8bit | 4bit; default from the sim config')
    p.add_argument('--unnorm-key', dest='unnorm_key', default='', help=f'dataset statistics key (default {defaults.DEFAULT_UNNORM_KEY})')
    p.add_argument('--instruction', default=DEFAULT_INSTRUCTION)
    p.add_argument('--duration-s', type=float, default=30.0, help='how long the loop runs once the graph is up (s)')
    p.add_argument('--startup-timeout-s', type=float, default=300.0,
                   help='longest wait for the model to load and the nodes to come up (s)')
    p.add_argument('--seed', type=int, default=-1, help='object randomisation seed of the workcell (-1 = nominal)')
    p.add_argument('--image-width', type=int, default=None,
                   help='camera pixels (default: 640, or with --task the size the policy was trained with)')
    p.add_argument('--image-height', type=int, default=None, help='camera pixels (default: 480, see --image-width)')
    p.add_argument('--output', type=Path, default=None,
                   help=f'report directory (default: {DEFAULT_OUTPUT_ROOT}/<timestamp>)')
    p.add_argument('--task', default=None,
                   help='run one episode of this evaluation task through the graph in lockstep and report '
                        f'success (default {DEFAULT_TASK!r} with the trained policy in {TRAINED_CHECKPOINT})')
    p.add_argument('--tiny', action='store_true',
                   help='the real-time loop with the tiny random checkpoint, even when the trained policy exists')
    args = p.parse_args(argv)
    if args.task is None and not args.tiny and args.checkpoint is None and \
            (TRAINED_CHECKPOINT / 'config.json').is_file():
        args.task = DEFAULT_TASK
    if args.task is not None and args.checkpoint is None:
        args.checkpoint = TRAINED_CHECKPOINT
    if args.task is None:
        args.image_width = args.image_width or LOOP_IMAGE_SIZE[0]
        args.image_height = args.image_height or LOOP_IMAGE_SIZE[1]
    return args


def run_task(args, out: Path) -> int:
    """One seeded episode of ``args.task`` through the graph (lockstep), with its report."""
    import json

    from openvla_ros.cli import evaluate
    from openvla_ros.evaluation.report import EPISODES_FILE

    checkpoint = ensure_checkpoint(args.checkpoint)
    seeds = checkpoint / defaults.TRAINING_SEEDS_FILE
    trained = json.loads(seeds.read_text()) if seeds.is_file() else {}
    # the camera size the policy was trained with, unless asked otherwise
    height, width = (trained.get('image_shape') or [224, 224])[:2]
    width, height = args.image_width or width, args.image_height or height
    seed = args.seed if args.seed >= 0 else DEFAULT_TASK_SEED
    argv = ['--graph', '--checkpoint', str(checkpoint), '--tasks', args.task, '--episodes', '1',
            '--seed', str(seed), '--image-width', str(width), '--image-height', str(height),
            '--output', str(out), '--policy', 'model']
    keys = (json.loads((checkpoint / 'config.json').read_text()).get('norm_stats') or {})
    key = args.unnorm_key or (next(iter(keys)) if len(keys) == 1 else '')
    for flag, value in (('--unnorm-key', key), ('--device', args.device), ('--dtype', args.dtype),
                        ('--quantization', args.quantization)):
        if value:
            argv += [flag, value]
    print(f'[demo] task {args.task!r}, seed {seed}, policy {checkpoint}: one episode through the graph '
          f'(sim_node -> vla_node -> arm_controller, lockstep)', flush=True)
    rc = evaluate.main(argv)
    records = out / EPISODES_FILE
    if rc != 0 or not records.is_file():
        return rc or 1
    episode = json.loads(records.read_text().splitlines()[-1])
    verdict = 'SUCCEEDED' if episode.get('success') else f"did not succeed ({episode.get('reason')})"
    print(f"[demo] {episode.get('instruction')!r}: the task {verdict} after {episode.get('steps')} steps; "
          f'report: {(out / "summary.md").resolve()}', flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime_env.apply()  # before rclpy: loopback DDS, one domain id for us and the nodes
    out = args.output or DEFAULT_OUTPUT_ROOT / datetime.now().strftime('%Y%m%d-%H%M%S')
    out.mkdir(parents=True, exist_ok=True)
    if args.task is not None:
        try:
            return run_task(args, out)
        except (FileNotFoundError, ValueError) as exc:
            print(f'openvla-demo: {exc}', file=sys.stderr)
            return 2
    try:
        checkpoint = ensure_checkpoint(args.checkpoint)
        cmds = node_commands(checkpoint, args)
    except (FileNotFoundError, ValueError) as exc:
        print(f'openvla-demo: {exc}', file=sys.stderr)
        return 2

    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    env = runtime_env.loopback_env()
    (out / 'logs').mkdir(exist_ok=True)
    procs = []
    print(f'[demo] ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}; starting {", ".join(n for n, _ in cmds)} '
          f'(logs in {out / "logs"})', flush=True)
    for name, cmd in cmds:
        log = open(out / 'logs' / f'{name}.log', 'wb')
        # Own session: a terminal Ctrl-C reaches only the demo, which then stops the nodes in order.
        procs.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)))
    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    recorder = LoopRecorder(ctx)
    t_start = time.monotonic()
    exit_codes: dict[str, int] = {}
    startup_s = None
    try:
        print('[demo] waiting for the model to load and the nodes to come up ...', flush=True)
        died = lambda: [n for n, p in procs if p.poll() is not None]  # noqa: E731
        recorder.spin_until(lambda: recorder.graph_ready() or died() or stop.is_set(),
                            args.startup_timeout_s, step_s=0.1)
        if not recorder.graph_ready():
            why = f'nodes exited: {died()}' if died() else 'interrupted' if stop.is_set() else \
                f'not ready after {args.startup_timeout_s:.0f} s'
            print(f'[demo] graph did not come up ({why}); see {out / "logs"}', file=sys.stderr, flush=True)
        else:
            startup_s = time.monotonic() - t_start
            recorder.send_instruction(args.instruction)
            ok, msg = recorder.set_enabled(True)
            print(f'[demo] instruction {args.instruction!r}; arm_controller enable: {ok} ({msg})', flush=True)
            run_loop(recorder, args.duration_s, stop, procs)
            recorder.set_enabled(False, timeout_s=3.0)
    finally:
        wall_s = time.monotonic() - t_start
        exit_codes = stop_processes(procs, STOP_TIMEOUT_S)
        recorder.close()
        rclpy.try_shutdown(context=ctx)
    summary = summarize(recorder.rec, exit_codes, wall_s, {
        'instruction': args.instruction, 'checkpoint': str(checkpoint), 'duration_s': args.duration_s,
        'seed': args.seed, 'device': args.device, 'dtype': args.dtype, 'quantization': args.quantization,
        'unnorm_key': args.unnorm_key, 'image_size': [args.image_width, args.image_height]}, startup_s)
    files = write_report(out, recorder.rec, summary)
    c = summary['counts']
    print(f"[demo] {c['camera_frames']} frames, {c['actions']} actions, {c['joint_trajectories']} trajectories; "
          f"exit codes {exit_codes}", flush=True)
    print(f'[demo] report: {files["summary_md"].resolve()}', flush=True)
    ok = all(code == 0 for code in exit_codes.values()) and c['actions'] > 0
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
