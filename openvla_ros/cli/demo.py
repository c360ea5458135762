"""openvla-demo: the closed loop in the MuJoCo workcell, headless, with a report at the end.

camera (sim_node) -> vla_node (OpenVLA) -> /openvla/action -> arm_controller -> joint trajectory
-> sim_node. The node set comes from the bring-up description (``openvla_ros.bringup``, sim:=true);
each node runs as its own process in the loopback DDS environment. The demo publishes the
instruction, enables the arm controller, records the graph for ``--duration-s`` while printing a
progress line per second, stops every node with SIGINT and writes into ``--output``: a camera
video (MP4 when imageio-ffmpeg is installed, else GIF), a plot of the commanded deltas, the
end-effector trajectory and the gripper, and ``summary.json`` / ``summary.md`` (rates, latencies,
counts, node exit codes).

Without ``--checkpoint`` it uses a tiny random OpenVLA checkpoint (generated on first use): the
arm then moves meaninglessly, but every limit of the controller still applies.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from openvla_ros import defaults, runtime_env
from openvla_ros.cli.bringup import stop_processes
from openvla_ros.stamps import stamp_to_s

DEFAULT_CHECKPOINT = Path('output/models/openvla-tiny')
DEFAULT_OUTPUT_ROOT = Path('output/demo')
DEFAULT_INSTRUCTION = 'put the spoon on the towel'
STOP_TIMEOUT_S = 20.0
VIDEO_MAX_FRAMES = 600          # longest video kept (frames); older frames are thinned out
VIDEO_DOWNSCALE = 2             # video pixels = camera pixels / this, per axis


@dataclass
class Recording:
    """What the demo keeps from the graph. Times: ``*_sim`` sim seconds, ``*_wall`` monotonic."""
    frames: list = field(default_factory=list)          # (stamp_sim, rgb downscaled)
    frame_times: list = field(default_factory=list)     # (stamp_sim, receipt_wall)
    actions: list = field(default_factory=list)         # (stamp_sim, receipt_wall, receipt_sim, action[7], inference_s)
    joint_states: list = field(default_factory=list)    # (stamp_sim, {name: position})
    targets: list = field(default_factory=list)         # (stamp_sim, xyz)
    trajectories: int = 0
    controller_status: object = None
    vla_status: object = None
    clock_sim: float = 0.0


class LoopRecorder:
    """A probe node in its own context: records the closed loop, publishes the instruction and
    enables / disables the arm controller. Spin it with :meth:`spin_for` from one thread."""

    def __init__(self, context, keep_frames: bool = True, namespace: str = ''):
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from std_srvs.srv import SetBool
        from trajectory_msgs.msg import JointTrajectory

        from openvla_ros.msg import ControllerStatus, EndEffectorDelta, VlaStatus
        from openvla_ros.nodes.common import latched_qos, reliable_qos

        self.rec = Recording()
        self.keep_frames = keep_frames
        self.node = rclpy.create_node('openvla_demo_recorder', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        n = self.node
        n.create_subscription(Image, defaults.CAMERA_TOPIC, self._on_image, qos_profile_sensor_data)
        n.create_subscription(EndEffectorDelta, defaults.ACTION_TOPIC, self._on_action, reliable_qos(50))
        n.create_subscription(JointState, defaults.JOINT_STATES_TOPIC, self._on_joint_state, reliable_qos(50))
        n.create_subscription(PoseStamped, defaults.TARGET_POSE_TOPIC, self._on_target, reliable_qos(50))
        n.create_subscription(JointTrajectory, defaults.JOINT_TRAJECTORY_TOPIC, self._on_trajectory, reliable_qos(50))
        n.create_subscription(Clock, defaults.CLOCK_TOPIC, self._on_clock, reliable_qos(1))
        n.create_subscription(ControllerStatus, defaults.CONTROLLER_STATUS_TOPIC,
                              lambda m: setattr(self.rec, 'controller_status', m), latched_qos())
        n.create_subscription(VlaStatus, defaults.VLA_STATUS_TOPIC,
                              lambda m: setattr(self.rec, 'vla_status', m), latched_qos())
        self.instruction_pub = n.create_publisher(String, defaults.INSTRUCTION_TOPIC, reliable_qos(10))
        self._string = String
        self._set_bool = SetBool
        self.enable_client = n.create_client(SetBool, f'/{defaults.ARM_CONTROLLER_NODE}/enable')

    # ---------------------------------------------------------------- callbacks
    def _on_image(self, msg) -> None:
        stamp = stamp_to_s(msg.header.stamp)
        self.rec.frame_times.append((stamp, time.monotonic()))
        if self.keep_frames:
            from openvla_ros.imaging import ImageConversionError, image_msg_to_rgb
            try:
                rgb = image_msg_to_rgb(msg)
            except ImageConversionError:
                return
            self.rec.frames.append((stamp, rgb[::VIDEO_DOWNSCALE, ::VIDEO_DOWNSCALE].copy()))
            if len(self.rec.frames) > VIDEO_MAX_FRAMES:
                self.rec.frames = self.rec.frames[::2]

    def _on_action(self, msg) -> None:
        self.rec.actions.append((stamp_to_s(msg.header.stamp), time.monotonic(), self.rec.clock_sim,
                                 np.asarray(msg.action, dtype=float), float(msg.inference_latency_s)))

    def _on_joint_state(self, msg) -> None:
        self.rec.joint_states.append((stamp_to_s(msg.header.stamp), dict(zip(msg.name, msg.position))))

    def _on_target(self, msg) -> None:
        p = msg.pose.position
        self.rec.targets.append((stamp_to_s(msg.header.stamp), (p.x, p.y, p.z)))

    def _on_trajectory(self, msg) -> None:
        self.rec.trajectories += 1

    def _on_clock(self, msg) -> None:
        self.rec.clock_sim = stamp_to_s(msg.clock)

    # ---------------------------------------------------------------- actions
    def spin_until(self, predicate, timeout_s: float, step_s: float = 0.02) -> bool:
        from openvla_ros.nodes.common import wait_for

        def spun() -> bool:
            self.executor.spin_once(timeout_sec=step_s)
            return predicate()
        return predicate() or wait_for(spun, timeout_s, step_s=0.0)

    def spin_for(self, duration_s: float, stop: threading.Event | None = None) -> None:
        self.spin_until(lambda: stop is not None and stop.is_set(), duration_s)

    def graph_ready(self) -> bool:
        """The model is loaded (vla_node past configuring), the controller offers ~/enable, the
        instruction has a subscriber and the simulator publishes."""
        from openvla_ros.msg import VlaStatus
        s = self.rec.vla_status
        return (s is not None and s.state in (VlaStatus.STATE_IDLE, VlaStatus.STATE_RUNNING)
                and self.enable_client.service_is_ready()
                and self.instruction_pub.get_subscription_count() > 0
                and bool(self.rec.frame_times))

    def send_instruction(self, text: str) -> None:
        self.instruction_pub.publish(self._string(data=text))

    def set_enabled(self, enabled: bool, timeout_s: float = 10.0) -> tuple[bool, str]:
        if not self.enable_client.wait_for_service(timeout_sec=timeout_s):
            return False, 'arm_controller ~/enable not available'
        fut = self.enable_client.call_async(self._set_bool.Request(data=enabled))
        if not self.spin_until(fut.done, timeout_s):
            return False, 'arm_controller ~/enable timed out'
        res = fut.result()
        return bool(res.success), res.message

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


# ------------------------------------------------------------------------ report
def _rate_hz(times) -> float:
    t = np.asarray(times, dtype=float)
    return float((len(t) - 1) / (t[-1] - t[0])) if len(t) >= 2 and t[-1] > t[0] else 0.0


def _pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def end_effector_positions(rec: Recording, embodiment_name: str = defaults.DEFAULT_EMBODIMENT):
    """(sim times, N x 3 positions) of the end effector from the recorded joint states (FK on the
    controller's kinematic model)."""
    from openvla_ros.control.embodiment import load_embodiment
    from openvla_ros.control.kinematics import ArmKinematics

    kin = ArmKinematics(load_embodiment(embodiment_name))
    times, xyz = [], []
    for stamp, joints in rec.joint_states[::5]:
        if all(j in joints for j in kin.joint_names):
            times.append(stamp)
            xyz.append(kin.forward([joints[j] for j in kin.joint_names]).position)
    return np.asarray(times), np.asarray(xyz).reshape(-1, 3)


def summarize(rec: Recording, exit_codes: dict, wall_s: float, args: dict, startup_s: float | None = None) -> dict:
    frame_stamps = [s for s, _ in rec.frame_times]
    frame_wall = {s: w for s, w in rec.frame_times}
    action_stamps = [a[0] for a in rec.actions]
    inference = [a[4] for a in rec.actions]
    # Image stamp to action: sim clock at action receipt minus the source image stamp, and the
    # wall time between receiving that image here and receiving the action.
    age_sim = [a[2] - a[0] for a in rec.actions if a[2] > 0]
    age_wall = [a[1] - frame_wall[a[0]] for a in rec.actions if a[0] in frame_wall]
    cs, vs = rec.controller_status, rec.vla_status
    sim_span = (frame_stamps[-1] - frame_stamps[0]) if len(frame_stamps) >= 2 else 0.0
    wall_span = (rec.frame_times[-1][1] - rec.frame_times[0][1]) if len(rec.frame_times) >= 2 else 0.0
    return {
        'arguments': args,
        'wall_duration_s': round(wall_s, 3),
        'startup_s': None if startup_s is None else round(startup_s, 3),
        'sim_duration_s': round(sim_span, 3),
        'real_time_factor': round(sim_span / wall_span, 3) if wall_span > 0 else None,
        'rates_hz': {
            'camera_sim': round(_rate_hz(frame_stamps), 3),
            'camera_wall': round(_rate_hz([w for _, w in rec.frame_times]), 3),
            'action_sim': round(_rate_hz(action_stamps), 3),
            'action_wall': round(_rate_hz([a[1] for a in rec.actions]), 3),
        },
        'latency_s': {
            'inference_p50': _pct(inference, 50), 'inference_p95': _pct(inference, 95),
            'image_stamp_to_action_sim_p50': _pct(age_sim, 50), 'image_stamp_to_action_sim_p95': _pct(age_sim, 95),
            'image_receipt_to_action_wall_p50': _pct(age_wall, 50),
            'image_receipt_to_action_wall_p95': _pct(age_wall, 95),
        },
        'counts': {
            'camera_frames': len(rec.frame_times),
            'actions': len(rec.actions),
            'joint_trajectories': rec.trajectories,
            'target_poses': len(rec.targets),
            'joint_states': len(rec.joint_states),
            'controller_actions_received': int(cs.actions_received) if cs else None,
            'controller_actions_executed': int(cs.actions_executed) if cs else None,
            'controller_actions_rejected': int(cs.actions_rejected) if cs else None,
            'vla_frames_received': int(vs.frames_received) if vs else None,
            'vla_inference_errors': int(vs.inference_errors) if vs else None,
        },
        'last_status': {
            'controller': f'{cs.state_name}: {cs.last_event}' if cs else None,
            'vla_node': f'{vs.state_name}: {vs.message}' if vs else None,
        },
        'exit_codes': exit_codes,
    }


def write_report(out: Path, rec: Recording, summary: dict,
                 embodiment_name: str = defaults.DEFAULT_EMBODIMENT) -> dict[str, Path]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if rec.frames:
        files['video'] = _write_video(out, rec.frames, summary['rates_hz']['camera_sim'] or 10.0)
        import imageio.v3 as iio
        files['last_frame'] = out / 'last_frame.png'
        iio.imwrite(files['last_frame'], rec.frames[-1][1])

    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    t0 = rec.frame_times[0][0] if rec.frame_times else 0.0
    if rec.actions:
        t = np.array([a[0] for a in rec.actions]) - t0
        act = np.stack([a[3] for a in rec.actions])
        for i, name in enumerate(('dx', 'dy', 'dz')):
            axes[0].plot(t, act[:, i], '.-', label=f'{name} [m]')
        for i, name in enumerate(('droll', 'dpitch', 'dyaw'), start=3):
            axes[1].plot(t, act[:, i], '.-', label=f'{name} [rad]')
        axes[3].step(t, act[:, 6], where='post', label='commanded gripper (1 = open)')
    axes[0].set_ylabel('translation delta'); axes[1].set_ylabel('rotation delta')
    ee_t, ee = end_effector_positions(rec, embodiment_name)
    for i, name in enumerate('xyz'):
        if len(ee):
            axes[2].plot(ee_t - t0, ee[:, i], label=f'measured {name} [m]')
    if rec.targets:
        tt = np.array([s for s, _ in rec.targets]) - t0
        tp = np.array([p for _, p in rec.targets])
        for i, name in enumerate('xyz'):
            axes[2].plot(tt, tp[:, i], '--', label=f'target {name}')
    axes[2].set_ylabel('end effector [m]')
    from openvla_ros.control.embodiment import load_embodiment
    g = load_embodiment(embodiment_name).gripper
    if g is not None:
        js = [(s, j[g.joint]) for s, j in rec.joint_states if g.joint in j]
        if js:
            # Finger position mapped back to gripper units through the controller's mapping.
            opening = np.array([g.command_from_position_m(v) for _, v in js])
            axes[3].plot(np.array([s for s, _ in js]) - t0, opening, label=f'measured {g.joint} (1 = open)')
    axes[3].set_ylabel('gripper'); axes[3].set_xlabel('sim time [s]')
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc='upper right', fontsize=8)
    fig.suptitle(f"openvla-demo: {summary['arguments'].get('instruction', '')}")
    fig.tight_layout()
    files['plot'] = out / 'actions_and_trajectory.png'
    fig.savefig(files['plot'], dpi=90)
    plt.close(fig)

    files['summary_json'] = out / 'summary.json'
    files['summary_json'].write_text(json.dumps(summary, indent=2) + '\n')
    files['summary_md'] = out / 'summary.md'
    files['summary_md'].write_text(_markdown(summary, files))
    return files


def _write_video(out: Path, frames: list, fps: float) -> Path:
    from openvla_ros.evaluation.report import write_video
    return write_video(out / 'camera', [f for _, f in frames], fps)


def _fmt(v, unit='', scale=1.0, digits=3) -> str:
    return '–' if v is None else f'{v * scale:.{digits}g}{unit}'


def _markdown(s: dict, files: dict) -> str:
    r, lat, c = s['rates_hz'], s['latency_s'], s['counts']
    lines = [
        '# openvla-demo report', '',
        f"Instruction: **{s['arguments'].get('instruction', '')}**; checkpoint `{s['arguments'].get('checkpoint')}`.", '',
        f"Ran {s['wall_duration_s']:.1f} s wall (start-up {_fmt(s['startup_s'], ' s')}), "
        f"{s['sim_duration_s']:.1f} s sim (real-time factor {_fmt(s['real_time_factor'])}).", '',
        '| metric | value |', '|---|---|',
        f"| camera rate (sim / wall) | {r['camera_sim']:.2f} / {r['camera_wall']:.2f} Hz |",
        f"| action rate (sim / wall) | {r['action_sim']:.2f} / {r['action_wall']:.2f} Hz |",
        f"| inference latency p50 / p95 | {_fmt(lat['inference_p50'], ' ms', 1e3)} / {_fmt(lat['inference_p95'], ' ms', 1e3)} |",
        f"| image stamp → action (sim clock) p50 / p95 | {_fmt(lat['image_stamp_to_action_sim_p50'], ' ms', 1e3)} / "
        f"{_fmt(lat['image_stamp_to_action_sim_p95'], ' ms', 1e3)} |",
        f"| image receipt → action (wall) p50 / p95 | {_fmt(lat['image_receipt_to_action_wall_p50'], ' ms', 1e3)} / "
        f"{_fmt(lat['image_receipt_to_action_wall_p95'], ' ms', 1e3)} |",
    ]
    lines += [f'| {k.replace("_", " ")} | {"–" if v is None else v} |' for k, v in c.items()]
    lines += ['', f"Controller: {s['last_status']['controller']}", '',
              f"vla_node: {s['last_status']['vla_node']}", '',
              'Node exit codes: ' + ', '.join(f'{k}={v}' for k, v in s['exit_codes'].items()), '']
    for k, p in files.items():
        if k not in ('summary_md', 'summary_json') and p.suffix in ('.png', '.gif'):
            lines.append(f'![{k}]({p.name})')
        elif k not in ('summary_md', 'summary_json'):
            lines.append(f'- {k}: [{p.name}]({p.name})')
    return '\n'.join(lines) + '\n'


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
    p.add_argument('--image-width', type=int, default=640)
    p.add_argument('--image-height', type=int, default=480)
    p.add_argument('--output', type=Path, default=None,
                   help=f'report directory (default: {DEFAULT_OUTPUT_ROOT}/<timestamp>)')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime_env.apply()  # before rclpy: loopback DDS, one domain id for us and the nodes
    out = args.output or DEFAULT_OUTPUT_ROOT / datetime.now().strftime('%Y%m%d-%H%M%S')
    out.mkdir(parents=True, exist_ok=True)
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
            _run_loop(recorder, args.duration_s, stop, procs)
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


def _run_loop(recorder: LoopRecorder, duration_s: float, stop: threading.Event, procs) -> None:
    rec = recorder.rec
    t0 = time.monotonic()
    next_print = t0 + 1.0
    last_actions = 0
    while not stop.is_set() and time.monotonic() - t0 < duration_s:
        recorder.spin_until(lambda: time.monotonic() >= next_print or stop.is_set(), next_print - time.monotonic() + 0.05)
        dead = [n for n, p in procs if p.poll() is not None]
        cs = rec.controller_status
        print(f'[demo] t={time.monotonic() - t0:5.1f} s | sim {rec.clock_sim:6.1f} s | frames {len(rec.frame_times):4d} | '
              f'actions {len(rec.actions):4d} (+{len(rec.actions) - last_actions}/s) | '
              f'trajectories {rec.trajectories:4d} | controller {cs.state_name if cs else "?"}'
              + (f' | EXITED: {dead}' if dead else ''), flush=True)
        last_actions = len(rec.actions)
        next_print += 1.0
        if dead:
            break


if __name__ == '__main__':
    sys.exit(main())
