"""The demo's report (ROS-free): metrics of a :class:`~openvla_ros.demo.recorder.Recording`
(rates, latencies, counts), a plot of the commanded deltas, the end-effector trajectory and the
gripper, the camera video and ``summary.json`` / ``summary.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from openvla_ros import defaults
from openvla_ros.demo.recorder import Recording
from openvla_ros.evaluation.report import _pyplot, write_video


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
    """``summary.json``: ``args`` as given, durations, rates, latencies, counts, last status and
    the nodes' ``exit_codes``."""
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
    """Video and last frame (when frames were kept), the plot, ``summary.json`` and ``summary.md``
    in ``out``; returns {kind: path}."""
    plt = _pyplot()
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
    """``out``/camera.mp4 (or .gif) of the recorded (stamp, rgb) frames."""
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
